"""Evaluates a ResNeSt on a validation ``.rec``: top-1 / top-5 and images per second.

    python scripts/verify.py --run runs/flowers --rec-val data/flowers_val.rec        # a training run
    python scripts/verify.py --model resnest50 --rec-val val.rec --params resnest50-best.params
    python scripts/verify.py --model resnest269 --rec-val val.rec --pretrained      # 416 px
    horovodrun -np 4 -H localhost:4 python scripts/verify.py --ctx gpu --model resnest101 ...
    python scripts/verify.py --model resnest50 --rec-val val.rec --params p.params --backend openvino \
        --precision int8 --rec-calib train.rec                                     # OpenVINO INT8

With ``--run`` the model, classes, crop, class names and checkpoint come from the run directory. Otherwise
the crop is the model's paper crop (224/256/320/416) unless ``--crop-size`` says otherwise, taken as the
ResNeSt reference does (:func:`resnest_gluon.data.val_iter`): below 320 px the shorter side resized to
``crop / 0.875`` and the centre crop; from 320 px the centre square of ``crop / (crop + 32)`` of the shorter
side, resized with PIL's bicubic filter. ``--resize`` resizes the shorter side instead, at any crop.
Under horovodrun every worker takes its shard and the counts are summed, so every image is counted
exactly once.
"""

import argparse
import logging
import os
import time
from typing import List, Optional

import mxnet as mx

import resnest_gluon
from resnest_gluon import deploy, threads
from resnest_gluon.cli import common
from resnest_gluon.data import num_records, val_iter
from resnest_gluon.data.class_names import class_names_beside, read_class_names
from resnest_gluon.models.pretrained import UnreadableParams, load_params_checked
from resnest_gluon.progress import progress_bar
from resnest_gluon.training import TrainingError, atomic_json, check_labels, dist, evaluate, writable_dir
from resnest_gluon.training.rundir import run_files

logger = logging.getLogger("resnest_gluon.verify")


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser("Top-1/top-5 accuracy and speed of a ResNeSt on a validation .rec.")
    src = p.add_argument_group("the model (one of --run, --params, --pretrained, --symbol)")
    src.add_argument(
        "--run",
        metavar="DIR",
        help="a scripts/train.py run directory: its model, classes, validation crop, class names and best "
        "checkpoint (the newest without validation)",
    )
    src.add_argument(
        "--ema", action="store_true", help="with --run: the EMA weights (<model>-ema-best.params)"
    )
    src.add_argument("--params", help="a .params file (e.g. from scripts/train.py); needs --model")
    src.add_argument(
        "--pretrained", action="store_true", help="the published weights (resnest_gluon.models.pretrained)"
    )
    src.add_argument(
        "--symbol",
        metavar="PREFIX",
        help="an exported graph (resnest-export --format symbol): PREFIX-symbol.json and -0000.params; "
        "model, classes, crop and class names from its PREFIX.meta.json",
    )
    src.add_argument("--model", help="one of resnest_gluon.list_models() (default: the run's)")
    src.add_argument(
        "--classes", type=int, default=None, help="classes of the model (default: the run's, else 1000)"
    )
    data = p.add_argument_group("data")
    data.add_argument("--rec-val", required=True, help="validation .rec (its .idx beside it)")
    data.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="centre crop (default: the run's validation crop, else the model's paper crop)",
    )
    data.add_argument(
        "--resize",
        type=int,
        default=None,
        help="shorter side before the centre crop (default: the reference's protocol)",
    )
    data.add_argument("--batch-size", type=int, default=32, help="images per worker and batch")
    common.add_data_threads(data, 4)
    dev = p.add_argument_group("devices and back-ends")
    common.add_ctx(dev)
    dev.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="float16: GPU only")
    dev.add_argument(
        "--backend",
        choices=("mxnet", "openvino"),
        default="mxnet",
        help="mxnet: the oneDNN-fused graph (plain on a GPU); openvino: the model exported to OpenVINO (CPU)",
    )
    dev.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16", "int8"),
        default="auto",
        help="OpenVINO precision (auto: bf16 where the CPU has it, else f32; int8 needs --rec-calib)",
    )
    dev.add_argument(
        "--rec-calib", default=None, help="calibration .rec for --precision int8 (training images)"
    )
    dev.add_argument("--calib-batches", type=int, default=10, help="calibration batches for --precision int8")
    out = p.add_argument_group("output")
    out.add_argument("--json", default=None, help="also write the results to this JSON file")
    common.add_progress(out)
    args = p.parse_args(argv)
    sources = [name for name in ("run", "params", "pretrained", "symbol") if getattr(args, name)]
    if len(sources) != 1:
        p.error("give exactly one of --run, --params, --pretrained, --symbol")
    if args.ema and not args.run:
        p.error("--ema goes with --run")
    if not args.run and not args.symbol and not args.model:
        p.error(f"--{sources[0]} needs --model")
    return args


