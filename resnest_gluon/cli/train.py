"""Trains a ResNeSt on ImageNet-style RecordIO files, on one worker or many with Horovod.

    horovodrun -np 64 -H ... python scripts/train.py --ctx gpu --recipe resnest50 \\
        --rec-train train.rec --rec-val val.rec --save-dir runs/resnest50     # the published run
    python scripts/train.py --recipe resnest269 --print-recipe                # its options, as JSON
    python scripts/train.py --ctx cpu --model resnest14 --classes 10 --input-size 32 ...   # one worker

``--recipe MODEL`` sets every option of the published run of MODEL (resnest_gluon.training.recipes);
any flag given explicitly wins, and args.json records the recipe and every resolved value.

The recipe follows Zhang et al., "ResNeSt: Split-Attention Networks" (arXiv:2004.08955), section 5.1:
SGD with Nesterov momentum 0.9, learning rate 0.1 per 256 images scaled to the total batch, linear
warm-up then cosine decay, weight decay 1e-4 (none on BN and biases with --no-wd), label smoothing 0.1,
mixup (alpha 0.2), AutoAugment, DropBlock ramped linearly to its final probability, zero-initialised last
BN gamma of each block. Rank 0 alone writes the run directory: args.json, train.log, metrics.jsonl,
curves.png and checkpoints.

Defaults that depend on other options are settled in :func:`settle_defaults` and logged: the warm-up is cut
to a quarter of a short run, the validation crop follows ``--input-size``, and ``--ctx auto`` takes the GPU
when MXNet sees one. The run ends with a summary (last and best top-1, time, the files to ship) and, when it
fails, its reason in train.log too; ``--tensorboard DIR`` adds TensorBoard scalars.

Fine-tuning (docs/finetune.md): ``--pretrained [FILE]`` starts from the published weights of ``--model`` or
from any ``.params`` of the same architecture (the classifier replaced when its classes differ, in number or
in name, or always with ``--reset-classifier``),
``--backbone-lr-mult`` and ``--freeze-stages`` decide how much of the backbone learns, ``--ema`` keeps a
moving average of the weights, ``--keep-best`` the best checkpoints. Trainer ``.states`` files are MXNet
pickles: resume only from a run directory you trust.
"""

import argparse
import functools
import json
import logging
import os
import sys
from typing import Optional

import mxnet as mx
from mxnet import gluon

import resnest_gluon
from resnest_gluon import threads
from resnest_gluon.cli import common
from resnest_gluon.data import mixup, num_records, shard_bounds, smooth_one_hot, train_iter, val_iter
from resnest_gluon.data.class_names import class_names_beside, read_class_names
from resnest_gluon.data.iterator import explain_iter_error
from resnest_gluon.data.recordio import find_bad_record
from resnest_gluon.data.transforms import COLOURS
from resnest_gluon.models.layers import set_drop_per_sample
from resnest_gluon.progress import progress_bar
from resnest_gluon.training import (
    TrainingError,
    check_labels,
    check_run_dir,
    copy_atomic,
    dist,
    drop_prob_at,
    evaluate,
    recipes,
    writable_dir,
)
from resnest_gluon.training.checks import recipe_changes
from resnest_gluon.training.finetune import (
    file_class_names,
    freeze_stages,
    load_backbone,
    set_backbone_lr_mult,
)
from resnest_gluon.training.loop import BASE_BATCH, Task, fit, plan_steps, show_progress
from resnest_gluon.training.quiet import held_native_stderr
from resnest_gluon.training.rundir import lock_run_dir, unlock_run_dir
from resnest_gluon.training.tensorboard import check_available as check_tensorboard

logger = logging.getLogger("resnest_gluon.train")

