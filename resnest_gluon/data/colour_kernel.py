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
import logging
import os
import threading
from typing import Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ENV", "FLAVOURS", "available", "load_error", "colour_normalise"]

ENV = "RESNEST_GLUON_COLOUR_KERNEL"
FLAVOURS = ("mxnet", "torchvision")
_OPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ops")
SOURCE = os.path.join(_OPS, "colour.cc")
LIBRARY = os.path.join(_OPS, "libresnest_colour.so")
_lock = threading.Lock()
_state = {"fn": None, "error": None, "tried": False}


def _why_not() -> Optional[str]:
    if not os.path.isfile(LIBRARY):
        return f"{LIBRARY} is not built: run `make ops` (or python -m resnest_gluon.ops build)"
    if os.path.isfile(SOURCE) and os.path.getmtime(LIBRARY) < os.path.getmtime(SOURCE):
        return f"{LIBRARY} is older than its source: rebuild it with `make ops`"
    return None


def _load() -> None:
    error = _why_not()
    if error is None:
        try:
            fn = ctypes.CDLL(LIBRARY).resnest_colour_normalise
        except (OSError, AttributeError) as exc:
            error = f"{LIBRARY} does not load ({exc}); rebuild it with `make ops` or remove it"
        else:
            fn.restype = ctypes.c_int
            p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
            fn.argtypes = [p, ctypes.c_int64, ctypes.c_int64, i, i, i, f, f, f, f, f, f, p, p]
            _state["fn"] = fn
    if error:
        logger.warning("colour kernel not in use (OpenCV instead): %s", error)
    _state["error"] = error


def available() -> bool:
    """Loads the library once (thread-safe); True when :func:`colour_normalise` can run. False, with one
    warning saying why, when it is missing, stale or does not load, and while
    ``RESNEST_GLUON_COLOUR_KERNEL=0`` (read at each call: tests and benchmarks switch to OpenCV with it)."""
    if os.environ.get(ENV) == "0":
        return False
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _load()
                _state["tried"] = True
    return _state["fn"] is not None


def load_error() -> Optional[str]:
    """Why the kernel is not in use (None when it is, or has not been tried yet)."""
    if os.environ.get(ENV) == "0":
        return f"switched off by {ENV}=0"
    return _state["error"]


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
    status = _state["fn"](
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
