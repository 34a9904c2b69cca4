"""Crop and colour transforms of the Python path, and the normalisation both back ends share.

The training recipe is that of ResNeSt (Zhang et al., arXiv:2004.08955, section 5.1) as its authors' Gluon
scripts run it: optionally AutoAugment on the whole decoded image, then a random resized crop (area 8-100 %,
aspect ratio 3/4-4/3, bilinear) or, for crops of 320 px and more, a TF-style random crop (area 10-100 %,
aspect 3/4-4/3, bicubic), horizontal flip, colour jitter 0.4 (brightness, contrast, saturation in random
order) and AlexNet-style PCA lighting noise 0.1, each clipped to 0..255, then mean/std normalisation. The
colour step computes what the reference's operators compute on the uint8 crop: below 320 px MXNet 1.9.1's
``RandomColorJitter`` and ``RandomLighting`` (truncating; saturation towards 0.114 x blue), from 320 px
torchvision's ``ColorJitter`` (PIL's ``ImageEnhance``, truncating) and MXNet's lighting.

Evaluation below 320 px resizes the shorter side to ``ceil(crop / 0.875)`` (bilinear) and takes the centre
crop; from 320 px it takes the centre square of side ``crop / (crop + 32)`` times the shorter side and
resizes it to ``crop`` with PIL's bicubic filter (which antialiases when shrinking).

Per image the training transform does little besides the decode: one ``cv2.resize`` of the crop, the colour
operations on the uint8 crop, and one normalisation pass; a batch's random numbers are drawn in a few calls.
Where the compiled region decoder is built (:mod:`resnest_gluon.data.jpeg_kernel`) only the part of a JPEG
that the crop and AutoAugment read is decoded, with OpenCV's pixels.
Options trade faithfulness for speed: ``reduced_decode`` (decode in libjpeg's DCT at 1/2-1/8 size when the
crop allows) and ``clip_colour=False`` (jitter, lighting and normalisation as one unclipped affine map).
"""

import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from . import colour_kernel, jpeg_kernel
from .autoaugment import AutoAugment
from .jpeg import jpeg_header, jpeg_size
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


LARGE_CROP = 320  # from this side on, the reference crops TF-style in training and by a ratio in evaluation
CENTRE_MARGIN = 32  # evaluation at >= LARGE_CROP: the centre square is crop / (crop + 32) of the short side


def centre_box(h: int, w: int, crop: int) -> Tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the reference's centre square for crops of 320 px and more.

    Side ``crop / (crop + 32) * min(h, w)``; the top-left corner rounded, the far corner rounded from the
    unrounded side (as PIL rounds a crop box), so the square may be a pixel off square.
    """
    side = crop / (crop + CENTRE_MARGIN) * min(h, w)
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return left, top, int(round(left + side)), int(round(top + side))


def pil_resize(img: np.ndarray, box: Tuple[int, int, int, int], size: int, bgr: bool = False) -> np.ndarray:
    """``img[box]`` resized to ``size x size`` with PIL's bicubic filter (antialiased when shrinking)."""
    h, w = img.shape[:2]
    raw = "BGR" if bgr else "RGB"
    pil = Image.frombuffer("RGB", (w, h), np.ascontiguousarray(img), "raw", raw, 0, 1)
    out = pil.resize((size, size), Image.BICUBIC, box=box)
    return np.frombuffer(out.tobytes("raw", raw), np.uint8).reshape(size, size, 3)


