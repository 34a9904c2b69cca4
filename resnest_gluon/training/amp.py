"""Dynamic loss scaling for float16 training.

Micikevicius et al., "Mixed Precision Training", ICLR 2018: the loss is multiplied by a scale before the
backward pass so that small float16 gradients do not flush to zero; a step whose gradients overflowed
(inf or NaN anywhere, after the sum over workers, so every worker agrees) is skipped and the scale
halved, and after ``window`` good steps in a row the scale doubles. The gradients are unscaled inside the
optimizer's float32 update (``rescale_grad``), never in float16.
"""

import logging

import mxnet as mx
from mxnet import autograd

__all__ = ["LossScaler"]

logger = logging.getLogger(__name__)

_CHUNK = 200  # arrays per multi_all_finite call (as mxnet.contrib.amp does)


class LossScaler:
    """A dynamic loss scale and the step that uses it.

    Parameters
    ----------
    scale : float
        Initial scale (2**16, as in ``mxnet.contrib.amp`` and PyTorch's ``GradScaler``).
    factor : float
        The scale is divided by it after an overflow and multiplied by it after ``window`` good steps.
    window : int
        Good steps in a row before the scale grows.
    max_scale : float
        The scale never grows past this.

    Multiply the loss by :attr:`scale` inside ``autograd.record()``, call ``backward()`` on the product,
    then ``scaler.step(trainer, batch_size)`` instead of ``trainer.step(batch_size)``.
    """

    def __init__(
        self, scale: float = 2.0**16, factor: float = 2.0, window: int = 2000, max_scale: float = 2.0**24
    ):
        if scale <= 0 or factor <= 1 or window < 1:
            raise ValueError(f"need scale > 0, factor > 1, window >= 1; got {scale}, {factor}, {window}")
        self.scale, self.factor, self.window, self.max_scale = float(scale), float(factor), window, max_scale
        self.good_steps = 0  # since the last overflow or growth
        self.skipped = 0  # steps skipped so far

    @staticmethod
    def grads_finite(params) -> bool:
        """True when every gradient of ``params`` (a ParameterDict, dict or list) is finite.

        The flag is computed on the gradients' device and read once: the one host sync of a float16 step.
        """
        params = params.values() if hasattr(params, "values") else params
        grads = [g for p in params if p.grad_req != "null" for g in p.list_grad()]
        if not grads:
            return True
        with autograd.pause():
            flag = mx.nd.ones((1,), ctx=grads[0].context)
            for i in range(0, len(grads), _CHUNK):
                chunk = grads[i : i + _CHUNK]
                mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=flag)
        return bool(flag.asscalar())

    def update_scale(self, finite: bool) -> None:
        """Lowers the scale after an overflow; raises it after ``window`` good steps in a row."""
        if not finite:
            self.scale /= self.factor
            self.good_steps = 0
            self.skipped += 1
            logger.info("float16 gradients overflowed: step skipped, loss scale lowered to %g", self.scale)
            return
        self.good_steps += 1
        if self.good_steps >= self.window:
            self.scale = min(self.scale * self.factor, self.max_scale)
            self.good_steps = 0

    def step(self, trainer, batch_size: int) -> bool:
        """``trainer.step(batch_size)`` for a loss multiplied by :attr:`scale`, skipped on an overflow.

        The gradients are summed over workers first (``trainer.allreduce_grads()``), then checked; the
        update divides them by ``batch_size * scale`` in float32. Returns whether the update was made.
        """
        trainer.allreduce_grads()
        finite = self.grads_finite(trainer._params)
        if finite:
            trainer.update(batch_size * self.scale)
        self.update_scale(finite)
        return finite
