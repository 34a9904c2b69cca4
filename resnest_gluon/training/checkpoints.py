"""Epoch checkpoints (``.params`` + ``.states``): saving, finding the newest complete one, pruning."""

import glob
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from ..files import verified_replace, write_failed

logger = logging.getLogger(__name__)


def checkpoint_paths(save_dir: str, model: str, epoch: int) -> Tuple[str, str]:
    """``({model}-{epoch:04d}.params, {model}-{epoch:04d}.states)`` in ``save_dir``."""
    stem = os.path.join(save_dir, f"{model}-{epoch:04d}")
    return stem + ".params", stem + ".states"


def ema_checkpoint_path(save_dir: str, model: str, epoch: int) -> str:
    """``{model}-{epoch:04d}-ema.params``: the moving average of the weights at that epoch (``--ema``)."""
    return os.path.join(save_dir, f"{model}-{epoch:04d}-ema.params")


def best_epochs(
    rows: Sequence[dict], k: int, key: str = "val_top1", saved: Sequence[int] = None
) -> List[int]:
    """The ``k`` epochs of ``rows`` (metrics.jsonl lines) with the highest ``key``, best first (ties: the
    earlier epoch), among ``saved`` when given."""
    scored = [r for r in rows if r.get(key) is not None and (saved is None or r["epoch"] in saved)]
    scored.sort(key=lambda r: (-r[key], r["epoch"]))
    return [r["epoch"] for r in scored[: max(k, 0)]]


def saved_epochs(save_dir: str, model: str) -> List[int]:
    """Epochs with a ``{model}-{epoch:04d}.params`` in ``save_dir``, oldest first."""
    return _epochs_saved(save_dir, model)


def _epochs_saved(save_dir: str, model: str) -> List[int]:
    pattern = re.compile(re.escape(model) + r"-(\d{4,})\.params$")
    epochs = []
    for path in glob.glob(os.path.join(glob.escape(save_dir), f"{glob.escape(model)}-*.params")):
        match = pattern.search(os.path.basename(path))
        if match:
            epochs.append(int(match.group(1)))
    return sorted(epochs)


def latest_checkpoint(save_dir: str, model: str) -> Optional[Tuple[int, str, str]]:
    """The newest complete checkpoint ``(epoch, params, states)``, or None.

    Complete means both files exist: they are renamed into place states first, params last, so a
    kill never leaves a params file without its states (nor a half-written file under either name).
    """
    for epoch in reversed(_epochs_saved(save_dir, model)):
        params, states = checkpoint_paths(save_dir, model, epoch)
        if os.path.exists(params) and os.path.exists(states):
            return epoch, params, states
    return None


def non_finite_arrays(arrays: Dict[str, mx.nd.NDArray]) -> List[str]:
    """The names of the arrays of ``arrays`` holding a NaN or an infinity (empty when all are finite).

    One fused ``multi_all_finite`` over every array (in chunks of 200 inputs) and one read; the names are
    looked for only when something is not finite."""
    items = [(k, a) for k, a in arrays.items() if a.size and np.dtype(a.dtype).kind == "f"] if arrays else []
    if not items:
        return []
    flag = mx.nd.ones((1,), ctx=items[0][1].context)
    for i in range(0, len(items), 200):
        chunk = [a for _, a in items[i : i + 200]]
        if any(a.context != flag.context for a in chunk):
            chunk = [a.as_in_context(flag.context) for a in chunk]
        mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=flag)
    if flag.asscalar():
        return []
    return [k for k, a in items if not np.isfinite(a.asnumpy()).all()]


def param_arrays(net) -> Dict[str, mx.nd.NDArray]:
    """Every parameter of ``net`` (auxiliary states included) by its saved name, on its first device."""
    return {key: param.data() for key, param in net._collect_params_with_prefix().items()}


