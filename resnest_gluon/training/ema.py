"""An exponential moving average of a model's weights, evaluated and saved next to the live weights.

After update ``t`` the average is ``a_t = d a_{t-1} + (1 - d) w_t`` divided by ``1 - d^t`` (the bias
correction of an average started at zero, as in Adam), which is kept directly as
``c_t = c_{t-1} + (1 - d) / (1 - d^t) (w_t - c_{t-1})``: the first update copies the weights, the early
ones are not pulled towards the random initialisation. Only parameters that learn are averaged; BatchNorm
statistics (and frozen weights) are the live model's. Every worker holds the same weights after every
update, so every worker computes the same average without any communication.
"""

from contextlib import contextmanager
from typing import Dict

import mxnet as mx

__all__ = ["EMA"]


class EMA:
    """The moving average of ``net``'s learning parameters (float32, on their context).

    Parameters
    ----------
    net : Block
        An initialised model.
    decay : float
        In (0, 1); e.g. 0.999 averages over about the last 1,000 updates.
    updates : int
        Updates the average already holds (when restored with :meth:`load`).
    """

    def __init__(self, net, decay: float, updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay, self.updates = float(decay), int(updates)
        self._params = {k: p for k, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}
        self.shadow: Dict[str, mx.nd.NDArray] = {
            k: p.data().astype("float32", copy=True) for k, p in self._params.items()
        }

    def update(self) -> None:
        """Folds the current weights in; call after every optimizer update."""
        self.updates += 1
        rate = (1.0 - self.decay) / (1.0 - self.decay**self.updates)
        for key, param in self._params.items():
            shadow = self.shadow[key]
            shadow += rate * (param.data().astype("float32", copy=False) - shadow)

    @contextmanager
    def applied(self):
        """Within the block the model holds the averaged weights; the live ones are restored after."""
        live = {k: p.data().copy() for k, p in self._params.items()}
        try:
            for key, param in self._params.items():
                param.set_data(self.shadow[key].astype(param.dtype, copy=False))
            yield
        finally:
            for key, param in self._params.items():
                param.set_data(live[key])

    def load(self, path: str, updates: int) -> None:
        """Restores the average from a ``.params`` file saved while :meth:`applied` (``updates`` of them)."""
        arrays = {k.split(":", 1)[-1]: v for k, v in mx.nd.load(path).items()}
        missing = sorted(set(self.shadow) - set(arrays))
        if missing:
            raise ValueError(f"{path} lacks {missing[0]!r}: it is not this model's EMA file")
        for key, shadow in self.shadow.items():
            shadow[:] = arrays[key].astype("float32").as_in_context(shadow.context)
        self.updates = int(updates)
