"""Decoding only the part of a JPEG that a training crop reads (a compiled kernel: libjpeg-turbo, ctypes).

``resnest_gluon/ops/jpeg_region.cc``, built by ``make ops`` into ``libresnest_jpeg.so`` where libjpeg-turbo's
headers are installed (``libjpeg-turbo8-dev`` or ``libjpeg62-turbo-dev``): rows above the part are only
entropy-decoded, rows below it are not read, columns beside it are not transformed. The part's pixels are
those of ``cv2.imdecode``: checked when the library loads, on JPEGs made then, and the kernel is not used
if any pixel differs (another libjpeg than OpenCV's may round differently). Where the library is missing
or stale, and for what it does not decode (greyscale, CMYK, an EXIF rotation, a damaged stream), the
pipeline decodes with OpenCV as before; ``RESNEST_GLUON_JPEG_KERNEL=0`` forces that.
"""

import ctypes
from typing import Optional, Tuple

import cv2
import numpy as np

from .ctypes_kernel import Kernel

__all__ = ["ENV", "available", "decode", "load_error"]

ENV = "RESNEST_GLUON_JPEG_KERNEL"
_P, _I = ctypes.c_void_p, ctypes.c_int


def _check(fn) -> Optional[str]:
    """None when the kernel gives OpenCV's pixels on test JPEGs (4:2:0, 4:2:2, 4:4:4; odd sizes; parts
    at every alignment), else what differs."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (75, 93, 3), dtype=np.uint8), (5, 5), 1.5)
    sampling = getattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR", None)
    factors = (0x221111, 0x211111, 0x111111) if sampling is not None else (None,)
    for factor in factors:
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] + ([sampling, factor] if factor is not None else [])
        payload = cv2.imencode(".jpg", img, params)[1].ravel()
        want = cv2.imdecode(payload, cv2.IMREAD_COLOR)
        for part in [(0, 0, 75, 93), (1, 3, 40, 50), (17, 15, 31, 33), (9, 24, 66, 69), (33, 7, 2, 5)]:
            got = _decode(fn, payload, 75, 93, part)
            if got is None:
                return "it cannot decode a test JPEG (is libjpeg-turbo's shared library installed?)"
            y, x, h, w = part
            if not np.array_equal(got[y : y + h, x : x + w], want[y : y + h, x : x + w]):
                return f"its pixels differ from cv2.imdecode's (sampling {factor:#x}, part {part})"
    return None


_KERNEL = Kernel(
    "libresnest_jpeg.so",
    ("jpeg_region.cc",),
    "resnest_jpeg_decode_region",
    [_P, ctypes.c_int64, _I, _I, _I, _I, _I, _I, _P, ctypes.c_int64, _P],
    ENV,
    "region JPEG decoder",
    _check,
)
LIBRARY = _KERNEL.library
available, load_error = _KERNEL.available, _KERNEL.load_error


def _decode(fn, payload, height, width, part, hist=None) -> Optional[np.ndarray]:
    y, x, h, w = part
    img = np.empty((height, width, 3), np.uint8)
    status = fn(
        payload.ctypes.data,
        payload.nbytes,
        height,
        width,
        y,
        x,
        h,
        w,
        img.ctypes.data,
        img.strides[0],
        None if hist is None else hist.ctypes.data,
    )
    return img if status == 0 else None


def decode(
    payload: np.ndarray,
    height: int,
    width: int,
    part: Optional[Tuple[int, int, int, int]] = None,
    hist: Optional[np.ndarray] = None,
) -> Optional[np.ndarray]:
    """``part = (y, x, h, w)`` of a ``height x width`` JPEG (``payload``: its bytes as uint8), decoded as
    ``cv2.imdecode(payload, cv2.IMREAD_COLOR)`` would, into an uninitialised ``(height, width, 3)`` BGR
    image: only the part's pixels are set. The whole image when ``part`` is None; then ``hist``, a zeroed
    ``(3, 256)`` uint32 array, receives the histograms of its B, G and R channels. None when the kernel
    does not decode this image (see the module's docstring): decode it with OpenCV. Needs
    :func:`available`; the caller checks that the image has no EXIF rotation, which OpenCV would apply.
    """
    if not available():
        raise RuntimeError(f"the region JPEG decoder is not available: {load_error()}")
    if not payload.flags.c_contiguous or payload.dtype != np.uint8:
        raise ValueError("payload must be a C-contiguous uint8 array")
    if hist is not None and (part is not None or hist.shape != (3, 256) or hist.dtype != np.uint32):
        raise ValueError("hist needs the whole image (part None) and a (3, 256) uint32 array")
    return _decode(_KERNEL, payload, height, width, part or (0, 0, height, width), hist)