WARMUP_EPOCHS = 5  # the paper's warm-up
WARMUP_SHARE = 0.25  # at most this share of a run warms up when --warmup-epochs is not given
INPUT_SIZE = 224  # the training crop when --input-size is not given


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(
        "Train a ResNeSt (Horovod data-parallel under horovodrun, one worker otherwise).",
        epilog="Fine-tuning: docs/finetune.md; the recipe per model and the run directory: docs/training.md.",
    )
    data = p.add_argument_group("data")
    model = p.add_argument_group("model")
    opt = p.add_argument_group("optimisation")
    reg = p.add_argument_group("regularisation and augmentation")
    ft = p.add_argument_group("fine-tuning and better weights (docs/finetune.md)")
    dev = p.add_argument_group("distributed: devices and workers")
    out = p.add_argument_group("output")
    p.add_argument(
        "--recipe",
        choices=recipes.names(),
        default=None,
        help="every option of this model's published run (explicit flags win; see --print-recipe)",
    )
    p.add_argument("--print-recipe", action="store_true", help="print the resolved options as JSON and exit")
    model.add_argument("--model", default="resnest50", help="one of resnest_gluon.list_models()")
    data.add_argument("--rec-train", default=None, help="training .rec (its .idx beside it) (required)")
    data.add_argument(
        "--rec-val", default=None, help="validation .rec (its .idx beside it); none: no evaluation"
    )
    model.add_argument(
        "--classes", type=int, default=1000, help="number of classes; labels must be 0..classes-1"
    )
    opt.add_argument(
        "--epochs", type=int, default=270, help="training epochs (the paper: 270 for ResNeSt-50)"
    )
    opt.add_argument("--batch-size", type=int, default=64, help="images per worker and step")
    data.add_argument(
        "--val-batch-size", type=int, default=None, help="validation batch (default: --batch-size)"
    )
    opt.add_argument("--lr", type=float, default=0.1, help=f"learning rate per {BASE_BATCH} images")
    opt.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help=f"linear warm-up before the cosine decay (default: {WARMUP_EPOCHS:g}, cut to a quarter of "
        "--epochs in a shorter run, logged)",
    )
    opt.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    opt.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    opt.add_argument("--no-wd", action="store_true", help="no weight decay on BN gamma/beta and biases")
    opt.add_argument(
        "--wd-all", dest="no_wd", action="store_false", default=argparse.SUPPRESS, help="undoes --no-wd"
    )
    model.add_argument(
        "--last-gamma",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="zero-initialise the last BN gamma of each block",
    )
    model.add_argument(
        "--sync-bn",
        action="store_true",
        help="BatchNorm statistics over all Horovod workers (training.syncbn), for small batches per GPU",
    )
    reg.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing epsilon (0: off)")
    reg.add_argument("--mixup", action=argparse.BooleanOptionalAction, default=False, help="mixup training")
    reg.add_argument("--mixup-alpha", type=float, default=0.2, help="mixup Beta(alpha, alpha)")
    reg.add_argument("--mixup-off-epoch", type=int, default=0, help="train the last N epochs without mixup")
    reg.add_argument(
        "--auto-aug",
        nargs="?",
        const="resnest",
        default="none",
        choices=("resnest", "torchvision", "none"),
        help="AutoAugment's ImageNet policy: resnest (the bare flag: the reference's, on the whole image), "
        "torchvision (on the crop), none",
    )
    data.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode large JPEG crops at 1/2-1/8 size in the DCT (faster, smoother crops than the reference)",
    )
    reg.add_argument(
        "--unclipped-colour",
        action="store_true",
        help="jitter, lighting and normalisation as one unclipped map (the reference clips after each)",
    )
    reg.add_argument(
        "--colour",
        choices=COLOURS,
        default="auto",
        help="clipped colour step: mxnet (MXNet's operators, the reference's below 320 px), torchvision "
        "(ColorJitter through PIL, and MXNet's lighting: the reference's from 320 px), auto (the reference's "
        "for --input-size), rounded (each step rounded, saturation towards the grey level)",
    )
    reg.add_argument(
        "--train-crop",
        choices=("auto", "resized", "tf"),
        default="auto",
        help="random resized crop, or the reference's TF-style crop (auto: TF-style from 320 px)",
    )
    reg.add_argument(
        "--dropblock-per-sample",
        action="store_true",
        help="one DropBlock mask per sample (the reference draws one per device batch)",
    )
    reg.add_argument("--jitter", type=float, default=0.4, help="colour jitter strength")
    reg.add_argument("--lighting", type=float, default=0.1, help="PCA lighting noise strength")
    reg.add_argument("--no-mirror", action="store_true", help="no random horizontal flips (digits, text)")
    reg.add_argument(
        "--min-area", type=float, default=0.08, help="smallest area share of a random resized crop"
    )
    data.add_argument(
        "--data-backend",
        choices=("auto", "cpp", "python"),
        default="auto",
        help="training decoder: the Python/OpenCV path (auto, the default: 40%% of the CPU per image of cpp "
        "with the pip wheel) or MXNet's C++ ImageRecordIter (cpp; no --auto-aug)",
    )
    reg.add_argument(
        "--dropblock-prob",
        type=float,
        default=None,
        help="final DropBlock probability, ramped up from 0 (default: the model's; 0.1 from ResNeSt-50)",
    )
    reg.add_argument(
        "--final-drop", type=float, default=None, help="dropout before the classifier (default: model's)"
    )
    data.add_argument(
        "--input-size", type=int, default=None, help=f"training crop size (default: {INPUT_SIZE})"
    )
    data.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="validation crop (default: --input-size when given, else the model's paper crop)",
    )
    dev.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="float16: GPU only")
    common.add_ctx(dev)
    opt.add_argument(
        "--loss-scale",
        type=float,
        default=2.0**16,
        help="float16: initial dynamic loss scale (halved and the step skipped when gradients overflow, "
        "doubled after 2000 good steps)",
    )
    dev.add_argument(
        "--gradient-predivide-factor",
        type=float,
        default=1.0,
        help="Horovod: divide gradients by this before the sum over workers and by workers/this after "
        "(keeps a float16 sum over many workers in range)",
    )
    data.add_argument(
        "--eval-frequency", type=int, default=1, help="validate every N epochs (and at the end)"
    )
    out.add_argument("--save-dir", default=None, help="run directory (default: runs/<model>)")
    out.add_argument(
        "--keep", type=int, default=3, help="epoch checkpoints to keep (plus <model>-best.params)"
    )
    out.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    opt.add_argument("--seed", type=int, default=0, help="random seed")
    common.add_data_threads(data, 4)
    dev.add_argument("--no-hybridize", action="store_true", help="run imperatively (debugging)")
    opt.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="sum the gradients of N batches before each update (the rate scales with N x batch x workers)",
    )
    ft.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="FILE",
        help="start from the published weights of --model, or from FILE (any .params of the same "
        "architecture; its classifier is replaced when its classes differ from this run's)",
    )
    ft.add_argument(
        "--reset-classifier",
        action="store_true",
        help="with --pretrained: always start a fresh classifier, even when the file's fits --classes",
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
    common.add_progress(out)
    out.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="also write TensorBoard scalars (loss and rate per step, figures per epoch) to DIR "
        "(needs tensorboardX: pip install tensorboardx)",
    )
    args = p.parse_args(argv)
    if args.recipe:
        recipes.apply(args, recipes.explicit_options(p, argv))
    if args.rec_train is None and not args.print_recipe:
        p.error("the following arguments are required: --rec-train")
    if args.save_dir is None:
        args.save_dir = os.path.join("runs", args.model)
    if args.val_batch_size is None:
        args.val_batch_size = args.batch_size
    args.settled = settle_defaults(args)
    return args


