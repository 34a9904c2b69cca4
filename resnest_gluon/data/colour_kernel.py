"""The training transform's clipped colour step and normalisation in one compiled kernel (ctypes, no MXNet).

``resnest_gluon/ops/colour.cc``, built by ``make ops`` (``python -m resnest_gluon.ops build``) into
``libresnest_colour.so``: for one uint8 HWC crop, MXNet's or PIL's colour steps (the ``mxnet`` and
``torchvision`` flavours of :mod:`resnest_gluon.data.transforms`, each step truncated and clipped), the
lighting shift and the normalising affine map, written as float32 CHW in two passes over the crop instead
of OpenCV's five or six plus the float pass. Where the library is missing, older than its source or does
not load, :func:`available` is False and the transform uses OpenCV; ``RESNEST_GLUON_COLOUR_KERNEL=0``
forces that fallback.
"""

import ctypes
from typing import Optional, Sequence

import numpy as np

from .ctypes_kernel import Kernel

__all__ = ["ENV", "FLAVOURS", "available", "load_error", "colour_normalise"]

ENV = "RESNEST_GLUON_COLOUR_KERNEL"
FLAVOURS = ("mxnet", "torchvision")
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_LIBRARY, _SOURCES = "libresnest_colour.so", ("colour.cc", "affine.cc")
_KERNEL = Kernel(
    _LIBRARY,
    _SOURCES,
    "resnest_colour_normalise",
    [_P, ctypes.c_int64, ctypes.c_int64, _I, _I, _I, _F, _F, _F, _F, _F, _F, _P, _P],
    ENV,
    "colour kernel",
)
_AFFINE = Kernel(
    _LIBRARY,
    _SOURCES,
    "resnest_affine_nearest",
    [_P, ctypes.c_int64, _I, _I, _P, ctypes.c_int64, _I, _I] + [ctypes.c_int32] * 6,
    ENV,
    "nearest-neighbour affine kernel",
)
LIBRARY = _KERNEL.library


def available() -> bool:
    """True when the library is built and loads (once, thread-safe; one warning saying why not), and
    ``RESNEST_GLUON_COLOUR_KERNEL`` is not ``0`` (read at each call: tests and benchmarks switch to OpenCV
    and PIL with it)."""
    return _KERNEL.available() and _AFFINE.available()


load_error = _KERNEL.load_error


def colour_normalise(
    img: np.ndarray,
    flavour: str,
    order: Sequence[int],
    factors: Sequence[float],
    shift: Optional[Sequence[float]],
    affine: np.ndarray,
    out: np.ndarray,
    bgr: bool,
) -> None:
    """The colour steps ``order`` (0 brightness, 1 contrast, 2 saturation) with ``factors``, then the
    lighting ``shift`` (RGB, or None), then ``out[c] = affine[c, :3] . pixel + affine[c, 3]``: ``img`` uint8
    HWC (BGR when ``bgr``), ``affine`` ``(3, 4)`` in the image's channel order, ``out`` float32 ``(3, H, W)``
    written in place. As :func:`~resnest_gluon.data.transforms.jitter_mxnet` (``flavour="mxnet"``) or
    :func:`~resnest_gluon.data.transforms.jitter_torchvision` then ``write_chw``. Needs :func:`available`."""
    if not available():
        raise RuntimeError(f"the colour kernel is not available: {load_error()}")
    h, w, c = img.shape
    if c != 3 or img.dtype != np.uint8 or not img.flags.c_contiguous:
        raise ValueError("img must be a C-contiguous uint8 (H, W, 3) array")
    if out.shape != (3, h, w) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 (3, {h}, {w}) array")
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    if len(order) != len(factors) or len(order) > 3 or any(op not in (0, 1, 2) for op in order):
        raise ValueError("order (0, 1 or 2 each) and factors must have the same length, at most 3")
    if affine.shape != (3, 4) or affine.dtype != np.float32 or not affine.flags.c_contiguous:
        affine = np.ascontiguousarray(affine, np.float32).reshape(3, 4)
    f = list(factors) + [1.0] * (3 - len(factors))
    flags = int(bgr) | (2 if flavour == "torchvision" else 0)
    s = (0.0, 0.0, 0.0)
    if shift is not None:
        flags |= 4
        s = (shift[2], shift[1], shift[0]) if bgr else (shift[0], shift[1], shift[2])
    code = sum(int(op) << (2 * i) for i, op in enumerate(order))
    status = _KERNEL(
        img.ctypes.data,
        h,
        w,
        flags,
        len(order),
        code,
        f[0],
        f[1],
        f[2],
        s[0],
        s[1],
        s[2],
        affine.ctypes.data,
        out.ctypes.data,
    )
    if status:
        raise ValueError("the colour kernel refused its arguments")


def affine_nearest(src: np.ndarray, size, x0: int, y0: int, a0: int, a1: int, a3: int, a4: int) -> np.ndarray:
    """PIL's nearest-neighbour affine transform in 16.16 fixed point (its ``affine_fixed``) of a uint8
    ``(H, W, 3)`` image into a ``size = (height, width)`` image: pixel ``(i, j)`` reads ``src`` at
    ``((y0 + i a4 + j a3) >> 16, (x0 + i a1 + j a0) >> 16)``, black outside. Needs :func:`available`; the
    caller checks that every position fits 16.16 (PIL's ``check_fixed``)."""
    if not available():
        raise RuntimeError(f"the colour kernel is not available: {load_error()}")
    if src.ndim != 3 or src.shape[2] != 3 or src.dtype != np.uint8:
        raise ValueError("src must be a uint8 (H, W, 3) array")
    if src.strides[1:] != (3, 1):
        src = np.ascontiguousarray(src)
    out = np.empty((size[0], size[1], 3), np.uint8)
    args = (x0, y0, a0, a1, a3, a4)
    if _AFFINE(
        src.ctypes.data,
        src.strides[0],
        src.shape[0],
        src.shape[1],
        out.ctypes.data,
        out.strides[0],
        *size,
        *args,
    ):
        raise ValueError("the affine kernel refused its arguments")
    return out
