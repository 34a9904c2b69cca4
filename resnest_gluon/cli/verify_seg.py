"""Scores a segmentation model on image and mask folders: pixel accuracy and mIoU, over Horovod shards.

    python scripts/verify_seg.py --model deeplab_resnest50_ade --pretrained --data-root ADEChallengeData2016
    python scripts/verify_seg.py --model deeplab_resnest50_ade --params runs/seg/best.params \\
        --data-root my_masks --split validation --classes 5 --mask-offset 0 --base-size 72 --crop-size 64

Each image is scored at its own full resolution with gluoncv's evaluator (``MultiEvalModel`` in
``gluoncv/model_zoo/segbase.py``): at each scale s the longer side is resized to ceil(base_size * s); a
picture no longer than the crop is padded (with black) and run whole, a larger one in crop x crop windows at
a stride of 2/3 of the crop, averaged where they overlap; with ``--flip`` the mirrored image's logits are
added; the scores, exp(logits), are resized back to the image and summed over scales. The default is the
single-scale protocol (``--scales 1.0``, no flip). gluoncv's published ADE20K figures come from its
multi-scale protocol: ``--scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip``.

Every worker scores its own shard of the images; the counts are summed, so every pixel is counted once.
"""

import argparse
import json
import logging
import math
import time
from typing import Sequence

import mxnet as mx
import numpy as np

import resnest_gluon
from resnest_gluon.cli import common
from resnest_gluon.data import shard_bounds
from resnest_gluon.data.segmentation import (
    SEG_MEAN,
    SEG_STD,
    SegmentationMetric,
    allreduce_metric,
    normalize,
    open_split,
    to_labels,
)
from resnest_gluon.errors import UserError
from resnest_gluon.models.deeplab import SEG_MODELS
from resnest_gluon.training import dist

logger = logging.getLogger("resnest_gluon.verify_seg")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Pixel accuracy and mIoU of a segmentation model (gluoncv's evaluator).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_seg_model(p, "a .params file of the model (e.g. a train_seg run's best)")
    p.add_argument(
        "--data-root",
        required=True,
        help="folder with <split>.rec pair records, or images/<split> and annotations/<split>",
    )
    p.add_argument("--split", default="validation", help="sub-folder of images/ and annotations/")
    p.add_argument(
        "--classes", type=int, default=150, help="classes; labels outside 0..classes-1 are ignored"
    )
    p.add_argument("--mask-offset", type=int, default=1, help="label = mask value - offset (ADE20K: 1)")
    p.add_argument("--base-size", type=int, default=520, help="longer side at scale 1.0")
    p.add_argument("--crop-size", type=int, default=480, help="window side")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="gluoncv multi-scale: 0.5 ... 1.75")
    p.add_argument("--flip", action="store_true", help="add the mirrored image's logits (gluoncv: on)")
    p.add_argument("--ctx", choices=("cpu", "gpu"), default="cpu", help="device (gpu: mx.gpu(local_rank))")
    p.add_argument("--limit", type=int, default=None, help="score the first N images only")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p.parse_args(argv)


def _resize(x: mx.nd.NDArray, height: int, width: int) -> mx.nd.NDArray:
    return mx.nd.contrib.BilinearResize2D(x, height=height, width=width)


def _pad(x: mx.nd.NDArray, size: int) -> mx.nd.NDArray:
    """Pads the bottom and right up to ``size`` with the normalised value of a black pixel."""
    _, _, h, w = x.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if not (ph or pw):
        return x
    fill = -np.asarray(SEG_MEAN, np.float32) / np.asarray(SEG_STD, np.float32)
    out = mx.nd.array(
        np.broadcast_to(fill.reshape(1, 3, 1, 1), (x.shape[0], 3, h + ph, w + pw)), ctx=x.context
    )
    out[:, :, :h, :w] = x
    return out


def _window_scores(net, x: mx.nd.NDArray, flip: bool) -> mx.nd.NDArray:
    logits = net(x)
    if flip:
        logits = logits + net(x.flip(axis=3)).flip(axis=3)
    return logits.exp()


