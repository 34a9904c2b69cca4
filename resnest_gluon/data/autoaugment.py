"""AutoAugment's ImageNet policy, in two flavours.

Cubuk et al., "AutoAugment: Learning Augmentation Strategies from Data", CVPR 2019 (arXiv:1805.09501),
the ImageNet policy of its appendix: 25 sub-policies of two ``(operation, probability, level)`` steps. One
sub-policy is drawn uniformly per image and each of its steps is applied with its probability.

* ``"resnest"`` (the default): the flavour ResNeSt (Zhang et al., arXiv:2004.08955) was trained with, as
  its authors' Gluon scripts run it: levels 0-10 and PIL's operations, applied to the whole decoded image
  before the random-resized crop. Posterize keeps ``4 - int(level * 4 / 10)`` bits, Solarize inverts from
  ``256 - int(level * 256 / 10)``, Color/Contrast/Brightness/Sharpness blend with the factor
  ``level * 1.8 / 10 + 0.1`` (no sign: "Color 0" greys the image), Rotate turns by ``int(level * 30 / 10)``
  degrees (nearest neighbour, black corners) and ShearX/ShearY shear by ``level * 0.3 / 10`` (bicubic, black
  fill); Rotate and the shears draw a random sign.
* ``"torchvision"``: torchvision's reading of the paper's table, on the training crop: levels 0-9,
  posterize 4-8 bits, enhancement factors ``1 +- 0.9 level / 9`` with a random sign, solarize thresholds
  256 .. 0, grey (128) fill, written with OpenCV.

Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order (the pipeline passes ``bgr=True`` to keep
OpenCV's order: only Color and Contrast depend on it).
"""

import math
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from . import colour_kernel

__all__ = [
    "FLAVOURS",
    "IMAGENET_POLICY",
    "RESNEST_POLICY",
    "TORCHVISION_OPS",
    "AutoAugment",
    "ImageNetPolicy",
    "apply_op",
    "apply_torchvision_op",
    "policy",
]

FILL = (128, 128, 128)

SubPolicy = Tuple[Tuple[str, float, int], Tuple[str, float, int]]

