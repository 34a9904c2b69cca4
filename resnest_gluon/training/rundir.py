"""The run directory's files: args.json, metrics.jsonl, curves.png, all written atomically; the lock of a
live run; the weights a finished run offers (:func:`run_files`)."""

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from typing import List, Mapping, Optional, Sequence, Tuple

from ..errors import UserError
from ..files import verified_replace, write_bytes, write_failed


def atomic_json(path: str, obj) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), check=_loads_json)


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
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise write_failed(path, err) from None


def truncate_metrics(path: str, last_epoch: int) -> List[dict]:
    """Drops the lines of epochs after ``last_epoch`` (written after the checkpoint a run resumes from)."""
    rows = [r for r in read_metrics(path) if r.get("epoch", 0) <= last_epoch]
    write_metrics(path, rows)
    return rows


def write_metrics(path: str, rows: Sequence[dict]) -> None:
    """Replaces ``metrics.jsonl`` with ``rows``, through a temporary file and a rename."""
    write_bytes(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())


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
    try:
        fig.savefig(tmp, dpi=100)
    except OSError as err:
        _remove(tmp)
        raise write_failed(path, err) from None
    finally:
        plt.close(fig)
    verified_replace(tmp, path)


def copy_atomic(src: str, dst: str) -> None:
    """Copies ``src`` to ``dst`` through a temporary file and a rename."""
    tmp = dst + ".tmp"
    try:
        shutil.copyfile(src, tmp)
    except OSError as err:
        _remove(tmp)
        raise write_failed(dst, err) from None
    verified_replace(tmp, dst, size=os.path.getsize(src))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _loads_json(path: str) -> None:
    with open(path) as f:
        json.load(f)


class NotARun(UserError):
    """``--run DIR`` that is not a training run directory, or holds no weights of the kind asked for."""


def run_files(run: str, ema: bool = False) -> Tuple[dict, str]:
    """The ``args.json`` of run directory ``run`` (a dict) and the weights to use from it: the best
    checkpoint, else the newest one; with ``ema``, the best EMA weights, else the last EMA weights.

    Raises
    ------
    NotARun
        When ``run`` has no readable ``args.json`` naming its model, or no such weights.
    """
    from .checkpoints import latest_checkpoint

    args_path = os.path.join(run, "args.json")
    if not os.path.isfile(args_path):
        raise NotARun(f"--run {run} is not a training run directory (no args.json)")
    try:
        with open(args_path) as f:
            saved = json.load(f)
        model = saved["model"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NotARun(f"--run {run}: args.json is unreadable ({err!r})") from None
    names = [f"{model}-ema-best.params", f"{model}-ema.params"] if ema else [f"{model}-best.params"]
    for name in names:
        if os.path.isfile(os.path.join(run, name)):
            return saved, os.path.join(run, name)
    found = None if ema else latest_checkpoint(run, model)
    if found is None:
        raise NotARun(f"--run {run} holds no {'EMA weights (train with --ema)' if ema else 'checkpoint'}")
    return saved, found[1]


LOCK_NAME = ".lock"


class RunDirLocked(UserError):
    """Another live process holds the run directory."""


def lock_run_dir(save_dir: str) -> Optional[int]:
    """Takes an exclusive lock on run directory ``save_dir`` (``flock`` on ``save_dir/.lock``) for the life
    of this process, and writes who holds it (pid, host, start time, command) into the file. Returns the
    descriptor to pass to :func:`unlock_run_dir`.

    The kernel drops the lock when its holder dies, SIGKILL included, so the file a killed run leaves
    behind does not block ``--resume``.

    Raises
    ------
    RunDirLocked
        Naming the holder, when another live process holds the lock.
    """
    path = os.path.join(save_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise RunDirLocked(
            f"{save_dir} is in use by another run ({holder}): wait for it to end, or choose another "
            "--save-dir"
        ) from None
    except OSError:  # a filesystem without flock (some network ones): run unlocked
        os.close(fd)
        return None
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"pid {os.getpid()} on {socket.gethostname()}, since {since}: {command}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8", "replace") + b"\n", 0)
    return fd


def unlock_run_dir(fd: Optional[int]) -> None:
    """Releases a lock of :func:`lock_run_dir` (the file stays: a later run takes it over)."""
    if fd is not None:
        os.close(fd)
