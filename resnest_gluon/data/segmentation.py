"""Semantic segmentation data: gluoncv's augmentation of image-mask pairs, and the scores (pixAcc, mIoU).

The training augmentation is gluoncv's (``gluoncv/data/segbase.py``, used for its ResNeSt DeepLab models):
mirror with probability 1/2; resize so that the longer side is a random integer in [base/2, 2 base]; pad
the bottom and right up to the crop (image with 0, mask with the ignore label); take a random crop; blur
with probability 1/2 (a Gaussian of random radius in [0, 1), "as in PSP"). Images are resized bilinearly
and masks by nearest neighbour at the same pixel centres, so a mask stays aligned with its image and only
ever holds labels it had (or the ignore label). gluoncv
does this with PIL; here it is OpenCV on numpy arrays (HWC RGB uint8 images, HW integer masks), whose
bilinear resize does not smooth before shrinking as PIL's does.

ADE20K's label maps hold 0 ("other") to 150; training classes are ``label - 1``, so "other" becomes the
ignore label -1 (:func:`ade20k_mask`), as in gluoncv.

The scores are gluoncv's (``gluoncv/utils/metrics/segmentation.py``): pixel accuracy over labelled pixels,
and IoU per class from intersection and union counts summed over all images, averaged over the classes.
The counts are integers that add up across images and workers (:meth:`SegmentationMetric.counts`), so a
sharded evaluation counts every pixel exactly once.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "IGNORE",
    "SEG_MEAN",
    "SEG_STD",
    "SegmentationMetric",
    "ade20k_mask",
    "allreduce_metric",
    "batches",
    "list_pairs",
    "load_pair",
    "normalize",
    "to_labels",
    "train_transform",
    "val_transform",
]

IGNORE = -1  # the label of pixels that neither the loss nor the scores count
# gluoncv's segmentation normalisation (0-1 scale there, 0-255 here), also the value its evaluator pads with
SEG_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
SEG_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def ade20k_mask(label_map: np.ndarray) -> np.ndarray:
    """ADE20K's label map (0 = other, 1-150 = classes) as training labels: 0-149, other -> :data:`IGNORE`."""
    return label_map.astype(np.int32) - 1


def _resize(img: np.ndarray, width: int, height: int, nearest: bool) -> np.ndarray:
    # OpenCV's INTER_NEAREST samples at x * scale, its bilinear at pixel centres ((x + 0.5) * scale - 0.5):
    # masks resized with it drift by up to one source pixel from their images. INTER_NEAREST_EXACT samples
    # at pixel centres, as PIL's nearest does.
    interp = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR
    if nearest and img.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
        # OpenCV's nearest resize takes no int32; the labels fit in int16 (ADE20K: -1..149)
        return cv2.resize(img.astype(np.int16), (width, height), interpolation=interp).astype(img.dtype)
    return cv2.resize(img, (width, height), interpolation=interp)


def train_transform(
    img: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    crop_size: int = 480,
    base_size: int = 520,
    scale: Tuple[float, float] = (0.5, 2.0),
    blur: bool = True,
    ignore_label: int = IGNORE,
) -> Tuple[np.ndarray, np.ndarray]:
    """gluoncv's training augmentation of one pair: flip, random scale, pad, random crop, blur.

    Parameters
    ----------
    img : np.ndarray
        HxWx3 uint8 (RGB).
    mask : np.ndarray
        HxW integer labels, the same size as ``img``.
    rng : np.random.Generator
        All the randomness comes from it.
    crop_size, base_size : int
        Output side, and the longer side before scaling (gluoncv ADE20K: 480 and 520).
    scale : (float, float)
        The longer side is drawn from ``[scale[0] * base_size, scale[1] * base_size]``.
    blur : bool
        gluoncv's Gaussian blur with probability 1/2.
    ignore_label : int
        Fills the mask where the crop overhangs the image.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``crop_size`` x ``crop_size`` x 3 uint8 image and ``crop_size`` x ``crop_size`` int32 mask.
    """
    if img.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {img.shape[:2]} and mask {mask.shape[:2]} differ in size")
    mask = mask.astype(np.int32, copy=False)
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    h, w = mask.shape
    long_side = int(rng.integers(int(base_size * scale[0]), int(base_size * scale[1]) + 1))
    if h > w:
        oh, ow = long_side, int(w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(h * long_side / w + 0.5)
    img = _resize(np.ascontiguousarray(img), ow, oh, nearest=False)
    mask = _resize(np.ascontiguousarray(mask), ow, oh, nearest=True)
    pad_h, pad_w = max(crop_size - oh, 0), max(crop_size - ow, 0)
    if pad_h or pad_w:
        img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=ignore_label)
    h, w = mask.shape
    y, x = int(rng.integers(0, h - crop_size + 1)), int(rng.integers(0, w - crop_size + 1))
    img = img[y : y + crop_size, x : x + crop_size]
    mask = mask[y : y + crop_size, x : x + crop_size]
    if blur and rng.random() < 0.5:
        radius = rng.random()
        if radius > 0:
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=radius)
    return np.ascontiguousarray(img), np.ascontiguousarray(mask)


