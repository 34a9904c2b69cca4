"""Pieces of the training recipe of ResNeSt (Zhang et al., arXiv:2004.08955, section 5.1), kept apart
from ``scripts/train.py`` so that they can be tested and reused: the learning-rate schedule, the DropBlock
ramp, top-k evaluation counts, the run directory (metrics, curves) and checkpoints.
"""

import glob
import json
import logging
import math
import os
import re
import shutil
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

__all__ = [
    "TrainingError",
    "lr_at",
    "drop_prob_at",
    "no_weight_decay",
    "check_labels",
    "topk_counts",
    "evaluate",
    "average_aux_states",
    "atomic_json",
    "read_metrics",
    "append_metrics",
    "truncate_metrics",
    "plot_curves",
    "checkpoint_paths",
    "latest_checkpoint",
    "save_checkpoint",
    "save_params",
    "prune_checkpoints",
]

logger = logging.getLogger(__name__)

# mx.recordio.IRHeader as stored after the 8-byte RecordIO frame head: flag, label, id, id2
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)


class TrainingError(RuntimeError):
    """A problem with the run's inputs or its course, with a message that says what to do."""


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then a cosine decay to ``final_lr``.

    ``step`` counts optimizer updates from 0; the rate depends on the step alone, so a resumed run
    continues the schedule exactly.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def drop_prob_at(epoch: int, epochs: int, max_prob: float) -> float:
    """DropBlock probability of ``epoch`` (0-based): a linear ramp from 0 to ``max_prob`` (last epoch)."""
    if epochs <= 1:
        return max_prob
    return max_prob * min(epoch, epochs - 1) / (epochs - 1)


def no_weight_decay(params) -> int:
    """Sets ``wd_mult = 0`` on BN gamma/beta and on biases (the recipe decays conv and dense weights only).

    Returns the number of parameters changed.
    """
    changed = 0
    for name, param in params.items():
        if name.endswith(("gamma", "beta", "bias")):
            param.wd_mult = 0.0
            changed += 1
    return changed


def _lst_path(rec_path: str) -> str:
    return os.path.splitext(rec_path)[0] + ".lst"


