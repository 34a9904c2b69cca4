"""JPEG header parsing: an image's size and EXIF orientation without decoding it."""

import struct
from typing import Optional, Tuple

import numpy as np

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_APP1 = 0xE1
_ORIENTATION_TAG = 0x0112


def jpeg_header(payload: np.ndarray) -> Optional[Tuple[int, int, int]]:
    """``(height, width, orientation)`` from a JPEG's frame header and EXIF block, without decoding;
    orientation is EXIF's 1..8 (1, upright, when there is none; 0 when it cannot be read). None if not a
    (readable) JPEG."""
    buf = payload.data
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    i, orientation = 2, None
    while i + 9 < n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF_MARKERS:
            h, w = struct.unpack_from(">HH", buf, i + 5)
            return (h, w, 1 if orientation is None else orientation) if h and w else None
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        length = struct.unpack_from(">H", buf, i + 2)[0]
        if marker == _APP1 and orientation is None and bytes(buf[i + 4 : i + 10]) == b"Exif\0\0":
            orientation = _exif_orientation(bytes(buf[i + 10 : i + 2 + length]))
        i += 2 + length
    return None


def jpeg_size(payload: np.ndarray) -> Optional[Tuple[int, int]]:
    """``(height, width)`` from a JPEG's frame header, without decoding; None if not a (readable) JPEG."""
    header = jpeg_header(payload)
    return None if header is None else header[:2]


def _exif_orientation(tiff: bytes) -> Optional[int]:
    """The orientation tag of the first image directory of an EXIF (TIFF) block: None when there is none,
    0 when the block cannot be read."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (first,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, first)
        for k in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI2s", tiff, first + 2 + 12 * k)
            if tag == _ORIENTATION_TAG:
                return struct.unpack(order + "H", value)[0] if kind == 3 else 0
    except (KeyError, struct.error):
        return 0
    return None
