"""AutoAugment's ImageNet policy, written with OpenCV and numpy.

Cubuk et al., "AutoAugment: Learning Augmentation Strategies from Data", CVPR 2019 (arXiv:1805.09501),
the ImageNet policy of its appendix: 25 sub-policies of two ``(operation, probability, magnitude)`` steps.
One sub-policy is drawn uniformly per image and each of its steps is applied with its probability.
ResNeSt (arXiv:2004.08955) trains its larger models with this policy.

Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order. Magnitudes are integers 0-9 mapped
linearly onto each operation's range as in the paper's Table 1; geometric operations and enhancement
factors take a random sign, and geometric operations fill uncovered pixels with grey (128).
"""

from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

__all__ = ["IMAGENET_POLICY", "OPS", "ImageNetPolicy", "apply_op"]

FILL = (128, 128, 128)

# (operation, probability, magnitude) pairs; the ImageNet policy of Cubuk et al. (2019), appendix.
IMAGENET_POLICY: List[Tuple[Tuple[str, float, int], Tuple[str, float, int]]] = [
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
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


OPS: Dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
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


def apply_op(img: np.ndarray, name: str, magnitude: int, rng: np.random.Generator) -> np.ndarray:
    """Apply one AutoAugment operation.

    Parameters
    ----------
    img : numpy.ndarray
        ``uint8`` image, ``(H, W, 3)``, RGB.
    name : str
        A key of :data:`OPS`.
    magnitude : int
        0..9.
    rng : numpy.random.Generator
        Source of the random sign.

    Returns
    -------
    numpy.ndarray
        ``uint8`` image of the same shape.
    """
    if name not in OPS:
        raise ValueError(f"unknown AutoAugment operation {name!r}; valid: {sorted(OPS)}")
    if not 0 <= magnitude <= 9:
        raise ValueError(f"AutoAugment magnitude must be 0..9, got {magnitude}")
    return OPS[name](img, magnitude, rng)


class ImageNetPolicy:
    """Callable ``policy(img, rng) -> img`` applying one random sub-policy of :data:`IMAGENET_POLICY`.

    Parameters
    ----------
    policy : list, optional
        Sub-policies; the ImageNet policy by default.
    """

    def __init__(self, policy=None):
        self.policy = list(IMAGENET_POLICY if policy is None else policy)
        for sub in self.policy:
            for name, prob, magnitude in sub:
                if name not in OPS or not 0.0 <= prob <= 1.0 or not 0 <= magnitude <= 9:
                    raise ValueError(f"invalid AutoAugment step {(name, prob, magnitude)}")

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for name, prob, magnitude in self.policy[int(rng.integers(len(self.policy)))]:
            if rng.random() < prob:
                img = OPS[name](img, magnitude, rng)
        return img

    def __repr__(self) -> str:
        return f"ImageNetPolicy({len(self.policy)} sub-policies)"