def _tf_crop_box(h: int, w: int, ratios, heights, py: float, px: float, min_area: float = 0.1):
    """``(y, x, ch, cw)`` of a TF-style random crop (``sample_distorted_bounding_box``), or None.

    Per attempt an aspect ratio (uniform in 3/4..4/3, from ``ratios``) and a height between the ones giving
    ``min_area`` and the whole area (``heights`` in ``[0, 1)`` picks it); the first crop that fits, covers
    ``min_area`` and is not the whole image wins; None means "the centre square", as in evaluation.
    """
    total = h * w
    lo_area, hi_area = min_area * total, float(total)
    for aspect, u in zip(ratios, heights):
        low = int(round(math.sqrt(lo_area / aspect)))
        high = int(round(math.sqrt(hi_area / aspect)))
        if high * aspect > w:  # keep the width inside the image
            high = int((w + 0.5 - 1e-7) / aspect)
            if high * aspect > w:
                high -= 1
        high = min(high, h)
        low = min(low, high)
        ch = int(round(low + u * (high - low)))
        cw = int(round(ch * aspect))
        area = ch * cw
        if not lo_area <= area <= hi_area or cw > w or ch > h:
            continue
        if cw == w and ch == h:
            return None
        return int(py * (h - ch + 1)), int(px * (w - cw + 1)), ch, cw
    return None


# Each pixel's grey in all three channels (saturation), for RGB and BGR pixels.
_TO_GREY = {bgr: np.array([g, g, g], np.float32) for bgr, g in ((False, _GRAY), (True, _GRAY[::-1]))}

# OpenCV rounds to nearest; MXNet's operators and PIL's blend truncate. A shift of just under half a level
# turns one into the other but where the exact value lies within 1/8192 below an integer (float32's error
# near 255 is 1/65536).
_TRUNCATE = -0.5 + 1.0 / 8192

# The colour steps: MXNet's operators (the reference below 320 px), torchvision's ColorJitter (PIL's
# ImageEnhance; 320 px and up; lighting is MXNet's there too), and rounded with saturation towards each
# pixel's grey level (what the operators are documented to do; this project's former default).
COLOURS = ("auto", "mxnet", "torchvision", "rounded")


def colour_name(colour: str, size: int) -> str:
    """``colour``, with ``auto`` resolved to the reference's colour step for crops of ``size``."""
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {', '.join(COLOURS)}, got {colour!r}")
    if colour == "auto":
        return "torchvision" if size >= LARGE_CROP else "mxnet"
    return colour


def _grey_code(bgr: bool) -> int:
    return cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY


def jitter_mxnet(img: np.ndarray, order, alphas, lighting_shift, bgr: bool) -> np.ndarray:
    """MXNet 1.9.1's ``image.random_color_jitter`` then ``image.random_lighting`` on a uint8 image, with the
    factors given (``order``: 0 brightness, 1 contrast, 2 saturation; ``lighting_shift``: the RGB shift).

    Each operator computes in float32 and stores ``uint8(min(max(v, 0), 255))``, i.e. truncates:
    brightness ``a x``; contrast ``a x + (1 - a) m`` with ``m`` the whole image's mean of
    ``0.299 R + 0.587 G + 0.114 B``; saturation ``a x + (1 - a) 0.114 B`` in every channel (its grey loop
    assigns instead of adding, so only the blue term is left); lighting ``x + s``, ``s`` the PCA shift.
    """
    blue = 0 if bgr else 2
    out = None  # the first step makes a new image; the later ones overwrite it (fewer fresh pages)
    for op, a in zip(order, alphas):
        if op == 0:
            out = _scale_add(img, a, _TRUNCATE, out)
        elif op == 1:
            # The mean of the rounded grey level: within a few thousandths of a level of the exact one.
            mean = cv2.mean(cv2.cvtColor(img, _grey_code(bgr)))[0]
            out = _scale_add(img, a, (1.0 - a) * mean + _TRUNCATE, out)
        else:
            b3 = cv2.cvtColor(cv2.extractChannel(img, blue), cv2.COLOR_GRAY2BGR)
            out = cv2.addWeighted(img, a, b3, 0.114 * (1.0 - a), _TRUNCATE, dst=out)
        img = out
    return _truncated_lighting(img, lighting_shift, bgr, in_place=out is not None)


