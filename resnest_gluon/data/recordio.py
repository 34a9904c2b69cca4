"""Random access to the records of a ``.rec`` through a memory map, decoded with OpenCV."""

import mmap
import os
import struct
import threading
from typing import Tuple

import cv2
import mxnet as mx
import numpy as np

from .index import idx_path

_RECORDIO_MAGIC = 0xCED7230A


class RecordReader:
    """Reads records by key from a memory map of the ``.rec`` and decodes them with OpenCV.

    The map makes reads free of system calls and safe from any number of threads; a record that
    RecordIO had to split into parts (its payload contained the magic word) is read the ordinary way.
    """

    def __init__(self, rec_path: str, offsets: dict):
        self.rec_path, self._offsets = rec_path, offsets
        with open(rec_path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._local = threading.local()

    def _raw(self, key: int) -> memoryview:
        offset = self._offsets[key]
        magic, lrec = struct.unpack_from("<II", self._map, offset)
        if magic != _RECORDIO_MAGIC:
            raise ValueError(
                f"{self.rec_path!r}: no record at offset {offset} (key {key}); is the .idx stale?"
            )
        if lrec >> 29 == 0:
            return memoryview(self._map)[offset + 8 : offset + 8 + (lrec & ((1 << 29) - 1))]
        record = getattr(self._local, "record", None)
        if record is None:
            record = self._local.record = mx.recordio.MXIndexedRecordIO(
                idx_path(self.rec_path), self.rec_path, "r"
            )
        return memoryview(record.read_idx(key))

    def read_raw(self, key: int) -> Tuple[float, np.ndarray]:
        """The label and the encoded image (a uint8 view into the map, not a copy)."""
        raw = self._raw(key)
        flag, label, _, _ = struct.unpack_from(mx.recordio._IR_FORMAT, raw)
        start = mx.recordio._IR_SIZE
        if flag > 0:  # a label vector precedes the image; the first entry is the class
            label = float(np.frombuffer(raw, np.float32, 1, start)[0])
            start += 4 * flag
        return float(label), np.frombuffer(raw, np.uint8, offset=start)

    def read(self, key: int) -> Tuple[float, np.ndarray]:
        label, payload = self.read_raw(key)
        return label, decode(payload, cv2.IMREAD_COLOR, self.rec_path, key)


def decode(payload: np.ndarray, flags: int, rec_path: str, key: int) -> np.ndarray:
    img = cv2.imdecode(payload, flags)
    if img is None:
        raise ValueError(
            f"record {key} of {rec_path!r} is not a decodable image; `python tools/rec_check.py "
            f"{os.path.splitext(rec_path)[0]}` lists every such record, and tools/im2rec.py repacks the "
            "images, skipping undecodable files"
        )
    return img
