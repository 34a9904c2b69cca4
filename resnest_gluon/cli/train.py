"""Trains a ResNeSt on ImageNet-style RecordIO files, on one worker or many with Horovod.

    horovodrun -np 8 -H server1:4,server2:4 python scripts/train.py --ctx gpu --model resnest50 \\
        --rec-train train.rec --rec-val val.rec --batch-size 64 --epochs 270 --lr 0.1 \\
        --no-wd --last-gamma --mixup --auto-aug --save-dir runs/resnest50
    python scripts/train.py --ctx cpu --model resnest14 --classes 10 --input-size 32 ...   # one worker

The recipe follows Zhang et al., "ResNeSt: Split-Attention Networks" (arXiv:2004.08955), section 5.1:
SGD with Nesterov momentum 0.9, learning rate 0.1 per 256 images scaled to the total batch, linear
warm-up then cosine decay, weight decay 1e-4 (none on BN and biases with --no-wd), label smoothing 0.1,
mixup (alpha 0.2), AutoAugment, DropBlock ramped linearly to its final probability, zero-initialised last
BN gamma of each block. Rank 0 alone writes the run directory: args.json, train.log, metrics.jsonl,
curves.png and checkpoints.

Fine-tuning (docs/finetune.md): ``--pretrained [FILE]`` starts from the published weights of ``--model`` or
from any ``.params`` of the same architecture (the classifier replaced when its classes differ),
``--backbone-lr-mult`` and ``--freeze-stages`` decide how much of the backbone learns, ``--ema`` keeps a
moving average of the weights, ``--keep-best`` the best checkpoints. Trainer ``.states`` files are MXNet
pickles: resume only from a run directory you trust.
"""

import argparse
import logging
import os
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import resnest_gluon
from resnest_gluon import threads
from resnest_gluon.data import mixup, num_records, shard_bounds, smooth_one_hot, train_iter, val_iter
from resnest_gluon.data.class_names import class_names_beside, read_class_names
from resnest_gluon.interrupts import held_signals
from resnest_gluon.progress import progress_bar
from resnest_gluon.training import (
    LossScaler,
    TrainingError,
    append_metrics,
    atomic_json,
    average_aux_states,
    best_epochs,
    check_labels,
    check_run_dir,
    checkpoint_paths,
    copy_atomic,
    dist,
    drop_prob_at,
    ema_checkpoint_path,
    evaluate,
    latest_checkpoint,
    lr_at,
    no_weight_decay,
    plot_curves,
    prune_checkpoints,
    read_metrics,
    save_checkpoint,
    save_params,
    truncate_metrics,
    writable_dir,
    write_metrics,
)
from resnest_gluon.training.ema import EMA
from resnest_gluon.training.finetune import freeze_stages, load_backbone, set_backbone_lr_mult

logger = logging.getLogger("resnest_gluon.train")