def predict_scores(
    net,
    image: mx.nd.NDArray,
    classes: int,
    base_size: int,
    crop_size: int,
    scales: Sequence[float],
    flip: bool,
) -> mx.nd.NDArray:
    """gluoncv's evaluator on one normalised image (1, 3, H, W): the class scores (1, classes, H, W)."""
    _, _, h, w = image.shape
    stride = int(crop_size * 2.0 / 3.0)
    scores = mx.nd.zeros((1, classes, h, w), ctx=image.context)
    for scale in scales:
        long_side = int(math.ceil(base_size * scale))
        if h > w:
            height, width = long_side, int(w * long_side / h + 0.5)
        else:
            width, height = long_side, int(h * long_side / w + 0.5)
        img = _resize(image, height, width)
        if long_side <= crop_size:
            out = _window_scores(net, _pad(img, crop_size), flip)[:, :, :height, :width]
        else:
            padded = _pad(img, crop_size)
            ph, pw = padded.shape[2:]
            out = mx.nd.zeros((1, classes, ph, pw), ctx=image.context)
            count = mx.nd.zeros((1, 1, ph, pw), ctx=image.context)
            for y0 in range(0, int(math.ceil((ph - crop_size) / stride)) * stride + 1, stride):
                for x0 in range(0, int(math.ceil((pw - crop_size) / stride)) * stride + 1, stride):
                    y1, x1 = min(y0 + crop_size, ph), min(x0 + crop_size, pw)
                    window = _pad(padded[:, :, y0:y1, x0:x1], crop_size)
                    out[:, :, y0:y1, x0:x1] += _window_scores(net, window, flip)[:, :, : y1 - y0, : x1 - x0]
                    count[:, :, y0:y1, x0:x1] += 1
            out = (out / count)[:, :, :height, :width]
        scores += _resize(out, h, w)
    return scores


def load_net(args: argparse.Namespace, ctx):
    kwargs = dict(classes=args.classes)
    if args.backbone:
        kwargs["backbone"] = args.backbone
    try:
        net = resnest_gluon.get_model(
            args.model, pretrained=True if args.pretrained else args.params, **kwargs
        )
    except (OSError, ValueError) as err:
        raise UserError(str(err)) from err
    net.collect_params().reset_ctx(ctx)
    net.set_aux(False)
    net.hybridize(static_alloc=True)
    return net


def main(argv=None) -> dict:
    """Scores the model; returns (and prints as one JSON line) pixel accuracy and mIoU in percent."""
    args = parse_args(argv)
    if args.model not in SEG_MODELS:
        raise UserError(f"unknown model {args.model!r}; choose one of: {', '.join(SEG_MODELS)}")
    dist.init()
    ctx = dist.worker_context(args.ctx)
    try:
        pairs, load = open_split(args.data_root, args.split)
    except FileNotFoundError as err:
        raise UserError(f"--data-root {args.data_root}: {err}") from err
    pairs = pairs[: args.limit] if args.limit else pairs
    begin, end = shard_bounds(len(pairs), dist.size(), dist.rank())
    net = load_net(args, ctx)
    metric = SegmentationMetric(args.classes)
    tic = time.time()
    for pair in pairs[begin:end]:
        img, mask = load(pair)
        image = mx.nd.array(normalize(img)[None], ctx=ctx)
        scores = predict_scores(
            net, image, args.classes, args.base_size, args.crop_size, args.scales, args.flip
        )
        metric.update(to_labels(mask, args.mask_offset, args.classes)[None], scores.argmax(axis=1).asnumpy())
    seconds = time.time() - tic
    allreduce_metric(metric, name="verify_seg")
    pixacc, miou = metric.get()
    result = dict(
        model=args.model,
        images=len(pairs),
        pixacc=100.0 * pixacc,
        miou=100.0 * miou,
        miou_present=100.0 * metric.get(present_only=True)[1],
        labelled_pixels=metric.labelled,
        protocol=dict(base_size=args.base_size, crop_size=args.crop_size, scales=args.scales, flip=args.flip),
        workers=dist.size(),
        seconds=seconds,
    )
    if dist.is_primary():
        print(json.dumps(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return result
