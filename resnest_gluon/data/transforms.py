"""Crop and colour transforms of the Python path, and the normalisation both back ends share.

The training recipe is that of ResNeSt (Zhang et al., arXiv:2004.08955, section 5.1): random resized crop
(area 8-100 %, aspect ratio 3/4-4/3), horizontal flip, colour jitter 0.4 (brightness, contrast,
saturation), AlexNet-style PCA lighting noise 0.1, mean/std normalisation; optionally AutoAugment.
Validation resizes the shorter side to ``crop / 0.875`` and takes the centre crop.

Per image the training transform does little besides the decode: the crop is chosen from the JPEG header
(decoded at 1/2-1/8 size when the crop allows), one ``cv2.resize`` of the crop, and one fused
colour/normalisation map applied in a single pass; a batch's random numbers are drawn in a few calls.
"""

import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .autoaugment import ImageNetPolicy
from .jpeg import jpeg_size
from .recordio import decode

MEAN = (123.68, 116.779, 103.939)  # RGB, 0-255 scale
STD = (58.393, 57.12, 57.375)

# AlexNet's PCA of ImageNet RGB pixels (0-255 scale), used for lighting noise.
_EIGVAL = np.array([55.46, 4.794, 1.148], np.float32)
_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)

_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def _resize_short(img: np.ndarray, size: int, interp: int) -> np.ndarray:
    h, w = img.shape[:2]
    # Same integer arithmetic as ImageRecordIter's ``resize``, so both paths crop the same pixels.
    nh, nw = (size * h // w, size) if h > w else (size, size * w // h)
    return cv2.resize(img, (nw, nh), interpolation=interp)


def write_chw(img: np.ndarray, affine: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """``out[c] = affine[c, :3] . img[..., :] + affine[c, 3]``: uint8 HWC in, float32 CHW written in place.

    ``scratch`` is a float32 array of the image's shape. cv2.transform rather than a numpy matmul
    (numpy's BLAS threads fight OpenCV's for the cores), and cv2.split into the output planes rather
    than a transposed copy (0.09 instead of 0.12 ms for a 224 px image).
    """
    cv2.transform(img.astype(np.float32), affine, dst=scratch)
    cv2.split(scratch, list(out))


def _random_resized_crop(img, size, rng, interp, area=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """Reference random resized crop (one draw at a time); the benchmark's decode limit uses it."""
    h, w = img.shape[:2]
    for _ in range(10):
        target = rng.uniform(*area) * h * w
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return cv2.resize(img[y : y + ch, x : x + cw], (size, size), interpolation=interp)
    # Fall back to the largest centred square.
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(img[y : y + s, x : x + s], (size, size), interpolation=interp)


_CROP_TRIES = 10


def _crop_box(h: int, w: int, areas: Sequence[float], log_ratios: Sequence[float], py: float, px: float):
    """``(y, x, ch, cw)`` of a random resized crop of an ``h x w`` image from pre-drawn numbers.

    ``areas`` and ``log_ratios`` are the candidate area fractions and log aspect ratios (the first that
    fits wins), ``py, px`` in ``[0, 1)`` place the crop; the largest centred square if none fits.
    """
    for area, log_ratio in zip(areas, log_ratios):
        target, aspect = area * h * w, math.exp(log_ratio)
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(py * (h - ch + 1)), int(px * (w - cw + 1)), ch, cw
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


_GRAY = (0.299, 0.587, 0.114)
_EIGVAL_LIST = _EIGVAL.tolist()
_EIGVEC_LIST = _EIGVEC.tolist()


def _colour_affine(
    mean_pixel: Sequence[float],
    jitter: float,
    lighting: float,
    rng: Optional[np.random.Generator],
    bgr: bool = False,
) -> np.ndarray:
    """One ``(3, 4)`` per-pixel affine map: colour jitter, lighting and normalisation together.

    Brightness (``a x``), contrast (``a x + (1 - a) mean(grey)``) and saturation (``a x + (1 - a) grey(x)``),
    each with ``a ~ U(1 - jitter, 1 + jitter)``, in random order and unclipped as in MXNet's iterators, the
    AlexNet PCA lighting shift and ``(x - MEAN) / STD`` are all affine in the pixel, and contrast's image
    mean follows the same map; so the whole chain is one matrix, applied in a single pass.
    ``mean_pixel`` is the image's mean RGB; with ``bgr`` the map takes BGR pixels (as OpenCV decodes them)
    and still gives normalised RGB. Draws from ``rng`` and builds the map step by step, one image at a
    time: the reference for :func:`_affine_parts`, which does a whole batch at once.
    """
    m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    t = [0.0, 0.0, 0.0]
    g0, g1, g2 = _GRAY
    if jitter > 0:
        order, alphas = rng.permutation(3).tolist(), rng.uniform(1.0 - jitter, 1.0 + jitter, 3).tolist()
        for op, a in zip(order, alphas):
            if op == 0:  # brightness
                m, t = [[a * v for v in row] for row in m], [a * v for v in t]
            elif op == 1:  # contrast: blend with the mean grey of the image as it is now
                now = [sum(row[k] * mean_pixel[k] for k in range(3)) + t[i] for i, row in enumerate(m)]
                shift = (1.0 - a) * (g0 * now[0] + g1 * now[1] + g2 * now[2])
                m, t = [[a * v for v in row] for row in m], [a * v + shift for v in t]
            else:  # saturation: blend each pixel with its grey
                grey_row = [(1.0 - a) * (g0 * m[0][k] + g1 * m[1][k] + g2 * m[2][k]) for k in range(3)]
                shift = (1.0 - a) * (g0 * t[0] + g1 * t[1] + g2 * t[2])
                m = [[a * row[k] + grey_row[k] for k in range(3)] for row in m]
                t = [a * v + shift for v in t]
    if lighting > 0:
        noise = rng.standard_normal(3).tolist()
        w = [lighting * z * e for z, e in zip(noise, _EIGVAL_LIST)]
        t = [v + sum(_EIGVEC_LIST[i][k] * w[k] for k in range(3)) for i, v in enumerate(t)]
    rows = [[v / s for v in row] + [(ti - mu) / s] for row, ti, mu, s in zip(m, t, MEAN, STD)]
    if bgr:
        rows = [row[2::-1] + row[3:] for row in rows]
    return np.array(rows, np.float32)


def _affine_parts(
    jitter: float,
    lighting: float,
    order: np.ndarray,
    alphas: np.ndarray,
    noise: np.ndarray,
    bgr: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`_colour_affine` for ``n`` images at once, before their mean colours are known.

    Every jitter operation maps a pixel to ``a x + 1 (c g . x) + t`` (``g`` the grey weights), and only
    contrast's shift depends on the image, linearly in its mean colour ``mu``; so image ``i``'s map is
    ``base[i]`` with ``k[i] @ mu`` (``mu`` in RGB) added to its last column. ``order``, ``alphas``,
    ``noise`` are ``(n, 3)``. Returns float32 ``base`` ``(n, 3, 4)`` and ``k`` ``(n, 3, 3)``.
    """
    n = len(order)
    g = np.array(_GRAY)
    m = np.tile(np.eye(3), (n, 1, 1))
    t, k = np.zeros((n, 3)), np.zeros((n, 3, 3))
    if jitter > 0:
        for step in range(3):
            op, a = order[:, step], alphas[:, step]
            a1, a3, b3 = a[:, None], a[:, None, None], (1.0 - a)[:, None, None]
            grey_t = ((1.0 - a) * (t @ g))[:, None]  # contrast and saturation shift t alike
            new_k = np.where(
                (op == 1)[:, None, None],
                a3 * k + b3 * (g @ (m + k))[:, None, :],  # contrast: the grey mean of the image as it is
                np.where((op == 2)[:, None, None], a3 * k + b3 * (g @ k)[:, None, :], a3 * k),
            )
            new_m = np.where((op == 2)[:, None, None], a3 * m + b3 * (g @ m)[:, None, :], a3 * m)
            t = np.where((op == 0)[:, None], a1 * t, a1 * t + grey_t)
            m, k = new_m, new_k
    if lighting > 0:
        t = t + (lighting * noise * _EIGVAL) @ _EIGVEC.T
    std, mean = np.array(STD)[:, None], np.array(MEAN)
    m, k, t = m / std, k / std, (t - mean) / std[:, 0]
    if bgr:
        m = m[:, :, ::-1]
    return np.concatenate([m, t[:, :, None]], axis=2).astype(np.float32), k.astype(np.float32)


class TrainTransform:
    """Encoded image -> (augmented uint8 BGR crop, its ``(3, 4)`` colour + normalisation map).

    The crop is chosen from the JPEG header's size before decoding, so that a crop which would still be
    at least ``size`` pixels after a 2/4/8-fold reduction is decoded at that reduced size
    (``reduced_decode``); the crop ROI then goes through one ``cv2.resize`` straight to ``size``.
    """

    def __init__(
        self,
        size: int,
        jitter: float,
        lighting: float,
        auto_aug: bool,
        interpolation: str,
        reduced_decode: bool = True,
        mirror: bool = True,
        min_area: float = 0.08,
    ):
        self.size, self.jitter, self.lighting = size, jitter, lighting
        self.mirror, self.min_area = mirror, min_area
        self.policy = ImageNetPolicy() if auto_aug else None
        self.interp = _INTERP[interpolation]
        self.reduced_decode = reduced_decode

    def draw(self, rng: np.random.Generator, n: int) -> List[tuple]:
        """Every random number of ``n`` images in a few vectorised calls, and their colour maps but for
        the image mean (:func:`_affine_parts`); per image ``(areas, log_ratios, (y, x, flip), base, k)``."""
        areas = rng.uniform(self.min_area, 1.0, (n, _CROP_TRIES)).tolist()
        log_ratios = rng.uniform(math.log(3.0 / 4.0), math.log(4.0 / 3.0), (n, _CROP_TRIES)).tolist()
        place = rng.random((n, 3)).tolist()  # y, x, flip
        order = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)
        alphas = rng.uniform(1.0 - self.jitter, 1.0 + self.jitter, (n, 3))
        noise = rng.standard_normal((n, 3))
        # OpenCV decodes BGR; AutoAugment works on (and hands back) RGB.
        base, k = _affine_parts(self.jitter, self.lighting, order, alphas, noise, bgr=self.policy is None)
        return list(zip(areas, log_ratios, place, base, k))

    def __call__(self, payload: np.ndarray, draw: tuple, rng: np.random.Generator, where=("", 0)):
        areas, log_ratios, (py, px, flip), base, k = draw
        size, factor, img = self.size, 1, None
        hw = jpeg_size(payload) if self.reduced_decode else None
        if hw is not None:
            y, x, ch, cw = _crop_box(*hw, areas, log_ratios, py, px)
            for factor, flags in _REDUCED:
                if ch // factor >= size and cw // factor >= size:
                    img = decode(payload, flags, *where)
                    # An EXIF rotation would change the shape: then decode in full below.
                    if img.shape[:2] == (-(-hw[0] // factor), -(-hw[1] // factor)):
                        y, x, ch, cw = y // factor, x // factor, ch // factor, cw // factor
                    else:
                        img = None
                    break
        if img is None:
            img = decode(payload, cv2.IMREAD_COLOR, *where)
            if img.shape[:2] != hw:
                y, x, ch, cw = _crop_box(*img.shape[:2], areas, log_ratios, py, px)
        img = cv2.resize(img[y : y + ch, x : x + cw], (size, size), interpolation=self.interp)
        if self.mirror and flip < 0.5:
            img = cv2.flip(img, 1)
        if self.policy is not None:
            # AutoAugment's colour operations are defined on RGB.
            img = self.policy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), rng)
            mean_rgb = _mean_pixel(img)
        else:
            mean_rgb = _mean_pixel(img)[::-1]
        affine = base.copy()
        affine[:, 3] += k.dot(mean_rgb)
        return img, affine


def _mean_pixel(img: np.ndarray) -> List[float]:
    """Mean colour (in the image's channel order) of every 8th row: plenty for contrast, and half the
    cost of every 4th (0.008 ms for a 224 px crop)."""
    return list(cv2.mean(img[::8])[:3])


class ValTransform:
    """Encoded image -> (shorter side resized and centre-cropped, the normalisation map)."""

    def __init__(self, crop: int, resize: int, interpolation: str):
        self.crop, self.resize, self.interp = crop, resize, _INTERP[interpolation]
        self.affine = _colour_affine((0.0, 0.0, 0.0), 0.0, 0.0, None, bgr=True)

    def draw(self, rng: np.random.Generator, n: int) -> list:
        return [None] * n

    def __call__(self, payload: np.ndarray, draw, rng: np.random.Generator, where=("", 0)):
        img = _resize_short(decode(payload, cv2.IMREAD_COLOR, *where), self.resize, self.interp)
        h, w = img.shape[:2]
        y, x = (h - self.crop) // 2, (w - self.crop) // 2
        return img[y : y + self.crop, x : x + self.crop], self.affine


def interp_name(interpolation: str, size: int) -> str:
    if interpolation == "auto":
        # The paper's 320 and 416 px models are evaluated with bicubic resizing.
        return "bicubic" if size >= 320 else "bilinear"
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be 'auto', 'bilinear' or 'bicubic', got {interpolation!r}")
    return interpolation


INT31 = 2**31 - 1  # ImageRecordIter's seeds are C ints