BASE_BATCH = 256  # --lr is the rate for this many images; it scales linearly with the total batch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a ResNeSt (Horovod data-parallel under horovodrun, one worker otherwise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="resnest50", help="one of resnest_gluon.list_models()")
    p.add_argument("--rec-train", required=True, help="training .rec (its .idx beside it)")
    p.add_argument(
        "--rec-val", default=None, help="validation .rec (its .idx beside it); none: no evaluation"
    )
    p.add_argument("--classes", type=int, default=1000, help="number of classes; labels must be 0..classes-1")
    p.add_argument("--epochs", type=int, default=270, help="training epochs (the paper: 270 for ResNeSt-50)")
    p.add_argument("--batch-size", type=int, default=64, help="images per worker and step")
    p.add_argument("--val-batch-size", type=int, default=None, help="default: --batch-size")
    p.add_argument("--lr", type=float, default=0.1, help=f"learning rate per {BASE_BATCH} images")
    p.add_argument("--warmup-epochs", type=float, default=5, help="linear warm-up before the cosine decay")
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    p.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    p.add_argument("--no-wd", action="store_true", help="no weight decay on BN gamma/beta and biases")
    p.add_argument(
        "--last-gamma", action="store_true", help="zero-initialise the last BN gamma of each block"
    )
    p.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing epsilon (0: off)")
    p.add_argument("--mixup", action="store_true", help="mixup training")
    p.add_argument("--mixup-alpha", type=float, default=0.2, help="mixup Beta(alpha, alpha)")
    p.add_argument("--mixup-off-epoch", type=int, default=0, help="train the last N epochs without mixup")
    p.add_argument("--auto-aug", action="store_true", help="AutoAugment (ImageNet policy)")
    p.add_argument("--jitter", type=float, default=0.4, help="colour jitter strength")
    p.add_argument("--lighting", type=float, default=0.1, help="PCA lighting noise strength")
    p.add_argument("--no-mirror", action="store_true", help="no random horizontal flips (digits, text)")
    p.add_argument(
        "--min-area", type=float, default=0.08, help="smallest area share of a random resized crop"
    )
    p.add_argument(
        "--data-backend",
        choices=("auto", "cpp", "python"),
        default="auto",
        help="training decoder: the Python/OpenCV path (auto, the default: 40%% of the CPU per image of cpp "
        "with the pip wheel) or MXNet's C++ ImageRecordIter (cpp; no --auto-aug)",
    )
    p.add_argument(
        "--dropblock-prob",
        type=float,
        default=None,
        help="final DropBlock probability, ramped up from 0 (default: the model's; 0.1 from ResNeSt-50)",
    )
    p.add_argument(
        "--final-drop", type=float, default=None, help="dropout before the classifier (default: model's)"
    )
    p.add_argument("--input-size", type=int, default=224, help="training crop size")
    p.add_argument(
        "--crop-size", type=int, default=None, help="validation crop (default: the model's paper crop)"
    )
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="float16: GPU only")
    p.add_argument(
        "--ctx",
        choices=("cpu", "gpu"),
        default="gpu",
        help="device; gpu uses mx.gpu(local_rank), or gpu(0) when a worker sees exactly one GPU",
    )
    p.add_argument("--no-cuda", action="store_true", help="same as --ctx cpu")
    p.add_argument(
        "--loss-scale",
        type=float,
        default=2.0**16,
        help="float16: initial dynamic loss scale (halved and the step skipped when gradients overflow, "
        "doubled after 2000 good steps)",
    )
    p.add_argument(
        "--gradient-predivide-factor",
        type=float,
        default=1.0,
        help="Horovod: divide gradients by this before the sum over workers and by workers/this after "
        "(keeps a float16 sum over many workers in range)",
    )
    p.add_argument("--eval-frequency", type=int, default=1, help="validate every N epochs (and at the end)")
    p.add_argument("--save-dir", default=None, help="run directory (default: runs/<model>)")
    p.add_argument("--keep", type=int, default=3, help="epoch checkpoints to keep (plus <model>-best.params)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--data-threads", type=int, default=4, help="decoding threads per worker")
    p.add_argument("--no-hybridize", action="store_true", help="run imperatively (debugging)")
    p.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="sum the gradients of N batches before each update (the rate scales with N x batch x workers)",
    )
    ft = p.add_argument_group("fine-tuning and better weights (docs/finetune.md)")
    ft.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="FILE",
        help="start from the published weights of --model, or from FILE (any .params of the same "
        "architecture; its classifier is replaced when its classes differ from --classes)",
    )
    ft.add_argument(
        "--backbone-lr-mult",
        type=float,
        default=1.0,
        help="learning rate of every parameter but the classifier, as a multiple of the head's (0: fixed)",
    )
    ft.add_argument(
        "--freeze-stages",
        type=int,
        default=None,
        metavar="N",
        help="freeze the stem and the first N stages (0-4), their BatchNorm statistics included",
    )
    ft.add_argument(
        "--class-names",
        default=None,
        metavar="FILE",
        help="class names in label order, one per line, copied into the run directory (default: the "
        ".classes.txt that tools/im2rec.py --list wrote beside --rec-train, if any)",
    )
    ft.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="also keep an exponential moving average of the weights (e.g. 0.999), validated and saved",
    )
    ft.add_argument(
        "--keep-best",
        type=int,
        default=0,
        metavar="K",
        help="also keep the K best epoch checkpoints by validation top-1 (scripts/average_checkpoints.py)",
    )
    args = p.parse_args(argv)
    if args.no_cuda:
        args.ctx = "cpu"
    if args.save_dir is None:
        args.save_dir = os.path.join("runs", args.model)
    if args.val_batch_size is None:
        args.val_batch_size = args.batch_size
    return args


