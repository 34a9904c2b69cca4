"""Checks of a run's inputs before any work, and the error that says what to do."""

import json
import os
import re
import struct
import tempfile
from typing import List, Optional, Tuple

import numpy as np

from ..data.index import idx_path, read_index, record_head_problem
from ..errors import UserError

# mx.recordio.IRHeader as stored after the 8-byte RecordIO frame head: flag, label, id, id2
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)
# an epoch checkpoint of scripts/train.py: {model}-{epoch:04d}.params
_CHECKPOINT = re.compile(r"(.+)-\d{4,}\.params")


class TrainingError(UserError):
    """A problem with the run's inputs or its course, with a message that says what to do."""


def _spread(pairs: List[Tuple[int, int]], limit: Optional[int]) -> List[Tuple[int, int]]:
    """All of ``pairs``, or ``limit`` of them spread evenly over the file (first and last included)."""
    if limit is None or len(pairs) <= limit:
        return pairs
    picks = np.unique(np.linspace(0, len(pairs) - 1, limit).round().astype(int))
    return [pairs[i] for i in picks]


def _record_labels(rec_path: str, pairs: List[Tuple[int, int]]) -> Tuple[List[float], List[int]]:
    """The class label and the label count of each record of ``pairs``, read from the record's own
    32-byte head (not the image); every offset read is checked to be a record start first, so a foreign
    index never yields labels."""
    labels, counts = [], []
    with open(rec_path, "rb") as f:
        for key, offset in pairs:
            f.seek(offset)
            head = f.read(8 + _IR_SIZE + 4)
            problem = record_head_problem(head) or (len(head) < 8 + _IR_SIZE and "the record is cut short")
            if problem:
                raise TrainingError(
                    f"{idx_path(rec_path)} does not describe {rec_path}: offset {offset} (key {key}) is not "
                    f"a record start ({problem}). Check the pair with `python tools/rec_check.py "
                    f"{os.path.splitext(rec_path)[0]}`, and pack the images again with tools/im2rec.py"
                )
            flag, label = struct.unpack_from(_IR_FORMAT, head, 8)[:2]
            if flag > 0 and len(head) >= 8 + _IR_SIZE + 4:  # several labels follow the header
                label = struct.unpack_from("<f", head, 8 + _IR_SIZE)[0]
            labels.append(label)
            counts.append(max(int(flag), 1))
    return labels, counts


def check_labels(rec_path: str, classes: int, max_records: Optional[int] = 200_000) -> Tuple[int, int]:
    """Checks that every label of ``rec_path`` lies in ``[0, classes)``; returns (lowest, highest) label.

    Reads the labels from the records' own heads (32 bytes each, not the images), never from a ``.lst``
    beside the file, which may be stale: all of them, or ``max_records`` spread evenly over the file (the
    training loop checks every batch anyway).

    Raises
    ------
    TrainingError
        When the index does not describe the file, a record holds several labels, or a label is not a
        finite whole number below ``classes``.
    """
    try:
        pairs = read_index(rec_path)
    except (OSError, ValueError) as err:
        raise TrainingError(str(err)) from err
    picked = _spread(pairs, max_records)
    labels, counts = _record_labels(rec_path, picked)
    if not labels:
        raise TrainingError(f"{rec_path} holds no records")
    multi = [i for i, n in enumerate(counts) if n > 1]
    if multi:
        key = picked[multi[0]][0]
        raise TrainingError(
            f"record {key} of {rec_path} holds {counts[multi[0]]} labels (packed with --pack-label from a "
            "multi-label list), and this model learns one class per image: pack a list with one label per "
            "line"
        )
    values = np.asarray(labels, dtype=np.float64)
    finite = np.isfinite(values)
    whole = finite & (values == np.round(np.where(finite, values, 0)))
    bad = np.flatnonzero(~whole | (values < 0))
    if bad.size:
        key = picked[bad[0]][0]
        raise TrainingError(
            f"record {key} of {rec_path} has label {values[bad[0]]:g}: labels must be whole numbers "
            f"0..{classes - 1}. Re-pack the data with such labels (tools/im2rec.py --list numbers class "
            "folders from 0)"
        )
    high = np.flatnonzero(values >= classes)
    if high.size:
        key = picked[high[0]][0]
        raise TrainingError(
            f"record {key} of {rec_path} has label {values[high[0]]:g}, outside 0..{classes - 1} for "
            f"--classes {classes}: pass --classes {int(values.max()) + 1} (or more), or re-pack the data "
            "with labels 0..classes-1"
        )
    return int(values.min()), int(values.max())


