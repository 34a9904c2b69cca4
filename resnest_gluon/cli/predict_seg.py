"""Segments images with a DeepLab ResNeSt: a label map, a colour overlay and the class shares of each image.

    python scripts/predict_seg.py photos/ --model deeplab_resnest50_ade --pretrained --out-dir seg_out
    python scripts/predict_seg.py a.jpg --model deeplab_resnest50_ade --backbone resnest14 --classes 5 \\
        --params runs/mine/best.params --class-names names.txt --mask-offset 0 --base-size 256 --crop-size 224

For each image ``NAME.ext`` it writes, in ``--out-dir``:

* ``NAME.png``: the label map at the image's size, class id + ``--mask-offset`` per pixel (so it reads back
  as the training masks did: ADE20K's 1..150 with the default offset 1), 8-bit when it fits, else 16-bit;
* ``NAME.overlay.jpg``: the image blended with one colour per class (``--alpha``);
* ``NAME.csv``: ``class,name,pixels,share`` for every class present, largest first.

The scores come from :func:`resnest_gluon.cli.verify_seg.predict_scores`, gluoncv's evaluator (single scale
by default; ``--scales ... --flip`` for its multi-scale protocol).
"""

import csv
import logging
import os
from typing import List, Optional, Sequence

import cv2
import mxnet as mx
import numpy as np

from resnest_gluon.cli import common
from resnest_gluon.cli.predict import collect_images
from resnest_gluon.errors import UserError

logger = logging.getLogger("resnest_gluon.predict_seg")

__all__ = ["class_shares", "main", "overlay", "palette", "parse_args", "segment", "write_outputs"]


def parse_args(argv=None):
    p = common.parser("Label maps, colour overlays and class shares of images with a segmentation model.")
    p.add_argument("inputs", nargs="+", help="images, folders of images, or .txt lists of paths")
    common.add_seg_model(p, "a .params file of the model (e.g. a train-seg run's best)")
    p.add_argument("--classes", type=int, default=150, help="classes of the model")
    p.add_argument(
        "--class-names", default=None, help="names file, one per line (default: ADE20K's when --classes 150)"
    )
    p.add_argument("--mask-offset", type=int, default=1, help="the label PNG holds class id + offset")
    p.add_argument("--base-size", type=int, default=520, help="longer side at scale 1.0")
    p.add_argument("--crop-size", type=int, default=480, help="window side")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="gluoncv multi-scale: 0.5 ... 1.75")
    p.add_argument("--flip", action="store_true", help="add the mirrored image's scores")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours in the overlay")
    p.add_argument("--out-dir", required=True, help="where the PNG, overlay and CSV of each image go")
    p.add_argument("--ctx", choices=("cpu", "gpu"), default="cpu", help="device")
    return p.parse_args(argv)


def palette(classes: int) -> np.ndarray:
    """``(classes, 3)`` uint8 RGB colours, well apart for neighbouring ids (hues stepped by the golden
    angle, two brightness levels)."""
    hues = (np.arange(classes) * 137.508) % 360
    hsv = np.stack(
        [hues / 2, np.full(classes, 200), np.where(np.arange(classes) % 2, 255, 170)], axis=1
    ).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def overlay(img: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The RGB image blended with ``colours[label]`` per pixel."""
    tint = colours[np.clip(labels, 0, len(colours) - 1)]
    return (img.astype(np.float32) * (1 - alpha) + tint.astype(np.float32) * alpha + 0.5).astype(np.uint8)


def class_shares(labels: np.ndarray, classes: int, names: Optional[Sequence[str]] = None) -> List[dict]:
    """``[{class, name, pixels, share}]`` of the classes present in ``labels``, largest first."""
    counts = np.bincount(labels.ravel(), minlength=classes)
    total = max(int(labels.size), 1)
    rows = [
        dict(
            **{"class": int(c)},
            name=names[c] if names and c < len(names) else str(c),
            pixels=int(counts[c]),
            share=counts[c] / total,
        )
        for c in np.flatnonzero(counts)
    ]
    return sorted(rows, key=lambda r: -r["pixels"])


def segment(net, img: np.ndarray, classes: int, args, ctx) -> np.ndarray:
    """HxW int32 class ids of an RGB uint8 image."""
    from resnest_gluon.cli.verify_seg import predict_scores
    from resnest_gluon.data.segmentation import normalize

    x = mx.nd.array(normalize(img)[None], ctx=ctx)
    scores = predict_scores(net, x, classes, args.base_size, args.crop_size, args.scales, args.flip)
    return scores.argmax(axis=1)[0].asnumpy().astype(np.int32)


def write_outputs(
    out_dir: str,
    stem: str,
    img: np.ndarray,
    labels: np.ndarray,
    names: Optional[Sequence[str]],
    classes: int,
    mask_offset: int = 0,
    alpha: float = 0.5,
) -> dict:
    """Writes ``stem.png``, ``stem.overlay.jpg`` and ``stem.csv``; returns their paths."""
    stored = labels + mask_offset
    dtype = np.uint8 if stored.max(initial=0) < 256 else np.uint16
    paths = {
        k: os.path.join(out_dir, stem + ext)
        for k, ext in (("png", ".png"), ("overlay", ".overlay.jpg"), ("csv", ".csv"))
    }
    cv2.imwrite(paths["png"], stored.astype(dtype))
    blended = overlay(img, labels, palette(classes), alpha)
    cv2.imwrite(paths["overlay"], cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "name", "pixels", "share"])
        writer.writeheader()
        for row in class_shares(labels, classes, names):
            writer.writerow(dict(row, share=f"{row['share']:.6f}"))
    return paths


def _names(args) -> Optional[List[str]]:
    from resnest_gluon.data.class_names import read_class_names

    if args.class_names:
        names = read_class_names(args.class_names)
    elif args.classes == 150:
        from resnest_gluon.cli.prepare_ade20k import ade20k_class_names

        names = ade20k_class_names()
    else:
        return None
    if len(names) != args.classes:
        raise UserError(
            f"{args.class_names or 'the names file'} has {len(names)} names for {args.classes} classes"
        )
    return names


def main(argv=None) -> int:
    """Segments every image; returns 0, or 1 when some images could not be read (logged)."""
    from resnest_gluon.cli.verify_seg import load_net

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    paths = collect_images(args.inputs)
    names = _names(args)
    ctx = mx.gpu(0) if args.ctx == "gpu" else mx.cpu()
    net = load_net(args, ctx)
    os.makedirs(args.out_dir, exist_ok=True)
    failed, stems = 0, set()
    for path in paths:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            logger.error("%s: not a decodable image, skipped", path)
            failed += 1
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        while stem in stems:  # two images of one name in different folders
            stem += "_"
        stems.add(stem)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        labels = segment(net, img, args.classes, args, ctx)
        write_outputs(args.out_dir, stem, img, labels, names, args.classes, args.mask_offset, args.alpha)
        top = class_shares(labels, args.classes, names)[0]
        logger.info(
            "%s: %d classes, mostly %s (%.0f %%)",
            path,
            len(np.unique(labels)),
            top["name"],
            100 * top["share"],
        )
    return 1 if failed else 0