def check_args(args: argparse.Namespace) -> None:
    """Errors that need no data and no workers: raised before anything starts."""
    if args.model not in resnest_gluon.list_models():
        raise TrainingError(
            f"unknown model {args.model!r}; choose one of: {', '.join(resnest_gluon.list_models())}"
        )
    if args.dtype == "float16" and args.ctx != "gpu":
        raise TrainingError("--dtype float16 needs --ctx gpu (MXNet's CPU kernels are float32)")
    for name in ("epochs", "batch_size", "val_batch_size", "classes", "eval_frequency", "keep", "input_size"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.loss_scale <= 0 or args.gradient_predivide_factor <= 0:
        raise TrainingError("--loss-scale and --gradient-predivide-factor must be positive")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise TrainingError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.mixup_off_epoch < 0 or args.warmup_epochs < 0:
        raise TrainingError("--mixup-off-epoch and --warmup-epochs must not be negative")
    check_finetune_args(args)


def check_finetune_args(args: argparse.Namespace) -> None:
    """The fine-tuning, EMA, keep-best and accumulation options."""
    if args.accumulate < 1:
        raise TrainingError(f"--accumulate must be at least 1, got {args.accumulate}")
    if args.keep_best < 0:
        raise TrainingError(f"--keep-best must not be negative, got {args.keep_best}")
    if args.ema is not None and not 0.0 < args.ema < 1.0:
        raise TrainingError(f"--ema is a decay in (0, 1), e.g. 0.999; got {args.ema}")
    if args.backbone_lr_mult < 0:
        raise TrainingError(f"--backbone-lr-mult must not be negative, got {args.backbone_lr_mult}")
    stages = len(resnest_gluon.model_info(args.model)["layers"])
    if args.freeze_stages is not None and not 0 <= args.freeze_stages <= stages:
        raise TrainingError(
            f"--freeze-stages {args.freeze_stages} is out of range: {args.model} has {stages} stages, so "
            f"pass 0 (the stem only) to {stages} (the whole backbone)"
        )
    # (a resumed run has the weights in its checkpoint: the file is only needed if there is none)
    if isinstance(args.pretrained, str) and not args.resume and not os.path.isfile(args.pretrained):
        raise TrainingError(
            f"--pretrained {args.pretrained} does not exist; pass a .params file, or --pretrained alone "
            f"for the published weights of {args.model}"
        )


def load_class_names(args: argparse.Namespace):
    """The class names (``--class-names`` or the file beside ``--rec-train``), checked against --classes;
    None when there are none. Sets ``args.class_names`` to the file used."""
    path = args.class_names or class_names_beside(args.rec_train)
    if path is None:
        return None
    try:
        names = read_class_names(path)
    except (OSError, ValueError) as err:
        raise TrainingError(f"--class-names: {err}") from err
    if len(names) != args.classes:
        raise TrainingError(
            f"{path} names {len(names)} classes but --classes is {args.classes}: pass --classes "
            f"{len(names)}, or the class-names file of this data with --class-names"
        )
    args.class_names = path
    return names


def prepare_finetune(net, args: argparse.Namespace, ctx: mx.Context, load: bool) -> None:
    """Loads --pretrained into ``net`` (when ``load``: rank 0 of a run that does not resume), then sets the
    backbone's rate and freezes stages (every rank)."""
    if load and args.pretrained is not None:
        try:
            info = load_backbone(net, args.model, args.pretrained, ctx)
        except (OSError, ValueError) as err:
            raise TrainingError(f"--pretrained: {err}") from err
        if info["classifier"] == "replaced":
            logger.info(
                "the classifier of %s has %d classes, not --classes %d: it starts fresh",
                info["path"],
                info["file_classes"],
                args.classes,
            )
    if args.backbone_lr_mult != 1.0:
        set_backbone_lr_mult(net, args.backbone_lr_mult)
    if args.freeze_stages is not None:
        freeze_stages(net, args.freeze_stages)
    if args.accumulate > 1:  # gradients are summed over the batches until the update
        for param in net.collect_params().values():
            if param.grad_req != "null":
                param.grad_req = "add"


def record_count(path: str, what: str) -> int:
    """Records of ``path`` from its index, with an error that says what to do."""
    if not os.path.isfile(path):
        raise TrainingError(f"{what} {path} does not exist; pack images with tools/im2rec.py first")
    if not os.access(path, os.R_OK):
        raise TrainingError(f"{what} {path} is not readable (permissions)")
    try:
        count = num_records(path)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise TrainingError(f"{what} {path}: {err}") from err
    if count < 1:
        raise TrainingError(f"{what} {path} holds no records")
    return count


def build_net(args: argparse.Namespace, ctx: mx.Context):
    """The model with the recipe's options, initialised (Xavier magnitude 2, i.e. Kaiming) on ``ctx``."""
    overrides = dict(classes=args.classes, last_gamma=args.last_gamma)
    if args.dropblock_prob is not None:
        overrides["dropblock_prob"] = args.dropblock_prob
    if args.final_drop is not None:
        overrides["final_drop"] = args.final_drop
    net = resnest_gluon.get_model(args.model, **overrides)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=ctx)
    if args.dtype == "float16":
        net.cast("float16")  # BatchNorm keeps float32 parameters; the optimizer keeps float32 masters
    return net


