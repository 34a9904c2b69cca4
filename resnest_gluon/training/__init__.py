"""Pieces of the ResNeSt training recipe (Zhang et al., arXiv:2004.08955, section 5.1), kept apart from
``scripts/train.py`` so that they can be tested and reused.

``schedule`` (learning rate, DropBlock ramp, weight decay), ``checks`` (inputs checked before any work),
``evaluation`` (top-k counts, BatchNorm statistics across workers), ``rundir`` (args, metrics, curves),
``checkpoints``, ``dist`` (Horovod or a single process), ``finetune`` (a backbone from another run's weights,
frozen stages) and ``ema`` (a moving average of the weights).
"""

from . import dist
from .checkpoints import (
    best_epochs,
    checkpoint_paths,
    ema_checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_params,
    saved_epochs,
)
from .checks import TrainingError, check_labels, check_run_dir, writable_dir
from .evaluation import average_aux_states, evaluate, topk_counts
from .rundir import (
    append_metrics,
    atomic_json,
    copy_atomic,
    plot_curves,
    read_metrics,
    truncate_metrics,
    write_metrics,
)
from .schedule import drop_prob_at, lr_at, no_weight_decay

__all__ = [
    "TrainingError",
    "append_metrics",
    "atomic_json",
    "average_aux_states",
    "best_epochs",
    "check_labels",
    "check_run_dir",
    "checkpoint_paths",
    "copy_atomic",
    "dist",
    "drop_prob_at",
    "ema_checkpoint_path",
    "evaluate",
    "latest_checkpoint",
    "lr_at",
    "no_weight_decay",
    "plot_curves",
    "prune_checkpoints",
    "read_metrics",
    "save_checkpoint",
    "save_params",
    "saved_epochs",
    "topk_counts",
    "truncate_metrics",
    "write_metrics",
    "writable_dir",
]
