"""Evaluates a ResNeSt on a validation ``.rec``: top-1 / top-5 and images per second.

    python scripts/verify.py --model resnest50 --rec-val val.rec --params resnest50-best.params
    python scripts/verify.py --model resnest269 --rec-val val.rec --pretrained      # 416 px, bicubic
    horovodrun -np 4 -H localhost:4 python scripts/verify.py --ctx gpu --model resnest101 ...
    python scripts/verify.py --model resnest50 --rec-val val.rec --params p.params --backend openvino \
        --precision int8 --rec-calib train.rec                                     # OpenVINO INT8

The crop is the model's paper crop (224/256/320/416) unless ``--crop-size`` says otherwise, taken as the
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

import mxnet as mx

import resnest_gluon
from resnest_gluon import deploy, threads
from resnest_gluon.data import num_records, val_iter
from resnest_gluon.models.pretrained import UnreadableParams, load_params_checked
from resnest_gluon.training import TrainingError, atomic_json, check_labels, dist, evaluate, writable_dir

logger = logging.getLogger("resnest_gluon.verify")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Top-1/top-5 accuracy and speed of a ResNeSt on a validation .rec.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="one of resnest_gluon.list_models()")
    p.add_argument("--rec-val", required=True, help="validation .rec (its .idx beside it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--params", help="a .params file (e.g. from scripts/train.py)")
    src.add_argument(
        "--pretrained", action="store_true", help="the published weights (resnest_gluon.models.pretrained)"
    )
    p.add_argument("--classes", type=int, default=1000, help="classes of the model")
    p.add_argument(
        "--crop-size", type=int, default=None, help="centre crop (default: the model's paper crop)"
    )
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="shorter side before the centre crop (default: the reference's protocol)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per worker and batch")
    p.add_argument(
        "--ctx",
        choices=("cpu", "gpu"),
        default="cpu",
        help="device; gpu uses mx.gpu(local_rank), or gpu(0) when a worker sees exactly one GPU",
    )
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="float16: GPU only")
    p.add_argument("--threads", type=int, default=4, help="decoding threads per worker")
    p.add_argument(
        "--backend",
        choices=("mxnet", "openvino"),
        default="mxnet",
        help="mxnet: the oneDNN-fused graph (plain on a GPU); openvino: the model exported to OpenVINO (CPU)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16", "int8"),
        default="auto",
        help="OpenVINO precision (auto: bf16 where the CPU has it, else f32; int8 needs --rec-calib)",
    )
    p.add_argument(
        "--rec-calib", default=None, help="calibration .rec for --precision int8 (training images)"
    )
    p.add_argument("--calib-batches", type=int, default=10, help="calibration batches for --precision int8")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def openvino_net(net, args, crop: int):
    """``net`` exported to OpenVINO at ``--precision`` (in a temporary folder), as a callable on NDArrays."""
    import tempfile

    import numpy as np

    precision = deploy.resolve_precision(args.precision)
    with tempfile.TemporaryDirectory(prefix="verify-openvino-") as tmp:
        calib = None
        if precision == "int8":
            calib = val_iter(args.rec_calib, args.batch_size, crop, threads=args.threads, resize=args.resize)
        xml = deploy.export_openvino(
            net, os.path.join(tmp, args.model), (1, 3, crop, crop), precision, calib, args.calib_batches
        )
        compiled = deploy.load_openvino(xml)
    logger.info("OpenVINO %s model compiled", precision)
    return (lambda x: mx.nd.array(deploy.run_openvino(compiled, x.asnumpy()), dtype=np.float32)), precision


def main(argv=None) -> dict:
    """Runs the evaluation; returns ``{top1, top5, images, images_per_sec, ...}`` (on every worker)."""
    args = parse_args(argv)
    if args.model not in resnest_gluon.list_models():
        raise TrainingError(
            f"unknown model {args.model!r}; choose one of: {', '.join(resnest_gluon.list_models())}"
        )
    if args.dtype == "float16" and args.ctx != "gpu":
        raise TrainingError("--dtype float16 needs --ctx gpu")
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

    if args.pretrained:
        net = resnest_gluon.get_model(args.model, pretrained=True, classes=args.classes, ctx=ctx)
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
    else:
        deploy.prepare_for_inference(net)  # oneDNN-fused on a CPU, the plain graph on a GPU

    batch = min(args.batch_size, max(1, -(-total // dist.size()) if dist.size() > 1 else total))
    data = val_iter(
        args.rec_val,
        batch,
        crop,
        num_parts=dist.size(),
        part_index=dist.rank(),
        threads=args.threads,
        resize=args.resize,
        dtype="float32",  # evaluate() casts on the device
        backend="python",  # names an undecodable record; the C++ iterator dies of SIGFPE on it
    )
    # Warm up (graph building, cuDNN's autotuning) on a batch of the evaluated shape before timing.
    net(mx.nd.zeros((batch, 3, crop, crop), ctx=ctx, dtype=args.dtype)).wait_to_read()
    tic = time.time()
    try:
        counts = evaluate(net, data, ctx, args.dtype)
    except ValueError as err:  # an undecodable record, named
        raise TrainingError(f"validation data: {err}") from err
    mx.nd.waitall()
    counts = dist.allreduce_sum(mx.nd.array(counts, dtype="float64"), name="verify").asnumpy()
    seconds = time.time() - tic  # after the sum: the slowest worker's time
    result = dict(
        model=args.model,
        params=args.params or "pretrained",
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
