"""Trains a DeepLabV3 on the dilated ResNeSt for semantic segmentation, on one worker or many with Horovod.

    horovodrun -np 8 -H server1:4,server2:4 python scripts/train_seg.py --ctx gpu \\
        --model deeplab_resnest50_ade --data-root ADEChallengeData2016 --pretrained --sync-bn \\
        --batch-size 2 --save-dir runs/deeplab50
    python scripts/train_seg.py --ctx cpu --model deeplab_resnest50_ade --backbone resnest14 --classes 5 \\
        --data-root my_masks --mask-offset 0 --crop-size 64 --base-size 72 ...      # one worker

Data: ADE20K's folder layout, ``images/{training,validation}/NAME.jpg`` with the label map
``annotations/{training,validation}/NAME.png`` (one class id per pixel); label = value - ``--mask-offset``
(ADE20K: 1, so "other" is ignored), anything outside 0..classes-1 is ignored by the loss and the scores.
The augmentation and the scores are gluoncv's (:mod:`resnest_gluon.data.segmentation`); the model is
``resnest_gluon.get_model(--model)``, with the auxiliary FCN head on C4 in the loss (``--aux-weight``).

gluoncv's recipe for these models (its train.py and published logs): batch 16 over 8 GPUs, crop 480 from a
base size of 520, SGD momentum 0.9, weight decay 1e-4, learning rate 0.01 for a batch of 16 (``--lr 0.16``
here, which is per 256 images), the heads at 10x the backbone's rate (``--head-lr-mult``), auxiliary loss
weight 0.5, synchronised BatchNorm, poly decay (power 0.9) per iteration, 120 or 180 epochs (see
docs/segmentation.md for where each value comes from).
"""

import argparse
import logging
import os

import mxnet as mx
import numpy as np
from mxnet import gluon

import resnest_gluon
from resnest_gluon import threads
from resnest_gluon.data import shard_bounds
from resnest_gluon.data.segmentation import (
    SegmentationMetric,
    allreduce_metric,
    batches,
    list_pairs,
    normalize,
    to_labels,
    train_transform,
    val_transform,
)
from resnest_gluon.models.deeplab import SEG_MODELS, load_backbone_params
from resnest_gluon.training import TrainingError, check_run_dir, dist, writable_dir
from resnest_gluon.training.loop import BASE_BATCH, Task, fit

logger = logging.getLogger("resnest_gluon.train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a DeepLabV3 ResNeSt for segmentation (Horovod under horovodrun, one worker else).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="deeplab_resnest50_ade", help=f"one of {', '.join(SEG_MODELS)}")
    p.add_argument("--backbone", default=None, help="another ResNeSt as backbone (resnest14: a small model)")
    p.add_argument("--data-root", required=True, help="folder with images/<split> and annotations/<split>")
    p.add_argument("--train-split", default="training", help="sub-folder of images/ and annotations/")
    p.add_argument("--val-split", default="validation", help="sub-folder for validation ('' for none)")
    p.add_argument(
        "--classes", type=int, default=150, help="classes; labels outside 0..classes-1 are ignored"
    )
    p.add_argument("--mask-offset", type=int, default=1, help="label = mask value - offset (ADE20K: 1)")
    p.add_argument("--crop-size", type=int, default=480, help="training crop (gluoncv: 480)")
    p.add_argument("--base-size", type=int, default=520, help="longer side before random scaling (520)")
    p.add_argument("--epochs", type=int, default=120, help="gluoncv: 120 (ResNeSt-50, 101), 180 (200, 269)")
    p.add_argument("--batch-size", type=int, default=2, help="images per worker and step (gluoncv: 16 / 8)")
    p.add_argument("--val-batch-size", type=int, default=None, help="default: --batch-size")
    p.add_argument(
        "--lr", type=float, default=0.16, help=f"learning rate per {BASE_BATCH} images (0.01 / 16)"
    )
    p.add_argument("--warmup-epochs", type=float, default=0, help="linear warm-up before the decay")
    p.add_argument(
        "--lr-mode", choices=("poly", "cosine"), default="poly", help="decay per update (gluoncv: poly)"
    )
    p.add_argument("--power", type=float, default=0.9, help="poly: lr = peak * (1 - step / steps) ** power")
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    p.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    p.add_argument("--no-wd", action="store_true", help="no weight decay on BN gamma/beta and biases")
    p.add_argument("--head-lr-mult", type=float, default=10.0, help="rate of the heads over the backbone's")
    p.add_argument("--aux-weight", type=float, default=0.5, help="weight of the auxiliary loss (0: off)")
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all workers")
    p.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="FILE",
        help="the backbone starts from its published ImageNet weights, or from FILE (a .params of the "
        "backbone, e.g. a classification run's)",
    )
    p.add_argument("--dtype", choices=("float32",), default="float32", help="float32 only for now")
    p.add_argument("--ctx", choices=("cpu", "gpu"), default="gpu", help="device (gpu: mx.gpu(local_rank))")
    p.add_argument("--loss-scale", type=float, default=2.0**16, help=argparse.SUPPRESS)
    p.add_argument("--gradient-predivide-factor", type=float, default=1.0, help="Horovod gradient pre-divide")
    p.add_argument("--eval-frequency", type=int, default=1, help="validate every N epochs (and at the end)")
    p.add_argument("--save-dir", default=None, help="run directory (default: runs/<model>)")
    p.add_argument("--keep", type=int, default=3, help="epoch checkpoints to keep (plus <model>-best.params)")
    p.add_argument("--keep-best", type=int, default=0, help="also keep the K best epoch checkpoints")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY", help="moving average of the weights")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--data-threads", type=int, default=4, help="decoding threads per worker")
    p.add_argument("--no-hybridize", action="store_true", help="run imperatively (debugging)")
    p.add_argument("--accumulate", type=int, default=1, help="sum the gradients of N batches per update")
    args = p.parse_args(argv)
    if args.save_dir is None:
        args.save_dir = os.path.join("runs", args.model)
    if args.val_batch_size is None:
        args.val_batch_size = args.batch_size
    return args