#: options that change what a run learns: a --resume that changes one of them says so.
#: --epochs is not one: a resume often extends a run (the cosine decay then follows the new length)
RECIPE_OPTIONS = (
    "lr", "batch_size", "warmup_epochs", "momentum", "wd", "no_wd", "last_gamma",
    "label_smoothing", "mixup", "mixup_alpha", "mixup_off_epoch", "auto_aug", "jitter", "lighting",
    "no_mirror", "min_area", "dropblock_prob", "final_drop", "input_size", "dtype", "accumulate",
    "backbone_lr_mult", "freeze_stages", "ema", "seed", "loss_scale", "gradient_predivide_factor",
    "data_backend", "fast_decode", "unclipped_colour", "colour", "train_crop", "dropblock_per_sample",
    "sync_bn",
)  # fmt: skip


def recipe_changes(save_dir: str, args) -> List[str]:
    """``--name saved -> now`` for every recipe option (:data:`RECIPE_OPTIONS`) that ``args`` sets
    otherwise than the run's ``args.json`` (empty when there is none)."""
    path = os.path.join(save_dir, "args.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return []
    changes = []
    for name in RECIPE_OPTIONS:
        if name in saved and hasattr(args, name) and saved[name] != getattr(args, name):
            changes.append(f"--{name.replace('_', '-')} {saved[name]} -> {getattr(args, name)}")
    return changes


def writable_dir(path: str, flag: str) -> None:
    """Creates folder ``path`` (given by option ``flag``) and checks that files can be written in it.

    Raises
    ------
    TrainingError
        Naming the folder and why (under a file, read-only, no permission), before any work is done.
    """
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise TrainingError(f"{flag} {path} is a file, not a folder: choose another {flag}")
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        where = f" ({err.filename})" if err.filename and err.filename != path else ""
        raise TrainingError(
            f"{flag} {path} cannot be used: {err.strerror or err}{where}; choose a folder you can write to"
        ) from None


def check_run_dir(save_dir: str, model: str, classes: int) -> None:
    """Refuses, before anything is written, a run directory that holds the run of another model or of
    another class count (``--resume`` there would start from scratch and overwrite its history).

    Raises
    ------
    TrainingError
        Naming the difference and what to do.
    """
    saved = {}
    args_path = os.path.join(save_dir, "args.json")
    if os.path.isfile(args_path):
        try:
            with open(args_path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as err:
            raise TrainingError(f"{args_path} is unreadable ({err}): choose another --save-dir") from err
    for key, value in (("model", model), ("classes", classes)):
        if key in saved and saved[key] != value:
            raise TrainingError(
                f"{save_dir} holds a run with --{key} {saved[key]}, not --{key} {value}: pass --{key} "
                f"{saved[key]} to continue it, or choose another --save-dir"
            )
    names = os.listdir(save_dir) if os.path.isdir(save_dir) else []
    others = sorted({match.group(1) for match in map(_CHECKPOINT.fullmatch, names) if match} - {model})
    if others:
        raise TrainingError(
            f"{save_dir} holds checkpoints of {', '.join(others)}, not of --model {model}: pass --model "
            f"{others[0]} to continue that run, or choose another --save-dir"
        )