def colour_ctx(args: argparse.Namespace, ctx: mx.Context):
    """Where the Python path's colour jitter, lighting and normalisation run: on the training GPU, so that
    the CPU only decodes and crops (uint8 goes to the GPU, float16 is made there); on a CPU, in the data
    threads (faster there than batched operators). Decided by ``--ctx``, not by ``ctx``'s device type,
    so that the tests' stand-in GPU (a second CPU context) takes the GPU path."""
    return ctx if args.ctx == "gpu" and args.data_backend != "cpp" else None


def make_train_iter(args: argparse.Namespace, epoch: int, ctx: mx.Context):
    """This worker's shard of the training set, reshuffled with a seed per epoch (so a resume repeats it)."""
    return train_iter(
        args.rec_train,
        args.batch_size,
        args.input_size,
        num_parts=dist.size(),
        part_index=dist.rank(),
        threads=args.data_threads,
        seed=args.seed + epoch,
        auto_aug=args.auto_aug,
        jitter=args.jitter,
        lighting=args.lighting,
        mirror=not args.no_mirror,
        min_area=args.min_area,
        dtype="float32",  # float16 is made on the device (the loop casts), not by the CPU threads
        backend=args.data_backend,
        ctx=colour_ctx(args, ctx),
    )


def make_val_iter(args: argparse.Namespace, crop_size: int):
    return val_iter(
        args.rec_val,
        args.val_batch_size,
        crop_size,
        num_parts=dist.size(),
        part_index=dist.rank(),
        threads=args.data_threads,
        dtype="float32",  # evaluate() casts on the device
        backend="python",  # names an undecodable record; the C++ iterator dies of SIGFPE on it
    )


def validate(net, val_data, ctx, args: argparse.Namespace, epoch: int, n_val: int, name: str = "val"):
    """Top-1 and top-5 (%) over all workers; an undecodable record stops the run with a TrainingError
    (the epoch's checkpoint is already saved)."""
    try:
        counts = evaluate(net, val_data, ctx, args.dtype)
    except ValueError as err:
        raise TrainingError(
            f"validation data: {err}. Epoch {epoch} is saved in {args.save_dir}: --resume continues once "
            "the data is fixed"
        ) from err
    counts = dist.allreduce_sum(mx.nd.array(counts, dtype="float64"), name=name).asnumpy()
    if int(counts[2]) != n_val:
        logger.warning("validated %d images, the index lists %d", int(counts[2]), n_val)
    return 100.0 * counts[0] / counts[2], 100.0 * counts[1] / counts[2]


def _setup_logging(save_dir: str, primary: bool) -> list:
    """Console and train.log on rank 0, warnings only elsewhere; returns the handlers to remove later."""
    handlers = []
    if primary:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
        for handler in (
            logging.StreamHandler(sys.stderr),
            logging.FileHandler(os.path.join(save_dir, "train.log")),
        ):
            handler.setFormatter(fmt)
            handlers.append(handler)
    root = logging.getLogger("resnest_gluon")
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO if primary else logging.WARNING)
    return handlers


