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

from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image, ImageEnhance

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
    return cv2.LUT(img, np.asarray(table, np.uint8))


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


def _histograms(img: np.ndarray) -> np.ndarray:
    """``(3, 256)`` per-channel histograms (cv2.calcHist: a tenth of the time of numpy's bincount)."""
    return np.stack([cv2.calcHist([img], [c], None, [256], [0, 256])[:, 0] for c in range(3)]).astype(
        np.int64
    )


def _per_channel_lut(img: np.ndarray, make) -> np.ndarray:
    """Each channel through the table ``make(histogram)`` of its own 256-bin histogram."""
    tables = np.stack([make(h) for h in _histograms(img)], axis=1).astype(np.uint8)  # (256, 3)
    return cv2.LUT(img, tables.reshape(256, 1, 3))


def _autocontrast_table(hist: np.ndarray) -> np.ndarray:
    """PIL's autocontrast without cutoff: the channel's range stretched to 0..255, truncated."""
    present = np.flatnonzero(hist)
    lo, hi = int(present[0]), int(present[-1])
    if hi <= lo:
        return np.arange(256)
    scale = 255.0 / (hi - lo)
    return np.clip((np.arange(256) * scale - lo * scale).astype(np.int64), 0, 255)


def _equalize_table(hist: np.ndarray) -> np.ndarray:
    """PIL's equalize: steps of (pixels but the last occupied bin's) / 255, started half a step in."""
    present = hist[hist > 0]
    if len(present) <= 1:
        return np.arange(256)
    step = (int(present.sum()) - int(present[-1])) // 255
    if not step:
        return np.arange(256)
    before = np.concatenate([[0], np.cumsum(hist)[:-1]])
    return np.minimum((step // 2 + before) // step, 255)


def _autocontrast(img, level, sign, bgr):
    return _per_channel_lut(img, _autocontrast_table)


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
    def op(img, level, sign, bgr):
        # Brightness and Sharpness treat the channels alike: no reordering needed.
        keep_order = bgr and kind in (ImageEnhance.Color, ImageEnhance.Contrast)
        return _from_pil(kind(_to_pil(img, keep_order)).enhance(_factor(level)), keep_order)

    return op


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


def channel_tables(img: np.ndarray, steps) -> np.ndarray:
    """The ``(256, 1, 3)`` uint8 table (for ``cv2.LUT``) of a run of :data:`TABLE_OPS` ``(name, level,
    sign)`` steps on ``img``: ``cv2.LUT(img[box], table)`` equals ``img`` put through the steps, then cut
    to ``box``. The whole image is read only for histograms, and only if a step needs them."""
    total = np.tile(np.arange(256), (3, 1))
    hist0 = None
    for name, level, _ in steps:
        if name in _HIST_TABLES:
            if hist0 is None:
                hist0 = _histograms(img)
            hist = [np.bincount(total[c], weights=hist0[c], minlength=256) for c in range(3)]
            tables = [np.asarray(_HIST_TABLES[name](h), np.int64) for h in hist]
        else:
            tables = [np.asarray(_TABLES[name](level), np.int64)] * 3
        total = np.stack([tables[c][total[c]] for c in range(3)])
    return total.T.reshape(256, 1, 3).astype(np.uint8)


PIXEL_OPS = frozenset(("Color", "Brightness", "Contrast"))
_PIL_GREY = (19595 / 65536, 38470 / 65536, 7471 / 65536)  # PIL's "L" conversion, R G B
_TRUNCATE = -0.5 + 1.0 / 1024  # cv2 rounds, PIL's blend truncates: shift by just under half a level


def _grey_weights(bgr: bool) -> np.ndarray:
    return np.array([_PIL_GREY[::-1] if bgr else _PIL_GREY], np.float32)


def pixel_step(img: np.ndarray, name: str, level: float, bgr: bool, mean_grey: float = 0.0) -> np.ndarray:
    """Color, Brightness or Contrast (``mean_grey``: the mean PIL grey level of the whole image) with
    OpenCV: PIL's ``degenerate + factor * (image - degenerate)``, truncated and clipped to uint8.

    The same as :func:`apply_op` but where a blend lands within a thousandth of a level below an integer
    or float rounding differs (a grey level, on a few pixels in a hundred; mean difference < 0.05)."""
    f = _factor(level)
    if name == "Brightness":
        return cv2.addWeighted(img, f, img, 0.0, _TRUNCATE)
    if name == "Contrast":
        return cv2.addWeighted(img, f, img, 0.0, (1.0 - f) * int(mean_grey + 0.5) + _TRUNCATE)
    grey = cv2.cvtColor(cv2.transform(img, _grey_weights(bgr)), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(img, f, grey, 1.0 - f, _TRUNCATE)


def _deferred_from(steps) -> int:
    """Index of the first step of the longest tail that can run on a crop region: table and pixel
    operations only, and no histogram-based table (Equalize, AutoContrast) after a pixel operation (its
    histogram would need the whole image)."""
    for k in range(len(steps) + 1):
        tail = [name for name, _, _ in steps[k:]]
        if not all(n in TABLE_OPS or n in PIXEL_OPS for n in tail):
            continue
        first_pixel = next((i for i, n in enumerate(tail) if n in PIXEL_OPS), len(tail))
        if all(n not in _HIST_TABLES for n in tail[first_pixel:]):
            return k
    return len(steps)


def _finisher(img: np.ndarray, tail, bgr: bool) -> Callable[[np.ndarray], np.ndarray]:
    """``finish(region)`` applying ``tail`` (see :func:`_deferred_from`) to a region of ``img``."""
    stages: List[Callable[[np.ndarray], np.ndarray]] = []
    run: list = []

    def flush(run):
        if run:
            table = channel_tables(img, run)  # histogram tables only in a first run: img is its input
            stages.append(lambda x, table=table: cv2.LUT(x, table))
        return []

    for name, level, sign in tail:
        if name in TABLE_OPS:
            run.append((name, level, sign))
            continue
        run = flush(run)
        mean_grey = 0.0
        if name == "Contrast":  # PIL's mean grey level of the whole image as it is at this step
            now = img
            for stage in stages:
                now = stage(now)
            mean_grey = cv2.mean(cv2.transform(now, _grey_weights(bgr)))[0]
        stages.append(lambda x, n=name, lv=level, m=mean_grey: pixel_step(x, n, lv, bgr, m))
    flush(run)

    def finish(region: np.ndarray) -> np.ndarray:
        for stage in stages:
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
        tables give the same pixels; Color, Brightness and Contrast are OpenCV's rounding of PIL's
        truncated blend (a grey level apart on the odd pixel, see :func:`pixel_step`).
        """
        steps = self.draw(rng)
        k = _deferred_from(steps)
        for name, level, sign in steps[:k]:
            img = RESNEST_OPS[name](img, level, sign, bgr)
        if k == len(steps):
            return img, None
        return img, _finisher(img, steps[k:], bgr)

    def __repr__(self) -> str:
        return f"AutoAugment({self.flavour!r}, {len(self.sub_policies)} sub-policies)"


def ImageNetPolicy(sub_policies=None) -> AutoAugment:  # noqa: N802 (the former class name)
    """The torchvision flavour, under its former name."""
    return AutoAugment("torchvision", sub_policies)
