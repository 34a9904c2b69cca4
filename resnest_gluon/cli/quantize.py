"""INT8 quantization of a trained ResNeSt checkpoint, and its top-1 against float32 on validation records.

Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955.

The model is calibrated with MXNet's quantization (MKLDNN backend) on a few batches of ``--rec-calib``,
saved as ``{--out-prefix}-symbol.json`` / ``-0000.params`` / ``.meta.json``, and both models are scored on
``--rec-val`` with the validation transform of training (``resnest_gluon.data.val_iter``).

Example (the demo's digits model)::

    python scripts/quantize.py --model resnest14 --classes 10 --input-size 32 \\
        --params demo_out/run/resnest14-best.params --rec-calib demo_out/train.rec \\
        --rec-val demo_out/val.rec --out-prefix demo_out/int8/resnest14

``--calib-mode naive entropy`` scores both calibrations (the first one's model is saved); ``--openvino``
also scores the model exported to OpenVINO in f32, bf16 and INT8 (calibrated on the same records).
"""

import json
import logging
import os
import time
from typing import Dict, Sequence, Union

import mxnet as mx

import resnest_gluon
from resnest_gluon import deploy, threads
from resnest_gluon.data import val_iter
from resnest_gluon.errors import UserError
from resnest_gluon.models.pretrained import load_params_checked
from resnest_gluon.training import TrainingError, atomic_json, check_labels

from . import common

logger = logging.getLogger("quantize")


def top1(net, rec: str, batch_size: int, input_size: int) -> Dict:
    """Top-1 accuracy (%) of ``net`` on every record of ``rec``, and the images/s of the scoring loop."""
    correct = total = 0
    seconds = 0.0
    for batch in val_iter(rec, batch_size, input_size):
        keep = batch_size - batch.pad
        data = batch.data[0].as_in_context(mx.cpu())
        start = time.perf_counter()
        out = net(data).asnumpy()
        seconds += time.perf_counter() - start
        label = batch.label[0].asnumpy()[:keep]
        correct += int((out[:keep].argmax(1) == label).sum())
        total += keep
    if total == 0:
        raise ValueError(f"{rec} has no records")
    return dict(top1=100.0 * correct / total, images=total, img_per_sec=total / seconds)


def quantize_checkpoint(
    model: str,
    params: str,
    classes: int,
    rec_calib: str,
    rec_val: str,
    out: str,
    input_size: int,
    batch_size: int = 32,
    calib_batches: int = 10,
    calib_mode: Union[str, Sequence[str]] = "naive",
    openvino: bool = False,
) -> Dict:
    """Quantizes the checkpoint, saves it under ``out``, and returns float32 and INT8 top-1 on ``rec_val``.

    ``calib_mode`` may list several modes (each is scored; the first is saved and reported as ``int8_*``);
    ``openvino`` adds OpenVINO f32 / bf16 / INT8. Every scored path is a row of ``paths``.
    """
    for path in (params, rec_calib, rec_val):
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist (`make demo` makes the digits model and records)")
    for path in (rec_calib, rec_val):  # labels from the records' heads, against --classes
        check_labels(path, classes)
    net = resnest_gluon.get_model(model, classes=classes)
    try:
        load_params_checked(net, params, mx.cpu())
    except ValueError as err:  # cut short, or another model or class count (named in the message)
        raise TrainingError(f"--params: {err}") from None
    modes = [calib_mode] if isinstance(calib_mode, str) else list(calib_mode)
    deploy.prepare_for_inference(net)  # the fused float32 graph a user gets
    fp32 = top1(net, rec_val, batch_size, input_size)
    paths = [dict(path="mxnet float32 (fused)", **fp32)]
    int8 = None
    for i, mode in enumerate(modes):
        calib = val_iter(rec_calib, batch_size, input_size)
        qnet = deploy.quantize(net, calib, calib_batches, out if i == 0 else None, calib_mode=mode)
        scored = top1(qnet, rec_val, batch_size, input_size)
        paths.append(dict(path=f"mxnet int8 ({mode} calibration)", **scored))
        int8 = int8 or scored
    if openvino:
        for precision in ("f32", "bf16", "int8"):
            calib = val_iter(rec_calib, batch_size, input_size) if precision == "int8" else None
            compiled = deploy.compile_openvino(
                net, (1, 3, input_size, input_size), precision, calib, calib_batches
            )
            run = lambda x, c=compiled: mx.nd.array(deploy.run_openvino(c, x.asnumpy()))  # noqa: E731
            paths.append(dict(path=f"openvino {precision}", **top1(run, rec_val, batch_size, input_size)))
    for row in paths:
        row["top1_drop"] = fp32["top1"] - row["top1"]
    return dict(
        model=model,
        params=params,
        input_size=input_size,
        calib_batches=calib_batches,
        calib_mode=modes[0],
        float32_top1=fp32["top1"],
        int8_top1=int8["top1"],
        top1_drop=fp32["top1"] - int8["top1"],
        val_images=fp32["images"],
        float32_img_per_sec=fp32["img_per_sec"],
        int8_img_per_sec=int8["img_per_sec"],
        out=out,
        omp_threads=threads.configured(),
        paths=paths,
    )


def parse_args(argv=None):
    p = common.parser("INT8-quantize a ResNeSt checkpoint and compare its top-1 to float32.")
    model = p.add_argument_group("model")
    model.add_argument("--model", required=True, help="registry name, e.g. resnest14")
    model.add_argument("--params", required=True, help=".params checkpoint")
    model.add_argument("--classes", type=int, default=1000, help="classes of --params")
    model.add_argument(
        "--input-size", type=int, default=None, help="crop size (default: the model's paper crop)"
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--rec-calib", required=True, help=".rec with calibration images (e.g. the training set)"
    )
    data.add_argument("--rec-val", required=True, help=".rec to score float32 and INT8 on")
    data.add_argument("--batch-size", type=int, default=32, help="images per batch")
    calib = p.add_argument_group("calibration")
    calib.add_argument("--calib-batches", type=int, default=10, help="calibration batches")
    calib.add_argument(
        "--calib-mode",
        nargs="+",
        default=["naive"],
        choices=["naive", "entropy"],
        help="calibration(s) to score; the first one's model is saved",
    )
    calib.add_argument("--openvino", action="store_true", help="also score OpenVINO f32, bf16 and INT8")
    out = p.add_argument_group("output")
    # not required=True: argparse would then refuse the old spelling --out
    out.add_argument(
        "--out-prefix",
        help="output prefix: PREFIX-symbol.json, PREFIX-0000.params, PREFIX.meta.json (required)",
    )
    common.alias(out, "--out", dest="out_prefix")
    out.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    if not args.out_prefix:
        p.error("the following arguments are required: --out-prefix")
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    size = args.input_size or resnest_gluon.model_info(args.model)["crop_size"]
    result = quantize_checkpoint(
        args.model,
        args.params,
        args.classes,
        args.rec_calib,
        args.rec_val,
        args.out_prefix,
        size,
        args.batch_size,
        args.calib_batches,
        args.calib_mode,
        args.openvino,
    )
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_json(args.json, result)  # checked before it replaces anything; an error is one line
    return result