def recipe_options(args: argparse.Namespace) -> dict:
    """The options a recipe sets, as ``args`` holds them now (the recipe's, or the flags that won)."""
    keys = recipes.RECIPES[args.recipe] if args.recipe else recipes.RECIPES["resnest50"]
    return {"recipe": args.recipe, **{key: getattr(args, key) for key in keys}}


def settle_defaults(args: argparse.Namespace) -> list:
    """Fills the defaults that depend on other options and returns a line for each, logged at the start:
    the warm-up (at most a quarter of a short run, so the rate peaks) and the training crop."""
    notes = []
    if args.warmup_epochs is None:
        args.warmup_epochs = float(WARMUP_EPOCHS)
        if args.epochs > 0 and WARMUP_EPOCHS > WARMUP_SHARE * args.epochs:
            args.warmup_epochs = round(WARMUP_SHARE * args.epochs, 3)
            notes.append(
                f"warm-up cut from {WARMUP_EPOCHS} to {args.warmup_epochs:g} epochs (a quarter of --epochs "
                f"{args.epochs}), so the rate peaks; --warmup-epochs sets it"
            )
    # the validation crop: --crop-size, else the training crop when --input-size was given, else the paper's
    if args.crop_size:
        args.val_crop_size, why = args.crop_size, "--crop-size"
    elif args.input_size is not None:
        args.val_crop_size, why = args.input_size, "from --input-size; --crop-size sets another"
    elif args.model in resnest_gluon.list_models():
        args.val_crop_size = resnest_gluon.model_info(args.model)["crop_size"]
        why = f"{args.model}'s paper crop; --crop-size sets another"
    else:  # an unknown model: check_args says so
        args.val_crop_size, why = INPUT_SIZE, "unknown model"
    if args.input_size is None:
        args.input_size = INPUT_SIZE
    if args.rec_val:
        notes.append(f"validation crop {args.val_crop_size} ({why})")
    return notes


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
    if args.tensorboard:
        check_tensorboard()


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


