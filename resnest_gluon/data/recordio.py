"""Random access to the records of a ``.rec`` (positional reads), decoded with OpenCV."""

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
    """Reads records by key from the ``.rec`` (``os.pread``: no shared file position, safe from any number
    of threads) and decodes them with OpenCV; a record that RecordIO had to split into parts (its payload
    contained the magic word) is read the ordinary way.

    Not a memory map: a file cut short while it is read (rewritten by another job, say) would kill the
    process with SIGBUS at the first page past its new end. A short read here raises ValueError naming
    the file and the record instead.
    """

    def __init__(self, rec_path: str, offsets: dict):
        self.rec_path, self._offsets = rec_path, offsets
        self._fd = os.open(rec_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._local = threading.local()

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _short(self, key: int, offset: int, wanted: int, got: int) -> ValueError:
        size = os.fstat(self._fd).st_size
        return ValueError(
            f"{self.rec_path!r} is cut short: record {key} at offset {offset} needs {wanted} bytes, the file "
            f"gives {got} (it is now {size} bytes; was it rewritten while training read it?). Pack it again "
            f"with tools/im2rec.py, or check it with `python tools/rec_check.py "
            f"{os.path.splitext(self.rec_path)[0]}`"
        )

    def _raw(self, key: int) -> bytes:
        offset = self._offsets[key]
        head = os.pread(self._fd, 8, offset)
        if len(head) < 8:
            raise self._short(key, offset, 8, len(head))
        magic, lrec = struct.unpack("<II", head)
        if magic != _RECORDIO_MAGIC:
            raise ValueError(
                f"{self.rec_path!r}: no record at offset {offset} (key {key}); is the .idx stale?"
            )
        if lrec >> 29 == 0:
            length = lrec & ((1 << 29) - 1)
            data = os.pread(self._fd, length, offset + 8)
            if len(data) < length:
                raise self._short(key, offset, 8 + length, 8 + len(data))
            return data
        record = getattr(self._local, "record", None)
        if record is None:
            record = self._local.record = mx.recordio.MXIndexedRecordIO(
                idx_path(self.rec_path), self.rec_path, "r"
            )
        return record.read_idx(key)

    def read_raw(self, key: int) -> Tuple[float, np.ndarray]:
        """The label and the encoded image (a uint8 view of the bytes read)."""
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


def find_bad_record(rec_path: str, num_parts: int = 1, part_index: int = 0) -> str:
    """The first record of shard ``part_index`` of ``num_parts`` of ``rec_path`` that cannot be read or
    decoded, as the message of :func:`decode` or of a short read; ``""`` when every record decodes.

    For back ends that do not say which record failed (MXNet's C++ ``ImageRecordIter``): a scan with
    this module's reader, decoding at 1/8 size in grey (fast, and it fails where a full decode fails).
    An index that no longer fits the file (cut short since it was checked) is the message too."""
    from .index import read_shard

    try:  # the index is checked against the file again: it may have been cut short since training began
        pairs = read_shard(rec_path, 1, num_parts, part_index)
        reader = RecordReader(rec_path, dict(pairs))
    except (OSError, ValueError) as err:
        return str(err)
    for key, _ in pairs:
        try:
            _, payload = reader.read_raw(key)
            decode(payload, cv2.IMREAD_REDUCED_GRAYSCALE_8, rec_path, key)
        except (ValueError, struct.error) as err:
            return str(err)
    return ""
