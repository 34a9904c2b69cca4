"""The training transform's compiled pixel kernels (ctypes, no MXNet): the clipped colour step with the
normalisation, and AutoAugment's steps.

``resnest_gluon/ops/colour.cc``, ``affine.cc`` and ``tables.cc``, built by ``make ops`` (``python -m
resnest_gluon.ops build``) into ``libresnest_colour.so``:

* :func:`colour_normalise`: for one uint8 HWC crop, MXNet's or PIL's colour steps (the ``mxnet`` and
  ``torchvision`` flavours of :mod:`resnest_gluon.data.transforms`, each step truncated and clipped), the
  lighting shift and the normalising affine map, written as float32 CHW in two passes over the crop instead
  of OpenCV's five or six plus the float pass;
* AutoAugment's steps with PIL's pixels: :func:`table_run` and :func:`lut` (the per-channel tables),
  :func:`pil_enhance` (Color, Brightness, Contrast), :func:`pil_sharpness`, :func:`affine_nearest`
  (Rotate).

Where the library is missing, older than its sources or does not load, :func:`available` is False and the
transform uses OpenCV, numpy and PIL; ``RESNEST_GLUON_COLOUR_KERNEL=0`` forces that fallback.
"""

import ctypes
import os
from typing import Optional, Sequence

import numpy as np

from .ctypes_kernel import Kernel

__all__ = [
    "ENV",
    "FLAVOURS",
    "affine_nearest",
    "available",
    "colour_normalise",
    "load_error",
    "lut",
    "normalise_packed",
    "pack",
    "pil_enhance",
    "pil_sharpness",
    "table_run",
]

ENV = "RESNEST_GLUON_COLOUR_KERNEL"
FLAVOURS = ("mxnet", "torchvision")
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_LIBRARY, _SOURCES = "libresnest_colour.so", ("colour.cc", "affine.cc", "tables.cc")
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
    [_P, ctypes.c_int64, _I, _I, _P, ctypes.c_int64, _I, _I] + [ctypes.c_int32] * 6 + [_I],
    ENV,
    "nearest-neighbour affine kernel",
)
_TABLE_RUN = Kernel(
    _LIBRARY, _SOURCES, "resnest_table_run", [_P, _I, _P, _P, _P], ENV, "AutoAugment table kernel"
)
_LUT = Kernel(
    _LIBRARY,
    _SOURCES,
    "resnest_lut",
    [_P, ctypes.c_int64, _I, _I, _P, _P, ctypes.c_int64, _I],
    ENV,
    "table lookup kernel",
)
_ENHANCE = Kernel(
    _LIBRARY,
    _SOURCES,
    "resnest_pil_enhance",
    [
        _P,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        _I,
        _I,
        _I,
        _F,
        _F,
        _F,
        _F,
        _F,
        _F,
        _P,
        ctypes.c_int64,
        _P,
    ],
    ENV,
    "PIL enhance kernel",
)
_SHARPNESS = Kernel(
    _LIBRARY,
    _SOURCES,
    "resnest_pil_sharpness",
    [_P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _F, _P, ctypes.c_int64],
    ENV,
    "PIL sharpness kernel",
)
_KERNELS = (_KERNEL, _AFFINE, _TABLE_RUN, _LUT, _ENHANCE, _SHARPNESS)
LIBRARY = _KERNEL.library


def available() -> bool:
    """True when the library is built and loads (once, thread-safe; one warning saying why not), and
    ``RESNEST_GLUON_COLOUR_KERNEL`` is not ``0`` (read at each call: tests and benchmarks switch to OpenCV
    and PIL with it)."""
    if os.environ.get(ENV) == "0":
        return False
    if not _LOADED:
        _LOADED.append(all(kernel.loaded() for kernel in _KERNELS))
    return _LOADED[0]


_LOADED: list = []  # whether every function loaded, once tried


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
    normalise_packed(img, pack(flavour, order, factors, shift, bgr), affine, out)


def pack(flavour: str, order: Sequence[int], factors: Sequence[float], shift, bgr: bool) -> tuple:
    """The kernel's scalar arguments for :func:`colour_normalise`'s ``flavour, order, factors, shift, bgr``
    (checked there), for :func:`normalise_packed`."""
    f = list(factors) + [1.0] * (3 - len(factors))
    flags = int(bgr) | (2 if flavour == "torchvision" else 0)
    s = (0.0, 0.0, 0.0)
    if shift is not None:
        flags |= 4
        s = (shift[2], shift[1], shift[0]) if bgr else (shift[0], shift[1], shift[2])
    code = sum(int(op) << (2 * i) for i, op in enumerate(order))
    return (flags, len(order), code, f[0], f[1], f[2], s[0], s[1], s[2])


def normalise_packed(img: np.ndarray, packed: tuple, affine: np.ndarray, out: np.ndarray) -> None:
    """:func:`colour_normalise` with its arguments from :func:`pack` and without its checks: ``img`` a
    C-contiguous uint8 ``(H, W, 3)``, ``affine`` float32 ``(3, 4)`` and ``out`` float32 ``(3, H, W)``, both
    C-contiguous (the training transform's per-image call)."""
    h, w = img.shape[:2]
    if _KERNEL(img.ctypes.data, h, w, *packed, affine.ctypes.data, out.ctypes.data):
        raise ValueError("the colour kernel refused its arguments")