def prepare_finetune(net, args: argparse.Namespace, ctx: mx.Context, load: bool, class_names=None) -> None:
    """Loads --pretrained into ``net`` (when ``load``: rank 0 of a run that does not resume), then sets the
    backbone's rate and freezes stages (every rank)."""
    if load and args.pretrained is not None:
        reset = fresh_head_reason(args, class_names)
        try:
            info = load_backbone(net, args.model, args.pretrained, ctx, reset_classifier=reset is not None)
        except (OSError, ValueError) as err:
            raise TrainingError(f"--pretrained: {err}") from err
        if reset is not None:
            logger.info("the classifier of %s starts fresh: %s", info["path"], reset)
        elif info["classifier"] == "replaced":
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


def fresh_head_reason(args: argparse.Namespace, class_names) -> Optional[str]:
    """Why --pretrained's classifier must not be kept although its shape may fit (None: keep it when it
    fits): ``--reset-classifier``, or the file's run named other classes than this run's."""
    if args.reset_classifier:
        return "--reset-classifier"
    if class_names is None:
        return None
    theirs = file_class_names(args.pretrained)
    if theirs is not None and len(theirs) == len(class_names) and list(theirs) != list(class_names):
        first = next(i for i, (a, b) in enumerate(zip(theirs, class_names)) if a != b)
        return (
            f"its run names other classes (label {first}: {theirs[first]!r} there, {class_names[first]!r} "
            "here)"
        )
    return None


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
    if getattr(args, "sync_bn", False):
        from resnest_gluon.training.syncbn import SyncBatchNorm

        overrides["norm_layer"] = SyncBatchNorm
    net = resnest_gluon.get_model(args.model, **overrides)
    if args.dropblock_per_sample:
        set_drop_per_sample(net, True)
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
    it = train_iter(
        args.rec_train,
        args.batch_size,
        args.input_size,
        num_parts=dist.size(),
        part_index=dist.rank(),
        threads=args.data_threads,
        seed=args.seed + epoch,
        auto_aug=False if args.auto_aug == "none" else args.auto_aug,
        reduced_decode=args.fast_decode,
        clip_colour=not args.unclipped_colour,
        colour=args.colour,
        crop=args.train_crop,
        jitter=args.jitter,
        lighting=args.lighting,
        mirror=not args.no_mirror,
        min_area=args.min_area,
        dtype="float32",  # float16 is made on the device (the loop casts), not by the CPU threads
        backend=args.data_backend,
        ctx=colour_ctx(args, ctx),
    )
    # the C++ iterator's errors name no record: a scan of the shard finds it
    it.locate_bad_record = functools.partial(find_bad_record, args.rec_train, dist.size(), dist.rank())
    return it


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
    shard = -(-n_val // dist.size())
    bar = progress_bar(
        total=shard,
        desc=f"validation {epoch}",
        disable=not show_progress(args, dist.is_primary()),
        leave=False,
    )
    try:
        counts = evaluate(net, val_data, ctx, args.dtype, progress=bar.update)
    except ValueError as err:
        bar.close()
        raise TrainingError(
            f"validation data: {err}. Epoch {epoch} is saved in {args.save_dir}: --resume continues once "
            "the data is fixed"
        ) from err
    bar.close()
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


class Classification(Task):
    """Image classification from RecordIO: the recipe's labels (smoothed, mixed up), DropBlock's ramp, top-1
    and top-5. The module's :func:`build_net`, :func:`make_train_iter` and :func:`make_val_iter` build its
    pieces."""

    def __init__(self, args: argparse.Namespace, n_val: int, crop_size: int, class_names=None):
        super().__init__(args)
        self.n_val, self.crop_size, self.class_names = n_val, crop_size, class_names
        self.val_data = make_val_iter(args, crop_size) if args.rec_val else None
        self.max_drop = resnest_gluon.model_info(args.model).get("dropblock_prob", 0.0)
        if args.dropblock_prob is not None:
            self.max_drop = args.dropblock_prob
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)
        self.first_forward_done = False

    def build_net(self, ctx):
        return build_net(self.args, ctx)

    def prepare(self, net, ctx, load: bool) -> None:
        if dist.is_primary() and self.class_names is not None:
            copy_atomic(self.args.class_names, os.path.join(self.args.save_dir, "classes.txt"))
        prepare_finetune(net, self.args, ctx, load, self.class_names)

    def train_data(self, epoch: int, ctx):
        try:
            return make_train_iter(self.args, epoch, ctx)
        except (OSError, ValueError, mx.base.MXNetError) as err:  # e.g. the file was cut short since
            if isinstance(err, mx.base.MXNetError):  # the C++ iterator reads its first batch at once
                locate = functools.partial(find_bad_record, self.args.rec_train, dist.size(), dist.rank())
                err = explain_iter_error(err, locate)
            raise TrainingError(
                f"training data: {err}. The checkpoints in {self.args.save_dir} are intact: --resume "
                "continues once the data is fixed"
            ) from None

    def begin_epoch(self, net, epoch: int) -> dict:
        args = self.args
        drop = drop_prob_at(epoch, args.epochs, self.max_drop) if self.max_drop > 0 else 0.0
        if self.max_drop > 0:
            resnest_gluon.set_drop_prob(net, drop)  # clears the cached graph; the next call rebuilds it
        self.use_mixup = bool(args.mixup and epoch < args.epochs - args.mixup_off_epoch)
        return dict(dropblock_prob=drop, mixup=self.use_mixup)

    def inputs(self, batch, ctx, epoch: int, rng):
        args = self.args
        label = batch.label[0]
        label_np = label.asnumpy()  # a CPU array from the iterator: no wait for the device
        outside = (label_np < 0) | (label_np >= args.classes)
        if outside.any():
            raise TrainingError(
                f"a training label ({label_np[outside][0]:g}) is outside 0..{args.classes - 1}: pass the "
                "right --classes"
            )
        data = batch.data[0].as_in_context(ctx)
        target = smooth_one_hot(label.as_in_context(ctx), args.classes, args.label_smoothing)
        if self.use_mixup:
            data, target = mixup(data, target, args.mixup_alpha, rng)
        return data, target

    def loss(self, net, data, target):
        if not self.first_forward_done and self.args.ctx == "cpu":
            # MXNet's oneDNN pooling says "training with prop_kind is forward_scoring" as it builds its
            # primitives in the first training forward: that forward runs with those lines held back
            with held_native_stderr():
                output = net(data.astype(self.args.dtype, copy=False))
                output.wait_to_read()
            self.first_forward_done = True
        else:
            output = net(data.astype(self.args.dtype, copy=False))
        return self.loss_fn(output.astype("float32", copy=False), target)

    def validate(self, net, ctx, epoch: int, name: str = "val"):
        if self.val_data is None:
            return None
        top1, top5 = validate(net, self.val_data, ctx, self.args, epoch, self.n_val, name)
        return dict(val_top1=top1, val_top5=top5)

    def run_info(self) -> dict:
        return dict(
            omp_threads=threads.configured(), num_val_samples=self.n_val, val_crop_size=self.crop_size
        )