def settle_export(args: argparse.Namespace) -> Optional[List[str]]:
    """With ``--symbol``: model, classes and crop from the export's ``.meta.json`` (what the command line
    gives wins); returns its class names."""
    try:
        meta = deploy.read_meta(args.symbol)
    except ValueError as err:
        raise TrainingError(str(err)) from err
    if meta is None and not (args.model and args.classes and args.crop_size):
        raise TrainingError(
            f"--symbol {args.symbol}: no {deploy.meta_path(args.symbol)}; give --model, --classes and "
            "--crop-size, or export again with resnest-export"
        )
    meta = meta or {}
    args.model = args.model or meta.get("model")
    args.classes = args.classes or meta.get("classes") or 1000
    args.crop_size = args.crop_size or meta.get("input_size")
    logger.info("--symbol %s: %s, %d classes, crop %s", args.symbol, args.model, args.classes, args.crop_size)
    return meta.get("class_names")


def settle_run(args: argparse.Namespace) -> Optional[List[str]]:
    """With ``--run``: model, classes, crop and weights from the run (what the command line gives wins,
    but a --model or --classes other than the run's is an error); returns the run's class names, checked
    against the ``.classes.txt`` beside ``--rec-val`` when both exist. Without: the defaults."""
    if not args.run:
        args.classes = args.classes or 1000
        return None
    saved, args.params = run_files(args.run, args.ema)
    for key in ("model", "classes"):
        given = getattr(args, key)
        if given is not None and given != saved[key]:
            raise TrainingError(
                f"--{key} {given} but the run in {args.run} trained --{key} {saved[key]}: drop --{key}"
            )
        setattr(args, key, saved[key])
    args.crop_size = args.crop_size or saved.get("val_crop_size") or saved.get("crop_size")
    names_path = os.path.join(args.run, "classes.txt")
    beside = class_names_beside(args.rec_val)
    try:
        names = read_class_names(names_path) if os.path.isfile(names_path) else None
        data_names = read_class_names(beside) if beside is not None else None
    except (OSError, ValueError) as err:
        raise TrainingError(f"class names: {err}") from err
    if names is not None and data_names is not None:
        if data_names != names:
            diff = next(
                (i for i, (a, b) in enumerate(zip(names, data_names)) if a != b),
                min(len(names), len(data_names)),
            )
            raise TrainingError(
                f"the run's classes ({names_path}) are not the classes of --rec-val ({beside}), first at "
                f"label {diff}: score this run on records packed with its class folders"
            )
    logger.info(
        "--run %s: %s, %d classes, crop %d, %s",
        args.run,
        args.model,
        args.classes,
        args.crop_size or 0,
        args.params,
    )
    return names


def openvino_net(net, args, crop: int):
    """``net`` exported to OpenVINO at ``--precision`` (in a temporary folder), as a callable on NDArrays."""
    import tempfile

    import numpy as np

    precision = deploy.resolve_precision(args.precision)
    with tempfile.TemporaryDirectory(prefix="verify-openvino-") as tmp:
        calib = None
        if precision == "int8":
            calib = val_iter(
                args.rec_calib, args.batch_size, crop, threads=args.data_threads, resize=args.resize
            )
        xml = deploy.export_openvino(
            net, os.path.join(tmp, args.model), (1, 3, crop, crop), precision, calib, args.calib_batches
        )
        compiled = deploy.load_openvino(xml)
    logger.info("OpenVINO %s model compiled", precision)
    return (lambda x: mx.nd.array(deploy.run_openvino(compiled, x.asnumpy()), dtype=np.float32)), precision