def val_transform(img: np.ndarray, mask: np.ndarray, crop_size: int = 480) -> Tuple[np.ndarray, np.ndarray]:
    """gluoncv's validation during training: the shorter side to ``crop_size``, then the centre crop."""
    h, w = mask.shape
    if w > h:
        oh, ow = crop_size, int(w * crop_size / h)
    else:
        ow, oh = crop_size, int(h * crop_size / w)
    img = _resize(img, ow, oh, nearest=False)
    mask = _resize(mask.astype(np.int32, copy=False), ow, oh, nearest=True)
    y, x = int(round((oh - crop_size) / 2.0)), int(round((ow - crop_size) / 2.0))
    return img[y : y + crop_size, x : x + crop_size], mask[y : y + crop_size, x : x + crop_size]


def normalize(
    img: np.ndarray, mean: Sequence[float] = SEG_MEAN, std: Sequence[float] = SEG_STD
) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32, less the ImageNet mean, over its standard deviation (gluoncv's)."""
    out = (img.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def to_labels(label_map: np.ndarray, offset: int, classes: int, ignore_label: int = IGNORE) -> np.ndarray:
    """A stored label map as training labels: ``value - offset``; anything outside 0..classes-1 (ADE20K's
    "other" with offset 1, a 255 border) becomes ``ignore_label``."""
    labels = label_map.astype(np.int32) - offset
    labels[(labels < 0) | (labels >= classes)] = ignore_label
    return labels


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def list_pairs(image_dir: str, mask_dir: str) -> List[Tuple[str, str]]:
    """``(image, mask)`` paths: every image of ``image_dir`` (sorted) with the PNG of the same name in
    ``mask_dir`` (ADE20K's layout: images/training/x.jpg, annotations/training/x.png)."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"no image folder {image_dir}")
    pairs, missing = [], []
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        mask = os.path.join(mask_dir, stem + ".png")
        (pairs if os.path.isfile(mask) else missing).append((os.path.join(image_dir, name), mask))
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no mask, e.g. {missing[0][1]} is missing")
    if not pairs:
        raise FileNotFoundError(f"no images in {image_dir}")
    return pairs


def load_pair(pair: Tuple[str, str]) -> Tuple[np.ndarray, np.ndarray]:
    """The RGB uint8 image and the label map as stored (uint8 or uint16), checked to be the same size."""
    image_path, mask_path = pair
    img = cv2.imread(image_path, cv2.IMREAD_COLOR)
    mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
    if img is None or mask is None:
        raise ValueError(f"cannot decode {image_path if img is None else mask_path}")
    if mask.ndim == 3:
        raise ValueError(
            f"{mask_path} has {mask.shape[2]} channels: a label map has one (a class id per pixel)"
        )
    if img.shape[:2] != mask.shape:
        raise ValueError(f"{image_path} is {img.shape[:2]} but its mask {mask_path} is {mask.shape}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), mask


def batches(
    pairs: Sequence[Tuple[str, str]],
    batch_size: int,
    make: Callable[[int, np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]],
    threads: int = 4,
    drop_last: bool = True,
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(data (N, 3, H, W) float32, labels (N, H, W) int32)`` batches of ``pairs`` in order; ``make(i,
    img, label_map)`` turns the i-th pair into a normalised CHW image and its labels, in ``threads``
    threads (OpenCV releases the GIL). The next batch is decoded while the caller uses this one."""

    def one(i):
        img, mask = load_pair(pairs[i])
        return make(i, img, mask)

    starts = range(0, len(pairs) - (batch_size - 1 if drop_last else 0), batch_size)
    with ThreadPoolExecutor(max(1, threads)) as pool:

        def submit(start):
            return [pool.submit(one, i) for i in range(start, min(start + batch_size, len(pairs)))]

        pending = submit(starts[0]) if len(starts) else None
        for k in range(len(starts)):
            items = [f.result() for f in pending]
            pending = submit(starts[k + 1]) if k + 1 < len(starts) else None
            yield np.stack([a for a, _ in items]), np.stack([b for _, b in items])


class SegmentationMetric:
    """Pixel accuracy and mean IoU from counts summed over images (and workers).

    Parameters
    ----------
    classes : int
        Labels 0 .. classes-1 count; any other label (the ignore label) is left out of every count, and a
        prediction on such a pixel is not counted either.
    """

    def __init__(self, classes: int):
        self.classes = classes
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.labelled = 0
        self.inter = np.zeros(self.classes, np.int64)
        self.union = np.zeros(self.classes, np.int64)

    def update(self, label: np.ndarray, pred: np.ndarray) -> None:
        """Adds a batch: ``label`` and ``pred`` are integer arrays of one shape (class ids; ``pred`` may be
        logits of shape (N, classes, H, W), then it is their argmax)."""
        label, pred = np.asarray(label), np.asarray(pred)
        if pred.ndim == label.ndim + 1:
            pred = pred.argmax(axis=1)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        valid = (label >= 0) & (label < self.classes)
        label, pred = label[valid].astype(np.int64), pred[valid].astype(np.int64)
        hit = pred == label
        self.correct += int(hit.sum())
        self.labelled += int(valid.sum())
        inter = np.bincount(label[hit], minlength=self.classes)
        area_pred = np.bincount(pred[(pred >= 0) & (pred < self.classes)], minlength=self.classes)
        area_label = np.bincount(label, minlength=self.classes)
        self.inter += inter
        self.union += area_pred + area_label - inter

    def counts(self) -> np.ndarray:
        """Every count in one int64 vector: ``[correct, labelled, inter (classes), union (classes)]``. Sum it
        over workers (``training.dist.allreduce_sum``) and :meth:`set_counts` the total."""
        return np.concatenate([[self.correct, self.labelled], self.inter, self.union]).astype(np.int64)

    def set_counts(self, counts: np.ndarray) -> None:
        counts = np.asarray(counts, np.int64)
        if counts.shape != (2 + 2 * self.classes,):
            raise ValueError(f"expected {2 + 2 * self.classes} counts, got {counts.shape}")
        self.correct, self.labelled = int(counts[0]), int(counts[1])
        self.inter = counts[2 : 2 + self.classes].copy()
        self.union = counts[2 + self.classes :].copy()

    def iou(self) -> np.ndarray:
        """IoU per class; a class that is in neither the labels nor the predictions gets 0 (gluoncv's)."""
        return self.inter / np.maximum(self.union, 1)

    def get(self, present_only: bool = False) -> Tuple[float, float]:
        """``(pixel accuracy, mIoU)`` as fractions. gluoncv averages the IoU over all classes (a class
        absent from labels and predictions counts 0; on ADE20K's validation set every class is present);
        ``present_only`` averages over the classes with a non-empty union instead."""
        pixacc = self.correct / max(self.labelled, 1)
        iou = self.iou()
        if present_only:
            iou = iou[self.union > 0] if (self.union > 0).any() else np.zeros(1)
        return float(pixacc), float(iou.mean())


def allreduce_metric(metric: SegmentationMetric, name: Optional[str] = "seg_metric") -> SegmentationMetric:
    """Sums ``metric``'s counts over Horovod workers in place (a no-op in one process) and returns it."""
    from ..training import dist

    if dist.is_distributed():
        import mxnet as mx

        total = dist.allreduce_sum(mx.nd.array(metric.counts(), dtype="int64"), name=name)
        metric.set_counts(total.asnumpy())
    return metric