def jitter_torchvision(img: np.ndarray, order, alphas, lighting_shift, bgr: bool) -> np.ndarray:
    """torchvision's ``ColorJitter`` on a PIL image (PIL's ``ImageEnhance``) then MXNet's lighting, with the
    factors given (as :func:`jitter_mxnet`).

    PIL blends ``d + f (x - d)`` in float32 and truncates: brightness towards ``d = 0``, contrast towards
    the mean of PIL's grey image rounded to an integer, colour towards each pixel's PIL grey level
    (``(19595 R + 38470 G + 7471 B + 2^15) >> 16``; OpenCV's grey is one level off it on 0.13 % of colours).
    """
    code = _grey_code(bgr)
    out = None
    for op, f in zip(order, alphas):
        if op == 0:
            out = _scale_add(img, f, _TRUNCATE, out)
        elif op == 1:
            mean = int(cv2.mean(cv2.cvtColor(img, code))[0] + 0.5)
            out = _scale_add(img, f, (1.0 - f) * mean + _TRUNCATE, out)
        else:
            grey = cv2.cvtColor(cv2.cvtColor(img, code), cv2.COLOR_GRAY2BGR)
            out = cv2.addWeighted(img, f, grey, 1.0 - f, _TRUNCATE, dst=out)
        img = out
    return _truncated_lighting(img, lighting_shift, bgr, in_place=out is not None)


def _truncated_lighting(img: np.ndarray, lighting_shift, bgr: bool, in_place: bool) -> np.ndarray:
    """MXNet's lighting on uint8: ``x + s`` truncated and clipped, which is ``x + floor(s)`` for every ``x``
    that stays in 0..255 (an exact integer shift)."""
    if lighting_shift is None:
        return img
    return add_per_channel(img, np.floor(lighting_shift[::-1] if bgr else lighting_shift), in_place=in_place)


def jitter_rounded(img: np.ndarray, order, alphas, lighting_shift, bgr: bool) -> np.ndarray:
    """Brightness, contrast and saturation in ``order``, then the lighting shift, on a uint8 image: each
    step rounded and clipped to 0..255, contrast towards the mean grey of every 8th row and saturation
    towards each pixel's grey level (``colour="rounded"``)."""
    g = _GRAY[::-1] if bgr else _GRAY
    to_grey = _TO_GREY[bgr]
    for op, a in zip(order, alphas):
        if op == 0:  # brightness
            img = _scale_add(img, a, 0.0)
        elif op == 1:  # contrast: towards the image's mean grey
            mean = cv2.mean(img[::8])
            grey = g[0] * mean[0] + g[1] * mean[1] + g[2] * mean[2]
            img = _scale_add(img, a, (1.0 - a) * grey)
        else:  # saturation: towards each pixel's grey
            grey = cv2.transform(img, to_grey)
            img = cv2.addWeighted(img, a, grey, 1.0 - a, 0.0)
    if lighting_shift is not None:
        img = add_per_channel(img, lighting_shift[::-1] if bgr else lighting_shift)
    return img


_JITTER = {"mxnet": jitter_mxnet, "torchvision": jitter_torchvision, "rounded": jitter_rounded}


def _scale_add(img: np.ndarray, a: float, b: float, dst: Optional[np.ndarray] = None) -> np.ndarray:
    """``a x + b`` rounded and clipped to uint8, as ``cv2.addWeighted(img, a, img, 0, b)``. Where ``a x + b``
    cannot fall below -0.5 (so that taking its absolute value changes nothing after rounding)
    ``cv2.convertScaleAbs``, 20 % faster: the same float arithmetic and rounding, the same pixels
    (``tests/test_reference.py`` compares them). ``dst``: where to write (may be ``img``)."""
    if a >= 0.0 and b >= -0.5:
        return cv2.convertScaleAbs(img, dst, alpha=a, beta=b)
    return cv2.addWeighted(img, a, img, 0.0, b, dst=dst)


def add_per_channel(img: np.ndarray, shift, in_place: bool = False) -> np.ndarray:
    """``cv2.add(img, (s0, s1, s2, 0))`` on a uint8 image: each channel's shift rounded (half to even), the
    sum clipped to 0..255. As two saturating additions of whole arrays (the positive shifts, then the
    negative ones subtracted): the same pixels in 40 % of the time of OpenCV's per-channel scalar path.
    ``in_place``: write over ``img``."""
    rounded = [round(float(s)) for s in shift]  # Python rounds half to even, as OpenCV does
    const = None
    for sign, op in ((1, cv2.add), (-1, cv2.subtract)):
        part = [min(max(sign * r, 0), 255) for r in rounded]
        if any(part):
            const = np.empty_like(img) if const is None else const
            const[0] = part  # the first row, then copied down: far faster than numpy's 3-wide broadcast
            const[1:] = const[0]
            img = op(img, const, dst=img if in_place else None)
            in_place = True
    return img