def main(argv=None) -> dict:
    """Runs the evaluation; returns ``{top1, top5, images, images_per_sec, ...}`` (on every worker)."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:  # a command, not a library call: its notes on the console
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    class_names = settle_export(args) if args.symbol else settle_run(args)
    common.resolve_ctx(args)
    if args.model not in resnest_gluon.list_models():
        raise TrainingError(
            f"unknown model {args.model!r}; choose one of: {', '.join(resnest_gluon.list_models())}"
        )
    if args.dtype == "float16" and args.ctx != "gpu":
        raise TrainingError("--dtype float16 needs --ctx gpu")
    if args.symbol and (args.backend != "mxnet" or args.dtype != "float32"):
        raise TrainingError("--symbol runs the exported float32 graph with MXNet: drop --backend/--dtype")
    if args.backend == "openvino" and args.ctx != "cpu":
        raise TrainingError("--backend openvino runs on the CPU: drop --ctx gpu")
    if args.backend == "openvino" and args.precision == "int8" and not args.rec_calib:
        raise TrainingError("--precision int8 needs --rec-calib (a .rec of training images to calibrate on)")
    if args.params and not os.path.isfile(args.params):
        raise TrainingError(f"parameter file {args.params} does not exist")
    dist.init()
    primary = dist.is_primary()
    if args.json and primary:  # before the work, not after it
        writable_dir(os.path.dirname(os.path.abspath(args.json)), "--json")
    ctx = dist.worker_context(args.ctx)
    crop = args.crop_size or resnest_gluon.model_info(args.model)["crop_size"]
    try:
        total = num_records(args.rec_val)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise TrainingError(f"validation file {args.rec_val}: {err}") from err
    check_labels(args.rec_val, args.classes)

    if args.symbol:
        try:
            net = deploy.load_exported(args.symbol, ctx=ctx)
        except (OSError, ValueError, mx.base.MXNetError) as err:
            raise TrainingError(f"--symbol {args.symbol}: {err}") from err
        net.hybridize(static_alloc=True, static_shape=True)
    elif args.pretrained:
        try:
            net = resnest_gluon.get_model(args.model, pretrained=True, classes=args.classes, ctx=ctx)
        except (OSError, ValueError) as err:  # not on disk, no published weights, a damaged file
            raise TrainingError(f"--pretrained: {err}") from err
    else:
        net = resnest_gluon.get_model(args.model, classes=args.classes)
        try:
            load_params_checked(net, args.params, ctx)
        except UnreadableParams as err:
            raise TrainingError(str(err)) from err
        except ValueError as err:
            raise TrainingError(f"{err} (is --model / --classes right?)") from err
    if args.dtype == "float16":
        net.cast("float16")
    precision = None
    if args.backend == "openvino":
        net, precision = openvino_net(net, args, crop)
    elif not args.symbol:
        deploy.prepare_for_inference(net)  # oneDNN-fused on a CPU, the plain graph on a GPU

    batch = min(args.batch_size, max(1, -(-total // dist.size()) if dist.size() > 1 else total))
    data = val_iter(
        args.rec_val,
        batch,
        crop,
        num_parts=dist.size(),
        part_index=dist.rank(),
        threads=args.data_threads,
        resize=args.resize,
        dtype="float32",  # evaluate() casts on the device
        backend="python",  # names an undecodable record; the C++ iterator dies of SIGFPE on it
    )
    # Warm up (graph building, cuDNN's autotuning) on a batch of the evaluated shape before timing.
    net(mx.nd.zeros((batch, 3, crop, crop), ctx=ctx, dtype=args.dtype)).wait_to_read()
    shard = -(-total // dist.size())
    show = primary and args.progress is not False
    bar = progress_bar(total=shard, desc="verify", disable=not show, leave=False)
    tic = time.time()
    try:
        counts = evaluate(net, data, ctx, args.dtype, progress=bar.update)
    except ValueError as err:  # an undecodable record, named
        raise TrainingError(f"validation data: {err}") from err
    finally:
        bar.close()
    mx.nd.waitall()
    counts = dist.allreduce_sum(mx.nd.array(counts, dtype="float64"), name="verify").asnumpy()
    seconds = time.time() - tic  # after the sum: the slowest worker's time
    result = dict(
        model=args.model,
        params=args.params or args.symbol or "pretrained",
        run=args.run,
        classes=args.classes,
        class_names=class_names,
        rec_val=args.rec_val,
        crop_size=crop,
        top1=100.0 * counts[0] / counts[2],
        top5=100.0 * counts[1] / counts[2],
        images=int(counts[2]),
        images_in_index=total,
        workers=dist.size(),
        omp_threads=threads.configured(),
        backend=args.backend,
        precision=precision,
        seconds=seconds,
        images_per_sec=counts[2] / seconds,
    )
    dist.barrier("verify")
    if primary:
        print(
            f"{args.model} on {result['images']} images (crop {crop}, {dist.size()} worker(s)): "
            f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
            f"{result['images_per_sec']:.1f} images/s" + (f" (OpenVINO {precision})" if precision else "")
        )
        if args.json:
            atomic_json(args.json, result)
    return result