def _record_labels(rec_path: str, idx_path: str, limit: int) -> List[float]:
    """First label of up to ``limit`` records, reading only each record's 32-byte head (not the image)."""
    offsets = []
    with open(idx_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                offsets.append(int(parts[1]))
            if len(offsets) >= limit:
                break
    labels = []
    with open(rec_path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            head = f.read(8 + _IR_SIZE + 4)
            if len(head) < 8 + _IR_SIZE:
                raise TrainingError(f"{rec_path} is shorter than its index says (record at byte {offset})")
            flag, label = struct.unpack_from(_IR_FORMAT, head, 8)[:2]
            if flag > 0 and len(head) >= 8 + _IR_SIZE + 4:  # several labels follow the header
                label = struct.unpack_from("<f", head, 8 + _IR_SIZE)[0]
            labels.append(label)
    return labels


def check_labels(rec_path: str, classes: int, max_records: int = 100_000) -> Tuple[int, int]:
    """Checks that every label of ``rec_path`` lies in ``[0, classes)``; returns (lowest, highest) label.

    Reads the ``.lst`` beside the ``.rec`` when there is one (a text file, fast at any size), otherwise
    the record heads (32 bytes each, not the images), up to ``max_records`` of them (the training loop
    checks every batch anyway).

    Raises
    ------
    TrainingError
        When a label is negative, not an integer, or not below ``classes``.
    """
    labels = []
    idx = os.path.splitext(rec_path)[0] + ".idx"
    with open(idx) as f:
        count = sum(1 for line in f if line.strip())
    lst = _lst_path(rec_path)
    if os.path.exists(lst):
        with open(lst) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    labels.append(float(parts[1]))
    source = lst
    if len(labels) != count:  # no .lst, or one that does not describe this .rec
        labels, source = _record_labels(rec_path, idx, max_records), rec_path
    if not labels:
        raise TrainingError(f"{source} holds no records")
    values = np.asarray(labels)
    bad = values[(values < 0) | (values >= classes) | (values != np.round(values))]
    if bad.size:
        raise TrainingError(
            f"{source} has label {bad[0]:g}, outside 0..{classes - 1} for --classes {classes}: "
            f"pass --classes {int(values.max()) + 1} (or more), or re-pack the data with labels 0..classes-1"
        )
    return int(values.min()), int(values.max())


def topk_counts(output: mx.nd.NDArray, label: mx.nd.NDArray, valid: int, k: int = 5) -> np.ndarray:
    """``[top-1 correct, top-k correct, samples]`` over the first ``valid`` rows of a batch."""
    k = min(k, output.shape[1])
    pred = output.topk(axis=1, k=k).asnumpy()[:valid]
    truth = label.asnumpy()[:valid].astype(pred.dtype)
    hit = pred == truth[:, None]
    return np.array([hit[:, 0].sum(), hit.any(axis=1).sum(), valid], dtype=np.float64)


def evaluate(
    net, data_iter, ctx: mx.Context, dtype: str = "float32", k: int = 5, progress=None
) -> np.ndarray:
    """Counts ``[top-1 correct, top-k correct, samples]`` of ``net`` on this worker's part of ``data_iter``.

    Padded samples (``batch.pad``) are excluded, so summing the counts of all workers counts every image
    once. ``progress`` is an optional callable given the number of samples of each batch.
    """
    data_iter.reset()
    counts = np.zeros(3, dtype=np.float64)
    for batch in data_iter:
        data = batch.data[0].as_in_context(ctx).astype(dtype, copy=False)
        valid = batch.data[0].shape[0] - (batch.pad or 0)
        output = net(data)
        counts += topk_counts(output, batch.label[0], valid, k)
        if progress is not None:
            progress(valid)
    return counts


def average_aux_states(net, allreduce_sum, workers: int) -> None:
    """Averages the BN running statistics over workers (each worker saw different data), so that
    every worker evaluates, and rank 0 saves, the same model."""
    if workers <= 1:
        return
    for name, param in sorted(net.collect_params().items()):
        if param.grad_req == "null":
            value = param.data()
            summed = allreduce_sum(value.astype("float32"), name="aux." + name)
            value[:] = (summed / workers).astype(value.dtype)


def atomic_json(path: str, obj) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_metrics(path: str) -> List[dict]:
    """The JSON lines of a ``metrics.jsonl`` (an empty list when it does not exist)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    break
    return rows


def append_metrics(path: str, row: dict) -> None:
    """Appends one JSON line to ``metrics.jsonl``."""
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(path: str, last_epoch: int) -> List[dict]:
    """Drops the lines of epochs after ``last_epoch`` (written after the checkpoint a run resumes from)."""
    rows = [r for r in read_metrics(path) if r.get("epoch", 0) <= last_epoch]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return rows


def plot_curves(rows: Sequence[dict], path: str, title: str = "") -> None:
    """Draws training loss and validation top-1/top-5 per epoch into ``path`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    evaluated = [r for r in rows if r.get("val_top1") is not None]
    if evaluated:
        ax_acc.plot(
            [r["epoch"] for r in evaluated], [r["val_top1"] for r in evaluated], marker="o", label="top-1"
        )
        ax_acc.plot(
            [r["epoch"] for r in evaluated], [r["val_top5"] for r in evaluated], marker="s", label="top-5"
        )
        ax_acc.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def checkpoint_paths(save_dir: str, model: str, epoch: int) -> Tuple[str, str]:
    """``({model}-{epoch:04d}.params, {model}-{epoch:04d}.states)`` in ``save_dir``."""
    stem = os.path.join(save_dir, f"{model}-{epoch:04d}")
    return stem + ".params", stem + ".states"


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


def copy_atomic(src: str, dst: str) -> None:
    """Copies ``src`` to ``dst`` through a temporary file and a rename."""
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prune_checkpoints(save_dir: str, model: str, keep: int, protect: Sequence[int] = ()) -> List[int]:
    """Deletes all but the ``keep`` newest epoch checkpoints (never those in ``protect``); returns the
    epochs deleted."""
    epochs = _epochs_saved(save_dir, model)
    doomed = [e for e in epochs[: max(len(epochs) - keep, 0)] if e not in protect]
    for epoch in doomed:
        for path in checkpoint_paths(save_dir, model, epoch)[
            ::-1
        ]:  # params first: the pair stays "incomplete"
            if os.path.exists(path):
                os.remove(path)
    return doomed
