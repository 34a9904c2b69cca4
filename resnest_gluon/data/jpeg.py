"""JPEG header parsing: an image's size without decoding it."""

import struct
from typing import Optional, Tuple

import numpy as np

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(payload: np.ndarray) -> Optional[Tuple[int, int]]:
    """``(height, width)`` from a JPEG's frame header, without decoding; None if not a (readable) JPEG."""
    buf = payload.data
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    i = 2
    while i + 9 < n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF_MARKERS:
            h, w = struct.unpack_from(">HH", buf, i + 5)
            return (h, w) if h and w else None
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        i += 2 + struct.unpack_from(">H", buf, i + 2)[0]
    return None