def _batches(data_iter, args: argparse.Namespace):
    """The batches of ``data_iter``; a record it cannot decode stops the run with a TrainingError."""
    it = iter(data_iter)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ValueError as err:
            raise TrainingError(
                f"training data: {err}. The checkpoints in {args.save_dir} are intact: --resume continues "
                "once the data is fixed"
            ) from err
        yield batch


def _checked_loss(pending, args, bar) -> float:
    """The mean loss over workers of a step, read now (``pending`` holds it summed over workers on the
    device); a non-finite one stops the run, on every worker at the same step (they read the same sum)."""
    summed, workers, where, lr = pending
    mean_loss = summed.asscalar() / workers
    if not np.isfinite(mean_loss):
        bar.close()
        raise TrainingError(
            f"non-finite loss ({mean_loss}) at {where}; nothing was saved after the last checkpoint. Lower "
            f"--lr (now {lr:.4g}) or check the data; --resume continues from the last good checkpoint in "
            f"{args.save_dir}"
        )
    return mean_loss


def train_epoch(
    net,
    trainer,
    loss_fn,
    args,
    epoch: int,
    steps: int,
    ctx,
    peak_lr: float,
    warmup_steps: int,
    scaler=None,
    ema=None,
):
    """One epoch of ``steps`` batches (``steps / --accumulate`` updates); returns (mean training loss over
    all workers, seconds, last lr).

    On a GPU the host does not wait for the step it has just queued: a step's loss, summed over workers
    on the device, is read during the next step (whose forward and backward are queued by then), so the
    optimizer update, the Horovod calls and the next batch overlap the device's work. On a CPU, where
    host and device are the same cores, the loss is read before the update (as MXNet's MKLDNN arrays and
    Horovod's CPU allreduce, left to overlap, let workers' weights drift apart by a rounding error).
    ``scaler`` (a :class:`~resnest_gluon.training.LossScaler`, float16) scales the loss and skips
    overflowed steps; ``ema`` (an :class:`~resnest_gluon.training.ema.EMA`) follows every update.
    """
    total_steps = args.epochs * steps // args.accumulate
    use_mixup = args.mixup and epoch < args.epochs - args.mixup_off_epoch
    rng = np.random.RandomState(args.seed + 7919 * epoch + dist.rank())
    workers, primary = dist.size(), dist.is_primary()
    overlap = args.ctx == "gpu"
    data_iter = make_train_iter(args, epoch, ctx)
    bar = progress_bar(total=steps, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not primary, leave=False)
    loss_sum, lr, start, done, pending = 0.0, 0.0, time.time(), 0, None

    def read(pending):
        nonlocal loss_sum, done
        loss_sum += _checked_loss(pending, args, bar)
        done += 1
        bar.update(1)
        bar.set_postfix(  # no refresh: the bar redraws at its own interval (a line per 30 s in a log)
            loss=f"{loss_sum / done:.3f}",
            img_s=f"{done * args.batch_size * workers / (time.time() - start):.0f}",
            refresh=False,
        )

    for i, batch in enumerate(_batches(data_iter, args)):
        if i >= steps:  # equal step counts on every worker, whatever the shard sizes
            break
        step = (epoch * steps + i) // args.accumulate  # the update this batch contributes to
        lr = lr_at(step, peak_lr, warmup_steps, total_steps)
        trainer.set_learning_rate(lr)
        label = batch.label[0]
        label_np = label.asnumpy()  # a CPU array from the iterator: no wait for the device
        if ((label_np < 0) | (label_np >= args.classes)).any():
            raise TrainingError(
                f"a training label ({label_np[(label_np < 0) | (label_np >= args.classes)][0]:g}) is outside "
                f"0..{args.classes - 1}: pass the right --classes"
            )
        data = batch.data[0].as_in_context(ctx)
        target = smooth_one_hot(label.as_in_context(ctx), args.classes, args.label_smoothing)
        if use_mixup:
            data, target = mixup(data, target, args.mixup_alpha, rng)
        with autograd.record():
            output = net(data.astype(args.dtype, copy=False))
            loss = loss_fn(output.astype("float32", copy=False), target)
            scaled = loss * scaler.scale if scaler is not None else loss
        scaled.backward()
        if pending is not None:
            # The previous step's loss: done before this step's forward began, so reading it waits for
            # nothing the device still has to do. (Read before this step's "loss" allreduce: Horovod
            # allows one tensor of a name in flight.)
            read(pending)
        summed = dist.allreduce_sum(loss.mean().reshape((1,)), name="loss")
        pending = (summed, workers, f"epoch {epoch + 1}, step {i + 1} of {steps} (update {step + 1})", lr)
        if not overlap:
            read(pending)
            pending = None
        if (i + 1) % args.accumulate == 0:
            if scaler is not None:
                scaler.step(trainer, args.batch_size * args.accumulate)  # skipped when a gradient overflowed
            else:
                trainer.step(args.batch_size * args.accumulate)
            if args.accumulate > 1:
                net.collect_params().zero_grad()
            if ema is not None:
                ema.update()
    if pending is not None:  # the last step's loss, checked before anything is saved
        read(pending)
    mx.nd.waitall()
    seconds = time.time() - start
    bar.close()
    return loss_sum / steps, seconds, lr