# The ImageNet policy as the ResNeSt reference spells it (its "Posterize2" is the 4 - level bits posterize),
# levels 0-10. Sub-policy 15 is ("Color", 1.0, 0): the image turned grey.
RESNEST_POLICY: List[SubPolicy] = [
    (("Posterize2", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize2", 0.6, 7), ("Posterize2", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize2", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize2", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 0)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
]

# The torchvision flavour's table (levels 0-9; sub-policy 15 reads "Color 1.0 2" there).
IMAGENET_POLICY: List[SubPolicy] = [
    tuple((("Posterize" if n == "Posterize2" else n), p, m) for n, p, m in sub) for sub in RESNEST_POLICY
]
IMAGENET_POLICY[15] = (("Rotate", 0.8, 8), ("Color", 1.0, 2))

FLAVOURS = ("resnest", "torchvision")


def policy(flavour: str = "resnest") -> List[SubPolicy]:
    """The 25 sub-policies of the ImageNet policy as ``((name, probability, level), (name, probability,
    level))`` tuples: ``"resnest"`` (the reference's names and levels 0-10) or ``"torchvision"`` (0-9)."""
    if flavour == "resnest":
        return list(RESNEST_POLICY)
    if flavour == "torchvision":
        return list(IMAGENET_POLICY)
    raise ValueError(f"unknown AutoAugment flavour {flavour!r}; valid: {list(FLAVOURS)}")


# ------------------------------------------------------------------------------- the "resnest" flavour
MAX_LEVEL = 10

# Operations with a random sign in the reference; the others ignore ``sign``.
SIGNED = frozenset(("Rotate", "ShearX", "ShearY"))


def _lut(img: np.ndarray, table) -> np.ndarray:
    """``img`` through ``table``: ``(256,)`` for every channel, or ``(3, 256)`` one per channel (the
    compiled lookup where it is built, ten times OpenCV's speed; else ``cv2.LUT``)."""
    table = np.asarray(table)
    if colour_kernel.available():
        return colour_kernel.lut(img, table if table.ndim == 2 else np.broadcast_to(table, (3, 256)))
    if table.ndim == 1:  # one table for every channel: OpenCV's LUT is 1.6x faster
        return cv2.LUT(img, table.astype(np.uint8).reshape(256, 1))
    return cv2.LUT(img, np.ascontiguousarray(table.T, np.uint8).reshape(256, 1, 3))


def _posterize_table(level) -> np.ndarray:
    bits = 4 - int(level * 4 / MAX_LEVEL)
    # 0 bits (level 10) keeps nothing: a black image.
    return np.arange(256) & ((0xFF << (8 - bits)) & 0xFF)


def _solarize_table(level) -> np.ndarray:
    threshold = 256 - int(level * 256 / MAX_LEVEL)
    values = np.arange(256)
    return np.where(values < threshold, values, 255 - values)


def _invert_table(level) -> np.ndarray:
    return 255 - np.arange(256)


def _posterize(img, level, sign, bgr):
    return _lut(img, _posterize_table(level))


def _solarize(img, level, sign, bgr):
    return _lut(img, _solarize_table(level))


def _invert(img, level, sign, bgr):
    return _lut(img, _invert_table(level))


_LEVELS = np.arange(256)


def _histograms(img: np.ndarray) -> np.ndarray:
    """``(3, 256)`` per-channel histograms (cv2.calcHist: a tenth of the time of numpy's bincount)."""
    hist = np.empty((3, 256), np.int64)
    for c in range(3):
        hist[c] = cv2.calcHist([img], [c], None, [256], [0, 256])[:, 0]
    return hist


def _per_channel_lut(img: np.ndarray, make) -> np.ndarray:
    """Each channel through its row of the tables ``make(histograms)`` of its own 256-bin histogram."""
    return _lut(img, make(_histograms(img)))


def _autocontrast_table(hist: np.ndarray) -> np.ndarray:
    """PIL's autocontrast without cutoff, for each row of ``hist`` (a channel's histogram): the channel's
    range stretched to 0..255, truncated."""
    present = hist > 0
    return _range_table(present.argmax(1), 255 - present[:, ::-1].argmax(1))


def _channel_range(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Each channel's lowest and highest value: all that autocontrast without cutoff reads of its
    histogram (PIL: the lowest and highest non-empty bins), in a fifth of the time of the histograms.
    Reduced over rows first, where numpy's reductions run on whole rows."""
    rows = img.reshape(img.shape[0], -1) if img.flags.c_contiguous else img.reshape(-1, 3)
    lo, hi = rows.min(0), rows.max(0)
    return lo.reshape(-1, 3).min(0).astype(np.int64), hi.reshape(-1, 3).max(0).astype(np.int64)


def _range_table(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """:func:`_autocontrast_table` from each channel's lowest and highest value."""
    flat = hi <= lo
    scale = 255.0 / np.where(flat, 1, hi - lo)
    table = np.clip((_LEVELS * scale[:, None] - (lo * scale)[:, None]).astype(np.int64), 0, 255)
    return np.where(flat[:, None], _LEVELS, table)


def _equalize_table(hist: np.ndarray) -> np.ndarray:
    """PIL's equalize, for each row of ``hist``: steps of (pixels but the last occupied bin's) / 255,
    started half a step in."""
    present = hist > 0
    last = 255 - present[:, ::-1].argmax(1)
    step = (hist.sum(1) - hist[np.arange(len(hist)), last]) // 255
    keep = (present.sum(1) <= 1) | (step == 0)
    step = np.where(keep, 1, step)[:, None]
    before = np.cumsum(hist, axis=1) - hist
    return np.where(keep[:, None], _LEVELS, np.minimum((step // 2 + before) // step, 255))


def _autocontrast(img, level, sign, bgr):
    return _lut(img, _range_table(*_channel_range(img)))


def _equalize(img, level, sign, bgr):
    return _per_channel_lut(img, _equalize_table)


def _to_pil(img: np.ndarray, bgr: bool) -> Image.Image:
    h, w = img.shape[:2]
    return Image.frombuffer("RGB", (w, h), np.ascontiguousarray(img), "raw", "BGR" if bgr else "RGB", 0, 1)


def _from_pil(pil: Image.Image, bgr: bool) -> np.ndarray:
    w, h = pil.size
    return np.frombuffer(pil.tobytes("raw", "BGR" if bgr else "RGB"), np.uint8).reshape(h, w, 3)


def _factor(level: float) -> float:
    return level * 1.8 / MAX_LEVEL + 0.1


def _enhance(kind):
    name = kind.__name__

    def op(img, level, sign, bgr):
        if colour_kernel.available():  # PIL's arithmetic compiled: the same pixels
            if name == "Sharpness":
                return colour_kernel.pil_sharpness(img, _factor(level))
            grey = _pil_grey_level(img, [], bgr) if name == "Contrast" else 0
            return colour_kernel.pil_enhance(img, [(name, _factor(level), grey)], bgr)
        # Brightness and Sharpness treat the channels alike: no reordering needed.
        keep_order = bgr and name in ("Color", "Contrast")
        return _from_pil(kind(_to_pil(img, keep_order)).enhance(_factor(level)), keep_order)

    return op


def _pil_grey_level(img: np.ndarray, steps, bgr: bool) -> int:
    """PIL's Contrast level of ``img`` after the ``(name, factor, grey)`` enhance ``steps``: its mean grey
    level, rounded (``int(mean + 0.5)``), computed by the kernel without writing the image."""
    return int(
        colour_kernel.pil_enhance(img, steps, bgr, out=False) / max(1, img.shape[0] * img.shape[1]) + 0.5
    )


def _rotate_coeffs(h: int, w: int, degrees: float) -> Tuple[float, ...]:
    """PIL's ``rotate`` (no expand, about the centre) as its affine ``(a, b, c, d, e, f)``: output pixel
    ``(x, y)`` reads the input at ``(a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f)``."""
    angle = -math.radians(degrees)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = w / 2, h / 2
    return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


def _coeffs(name: str, level, sign: int, h: int, w: int) -> Tuple[float, ...]:
    """The affine of Rotate, ShearX or ShearY on an ``h x w`` image, in PIL's convention."""
    if name == "Rotate":
        return _rotate_coeffs(h, w, sign * int(level * 30 / MAX_LEVEL))
    s = sign * level * 0.3 / MAX_LEVEL
    return (1, s, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, s, 1, 0)


def _rotate(img, level, sign, bgr):
    degrees = sign * int(level * 30 / MAX_LEVEL)
    return _from_pil(_to_pil(img, False).rotate(degrees, resample=Image.NEAREST), False)


def _shear(axis):
    def op(img, level, sign, bgr):
        s = sign * level * 0.3 / MAX_LEVEL
        coeffs = (1, s, 0, 0, 1, 0) if axis == "x" else (1, 0, 0, s, 1, 0)
        pil = _to_pil(img, False)
        return _from_pil(pil.transform(pil.size, Image.AFFINE, coeffs, resample=Image.BICUBIC), False)

    return op


# Operations that map each channel's values through a table: they commute with cropping, so the training
# pipeline applies a trailing run of them to the crop region only (Equalize and AutoContrast build their
# tables from the whole image's histograms, carried through the tables before them).
_TABLES = {"Posterize": _posterize_table, "Posterize2": _posterize_table, "Solarize": _solarize_table}
_TABLES["Invert"] = _invert_table
_HIST_TABLES = {"Equalize": _equalize_table, "AutoContrast": _autocontrast_table}
TABLE_OPS = frozenset(_TABLES) | frozenset(_HIST_TABLES)


_CHANNEL_OFFSETS = (256 * np.arange(3))[:, None]


def _run_table(img: np.ndarray, steps, hist0: Optional[np.ndarray] = None) -> np.ndarray:
    """The table of a run of :data:`TABLE_OPS` steps on ``img``: ``(256,)`` int64 when every channel gets
    the same one (no histogram step), else ``(3, 256)``. Plain indexing throughout: this runs once per
    image, and numpy's generic helpers (``take_along_axis``, ``tile``) cost more than the tables.
    ``hist0``: ``img``'s ``(3, 256)`` histograms when the caller has them (counted while decoding).
    A run that needs the histograms is composed by the compiled kernel where it is built (uint8 tables)."""
    if not any(n in _HIST_TABLES for n, _, _ in steps):
        return _fixed_run(tuple((name, level) for name, level, _ in steps))
    if any(n in _HIST_TABLES and (i > 0 or n != "AutoContrast") for i, (n, _, _) in enumerate(steps)):
        if colour_kernel.available():
            kinds, fixed = _run_arrays(steps)
            return colour_kernel.table_run(_histograms(img) if hist0 is None else hist0, kinds, fixed)
    hist0 = None if hist0 is None else hist0.astype(np.int64)
    total = None  # the identity
    for name, level, _ in steps:
        if name == "AutoContrast" and total is None:  # first: the channels' ranges are enough
            total = _range_table(*_channel_range(img))
        elif name in _HIST_TABLES:
            if hist0 is None:
                hist0 = _histograms(img)
            hist = hist0
            if total is not None:  # the histograms through the tables so far: each bin moved to its value
                moved = (total + _CHANNEL_OFFSETS).ravel()
                hist = np.bincount(moved, weights=hist0.ravel(), minlength=768).reshape(3, 256)
                hist = hist.astype(np.int64)
            table = _HIST_TABLES[name](hist)
            total = table if total is None else table.ravel()[total + _CHANNEL_OFFSETS]
        else:
            table = _static_table(name, level)
            total = table if total is None else table[total]
    return _LEVELS if total is None else total


_STATIC: Dict[tuple, np.ndarray] = {}
_RUNS: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}
_KINDS = {"Equalize": 1, "AutoContrast": 2}  # the table kernel's codes; 0 is a fixed table


def _run_arrays(steps) -> Tuple[np.ndarray, np.ndarray]:
    """The table kernel's ``(kinds, fixed tables)`` of a run of steps, built once per run."""
    key = tuple((name, level) for name, level, _ in steps)
    arrays = _RUNS.get(key)
    if arrays is None:
        kinds = np.array([_KINDS.get(name, 0) for name, _ in key], np.int32)
        fixed = np.zeros((len(key), 256), np.uint8)
        for row, (name, level) in zip(fixed, key):
            if name in _TABLES:
                row[:] = _static_table(name, level)
        kinds.flags.writeable = fixed.flags.writeable = False  # shared between threads
        arrays = _RUNS[key] = (kinds, fixed)
    return arrays


def _fixed_run(key) -> np.ndarray:
    """The ``(3, 256)`` uint8 table of a run of Posterize, Solarize and Invert ``(name, level)`` steps,
    composed once."""
    table = _RUN_TABLES.get(key)
    if table is None:
        total = _LEVELS
        for name, level in key:
            total = _static_table(name, level)[total]
        table = np.ascontiguousarray(np.broadcast_to(total, (3, 256)), np.uint8)
        table.flags.writeable = False  # shared between images and threads
        _RUN_TABLES[key] = table
    return table


_RUN_TABLES: Dict[tuple, np.ndarray] = {}


def _static_table(name: str, level) -> np.ndarray:
    """The ``(256,)`` table of Posterize, Solarize or Invert at ``level``, built once."""
    key = (name, level)
    table = _STATIC.get(key)
    if table is None:
        table = np.asarray(_TABLES[name](level), np.int64)
        table.flags.writeable = False  # shared between images and threads
        _STATIC[key] = table
    return table


def channel_tables(img: np.ndarray, steps) -> np.ndarray:
    """The ``(256, 1, 3)`` uint8 table (for ``cv2.LUT``) of a run of :data:`TABLE_OPS` ``(name, level,
    sign)`` steps on ``img``: ``cv2.LUT(img[box], table)`` equals ``img`` put through the steps, then cut
    to ``box``. The whole image is read only for histograms, and only if a step needs them."""
    total = _run_table(img, steps)
    if total.ndim == 1:
        total = np.broadcast_to(total, (3, 256))
    return np.ascontiguousarray(total.T, np.uint8).reshape(256, 1, 3)


PIXEL_OPS = frozenset(("Color", "Brightness", "Contrast"))
_TRUNCATE = -0.5 + 1.0 / 1024  # cv2 rounds, PIL's blend truncates: shift by just under half a level


def _grey(img: np.ndarray, bgr: bool) -> np.ndarray:
    """PIL's "L" conversion (0.299 R + 0.587 G + 0.114 B, rounded) by ``cv2.cvtColor``: its 14-bit weights
    give PIL's grey level for all but 0.13 % of the 2^24 colours (those one level apart), 4x faster than a
    float ``cv2.transform`` to one channel."""
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)


def _mean_grey(img: np.ndarray, bgr: bool) -> float:
    """The mean PIL grey level of ``img`` (Contrast's degenerate image before PIL rounds it): PIL's grey
    levels with the compiled kernel, OpenCV's otherwise."""
    if colour_kernel.available():
        return colour_kernel.pil_enhance(img, [], bgr, out=False) / max(1, img.shape[0] * img.shape[1])
    return cv2.mean(_grey(img, bgr))[0]


def pixel_step(img: np.ndarray, name: str, level: float, bgr: bool, mean_grey: float = 0.0) -> np.ndarray:
    """Color, Brightness or Contrast (``mean_grey``: the mean PIL grey level of the whole image): PIL's
    ``degenerate + factor * (image - degenerate)``, truncated and clipped to uint8.

    With the compiled kernel PIL's pixels exactly; with OpenCV the same but where a blend lands within a
    thousandth of a level below an integer or float rounding differs, or OpenCV's grey level is one off PIL's
    (a grey level, on a few pixels in a hundred; mean difference < 0.05; Color at most 0.001 on 202
    photographs at levels 0, 4, 5, 8, 10)."""
    f = _factor(level)
    if colour_kernel.available():
        return colour_kernel.pil_enhance(img, [(name, f, int(mean_grey + 0.5))], bgr)
    if name == "Brightness":
        return cv2.addWeighted(img, f, img, 0.0, _TRUNCATE)
    if name == "Contrast":
        return cv2.addWeighted(img, f, img, 0.0, (1.0 - f) * int(mean_grey + 0.5) + _TRUNCATE)
    grey = cv2.cvtColor(_grey(img, bgr), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(img, f, grey, 1.0 - f, _TRUNCATE)


def _deferred_from(steps) -> int:
    """Index of the first step of the longest tail that can run on a crop region: table and pixel
    operations only, and no histogram-based table (Equalize, AutoContrast) after a pixel operation (its
    histogram would need the whole image). Worked out once per sequence of names."""
    names = tuple(name for name, _, _ in steps)
    k = _DEFERRED.get(names)
    if k is None:
        k = _DEFERRED[names] = next(k for k in range(len(names) + 1) if _deferrable(names[k:]))
    return k


def _deferrable(tail) -> bool:
    if not all(n in TABLE_OPS or n in PIXEL_OPS for n in tail):
        return False
    first_pixel = next((i for i, n in enumerate(tail) if n in PIXEL_OPS), len(tail))
    return all(n not in _HIST_TABLES for n in tail[first_pixel:])


_DEFERRED: Dict[tuple, int] = {}


def _finisher(img: np.ndarray, tail, bgr: bool, box=None, hist=None) -> Callable[[np.ndarray], np.ndarray]:
    """``finish(region)`` applying ``tail`` (see :func:`_deferred_from`) to a region of ``img``. With the
    region's ``box`` known, the whole image that Contrast's mean needs is reused: its cut starts the rest.
    ``hist``: ``img``'s histograms, if known."""
    stages: List[Callable[[np.ndarray], np.ndarray]] = []
    run: list = []
    start, cut = 0, None

    def flush(run):
        if run:
            table = _run_table(img, run, hist)  # histogram tables only in a first run: img is its input
            stages.append(lambda x, table=table: _lut(x, table))
        return []

    # With the compiled kernel a run of enhance steps is one call, and Contrast's level after earlier such
    # steps is counted without writing the whole image.
    fast = colour_kernel.available()
    pending: list = []  # the kernel's run of (name, factor, grey) enhance steps not yet staged

    def stage_pending():
        if pending:
            steps = list(pending)
            stages.append(lambda x: colour_kernel.pil_enhance(x, steps, bgr))
            pending.clear()

    for name, level, sign in tail:
        if name in TABLE_OPS:
            stage_pending()
            run.append((name, level, sign))
            continue
        run = flush(run)
        mean_grey = 0.0
        if name == "Contrast" and fast and not stages and len(pending) < 3:
            mean_grey = _pil_grey_level(img, pending, bgr)
        elif name == "Contrast":  # PIL's mean grey level of the whole image as it is at this step
            stage_pending()
            now = img
            for stage in stages:
                now = stage(now)
            mean_grey = _mean_grey(now, bgr)
            if box is not None:
                y, x, ch, cw = box
                start, cut = len(stages), now[y : y + ch, x : x + cw]
        if fast:
            pending.append((name, _factor(level), int(mean_grey + 0.5)))
            if len(pending) == 3:
                stage_pending()
        else:
            stages.append(lambda x, n=name, lv=level, m=mean_grey: pixel_step(x, n, lv, bgr, m))
    stage_pending()
    flush(run)

    def finish(region: np.ndarray) -> np.ndarray:
        if cut is not None:
            region = cut
        for stage in stages[start:]:
            region = stage(region)
        return region

    return finish


RESNEST_OPS: Dict[str, Callable] = {
    "ShearX": _shear("x"),
    "ShearY": _shear("y"),
    "Rotate": _rotate,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "Posterize": _posterize,
    "Posterize2": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
}


# Operations that read a neighbourhood of each output pixel: a crop region of their output needs only the
# part of their input it maps back to (through the affine, plus the filter's reach).
LOCAL_OPS = frozenset(("Rotate", "ShearX", "ShearY", "Sharpness"))


def _source_box(name: str, level, sign: int, box, h: int, w: int) -> Tuple[int, int, int, int]:
    """``(y, x, ch, cw)``: the part of an ``h x w`` image that ``name`` reads to compute ``box`` of its
    output (clipped to the image, so that where it meets the image's edge the operation sees that edge)."""
    y, x, ch, cw = box
    if name == "Sharpness":  # PIL's 3 x 3 smoothing, the image's outermost pixels left as they are
        top, left = max(0, y - 1), max(0, x - 1)
        return top, left, min(h, y + ch + 1) - top, min(w, x + cw + 1) - left
    a, b, c, d, e, f = _coeffs(name, level, sign, h, w)
    corners = [(px, py) for px in (x + 0.5, x + cw - 0.5) for py in (y + 0.5, y + ch - 0.5)]
    xs = [a * px + b * py + c for px, py in corners]
    ys = [d * px + e * py + f for px, py in corners]
    # Nearest neighbour reads within a pixel of the mapped corners.
    left, top = max(0, math.floor(min(xs)) - 1), max(0, math.floor(min(ys)) - 1)
    right, bottom = min(w, math.ceil(max(xs)) + 1), min(h, math.ceil(max(ys)) + 1)
    return top, left, max(0, bottom - top), max(0, right - left)


def _cubic_weights(d: np.ndarray) -> np.ndarray:
    """The four taps of PIL's transform bicubic (a = -1, not its resize's -0.5) at offsets ``d``."""
    d2, d3 = d * d, d * d * d
    return np.stack([-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, d3 - d2], axis=-1)


_ONE = np.ones(1, np.float32)


def shear_x_region(img: np.ndarray, shear: float, box) -> np.ndarray:
    """``box = (y, x, ch, cw)`` of PIL's ``transform(AFFINE, (1, shear, 0, 0, 1, 0), BICUBIC)`` of ``img``,
    with OpenCV. Each output row reads its own input row at a constant fractional offset (vertically the
    kernel sits on the row: weights 0, 1, 0, 0), so rows sharing an offset share one 1 x 4 filter; then
    PIL's edge clamp, black fill and truncation. Float32 instead of PIL's double: a grey level apart where
    a value lands within 1e-4 of an integer."""
    y, x, ch, cw = box
    h, w = img.shape[:2]
    t = shear * (np.arange(y, y + ch) + 0.5)  # input x = output x + 0.5 + t (PIL's pixel-centre convention)
    k = np.floor(t).astype(np.int64)
    d = t - k
    pad = 2
    lo, hi = max(0, x + int(k.min()) - pad), min(w, x + cw + int(k.max()) + pad + 1)
    # The columns the rows read, with PIL's clamp at the image's edges (replicated pixels). Column j of
    # ``part`` is the input's column j + lo - pad.
    part = cv2.copyMakeBorder(img[y : y + ch, lo:hi], 0, 0, pad, pad, cv2.BORDER_REPLICATE)
    # Rows sorted by their offset, so that each offset's rows are one slice for one filter.
    keys = np.round(d, 9)
    order = np.argsort(keys, kind="stable")
    part = part[order]
    filtered = np.empty(part.shape, np.float32)
    _, starts = np.unique(keys[order], return_index=True)
    ends = starts[1:].tolist() + [ch]
    for first, end in zip(starts.tolist(), ends):
        frac = float(d[order[first]])
        kernel = _cubic_weights(np.array(frac)).astype(np.float32)
        # anchor 1: column j reads columns j - 1 .. j + 2. As a separable filter with a vertical [1]:
        # the same sums, 3x faster than filter2D.
        filtered[first:end] = cv2.sepFilter2D(part[first:end], cv2.CV_32F, kernel, _ONE, anchor=(1, 0))
        # PIL fills where the sampling point c + frac + 0.5 (c: the input column) is outside [0, w).
        start, stop = math.ceil(-0.5 - frac) - lo + pad, math.ceil(w - 0.5 - frac) - lo + pad
        filtered[first:end, : max(0, start)] = 0
        filtered[first:end, max(0, stop) :] = 0
    # PIL's clip and truncation (OpenCV's conversion rounds: shift by just under half a level), then the
    # rows back in their order.
    rows = cv2.subtract(filtered, 0.5 - 1.0 / 1024, dtype=cv2.CV_8U)[np.argsort(order)]
    # Output column X of row v is column X + k[v] - lo + pad of its row: one slice per run of equal k.
    out = np.zeros((ch, cw, 3), np.uint8)
    width = rows.shape[1]
    cuts = [0] + (np.flatnonzero(np.diff(k)) + 1).tolist() + [ch]
    for r0, r1 in zip(cuts[:-1], cuts[1:]):
        j0 = x + int(k[r0]) - lo + pad
        src0, src1 = max(0, j0), min(width, j0 + cw)
        if src1 > src0:
            out[r0:r1, src0 - j0 : src1 - j0] = rows[r0:r1, src0:src1]
    return out


def _shear_region(img: np.ndarray, step, box) -> np.ndarray:
    """``box`` of ShearX or ShearY (the transpose of ShearX on the transposed image) on ``img``."""
    name, level, sign = step
    shear = sign * level * 0.3 / MAX_LEVEL
    if name == "ShearX":
        return shear_x_region(img, shear, box)
    y, x, ch, cw = box
    turned = np.ascontiguousarray(img.transpose(1, 0, 2))
    return np.ascontiguousarray(shear_x_region(turned, shear, (x, y, cw, ch)).transpose(1, 0, 2))


def _rotate_region(src: np.ndarray, src_box, step, box, h: int, w: int) -> np.ndarray:
    """``box`` of Rotate (``step = (name, level, sign)``) on an ``h x w`` image, from ``src``, the image's
    part at ``src_box``: PIL's pixels. PIL rotates by nearest neighbour in 16.16 fixed point
    (``affine_fixed`` in its Geometry.c), from the rounded coefficients and the rounded offset of the first
    pixel; the offset here is the whole image's at the region's first pixel, so each output pixel reads
    the same input pixel as in the whole image (black outside the image: ``src`` reaches its edges).
    The compiled kernel computes the same fixed-point numbers as PIL; PIL itself runs where the kernel is
    not built, or where PIL would switch to floating point (coordinates beyond +-32768)."""
    y, x, ch, cw = box
    sy, sx = src_box[:2]
    a, b, c, d, e, f = _coeffs(*step, h, w)

    def fix(v):
        return math.floor(v * 65536.0 + 0.5)

    # The whole image's fixed-point position of the region's first pixel, in the part's coordinates.
    x0 = fix(c + a * 0.5 + b * 0.5) + y * fix(b) + x * fix(a) - sx * 65536
    y0 = fix(f + d * 0.5 + e * 0.5) + y * fix(e) + x * fix(d) - sy * 65536
    coeffs = (a, b, (x0 + 0.25) / 65536 - a * 0.5 - b * 0.5, d, e, (y0 + 0.25) / 65536 - d * 0.5 - e * 0.5)
    # PIL's check_fixed, at the output's corners, for the coefficients it would get.
    fits = all(
        abs(u * coeffs[0] + v * coeffs[1] + coeffs[2]) < 32768.0
        and abs(u * coeffs[3] + v * coeffs[4] + coeffs[5]) < 32768.0
        for u in (0, cw)
        for v in (0, ch)
    )
    if fits and colour_kernel.available():
        return colour_kernel.affine_nearest(src, (ch, cw), x0, y0, fix(a), fix(b), fix(d), fix(e))
    pil = _to_pil(src, False).transform((cw, ch), Image.AFFINE, coeffs, resample=Image.NEAREST)
    return _from_pil(pil, False)


def _local_region(src: np.ndarray, src_box, step, box, h: int, w: int, bgr: bool) -> np.ndarray:
    """``box`` of Rotate or Sharpness (``step = (name, level, sign)``) on an ``h x w`` image, computed from
    ``src``, the image's part at ``src_box``."""
    name, level, sign = step
    y, x, ch, cw = box
    sy, sx, sh, sw = src_box
    if not sh or not sw:  # the region maps wholly outside the image: fill
        return np.zeros((ch, cw, 3), np.uint8)
    if name == "Sharpness":
        return RESNEST_OPS[name](src, level, sign, bgr)[y - sy : y - sy + ch, x - sx : x - sx + cw]
    return _rotate_region(src, src_box, step, box, h, w)


def _needs_whole(steps) -> bool:
    """Whether ``steps`` read the whole image's statistics (histograms, Contrast's mean grey)."""
    return any(name in _HIST_TABLES or name == "Contrast" for name, _, _ in steps)


def _crop_around(img: np.ndarray, box, pre, step, post, bgr: bool, hist=None) -> np.ndarray:
    """``box`` of ``img`` through ``pre`` (pixel by pixel), the local ``step``, then ``post`` (pixel by
    pixel), computing only the part of each that the region needs."""
    h, w = img.shape[:2]
    y, x, ch, cw = box
    before = _finisher(img, pre, bgr, hist=hist) if pre else None
    if _needs_whole(post):  # the statistics need the whole image: compute it, then cut the region
        img = img if before is None else before(img)
        if step[0] in ("ShearX", "ShearY"):
            stats = _shear_region(img, step, (0, 0, h, w))
        else:
            stats = RESNEST_OPS[step[0]](img, *step[1:], bgr)
        region = stats[y : y + ch, x : x + cw]
    elif step[0] in ("ShearX", "ShearY"):
        region = stats = _shear_region(img if before is None else before(img), step, box)
    else:
        src_box = _source_box(*step, box, h, w)
        sy, sx, sh, sw = src_box
        src = img[sy : sy + sh, sx : sx + sw]
        if before is not None and src.size:
            src = before(src)
        region = stats = _local_region(src, src_box, step, box, h, w, bgr)
    if not post:
        return region
    return _finisher(stats, post, bgr, box if stats is not region else None)(region)


def apply_op(image: np.ndarray, name: str, level: float, sign: int = 1, *, bgr: bool = False) -> np.ndarray:
    """Apply one operation of the ``"resnest"`` flavour, as the reference does through PIL.

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` image, ``(H, W, 3)``, RGB (BGR with ``bgr=True``).
    name : str
        ``ShearX``, ``ShearY``, ``Rotate``, ``Color``, ``Contrast``, ``Brightness``, ``Sharpness``,
        ``Posterize`` (also spelt ``Posterize2``, as in the reference's table), ``Solarize``,
        ``AutoContrast``, ``Equalize`` or ``Invert``.
    level : float
        0..10.
    sign : {1, -1}
        The direction of Rotate, ShearX and ShearY (the reference draws it at random); ignored by the others.

    Returns
    -------
    numpy.ndarray
        ``uint8`` image of the same shape and channel order.
    """
    if name not in RESNEST_OPS:
        raise ValueError(f"unknown AutoAugment operation {name!r}; valid: {sorted(RESNEST_OPS)}")
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"AutoAugment level must be 0..{MAX_LEVEL}, got {level}")
    if sign not in (1, -1):
        raise ValueError(f"sign must be 1 or -1, got {sign}")
    return RESNEST_OPS[name](image, level, sign, bgr)


# ---------------------------------------------------------------------------- the "torchvision" flavour
def _level(magnitude: int, high: float, low: float = 0.0) -> float:
    """Magnitude 0..9 mapped linearly onto [low, high]."""
    return low + (high - low) * magnitude / 9.0


def _sign(rng: np.random.Generator) -> float:
    return -1.0 if rng.random() < 0.5 else 1.0


def _affine(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, matrix.astype(np.float32), (w, h), flags=cv2.INTER_NEAREST, borderValue=FILL)


def _blend(degenerate: np.ndarray, img: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ImageEnhance: ``degenerate + factor * (img - degenerate)``, clipped to uint8."""
    out = degenerate.astype(np.float32) + factor * (img.astype(np.float32) - degenerate)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def shear_x(img, magnitude, rng):
    s = _sign(rng) * _level(magnitude, 0.3)
    return _affine(img, np.array([[1.0, s, 0.0], [0.0, 1.0, 0.0]]))


def shear_y(img, magnitude, rng):
    s = _sign(rng) * _level(magnitude, 0.3)
    return _affine(img, np.array([[1.0, 0.0, 0.0], [s, 1.0, 0.0]]))


def translate_x(img, magnitude, rng):
    # The paper translates by up to 150 px of a 331 px image; keep that fraction at any size.
    t = _sign(rng) * _level(magnitude, 150.0 / 331.0) * img.shape[1]
    return _affine(img, np.array([[1.0, 0.0, t], [0.0, 1.0, 0.0]]))


def translate_y(img, magnitude, rng):
    t = _sign(rng) * _level(magnitude, 150.0 / 331.0) * img.shape[0]
    return _affine(img, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, t]]))


def rotate(img, magnitude, rng):
    h, w = img.shape[:2]
    angle = _sign(rng) * _level(magnitude, 30.0)
    return _affine(img, cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0))


def color(img, magnitude, rng):
    return _blend(_gray(img)[:, :, None], img, 1.0 + _sign(rng) * _level(magnitude, 0.9))


def contrast(img, magnitude, rng):
    mean = np.float32(int(_gray(img).mean() + 0.5))
    return _blend(mean, img, 1.0 + _sign(rng) * _level(magnitude, 0.9))


def brightness(img, magnitude, rng):
    return _blend(np.float32(0.0), img, 1.0 + _sign(rng) * _level(magnitude, 0.9))


def sharpness(img, magnitude, rng):
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    smooth = img.copy()
    # As in PIL, the one-pixel border keeps its original values.
    smooth[1:-1, 1:-1] = cv2.filter2D(img, -1, kernel)[1:-1, 1:-1]
    return _blend(smooth, img, 1.0 + _sign(rng) * _level(magnitude, 0.9))


def posterize(img, magnitude, rng):
    bits = int(round(_level(magnitude, 4.0, 8.0)))
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return img & mask


def solarize(img, magnitude, rng):
    threshold = _level(magnitude, 0.0, 256.0)
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def auto_contrast(img, magnitude, rng):
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        ch = img[:, :, c]
        lo, hi = int(ch.min()), int(ch.max())
        if hi > lo:
            lut = np.clip((np.arange(256) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
            out[:, :, c] = lut[ch]
        else:
            out[:, :, c] = ch
    return out


def equalize(img, magnitude, rng):
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[:, :, c])) for c in range(3)], axis=2)


def invert(img, magnitude, rng):
    return 255 - img


TORCHVISION_OPS: Dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "Color": color,
    "Posterize": posterize,
    "Solarize": solarize,
    "Contrast": contrast,
    "Sharpness": sharpness,
    "Brightness": brightness,
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
}


def apply_torchvision_op(img: np.ndarray, name: str, magnitude: int, rng: np.random.Generator) -> np.ndarray:
    """Apply one operation of the ``"torchvision"`` flavour (magnitude 0..9; ``rng`` draws the sign)."""
    if name not in TORCHVISION_OPS:
        raise ValueError(f"unknown AutoAugment operation {name!r}; valid: {sorted(TORCHVISION_OPS)}")
    if not 0 <= magnitude <= 9:
        raise ValueError(f"AutoAugment magnitude must be 0..9, got {magnitude}")
    return TORCHVISION_OPS[name](img, magnitude, rng)


def _before_crop(img: np.ndarray, steps, bgr: bool, box=None, hist=None):
    """``(image, finish)`` of :meth:`AutoAugment.before_crop` for drawn ``steps``. Color, Brightness and
    Contrast on the whole image (before a histogram) go through :func:`pixel_step`."""
    k = _deferred_from(steps)
    for name, level, sign in steps[:k]:
        if name in PIXEL_OPS:
            mean_grey = _mean_grey(img, bgr) if name == "Contrast" else 0.0
            img = pixel_step(img, name, level, bgr, mean_grey)
        else:
            img = RESNEST_OPS[name](img, level, sign, bgr)
    if k == len(steps):
        return img, None
    return img, _finisher(img, steps[k:], bgr, box, hist if k == 0 else None)


class AutoAugment:
    """Callable ``augment(img, rng, bgr=False) -> img`` applying one random sub-policy of a flavour.

    Parameters
    ----------
    flavour : {'resnest', 'torchvision'}
        Which reading of the policy (see the module's docstring). ``"resnest"`` is meant for the whole
        decoded image, ``"torchvision"`` for the training crop.
    sub_policies : list, optional
        Sub-policies to draw from instead of the flavour's ImageNet policy.
    """

    def __init__(self, flavour: str = "resnest", sub_policies=None):
        self.flavour = flavour
        self.sub_policies = policy(flavour) if sub_policies is None else list(sub_policies)
        ops, top = (RESNEST_OPS, MAX_LEVEL) if flavour == "resnest" else (TORCHVISION_OPS, 9)
        for sub in self.sub_policies:
            for name, prob, level in sub:
                if name not in ops or not 0.0 <= prob <= 1.0 or not 0 <= level <= top:
                    raise ValueError(f"invalid AutoAugment step {(name, prob, level)} for {flavour!r}")

    def draw(self, rng: np.random.Generator) -> List[Tuple[str, float, int]]:
        """The ``(name, level, sign)`` steps one image gets: a random sub-policy, each step with its
        probability, a random sign where the reference draws one."""
        steps = []
        for name, prob, level in self.sub_policies[int(rng.integers(len(self.sub_policies)))]:
            if rng.random() < prob:
                sign = -1 if self.flavour == "resnest" and name in SIGNED and rng.random() < 0.5 else 1
                steps.append((name, level, sign))
        return steps

    def __call__(self, img: np.ndarray, rng: np.random.Generator, bgr: bool = False) -> np.ndarray:
        if self.flavour != "resnest":
            for name, prob, level in self.sub_policies[int(rng.integers(len(self.sub_policies)))]:
                if rng.random() < prob:
                    img = TORCHVISION_OPS[name](img, level, rng)
            return img
        for name, level, sign in self.draw(rng):
            img = RESNEST_OPS[name](img, level, sign, bgr)
        return img

    def before_crop(self, img: np.ndarray, rng: np.random.Generator, bgr: bool = False):
        """The ``"resnest"`` flavour for a pipeline that crops next: ``(image, finish)``, where ``finish``
        (None if nothing is left) applies the rest of the sub-policy to a crop region of ``image``.

        ``finish(image[box])`` gives ``self(img)[box]`` for the same draws, but the trailing operations that
        work pixel by pixel (the per-channel tables, Color, Brightness, Contrast: most sub-policies are
        nothing else) touch only the crop region, with the whole image's histograms and mean grey. The
        tables give the same pixels, and so do Color, Brightness and Contrast with the compiled kernels;
        without them OpenCV rounds PIL's truncated blend (a grey level apart on the odd pixel, see
        :func:`pixel_step`).
        """
        return _before_crop(img, self.draw(rng), bgr)

    def crop(
        self, img: np.ndarray, box, rng: np.random.Generator, bgr: bool = False, steps=None, hist=None
    ) -> np.ndarray:
        """The ``"resnest"`` flavour for a pipeline that crops next: ``self(img, rng, bgr)`` cut to ``box =
        (y, x, ch, cw)``, computing little more than the region.

        As :meth:`before_crop`, and further: a sub-policy with one local operation (Rotate, the shears,
        Sharpness) and pixel-by-pixel operations around it runs on the part of the image the region reads
        (Rotate: PIL's on that part, the same pixels; the shears: :func:`shear_x_region`, a grey level apart
        on a few pixels in a hundred), and the histograms and mean grey after it come from the whole image
        (PIL's Rotate, :func:`shear_x_region`). Measured against the whole-image chain on 480 x 720
        photographs: under 0.05 grey levels mean.

        ``steps``: the draws of :meth:`draw`, when the caller drew them first (see :meth:`reads`); ``hist``:
        ``img``'s ``(3, 256)`` channel histograms, when the decoder counted them (see
        :meth:`uses_histograms`).
        """
        steps = self.draw(rng) if steps is None else steps
        local = [i for i, (name, _, _) in enumerate(steps) if name in LOCAL_OPS]
        if len(local) == 1:
            pre, step, post = steps[: local[0]], steps[local[0]], steps[local[0] + 1 :]
            if _deferred_from(pre) == 0 and _deferred_from(post) == 0:
                return _crop_around(img, box, pre, step, post, bgr, hist)
        img, finish = _before_crop(img, steps, bgr, box, hist)
        y, x, ch, cw = box
        region = img[y : y + ch, x : x + cw]
        return region if finish is None else finish(region)

    @staticmethod
    def reads(steps, box, h: int, w: int) -> Optional[Tuple[int, int, int, int]]:
        """The part ``(y, x, ch, cw)`` of an ``h x w`` image that :meth:`crop` with these ``steps`` reads to
        give ``box``; None when it reads the whole image (a histogram, Contrast's mean, a shear, two local
        operations). A decoder may then decode just that part."""
        if _needs_whole(steps):
            return None
        local = [step for step in steps if step[0] in LOCAL_OPS]
        if not local:
            return box
        if len(local) > 1 or local[0][0] in ("ShearX", "ShearY"):
            return None
        return _source_box(*local[0], box, h, w)

    @staticmethod
    def uses_histograms(steps) -> bool:
        """Whether :meth:`crop` with these ``steps`` counts the image's histograms (Equalize; AutoContrast
        after another table: first, it needs only each channel's range)."""
        return any(n == "Equalize" or (n == "AutoContrast" and i > 0) for i, (n, _, _) in enumerate(steps))

    def __repr__(self) -> str:
        return f"AutoAugment({self.flavour!r}, {len(self.sub_policies)} sub-policies)"


def ImageNetPolicy(sub_policies=None) -> AutoAugment:  # noqa: N802 (the former class name)
    """The torchvision flavour, under its former name."""
    return AutoAugment("torchvision", sub_policies)