def _rows(img: np.ndarray) -> np.ndarray:
    """``img`` checked to be a uint8 ``(H, W, 3)`` image with packed pixels (rows may be strided), copied if
    its pixels are not."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError("img must be a uint8 (H, W, 3) array")
    return img if img.strides[1:] == (3, 1) else np.ascontiguousarray(img)


def affine_nearest(
    src: np.ndarray, size, x0: int, y0: int, a0: int, a1: int, a3: int, a4: int, portable: bool = False
) -> np.ndarray:
    """PIL's nearest-neighbour affine transform in 16.16 fixed point (its ``affine_fixed``) of a uint8
    ``(H, W, 3)`` image into a ``size = (height, width)`` image: pixel ``(i, j)`` reads ``src`` at
    ``((y0 + i a4 + j a3) >> 16, (x0 + i a1 + j a0) >> 16)``, black outside. Needs :func:`available`; the
    caller checks that every position fits 16.16 (PIL's ``check_fixed``). ``portable``: the plain loop even
    where the AVX-512 VBMI gathers would serve (tests)."""
    if not available():
        raise RuntimeError(f"the colour kernel is not available: {load_error()}")
    src = _rows(src)
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
        portable,
    ):
        raise ValueError("the affine kernel refused its arguments")
    return out


def table_run(hist: Optional[np.ndarray], kinds: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """The ``(3, 256)`` uint8 tables (one per channel) of a run of AutoAugment's table steps: ``kinds``
    int32 per step, 0 for a fixed table (its row of ``fixed``, ``(steps, 256)`` uint8), 1 Equalize, 2
    AutoContrast, built from ``hist`` (``(3, 256)`` uint32 counts of the image the run starts from; None
    if every step is fixed). As ``autoaugment._run_table``. Needs :func:`available`."""
    kinds = np.ascontiguousarray(kinds, np.int32)
    fixed = np.ascontiguousarray(fixed, np.uint8)
    if fixed.shape != (len(kinds), 256):
        raise ValueError(f"fixed must be ({len(kinds)}, 256), got {fixed.shape}")
    if hist is not None:
        hist = np.ascontiguousarray(hist, np.uint32)
        if hist.shape != (3, 256):
            raise ValueError(f"hist must be (3, 256), got {hist.shape}")
    table = np.empty((3, 256), np.uint8)
    hist_ptr = None if hist is None else hist.ctypes.data
    if _TABLE_RUN(hist_ptr, len(kinds), kinds.ctypes.data, fixed.ctypes.data, table.ctypes.data):
        raise ValueError("the table kernel refused its arguments (a histogram step without hist?)")
    return table


def lut(
    img: np.ndarray, table: np.ndarray, out: Optional[np.ndarray] = None, portable: bool = False
) -> np.ndarray:
    """Each channel of a uint8 ``(H, W, 3)`` image (rows may be strided) looked up in its row of ``table``
    (``(3, 256)`` uint8), into ``out`` (a new C-contiguous image when None; may be ``img``): ``cv2.LUT(img,
    table.T.reshape(256, 1, 3))``. ``portable``: the plain loop even where AVX-512 VBMI would serve (tests).
    Needs :func:`available`."""
    img = _rows(img)
    table = np.ascontiguousarray(table, np.uint8)
    if table.shape != (3, 256):
        raise ValueError(f"table must be (3, 256), got {table.shape}")
    if out is None:
        out = np.empty(img.shape, np.uint8)
    elif out.shape != img.shape or out.dtype != np.uint8 or out.strides[1:] != (3, 1):
        raise ValueError("out must be a uint8 array of img's shape with packed rows")
    h, w = img.shape[:2]
    _LUT(img.ctypes.data, img.strides[0], h, w, table.ctypes.data, out.ctypes.data, out.strides[0], portable)
    return out


ENHANCE_OPS = {"Brightness": 0, "Contrast": 1, "Color": 2}


def pil_enhance(img: np.ndarray, steps, bgr: bool, out: bool = True):
    """PIL's ``ImageEnhance`` ``Brightness``, ``Contrast`` and ``Color`` in turn on a uint8 ``(H, W, 3)``
    image (BGR when ``bgr``): ``steps`` are ``(name, factor, grey)``, ``grey`` the level Contrast blends
    towards (PIL's ``int(mean + 0.5)``; ignored by the others). Returns the new image, or with ``out=False``
    the sum of PIL's grey levels (``L``) of the result, without writing it. Needs :func:`available`."""
    img = _rows(img)
    if len(steps) > 3:
        raise ValueError("at most three steps")
    code, factors, levels = 0, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    for i, (name, factor, grey) in enumerate(steps):
        code |= ENHANCE_OPS[name] << (2 * i)
        factors[i], levels[i] = factor, grey
    h, w = img.shape[:2]
    result = np.empty((h, w, 3), np.uint8) if out else None
    total = None if out else ctypes.c_int64()
    status = _ENHANCE(
        img.ctypes.data,
        img.strides[0],
        h,
        w,
        int(bgr),
        len(steps),
        code,
        *factors,
        *levels,
        None if result is None else result.ctypes.data,
        w * 3,
        None if total is None else ctypes.byref(total),
    )
    if status:
        raise ValueError("the enhance kernel refused its arguments")
    return result if out else total.value


def pil_sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ``ImageEnhance.Sharpness(image).enhance(factor)`` of a uint8 ``(H, W, 3)`` image (either channel
    order). Needs :func:`available`."""
    img = _rows(img)
    h, w = img.shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    if _SHARPNESS(img.ctypes.data, img.strides[0], h, w, factor, out.ctypes.data, w * 3):
        raise ValueError("the sharpness kernel refused its arguments")
    return out