def main(argv=None) -> dict:
    """Runs the training; returns the last epoch's metrics plus ``best_top1`` and ``save_dir``."""
    args = parse_args(argv)
    check_args(args)
    dist.init()
    ctx = dist.worker_context(args.ctx)  # every worker stops here alike if one has no GPU
    workers, primary = dist.size(), dist.is_primary()
    if primary:
        writable_dir(args.save_dir, "--save-dir")
        if args.resume:
            check_run_dir(args.save_dir, args.model, args.classes)
    handlers = _setup_logging(args.save_dir, primary)
    try:
        return _run(args, ctx, workers, primary)
    finally:
        root = logging.getLogger("resnest_gluon")
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def _run(args, ctx: mx.Context, workers: int, primary: bool) -> dict:
    crop_size = args.crop_size or resnest_gluon.model_info(args.model)["crop_size"]

    # Data: sizes from the indexes, labels checked before any compute.
    n_train = record_count(args.rec_train, "training file")
    check_labels(args.rec_train, args.classes)
    n_val = 0
    if args.rec_val:
        n_val = record_count(args.rec_val, "validation file")
        check_labels(args.rec_val, args.classes)
        val_shard = min(
            end - begin for begin, end in (shard_bounds(n_val, workers, r) for r in range(workers))
        )
        if val_shard < 1:
            raise TrainingError(f"{args.rec_val} has {n_val} images, too few for {workers} workers")
        args.val_batch_size = min(args.val_batch_size, val_shard)
    class_names = load_class_names(args)
    # the smallest shard sets the steps per epoch, the same on every worker (unequal counts would hang)
    shard = min(end - begin for begin, end in (shard_bounds(n_train, workers, r) for r in range(workers)))
    if shard < args.batch_size:
        raise TrainingError(
            f"--batch-size {args.batch_size} is larger than a worker's shard ({shard} of {n_train} training "
            f"images over {workers} workers): lower --batch-size or use fewer workers"
        )
    steps = shard // args.batch_size // args.accumulate * args.accumulate  # batches: whole updates only
    if steps < 1:
        raise TrainingError(
            f"--accumulate {args.accumulate} x --batch-size {args.batch_size} is more than a worker's shard "
            f"({shard} images): lower one of them"
        )
    total_batch = args.batch_size * workers
    updates = steps // args.accumulate  # per epoch
    peak_lr = args.lr * total_batch * args.accumulate / BASE_BATCH
    warmup_steps = int(round(args.warmup_epochs * updates))

    metrics_path = os.path.join(args.save_dir, "metrics.jsonl")
    start_epoch = 0
    if primary:
        found = latest_checkpoint(args.save_dir, args.model)
        if args.resume:
            start_epoch = found[0] if found else 0
            if not found:
                logger.info("--resume: no complete checkpoint in %s, starting from scratch", args.save_dir)
        elif found or read_metrics(metrics_path):
            raise TrainingError(
                f"{args.save_dir} already holds a run: pass --resume to continue it, or choose another "
                "--save-dir"
            )
        if start_epoch >= args.epochs:
            raise TrainingError(
                f"{args.save_dir} is already at epoch {start_epoch} of --epochs {args.epochs}"
            )
        atomic_json(
            os.path.join(args.save_dir, "args.json"),
            dict(
                vars(args),
                omp_threads=threads.configured(),
                workers=workers,
                total_batch=total_batch,
                peak_lr=peak_lr,
                steps_per_epoch=steps,
                updates_per_epoch=updates,
                update_batch=total_batch * args.accumulate,
                num_training_samples=n_train,
                num_val_samples=n_val,
                val_crop_size=crop_size,
            ),
        )
    # rank 0 decides where to start; the others learn it from a sum in which they add zero
    start_epoch = int(
        dist.allreduce_sum(mx.nd.array([start_epoch if primary else 0]), name="start").asscalar()
    )

    if primary and class_names is not None:
        copy_atomic(args.class_names, os.path.join(args.save_dir, "classes.txt"))

    net = build_net(args, ctx)
    # rank 0 loads --pretrained (broadcast below); a resumed run has it in its checkpoint already
    prepare_finetune(net, args, ctx, load=primary and start_epoch == 0)
    optimizer_params = dict(
        learning_rate=peak_lr, momentum=args.momentum, wd=args.wd, multi_precision=args.dtype == "float16"
    )
    if args.no_wd:
        no_weight_decay(net.collect_params())
    trainer = dist.make_trainer(net.collect_params(), "nag", optimizer_params, args.gradient_predivide_factor)
    scaler = LossScaler(args.loss_scale) if args.dtype == "float16" else None

    rows, best_top1 = [], -1.0
    if start_epoch > 0:
        params_path, states_path = checkpoint_paths(args.save_dir, args.model, start_epoch)
        if not (os.path.exists(params_path) and os.path.exists(states_path)):
            raise TrainingError(
                f"rank {dist.rank()} cannot read {params_path}: with --resume, --save-dir must be on a "
                f"filesystem every worker sees"
            )
        net.load_parameters(params_path, ctx=ctx, cast_dtype=True)
        trainer.load_states(states_path)  # a pickle: trusted run directories only
        if primary:
            logger.info("resumed from %s (epoch %d)", params_path, start_epoch)
    if primary and args.resume:
        # lines of epochs after the checkpoint (a kill between the two writes) are dropped
        rows = truncate_metrics(metrics_path, start_epoch)
        best_top1 = max((r["val_top1"] for r in rows if r.get("val_top1") is not None), default=-1.0)
    # every worker starts from rank 0's parameters (fresh initialisation, pretrained or resumed checkpoint)
    dist.broadcast_parameters(net.collect_params())
    ema, best_ema = None, -1.0
    if args.ema is not None:
        ema = EMA(net, args.ema)
        ema_path = ema_checkpoint_path(args.save_dir, args.model, start_epoch)
        if start_epoch > 0 and os.path.exists(ema_path):
            ema.load(ema_path, start_epoch * updates)
        elif start_epoch > 0 and primary:
            logger.warning("no %s: the moving average starts again from the resumed weights", ema_path)
        best_ema = max((r["val_top1_ema"] for r in rows if r.get("val_top1_ema") is not None), default=-1.0)

    max_drop = resnest_gluon.model_info(args.model).get("dropblock_prob", 0.0)
    if args.dropblock_prob is not None:
        max_drop = args.dropblock_prob
    if not args.no_hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)
    val_data = make_val_iter(args, crop_size) if args.rec_val else None
    if primary:
        logger.info(
            "%s: %d workers x batch %d = %d, lr %.4g, %d steps/epoch, %d training / %d validation images, "
            "input %d, val crop %d, %s %s",
            args.model,
            workers,
            args.batch_size,
            total_batch,
            peak_lr,
            steps,
            n_train,
            n_val,
            args.input_size,
            crop_size,
            args.ctx,
            args.dtype,
        )

    row = {}
    for epoch in range(start_epoch, args.epochs):
        tic = time.time()
        drop = drop_prob_at(epoch, args.epochs, max_drop) if max_drop > 0 else 0.0
        if max_drop > 0:
            resnest_gluon.set_drop_prob(net, drop)  # clears the cached graph; the next call rebuilds it
        train_loss, train_seconds, lr = train_epoch(
            net, trainer, loss_fn, args, epoch, steps, ctx, peak_lr, warmup_steps, scaler=scaler, ema=ema
        )
        # BN statistics differ per worker: average them so every worker holds the same model
        average_aux_states(net, dist.allreduce_sum, workers)
        row = dict(
            epoch=epoch + 1,
            lr=lr,
            train_loss=train_loss,
            val_top1=None,
            val_top5=None,
            samples_per_sec=steps * total_batch / train_seconds,
            time=time.time() - tic,
            dropblock_prob=drop,
            mixup=bool(args.mixup and epoch < args.epochs - args.mixup_off_epoch),
            workers=workers,
            loss_scale=None if scaler is None else scaler.scale,
            skipped_steps=0 if scaler is None else scaler.skipped,
        )
        if ema is not None:
            row.update(val_top1_ema=None, val_top5_ema=None)
        if primary:
            # metrics line, then the moving average and the checkpoint (whose params file marks the epoch
            # complete), all before validation: a crash there loses no epoch, and a kill before the
            # checkpoint lands leaves a line that --resume drops
            with held_signals():
                append_metrics(metrics_path, row)
                rows.append(row)
                if ema is not None:
                    ema_path = save_ema(net, ema, args, epoch + 1)
                params_path = save_checkpoint(net, trainer, args.save_dir, args.model, epoch + 1)
        top1 = top5 = top1_ema = top5_ema = None
        last = epoch + 1 == args.epochs
        if val_data is not None and ((epoch + 1) % args.eval_frequency == 0 or last):
            top1, top5 = validate(net, val_data, ctx, args, epoch + 1, n_val)
            row.update(val_top1=top1, val_top5=top5)
            if ema is not None:
                with ema.applied():
                    top1_ema, top5_ema = validate(net, val_data, ctx, args, epoch + 1, n_val, "val_ema")
                row.update(val_top1_ema=top1_ema, val_top5_ema=top5_ema)
            row.update(time=time.time() - tic)
        if primary:
            with held_signals():
                if top1 is not None:
                    write_metrics(metrics_path, rows)
                    if top1 > best_top1:
                        best_top1 = top1
                        copy_atomic(params_path, os.path.join(args.save_dir, f"{args.model}-best.params"))
                    if top1_ema is not None and top1_ema > best_ema:
                        best_ema = top1_ema
                        copy_atomic(ema_path, os.path.join(args.save_dir, f"{args.model}-ema-best.params"))
                protect = best_epochs(rows, args.keep_best) if args.keep_best else ()
                prune_checkpoints(args.save_dir, args.model, args.keep, protect)
                title = f"{args.model}, {workers} worker(s)"
                plot_curves(rows, os.path.join(args.save_dir, "curves.png"), title)
            logger.info(
                "epoch %d/%d  loss %.4f  lr %.4g  val top-1 %s top-5 %s%s  %.1f img/s  %.1fs",
                epoch + 1,
                args.epochs,
                train_loss,
                lr,
                "-" if top1 is None else f"{top1:.2f}%",
                "-" if top5 is None else f"{top5:.2f}%",
                "" if top1_ema is None else f" (EMA top-1 {top1_ema:.2f}%)",
                row["samples_per_sec"],
                row["time"],
            )
        elif top1 is not None:
            best_top1 = max(best_top1, top1)
        dist.barrier(f"epoch{epoch + 1}")  # nobody races ahead of (or exits before) rank 0's writes
    if primary:
        logger.info(
            "done: best val top-1 %s%s; run directory %s",
            f"{best_top1:.2f}%" if best_top1 >= 0 else "-",
            f" (EMA {best_ema:.2f}%)" if best_ema >= 0 else "",
            args.save_dir,
        )
    return dict(
        row,
        best_top1=best_top1 if best_top1 >= 0 else None,
        best_top1_ema=best_ema if best_ema >= 0 else None,
        save_dir=args.save_dir,
    )


def save_ema(net, ema, args: argparse.Namespace, epoch: int) -> str:
    """``{model}-{epoch}-ema.params`` (for --resume), copied to ``{model}-ema.params``; returns its path."""
    path = ema_checkpoint_path(args.save_dir, args.model, epoch)
    with ema.applied():
        save_params(net, path)
    copy_atomic(path, os.path.join(args.save_dir, f"{args.model}-ema.params"))
    return path
