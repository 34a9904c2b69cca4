"""Checks of a run's inputs before any work, and the error that says what to do."""

import os
import struct
from typing import List, Tuple

import numpy as np

# mx.recordio.IRHeader as stored after the 8-byte RecordIO frame head: flag, label, id, id2
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)


class TrainingError(RuntimeError):
    """A problem with the run's inputs or its course, with a message that says what to do."""


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