class TrainTransform:
    """Encoded image -> (augmented uint8 crop, its ``(3, 4)`` colour + normalisation map).

    The crop is BGR (as OpenCV decodes) unless the torchvision-flavoured AutoAugment runs on it (RGB); the
    map matches its order. Parameters as :func:`resnest_gluon.data.train_iter`; ``auto_aug`` is None,
    ``"resnest"`` (the whole decoded image, before the crop) or ``"torchvision"`` (the crop).
    """

    def __init__(
        self,
        size: int,
        jitter: float,
        lighting: float,
        auto_aug,
        interpolation: str,
        reduced_decode: bool = False,
        mirror: bool = True,
        min_area: float = 0.08,
        clip_colour: bool = True,
        crop: str = "auto",
        colour: str = "auto",
    ):
        self.size, self.jitter, self.lighting = size, jitter, lighting
        self.mirror, self.min_area = mirror, min_area
        if auto_aug is True:
            auto_aug = "resnest"
        self.auto_aug = AutoAugment(auto_aug) if auto_aug else None
        self.whole_image_aa = bool(auto_aug) and auto_aug == "resnest"
        self.interp = _INTERP[interpolation]
        self.reduced_decode = reduced_decode and not self.whole_image_aa
        self.clip_colour = clip_colour
        self.colour = colour_name(colour, size)
        self._jitter = _JITTER[self.colour]
        if crop not in ("auto", "resized", "tf"):
            raise ValueError(f"crop must be 'auto', 'resized' or 'tf', got {crop!r}")
        self.tf_crop = crop == "tf" or (crop == "auto" and size >= LARGE_CROP)
        # OpenCV decodes BGR; the torchvision flavour works on (and hands back) RGB crops.
        self.bgr = not (self.auto_aug is not None and not self.whole_image_aa)

    def draw(self, rng: np.random.Generator, n: int) -> List[tuple]:
        """Every random number of ``n`` images in a few vectorised calls, and their colour maps but for
        the image mean (:func:`_affine_parts`); per image ``(areas, log_ratios, (y, x, flip), base, k,
        colour)``, where ``colour`` holds the clipped path's ``(order, alphas, lighting shift)`` and, for
        the compiled colour kernel's flavours, its arguments (:func:`colour_kernel.pack`)."""
        areas = rng.uniform(self.min_area, 1.0, (n, _CROP_TRIES))
        if self.tf_crop:  # aspect ratios drawn uniformly, heights as fractions of their allowed range
            log_ratios = rng.uniform(3.0 / 4.0, 4.0 / 3.0, (n, _CROP_TRIES))
        else:
            log_ratios = rng.uniform(math.log(3.0 / 4.0), math.log(4.0 / 3.0), (n, _CROP_TRIES))
        areas, log_ratios = areas.tolist(), log_ratios.tolist()
        place = rng.random((n, 3)).tolist()  # y, x, flip
        order = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)
        # MXNet's factors are 1 + U(-jitter, jitter); torchvision's U(max(0, 1 - jitter), 1 + jitter).
        low = max(0.0, 1.0 - self.jitter) if self.colour == "torchvision" else 1.0 - self.jitter
        alphas = rng.uniform(low, 1.0 + self.jitter, (n, 3))
        noise = rng.standard_normal((n, 3))
        if self.clip_colour:
            base, k = _affine_parts(0.0, 0.0, order, alphas, noise, bgr=self.bgr)
            shifts = (self.lighting * noise * _EIGVAL) @ _EIGVEC.T if self.lighting > 0 else [None] * n
            jit = self.jitter > 0
            colour = [
                (o.tolist() if jit else [], a.tolist() if jit else [], sh)
                for o, a, sh in zip(order, alphas, shifts)
            ]
            if self.colour in colour_kernel.FLAVOURS:  # the compiled kernel's arguments, made once here
                colour = [c + (colour_kernel.pack(self.colour, *c, self.bgr),) for c in colour]
        else:
            base, k = _affine_parts(self.jitter, self.lighting, order, alphas, noise, bgr=self.bgr)
            colour = [None] * n
        return list(zip(areas, log_ratios, place, base, k, colour))

    def _box(self, h, w, areas, log_ratios, py, px):
        if not self.tf_crop:
            return _crop_box(h, w, areas, log_ratios, py, px)
        # TF-style: ``areas`` (uniform in [min_area, 1)) are reused as the height fractions.
        u = [(a - self.min_area) / (1.0 - self.min_area) if self.min_area < 1 else 0.0 for a in areas]
        box = _tf_crop_box(h, w, log_ratios, u, py, px)
        if box is None:
            left, top, right, bottom = centre_box(h, w, self.size)
            return top, left, bottom - top, right - left
        return box

    def _augment(self, payload: np.ndarray, draw: tuple, rng: np.random.Generator, where):
        """Decode, crop, flip and AutoAugment: the uint8 crop, the normalising map's parts and the colour
        draw still to apply."""
        areas, log_ratios, (py, px, flip), base, k, colour = draw
        size, factor, img = self.size, 1, None
        hw = jpeg_size(payload) if self.reduced_decode else None
        if hw is not None:
            y, x, ch, cw = self._box(*hw, areas, log_ratios, py, px)
            for factor, flags in _REDUCED:
                if ch // factor >= size and cw // factor >= size:
                    img = decode(payload, flags, *where)
                    # An EXIF rotation would change the shape: then decode in full below.
                    if img.shape[:2] == (-(-hw[0] // factor), -(-hw[1] // factor)):
                        y, x, ch, cw = y // factor, x // factor, ch // factor, cw // factor
                    else:
                        img = None
                    break
        region, steps, hist = None, None, None
        if img is None and jpeg_kernel.available():
            # Decode only the part of the image that the crop (and AutoAugment) reads: the same pixels;
            # for the whole image, count the histograms that AutoAugment needs on the way.
            header = jpeg_header(payload)
            if header is not None and header[2] == 1:  # OpenCV would apply an EXIF rotation
                hw = header[:2]
                y, x, ch, cw = self._box(*hw, areas, log_ratios, py, px)
                part = (y, x, ch, cw)
                if self.whole_image_aa:
                    steps = self.auto_aug.draw(rng)
                    part = self.auto_aug.reads(steps, part, *hw)
                    if part is None and self.auto_aug.uses_histograms(steps):
                        hist = np.zeros((3, 256), np.uint32)
                img = jpeg_kernel.decode(payload, *hw, part, hist)
                hist = None if img is None else hist
        if img is None:
            img = decode(payload, cv2.IMREAD_COLOR, *where)
            if img.shape[:2] != hw:
                y, x, ch, cw = self._box(*img.shape[:2], areas, log_ratios, py, px)
        if self.whole_image_aa:
            # The whole image, as the reference, but computed only where the crop reads it (the same
            # pixels, or a grey level apart on the odd pixel, for less work).
            region = self.auto_aug.crop(img, (y, x, ch, cw), rng, bgr=True, steps=steps, hist=hist)
        if region is None:
            region = img[y : y + ch, x : x + cw]
        img = cv2.resize(region, (size, size), interpolation=self.interp)
        if self.mirror and flip < 0.5:
            img = cv2.flip(img, 1)
        if self.auto_aug is not None and not self.whole_image_aa:
            # The torchvision flavour's colour operations are defined on RGB.
            img = self.auto_aug(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), rng)
        return img, base, k, colour

    def __call__(self, payload: np.ndarray, draw: tuple, rng: np.random.Generator, where=("", 0)):
        img, base, k, colour = self._augment(payload, draw, rng, where)
        if colour is not None:
            img = self._jitter(img, *colour[:3], self.bgr)
            return img, base
        mean = _mean_pixel(img)
        affine = base.copy()
        affine[:, 3] += k.dot(mean[::-1] if self.bgr else mean)
        return img, affine

    def write(
        self,
        payload: np.ndarray,
        draw: tuple,
        rng: np.random.Generator,
        out: np.ndarray,
        scratch: np.ndarray,
        where=("", 0),
    ) -> None:
        """The transformed image written into ``out`` (float32 CHW), as ``write_chw(*self(...), out,
        scratch)``; the clipped ``mxnet`` and ``torchvision`` colour steps and the normalisation in one
        compiled kernel when it is built (:mod:`resnest_gluon.data.colour_kernel`; the same pixels as
        MXNet's operators and PIL), OpenCV otherwise."""
        img, base, k, colour = self._augment(payload, draw, rng, where)
        if colour is not None and len(colour) == 4 and colour_kernel.available():
            img = np.ascontiguousarray(img)
            if out.flags.c_contiguous and out.dtype == np.float32 and out.shape == (3,) + img.shape[:2]:
                colour_kernel.normalise_packed(img, colour[3], base, out)
            else:
                colour_kernel.colour_normalise(img, self.colour, *colour[:3], base, out, self.bgr)
            return
        if colour is not None:
            write_chw(self._jitter(img, *colour[:3], self.bgr), base, out, scratch)
            return
        mean = _mean_pixel(img)
        affine = base.copy()
        affine[:, 3] += k.dot(mean[::-1] if self.bgr else mean)
        write_chw(img, affine, out, scratch)


def _mean_pixel(img: np.ndarray) -> List[float]:
    """Mean colour (in the image's channel order) of every 8th row: plenty for contrast, and half the
    cost of every 4th (0.008 ms for a 224 px crop)."""
    return list(cv2.mean(img[::8])[:3])


class ValTransform:
    """Encoded image -> (the evaluation crop, its normalisation map).

    ``resize`` None (the default): the reference's protocol at every crop (see the module's docstring).
    ``resize`` given: the shorter side resized to it with ``interpolation`` (OpenCV), then the centre crop.
    """

    def __init__(self, crop: int, resize: Optional[int] = None, interpolation: str = "auto"):
        self.crop = crop
        # The reference's centre square + PIL bicubic from 320 px; below, the short side to crop / 0.875.
        self.by_ratio = resize is None and interpolation == "auto" and crop >= LARGE_CROP
        self.resize = int(math.ceil(crop / 0.875)) if resize is None else int(resize)
        self.interp = _INTERP[interp_name(interpolation, crop)]
        self.affine = _colour_affine((0.0, 0.0, 0.0), 0.0, 0.0, None, bgr=True)

    def draw(self, rng: np.random.Generator, n: int) -> list:
        return [None] * n

    def __call__(self, payload: np.ndarray, draw, rng: np.random.Generator, where=("", 0)):
        img = decode(payload, cv2.IMREAD_COLOR, *where)
        if self.by_ratio:
            return pil_resize(img, centre_box(*img.shape[:2], self.crop), self.crop, bgr=True), self.affine
        img = _resize_short(img, self.resize, self.interp)
        h, w = img.shape[:2]
        y, x = (h - self.crop) // 2, (w - self.crop) // 2
        return img[y : y + self.crop, x : x + self.crop], self.affine

    def write(self, payload, draw, rng, out: np.ndarray, scratch: np.ndarray, where=("", 0)) -> None:
        """The evaluation crop normalised into ``out`` (float32 CHW)."""
        write_chw(*self(payload, draw, rng, where), out, scratch)


def interp_name(interpolation: str, size: int) -> str:
    if interpolation == "auto":
        # The paper's 320 and 416 px models are evaluated with bicubic resizing.
        return "bicubic" if size >= 320 else "bilinear"
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be 'auto', 'bilinear' or 'bicubic', got {interpolation!r}")
    return interpolation


INT31 = 2**31 - 1  # ImageRecordIter's seeds are C ints
