"""The segmentation demo on built-in data: digits pasted onto textured canvases, a small DeepLab, mIoU.

1. Scenes: scikit-learn's handwritten digits (``load_digits``, 8x8) are scaled to random sizes and pasted
   at random places, in random colours, onto canvases of random smooth texture and stripes; the mask holds
   the digit's class + 1 where its stroke covers the pixel, 0 (background) elsewhere: 11 classes. Training
   and validation scenes use disjoint digits. Both are stored as image-mask pair records
   (:mod:`resnest_gluon.data.seg_records`) and read back from them.
2. A backbone for fine-tuning: a ResNeSt-14 classifier trained briefly on single digits on the same kind
   of canvases (or any ResNeSt-14 classification ``.params`` given with ``--backbone-params``, e.g. the
   classification demo's ``best.params``).
3. Two small DeepLabs (ResNeSt-14 backbone at output stride 8, a 64-channel ASPP with rates 2, 4, 6) are
   trained with the same steps, schedule and seed: one from scratch, one with the backbone of step 2.
4. Both are scored on the validation scenes (pixel accuracy and mIoU over the 11 classes, gluoncv's
   metric), and a few overlays (image | truth | prediction) are written.

    python scripts/demo.py --task seg --out-dir demo_seg_out

``--quick`` is the tiny version the tests run (seconds).
"""

import argparse
import json
import logging
import os
import time
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from resnest_gluon.cli import common

logger = logging.getLogger("resnest_gluon.demo_seg")

CLASSES = 11  # background + the ten digits
# the demo's DeepLab: ResNeSt-14 at output stride 8 and a narrow ASPP, fast enough for 2 cores
SMALL_DEEPLAB = dict(backbone="resnest14", output_stride=8, rates=(2, 4, 6), head_channels=64)


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(
        "Segment digits pasted on textured canvases: a small DeepLab, fine-tuned vs from scratch."
    )
    p.add_argument("--out-dir", default="demo_seg_out", help="records, overlays and summary.json go here")
    p.add_argument("--size", type=int, default=64, help="scene side in pixels")
    p.add_argument("--train-scenes", type=int, default=800, help="training scenes")
    p.add_argument("--val-scenes", type=int, default=100, help="validation scenes")
    p.add_argument("--steps", type=int, default=200, help="segmentation training steps (each run)")
    p.add_argument("--pretrain-steps", type=int, default=400, help="steps of the digit classifier")
    p.add_argument("--batch-size", type=int, default=8, help="scenes per step")
    p.add_argument("--lr", type=float, default=0.02, help="peak learning rate (SGD, momentum 0.9, poly)")
    p.add_argument(
        "--backbone-params", default=None, help="a ResNeSt-14 classifier's .params instead of step 2"
    )
    p.add_argument("--overlays", type=int, default=4, help="validation overlays to write")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--quick", action="store_true", help="a tiny run for tests: 48 px, a few steps")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.train_scenes, args.val_scenes = 48, 32, 8
        args.steps, args.pretrain_steps, args.overlays = 3, 3, 2
    return args


# ------------------------------------------------------------------------------------------------ data
def digits_split(seed: int = 0) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits (8x8 floats 0-1, labels) split 80/20 into training and validation digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int32)
    order = np.random.RandomState(seed).permutation(len(labels))
    cut = int(0.8 * len(order))
    return (images[order[:cut]], labels[order[:cut]]), (images[order[cut:]], labels[order[cut:]])


