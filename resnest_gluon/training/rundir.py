"""The run directory's files: args.json, metrics.jsonl, curves.png, all written atomically."""

import json
import os
import shutil
from typing import List, Mapping, Sequence


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
    write_metrics(path, rows)
    return rows


def write_metrics(path: str, rows: Sequence[dict]) -> None:
    """Replaces ``metrics.jsonl`` with ``rows``, through a temporary file and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)


def plot_curves(
    rows: Sequence[dict],
    path: str,
    title: str = "",
    metrics: Mapping[str, str] = None,
    ylabel: str = "validation accuracy (%)",
) -> None:
    """Draws training loss and the validation ``metrics`` (row key -> legend label; default top-1 and top-5),
    and the EMA weights' first metric, per epoch into ``path`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = dict(metrics or {"val_top1": "top-1", "val_top5": "top-5"})
    first = next(iter(metrics))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    evaluated = [r for r in rows if r.get(first) is not None]
    if evaluated:
        for (key, label), marker in zip(metrics.items(), "osDv"):
            values = [r[key] for r in evaluated]
            ax_acc.plot([r["epoch"] for r in evaluated], values, marker=marker, label=label)
        with_ema = [r for r in evaluated if r.get(first + "_ema") is not None]
        if with_ema:
            ax_acc.plot(
                [r["epoch"] for r in with_ema],
                [r[first + "_ema"] for r in with_ema],
                marker="^",
                linestyle="--",
                label=f"{metrics[first]}, EMA weights",
            )
        ax_acc.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_ylabel(ylabel)
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def copy_atomic(src: str, dst: str) -> None:
    """Copies ``src`` to ``dst`` through a temporary file and a rename."""
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
