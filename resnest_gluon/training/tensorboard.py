"""TensorBoard scalars of a run (``resnest-train --tensorboard DIR``), through tensorboardX, an optional
dependency (``pip install tensorboardx``; pinned in requirements/lock.txt).

Per step: ``train/loss`` (the mean over workers) and ``train/lr``, against the batch count. Per epoch:
every number of the metrics.jsonl row (``epoch/train_loss``, ``epoch/val_top1``, ...) against the epoch.
Rank 0 alone writes, as it alone writes the run directory.
"""

import math
from typing import Optional

from .checks import TrainingError

__all__ = ["Board", "check_available"]


def check_available() -> None:
    """Raises a :class:`TrainingError` saying how to install tensorboardX when it is missing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError as err:
        raise TrainingError(
            "--tensorboard needs tensorboardX: pip install tensorboardx (pinned in requirements/lock.txt)"
        ) from err


class Board:
    """A tensorboardX ``SummaryWriter`` on ``logdir`` with the run's two kinds of scalars."""

    def __init__(self, logdir: str, flush_secs: int = 30):
        check_available()
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=logdir, flush_secs=flush_secs)

    def step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, row: dict) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(logdir: Optional[str]) -> Optional[Board]:
    return Board(logdir) if logdir else None