def main(argv=None) -> dict:
    """Runs the training; returns the last epoch's metrics plus ``best_top1`` and ``save_dir``."""
    args = parse_args(argv)
    if args.print_recipe:
        resolved = recipe_options(args)
        print(json.dumps(resolved, indent=1))
        return resolved
    chosen = args.ctx == "auto"
    common.resolve_ctx(args)  # auto: the GPU when MXNet sees one (logged below, once train.log is open)
    check_args(args)
    dist.init()
    ctx = dist.worker_context(args.ctx)  # every worker stops here alike if one has no GPU
    workers, primary = dist.size(), dist.is_primary()
    lock, changes = None, []
    if primary:
        writable_dir(args.save_dir, "--save-dir")
        if args.resume:
            check_run_dir(args.save_dir, args.model, args.classes)
            changes = recipe_changes(args.save_dir, args)
        lock = lock_run_dir(args.save_dir)  # one run per directory; released when this process ends
    handlers = _setup_logging(args.save_dir, primary)
    try:
        if primary:
            if chosen:
                logger.info(
                    "--ctx auto: %s",
                    "a GPU is visible, using it" if args.ctx == "gpu" else "no GPU, on the CPU",
                )
            for note in args.settled:
                logger.info("%s", note)
        for change in changes:
            logger.warning("--resume changes the run's recipe: %s (args.json now records it)", change)
        try:
            task, n_train = prepare_data(args, workers, primary)
            return fit(task, ctx, n_train)
        except (MemoryError, mx.base.MXNetError) as err:
            explained = out_of_memory(err, args) or peer_lost(err)
            if explained is None:
                raise
            raise explained from None
    except BaseException as err:
        if primary:  # the reason goes into train.log too, not only to the console
            log_failure(err, handlers)
        raise
    finally:
        unlock_run_dir(lock)
        root = logging.getLogger("resnest_gluon")
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def out_of_memory(err: Exception, args: argparse.Namespace):
    """A TrainingError saying what to lower when ``err`` is a failed allocation, else None."""
    text = str(err).lower()
    if not isinstance(err, MemoryError) and not any(
        word in text for word in ("bad_alloc", "out of memory", "failed to allocate", "cannot allocate")
    ):
        return None
    return TrainingError(
        f"out of memory with --batch-size {args.batch_size} at --input-size {args.input_size} on --ctx "
        f"{args.ctx}: lower --batch-size (--accumulate N keeps the update batch), --input-size or "
        "--data-threads"
    )