def mxnet_reason(err: Exception) -> str:
    """The last line of an MXNetError (its first is "Traceback (most recent call last):"), shortened."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1].split(": ")[-1] if lines else type(err).__name__)[:200]


def check_params_file(path: str, expected: Optional[Dict[str, tuple]] = None) -> Dict[str, mx.nd.NDArray]:
    """Loads the ``.params`` file ``path``; returns its arrays.

    Raises
    ------
    ValueError
        When it does not load, is not a dict of arrays, or its names and shapes differ from ``expected``.
    """
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise ValueError(f"{path} is not a readable .params file ({mxnet_reason(err)})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ValueError(f"{path} holds no named arrays")
    if expected is not None:
        got = {k: tuple(v.shape) for k, v in loaded.items()}
        if got != expected:
            raise ValueError(f"{path} does not hold the arrays written ({len(got)} of {len(expected)})")
    return loaded


def save_arrays(arrays: Dict[str, mx.nd.NDArray], path: str) -> None:
    """``mx.nd.save`` through ``path.tmp``, read back before the rename (MXNet does not check the final
    flush of its file): a failed write leaves ``path`` as it was and raises
    :class:`~resnest_gluon.files.WriteFailed`, one line naming the file and the free space."""
    tmp = path + ".tmp"
    try:
        mx.nd.save(tmp, arrays)
    except (OSError, mx.base.MXNetError) as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise write_failed(path, mxnet_reason(err) if isinstance(err, mx.base.MXNetError) else err) from None
    expected = {k: tuple(v.shape) for k, v in arrays.items()}
    verified_replace(tmp, path, check=lambda p: check_params_file(p, expected))


def save_params(net, path: str) -> None:
    """Saves the parameters as float32 (also for a float16 model) through a temporary file that is read
    back before it replaces ``path``."""
    arrays: Dict[str, mx.nd.NDArray] = {
        key: param._reduce().astype("float32") for key, param in net._collect_params_with_prefix().items()
    }
    save_arrays(arrays, path)


def save_checkpoint(net, trainer, save_dir: str, model: str, epoch: int) -> str:
    """Writes ``{model}-{epoch:04d}.params`` and the trainer's ``.states``; returns the params path.

    Each file is checked before it replaces anything. The ``.states`` file is MXNet's pickle of the
    optimizer: loading it runs code, so only resume from run directories you trust.
    """
    params, states = checkpoint_paths(save_dir, model, epoch)
    tmp = states + ".tmp"
    try:
        trainer.save_states(tmp)
    except (OSError, mx.base.MXNetError) as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise write_failed(states, err) from None
    verified_replace(tmp, states)
    save_params(net, params)
    return params


def checkpoint_problem(params: str, states: str) -> Optional[str]:
    """Why the checkpoint pair cannot be resumed from (empty states, unreadable params), or None."""
    try:
        if os.path.getsize(states) == 0:
            return f"{states} is empty"
        check_params_file(params)
    except (OSError, ValueError) as err:
        return str(err)
    return None


def latest_good_checkpoint(save_dir: str, model: str) -> Optional[Tuple[int, str, str]]:
    """Like :func:`latest_checkpoint`, but a newer checkpoint that does not load is named in a warning and
    passed over for the newest good one."""
    for epoch in reversed(_epochs_saved(save_dir, model)):
        params, states = checkpoint_paths(save_dir, model, epoch)
        if not (os.path.exists(params) and os.path.exists(states)):
            continue
        problem = checkpoint_problem(params, states)
        if problem is None:
            return epoch, params, states
        logger.warning(
            "--resume: the checkpoint of epoch %d is unusable (%s); trying an older one", epoch, problem
        )
    return None


def prune_checkpoints(save_dir: str, model: str, keep: int, protect: Sequence[int] = ()) -> List[int]:
    """Deletes all but the ``keep`` newest epoch checkpoints (never those in ``protect``); returns the
    epochs deleted."""
    epochs = _epochs_saved(save_dir, model)
    doomed = [e for e in epochs[: max(len(epochs) - keep, 0)] if e not in protect]
    for epoch in doomed:
        # params first: the pair stays "incomplete"
        for path in checkpoint_paths(save_dir, model, epoch)[::-1] + (
            ema_checkpoint_path(save_dir, model, epoch),
        ):
            if os.path.exists(path):
                os.remove(path)
    return doomed