def check_args(args: argparse.Namespace) -> None:
    if args.model not in SEG_MODELS:
        raise TrainingError(f"unknown model {args.model!r}; choose one of: {', '.join(SEG_MODELS)}")
    if args.backbone is not None and args.backbone not in resnest_gluon.list_models():
        raise TrainingError(f"unknown --backbone {args.backbone!r}; choose a ResNeSt of list_models()")
    for name in ("epochs", "batch_size", "val_batch_size", "classes", "crop_size", "base_size", "accumulate"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.aux_weight < 0 or args.head_lr_mult < 0:
        raise TrainingError("--aux-weight and --head-lr-mult must not be negative")
    if isinstance(args.pretrained, str) and not args.resume and not os.path.isfile(args.pretrained):
        raise TrainingError(f"--pretrained {args.pretrained} does not exist")


def poly_lr(step: int, peak_lr: float, warmup_steps: int, total_steps: int, power: float = 0.9) -> float:
    """gluoncv's "poly" rate: ``peak * (1 - step / total) ** power`` over all updates, after a linear warm-up
    (none in gluoncv's recipe). It depends on the step alone, so a resumed run continues it exactly."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr * (1.0 - min(step / max(total_steps, 1), 1.0)) ** power


def seg_loss(outputs, labels, classes: int):
    """Per-image cross-entropy over the pixels with a label in 0..classes-1, scaled so that the mean over
    the batch is the mean over all its labelled pixels (gluoncv normalises by the labelled pixels)."""
    valid = (labels >= 0) * (labels < classes)
    picked = mx.nd.pick(mx.nd.log_softmax(outputs, axis=1), mx.nd.clip(labels, 0, classes - 1), axis=1)
    per_image = -(picked * valid).sum(axis=(1, 2))
    return per_image * labels.shape[0] / mx.nd.maximum(valid.sum(), 1)


def load_backbone_weights(net, args: argparse.Namespace, ctx) -> str:
    """Copies the ImageNet weights of the backbone (published, or ``--pretrained FILE`` with any classes)
    into ``net``; returns the backbone's name."""
    name = args.backbone or SEG_MODELS[args.model]["backbone"]
    try:
        load_backbone_params(net, name, args.pretrained, ctx=ctx)
    except (OSError, ValueError) as err:
        raise TrainingError(f"--pretrained: {err}") from err
    return name


class Segmentation(Task):
    """Semantic segmentation from image and mask folders: gluoncv's augmentation, cross-entropy on the main
    and auxiliary heads, pixel accuracy and mIoU over all workers."""

    metrics = {"val_miou": "mIoU", "val_pixacc": "pixAcc"}
    metric_axis = "validation (%)"

    def __init__(self, args: argparse.Namespace, train_pairs, val_pairs):
        super().__init__(args)
        self.train_pairs, self.val_pairs = train_pairs, val_pairs

    def build_net(self, ctx):
        args = self.args
        norm = dict(norm_layer=gluon.nn.BatchNorm)
        if args.sync_bn:
            from resnest_gluon.training.syncbn import SyncBatchNorm

            norm = dict(norm_layer=SyncBatchNorm)
        net = resnest_gluon.get_model(
            args.model, classes=args.classes, aux=args.aux_weight > 0, backbone=args.backbone, **norm
        )
        net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=ctx)
        return net

    def prepare(self, net, ctx, load: bool) -> None:
        if load and self.args.pretrained is not None:
            name = load_backbone_weights(net, self.args, ctx)
            logger.info("the %s backbone starts from ImageNet weights (%s)", name, self.args.pretrained)
        for head in (net.head, net.auxlayer):
            head.collect_params().setattr("lr_mult", self.args.head_lr_mult)
        if self.args.accumulate > 1:
            for param in net.collect_params().values():
                if param.grad_req != "null":
                    param.grad_req = "add"

    def _shard(self, pairs):
        begin, end = shard_bounds(len(pairs), dist.size(), dist.rank())
        return pairs[begin:end]

    def train_data(self, epoch: int, ctx):
        args = self.args
        pairs = self._shard(self.train_pairs)
        order = np.random.RandomState(args.seed + epoch).permutation(len(pairs))
        pairs = [pairs[i] for i in order]
        base_seed = (args.seed, epoch, dist.rank())

        def make(i, img, mask):
            rng = np.random.default_rng((*base_seed, i))  # per image: the same whatever the thread order
            labels = to_labels(mask, args.mask_offset, args.classes)
            img, labels = train_transform(img, labels, rng, args.crop_size, args.base_size)
            return normalize(img), labels

        return batches(pairs, args.batch_size, make, args.data_threads)

    def inputs(self, batch, ctx, epoch: int, rng):
        data, labels = batch
        return mx.nd.array(data, ctx=ctx), mx.nd.array(labels, ctx=ctx, dtype="float32")

    def loss(self, net, data, target):
        if self.args.aux_weight > 0:
            out, aux = net(data)
            classes = self.args.classes
            return seg_loss(out, target, classes) + self.args.aux_weight * seg_loss(aux, target, classes)
        return seg_loss(net(data), target, self.args.classes)

    def validate(self, net, ctx, epoch: int, name: str = "val"):
        """gluoncv's validation during training: the shorter side to the crop, the centre crop, the main
        head's argmax; counts summed over workers."""
        if not self.val_pairs:
            return None
        args = self.args

        def make(i, img, mask):
            img, labels = val_transform(img, to_labels(mask, args.mask_offset, args.classes), args.crop_size)
            return normalize(img), labels

        metric = SegmentationMetric(args.classes)
        for data, labels in batches(self._shard(self.val_pairs), args.val_batch_size, make, drop_last=False):
            out = net(mx.nd.array(data, ctx=ctx))
            out = out[0] if isinstance(out, (list, tuple)) else out
            metric.update(labels, out.argmax(axis=1).asnumpy().astype(np.int64))
        pixacc, miou = allreduce_metric(metric, name=name).get()
        return dict(val_miou=100.0 * miou, val_pixacc=100.0 * pixacc)

    def lr_at(self, step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
        if self.args.lr_mode == "cosine":
            return super().lr_at(step, peak_lr, warmup_steps, total_steps)
        return poly_lr(step, peak_lr, warmup_steps, total_steps, self.args.power)

    def run_info(self) -> dict:
        return dict(
            omp_threads=threads.configured(), num_val_samples=len(self.val_pairs), task="segmentation"
        )


def find_pairs(args: argparse.Namespace, split: str):
    try:
        return list_pairs(
            os.path.join(args.data_root, "images", split), os.path.join(args.data_root, "annotations", split)
        )
    except FileNotFoundError as err:
        raise TrainingError(f"--data-root {args.data_root}, split {split!r}: {err}") from err


def main(argv=None) -> dict:
    """Runs the training; returns the last epoch's metrics plus ``best_miou`` and ``save_dir``."""
    from resnest_gluon.cli.train import _setup_logging

    args = parse_args(argv)
    check_args(args)
    dist.init()
    ctx = dist.worker_context(args.ctx)
    workers, primary = dist.size(), dist.is_primary()
    if primary:
        writable_dir(args.save_dir, "--save-dir")
        if args.resume:
            check_run_dir(args.save_dir, args.model, args.classes)
    handlers = _setup_logging(args.save_dir, primary)
    try:
        train_pairs = find_pairs(args, args.train_split)
        val_pairs = find_pairs(args, args.val_split) if args.val_split else []
        if val_pairs and len(val_pairs) < workers:
            raise TrainingError(f"{len(val_pairs)} validation images are too few for {workers} workers")
        if primary:
            logger.info(
                "%s%s: %d workers x batch %d, %d training / %d validation images, crop %d, %s%s",
                args.model,
                f" on {args.backbone}" if args.backbone else "",
                workers,
                args.batch_size,
                len(train_pairs),
                len(val_pairs),
                args.crop_size,
                args.ctx,
                ", SyncBN" if args.sync_bn else "",
            )
        return fit(Segmentation(args, train_pairs, val_pairs), ctx, len(train_pairs))
    finally:
        root = logging.getLogger("resnest_gluon")
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