def peer_lost(err: Exception):
    """A TrainingError when ``err`` is Horovod's shutdown after another worker died or failed, else None:
    that worker's own message (or crash report) is the one that says what happened."""
    text = str(err)
    lost = (
        "Horovod has been shut down",
        "Connection reset by peer",
        "Connection closed by peer",
        "Broken pipe",
    )
    if not dist.is_distributed() or not any(word in text for word in lost):
        return None
    return TrainingError(
        "stopped because another worker failed or died (Horovod has been shut down); its own message, "
        "with its rank, says why"
    )


def log_failure(err: BaseException, handlers: list) -> None:
    """Why the run stopped, into train.log only (the console gets the one ``error:`` line from
    :func:`resnest_gluon.cli.run`); the traceback too, for a bug."""
    import traceback

    from resnest_gluon.errors import UserError

    if isinstance(err, UserError):
        text = f"the run stopped: {err}"
    elif isinstance(err, KeyboardInterrupt):
        text = f"the run was stopped ({type(err).__name__}): every checkpoint saved is complete"
    else:
        text = (
            f"the run failed: {type(err).__name__}: {err}\n"
            + "".join(traceback.format_exception(err)).rstrip()
        )
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, text, None, None)
    for handler in handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def prepare_data(args: argparse.Namespace, workers: int, primary: bool):
    """Sizes from the indexes and labels checked before any compute; returns the task and the training
    image count."""
    crop_size = args.val_crop_size
    n_train = record_count(args.rec_train, "training file")
    n_val = record_count(args.rec_val, "validation file") if args.rec_val else 0
    # every worker counts its steps from these: a stale copy on one machine would hang the job
    dist.agree_counts({args.rec_train: n_train, **({args.rec_val: n_val} if args.rec_val else {})})
    check_labels(args.rec_train, args.classes)
    if args.rec_val:
        check_labels(args.rec_val, args.classes)
        val_shard = min(
            end - begin for begin, end in (shard_bounds(n_val, workers, r) for r in range(workers))
        )
        if val_shard < 1:
            raise TrainingError(f"{args.rec_val} has {n_val} images, too few for {workers} workers")
        args.val_batch_size = min(args.val_batch_size, val_shard)
    class_names = load_class_names(args)
    plan = plan_steps(args, n_train, workers)  # its errors before anything is written
    if primary:
        logger.info(
            "%s: %d workers x batch %d = %d, lr %.4g, %d steps/epoch, %d training / %d validation images, "
            "input %d, val crop %d, %s %s",
            args.model,
            workers,
            args.batch_size,
            plan.total_batch,
            plan.peak_lr,
            plan.steps,
            n_train,
            n_val,
            args.input_size,
            crop_size,
            args.ctx,
            args.dtype,
        )
    return Classification(args, n_val, crop_size, class_names), n_train
