"""Checks of a run's inputs before any work, and the error that says what to do."""

import json
import os
import re
import struct
import tempfile
from typing import List, Optional, Tuple

import numpy as np

from ..data.index import idx_path, read_index, record_head_problem
from ..data.lst import read_list
from ..errors import UserError

# mx.recordio.IRHeader as stored after the 8-byte RecordIO frame head: flag, label, id, id2
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)
# an epoch checkpoint of scripts/train.py: {model}-{epoch:04d}.params
_CHECKPOINT = re.compile(r"(.+)-\d{4,}\.params")


class TrainingError(UserError):
    """A problem with the run's inputs or its course, with a message that says what to do."""


def _lst_path(rec_path: str) -> str:
    return os.path.splitext(rec_path)[0] + ".lst"


def _record_labels(rec_path: str, pairs: List[Tuple[int, int]], limit: int) -> List[float]:
    """First label of up to ``limit`` records, reading only each record's 32-byte head (not the image);
    every offset read is checked to be a record start first, so a foreign index never yields labels."""
    labels = []
    with open(rec_path, "rb") as f:
        for key, offset in pairs[:limit]:
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
    return labels


def _list_labels(lst: str, keys: List[int]) -> Optional[List[float]]:
    """The labels the ``.lst`` beside a ``.rec`` gives its records' keys, or None when it lacks one of them
    (no list, or one that does not describe this ``.rec``). Read with the parser im2rec packs with."""
    if not os.path.exists(lst):
        return None
    items, _ = read_list(lst)
    first = {item.index: item.labels[0] for item in items if item.labels}
    if not all(key in first for key in keys):
        return None
    return [first[key] for key in keys]


def check_labels(rec_path: str, classes: int, max_records: int = 100_000) -> Tuple[int, int]:
    """Checks that every label of ``rec_path`` lies in ``[0, classes)``; returns (lowest, highest) label.

    Reads the ``.lst`` beside the ``.rec`` when it lists every key of the ``.idx`` (a text file, fast at
    any size), otherwise the record heads (32 bytes each, not the images), up to ``max_records`` of them
    (the training loop checks every batch anyway).

    Raises
    ------
    TrainingError
        When the index does not describe the file, or a label is negative, not an integer, or not below
        ``classes``.
    """
    try:
        pairs = read_index(rec_path)
    except (OSError, ValueError) as err:
        raise TrainingError(str(err)) from err
    lst = _lst_path(rec_path)
    labels, source = _list_labels(lst, [key for key, _ in pairs]), lst
    if labels is None:
        labels, source = _record_labels(rec_path, pairs, max_records), rec_path
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
