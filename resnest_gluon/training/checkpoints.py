"""Epoch checkpoints (``.params`` + ``.states``): saving, finding the newest complete one, pruning."""

import glob
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import mxnet as mx


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


def save_params(net, path: str) -> None:
    """Saves the parameters as float32 (also for a float16 model) through a temporary file and a rename."""
    arrays: Dict[str, mx.nd.NDArray] = {
        key: param._reduce().astype("float32") for key, param in net._collect_params_with_prefix().items()
    }
    tmp = path + ".tmp"
    mx.nd.save(tmp, arrays)
    os.replace(tmp, path)


def save_checkpoint(net, trainer, save_dir: str, model: str, epoch: int) -> str:
    """Writes ``{model}-{epoch:04d}.params`` and the trainer's ``.states``; returns the params path.

    The ``.states`` file is MXNet's pickle of the optimizer: loading it runs code, so only resume from
    run directories you trust.
    """
    params, states = checkpoint_paths(save_dir, model, epoch)
    tmp = states + ".tmp"
    trainer.save_states(tmp)
    os.replace(tmp, states)
    save_params(net, params)
    return params


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