def textured_canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size RGB canvas: a smooth random field, stripes at a random angle and pixel noise."""
    field = cv2.resize(
        rng.uniform(0, 255, (4, 4, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = 25 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    canvas = 0.6 * field + stripes[..., None] + rng.normal(0, 8, (size, size, 3))
    return np.clip(canvas, 0, 255)


def paste(
    canvas: np.ndarray,
    mask: Optional[np.ndarray],
    digit: np.ndarray,
    label: int,
    rng,
    side: int,
    y: int,
    x: int,
):
    """Blends ``digit`` (8x8, 0-1) scaled to ``side`` into ``canvas`` at (y, x) in a random colour; marks
    ``label + 1`` in ``mask`` where the stroke covers at least half of a pixel."""
    ink = cv2.resize(digit, (side, side), interpolation=cv2.INTER_LINEAR)
    # the scan's faint grey (1-2 of 16) would tint the digit's whole square: below 1/6 is no ink
    alpha = np.clip(1.5 * ink - 0.25, 0, 1)[..., None]
    colour = rng.uniform(0, 255, 3)
    region = canvas[y : y + side, x : x + side]
    if region.mean() > 127:  # a colour that stands out from the texture underneath
        colour *= 0.25
    else:
        colour = 255 - 0.25 * (255 - colour)
    canvas[y : y + side, x : x + side] = region * (1 - alpha) + colour * alpha
    if mask is not None:
        mask[y : y + side, x : x + side][alpha[..., 0] >= 0.5] = label + 1


def make_scenes(
    n: int, size: int, digits: Tuple[np.ndarray, np.ndarray], rng: np.random.Generator, max_digits: int = 3
) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` scenes ``(uint8 (n, size, size, 3), int32 masks (n, size, size))`` of 1..max_digits digits each,
    sides from a quarter to 3/5 of the scene."""
    images, labels = digits
    out = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.int32)
    for i in range(n):
        canvas = textured_canvas(rng, size)
        for _ in range(int(rng.integers(1, max_digits + 1))):
            k = int(rng.integers(len(labels)))
            side = int(rng.integers(size // 4, int(size * 0.6) + 1))
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            paste(canvas, masks[i], images[k], int(labels[k]), rng, side, y, x)
        out[i] = np.clip(canvas, 0, 255).astype(np.uint8)
    return out, masks


def make_crops(n: int, size: int, digits, rng) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` single-digit canvases for the classifier: ``(uint8 (n, size, size, 3), labels)``."""
    images, labels = digits
    out, targets = np.zeros((n, size, size, 3), np.uint8), np.zeros(n, np.int32)
    for i in range(n):
        canvas = textured_canvas(rng, size)
        k = int(rng.integers(len(labels)))
        side = int(rng.integers(size // 2, size + 1))
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        paste(canvas, None, images[k], int(labels[k]), rng, side, y, x)
        out[i], targets[i] = np.clip(canvas, 0, 255).astype(np.uint8), labels[k]
    return out, targets


def _batch(images: np.ndarray):
    import mxnet as mx

    from resnest_gluon.data.segmentation import normalize

    return mx.nd.array(np.stack([normalize(img) for img in images]))


# --------------------------------------------------------------------------------------------- training
def _poly(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (1 - (step - warmup) / max(total - warmup, 1)) ** 0.9


def pretrain_backbone(
    path: str, digits, size: int, steps: int, batch: int, lr: float, seed: int, val_digits=None
) -> Dict[str, float]:
    """Trains a ResNeSt-14 digit classifier on single-digit canvases (the last BatchNorm of each block
    starts at zero, so each block starts as its shortcut); saves it to ``path``. Returns its
    ``train_accuracy`` over the last fifth of the steps and, with ``val_digits``, its ``val_accuracy`` on
    200 canvases of those."""
    import mxnet as mx
    from mxnet import autograd, gluon

    import resnest_gluon

    rng = np.random.default_rng(seed + 1)
    mx.random.seed(seed)
    net = resnest_gluon.get_model("resnest14", classes=10, last_gamma=True)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", dict(learning_rate=lr, momentum=0.9, wd=1e-4))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    hits = []
    for step in range(steps):
        trainer.set_learning_rate(_poly(step, steps, lr, max(1, steps // 10)))
        images, labels = make_crops(batch, size, digits, rng)
        x, y = _batch(images), mx.nd.array(labels)
        with autograd.record():
            out = net(x)
            loss = loss_fn(out, y)
        loss.backward()
        trainer.step(batch)
        hits.append(float((out.argmax(axis=1) == y).mean().asscalar()))
        if (step + 1) % 100 == 0:
            logger.info(
                "classifier step %d/%d: accuracy %.2f over the last 100",
                step + 1,
                steps,
                np.mean(hits[-100:]),
            )
    net.save_parameters(path)
    result = dict(train_accuracy=float(np.mean(hits[-max(1, steps // 5) :])))
    if val_digits is not None:
        images, labels = make_crops(200, size, val_digits, np.random.default_rng(seed + 2))
        pred = np.concatenate(
            [net(_batch(images[k : k + 50])).argmax(axis=1).asnumpy() for k in range(0, 200, 50)]
        )
        result["val_accuracy"] = float((pred == labels).mean())
    return result


def small_deeplab(backbone_params: Optional[str] = None):
    """The demo's DeepLab, initialised; with ``backbone_params``, its backbone starts from that classifier."""
    import mxnet as mx

    import resnest_gluon
    from resnest_gluon.models.deeplab import load_backbone_params

    net = resnest_gluon.get_model("deeplab_resnest50_ade", classes=CLASSES, last_gamma=True, **SMALL_DEEPLAB)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    if backbone_params:
        load_backbone_params(net, SMALL_DEEPLAB["backbone"], backbone_params)
    return net


def train_segmenter(net, train, steps: int, batch: int, lr: float, seed: int) -> float:
    """SGD (momentum 0.9, weight decay 1e-4), poly schedule with warm-up, the heads at 10x the backbone's
    rate (gluoncv's recipe); ``train`` is ``(items, load)`` of pair records. Returns the last loss."""
    import mxnet as mx
    from mxnet import autograd, gluon

    items, load = train
    for head in (net.head, net.auxlayer):
        head.collect_params().setattr("lr_mult", 10.0)
    net.auxlayer.collect_params().setattr("grad_req", "null")  # the demo trains the main head only
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", dict(learning_rate=lr, momentum=0.9, wd=1e-4))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(axis=1)
    rng = np.random.default_rng(seed)
    mx.random.seed(seed)
    loss = None
    for step in range(steps):
        trainer.set_learning_rate(_poly(step, steps, lr, max(1, steps // 10)))
        pairs = [load(items[int(k)]) for k in rng.integers(0, len(items), batch)]
        x, y = _batch([p[0] for p in pairs]), mx.nd.array(np.stack([p[1] for p in pairs]))
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(batch)
        if (step + 1) % 50 == 0:
            logger.info("segmentation step %d/%d: loss %.3f", step + 1, steps, float(loss.mean().asscalar()))
    return float(loss.mean().asscalar()) if loss is not None else float("nan")


def evaluate(net, images: np.ndarray, masks: np.ndarray, batch: int = 16) -> Tuple[float, float, np.ndarray]:
    """``(pixel accuracy, mIoU, predictions)`` over the 11 classes."""
    from resnest_gluon.data.segmentation import SegmentationMetric

    metric, preds = SegmentationMetric(CLASSES), []
    for start in range(0, len(images), batch):
        pred = net(_batch(images[start : start + batch])).argmax(axis=1).asnumpy().astype(np.int32)
        metric.update(masks[start : start + batch], pred)
        preds.append(pred)
    pixacc, miou = metric.get()
    return pixacc, miou, np.concatenate(preds)


def write_overlays(folder: str, images, masks, preds, count: int) -> list:
    """``image | truth | prediction`` strips (colours per class), enlarged 4x, as PNG files."""
    from resnest_gluon.cli.predict_seg import overlay, palette

    os.makedirs(folder, exist_ok=True)
    colours = palette(CLASSES)
    colours[0] = 0  # background: no tint
    paths = []
    for i in range(min(count, len(images))):
        strip = np.concatenate(
            [
                images[i],
                overlay(images[i], masks[i], colours, 0.6),
                overlay(images[i], preds[i], colours, 0.6),
            ],
            axis=1,
        )
        strip = cv2.resize(strip, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
        paths.append(os.path.join(folder, f"val_{i:02d}.png"))
        cv2.imwrite(paths[-1], cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    return paths


def run(args: argparse.Namespace) -> Dict:
    """Every step; returns the summary (also written to ``summary.json``)."""
    from resnest_gluon.data.seg_records import write_pair_records
    from resnest_gluon.data.segmentation import SegmentationMetric, open_split

    tic = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    train_digits, val_digits = digits_split(args.seed)
    rng = np.random.default_rng(args.seed)
    train_images, train_masks = make_scenes(args.train_scenes, args.size, train_digits, rng)
    val_images, val_masks = make_scenes(args.val_scenes, args.size, val_digits, rng)
    write_pair_records(os.path.join(args.out_dir, "train"), zip(train_images, train_masks))
    write_pair_records(os.path.join(args.out_dir, "val"), zip(val_images, val_masks))
    train = open_split(args.out_dir, "train")
    logger.info(
        "scenes: %d training, %d validation, %d px, written as pair records",
        len(train[0]),
        args.val_scenes,
        args.size,
    )

    summary = dict(
        size=args.size, train_scenes=args.train_scenes, val_scenes=args.val_scenes, steps=args.steps
    )
    summary["batch_size"], summary["model"] = args.batch_size, dict(SMALL_DEEPLAB)
    # the floor: what labelling every validation pixel background scores
    background = SegmentationMetric(CLASSES)
    background.update(val_masks, np.zeros_like(val_masks))
    pixacc, miou = background.get()
    summary["all_background"] = dict(miou=100 * miou, pixacc=100 * pixacc)
    backbone = args.backbone_params
    if backbone is None:
        backbone = os.path.join(args.out_dir, "digits_resnest14.params")
        t = time.time()
        acc = pretrain_backbone(
            backbone, train_digits, 32, args.pretrain_steps, 32, 0.05, args.seed, val_digits
        )
        summary["pretrain"] = dict(acc, steps=args.pretrain_steps, seconds=time.time() - t)
        logger.info(
            "backbone: a digit classifier, %d steps, accuracy %.1f %% (training), %.1f %% (held-out digits)",
            args.pretrain_steps,
            100 * acc["train_accuracy"],
            100 * acc["val_accuracy"],
        )
    for name, params in (("scratch", None), ("finetuned", backbone)):
        t = time.time()
        net = small_deeplab(params)
        loss = train_segmenter(net, train, args.steps, args.batch_size, args.lr, args.seed)
        pixacc, miou, preds = evaluate(net, val_images, val_masks)
        summary[name] = dict(miou=100 * miou, pixacc=100 * pixacc, last_loss=loss, seconds=time.time() - t)
        logger.info(
            "%s: mIoU %.1f %%, pixAcc %.1f %% (%.0f s)", name, 100 * miou, 100 * pixacc, time.time() - t
        )
        if name == "finetuned":
            summary["overlays"] = write_overlays(
                os.path.join(args.out_dir, "overlays"), val_images, val_masks, preds, args.overlays
            )
    tuned, scratch, floor = (summary[k]["miou"] for k in ("finetuned", "scratch", "all_background"))
    summary["finetuned_minus_scratch_miou"] = tuned - scratch
    summary["result"] = (
        f"mIoU fine-tuned {tuned:.1f} %, from scratch {scratch:.1f} % ({tuned - scratch:+.1f} points), "
        f"same {args.steps} steps; every pixel background would score {floor:.1f} %"
    )
    logger.info("%s", summary["result"])
    summary["seconds"] = time.time() - tic
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = run(parse_args(argv))
    print(json.dumps({k: summary[k] for k in ("result", "scratch", "finetuned", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
