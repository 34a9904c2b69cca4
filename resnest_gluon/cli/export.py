"""Exports a training run (or any checkpoint, or the published weights) for serving, with its metadata.

    resnest-export --run runs/mine --format onnx                # runs/mine/export/onnx/resnest50.onnx
    resnest-export --run runs/mine --format symbol --ema        # the EMA weights, MXNet symbol + params
    resnest-export --run runs/mine --format openvino --precision bf16
    resnest-export --run runs/mine --format int8                # calibrated on the run's --rec-train
    resnest-export --model resnest50 --pretrained --format onnx --out-prefix out/resnest50

Every format writes ``PREFIX.meta.json`` beside its files (classes, class names, input size, resize/crop
rule, mean, std, channel order, model, source checkpoint and its SHA-1), so that
``resnest-predict photos/ --onnx out/resnest50.onnx`` needs no other flag.
"""

import argparse
import json
import logging
import os
from typing import Optional, Sequence

from ..errors import UserError
from . import common

FORMATS = ("symbol", "onnx", "openvino", "int8")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = common.parser(
        "A run or a checkpoint as MXNet symbol, ONNX, OpenVINO or INT8 files, each with PREFIX.meta.json.",
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    src = p.add_argument_group("the model (--run, or --model with --params or --pretrained)")
    src.add_argument(
        "--run", help="a resnest-train run directory: model, classes, crop, class names, weights"
    )
    src.add_argument("--ema", action="store_true", help="with --run: its EMA weights")
    src.add_argument("--params", help="a .params file of --model with --classes classes")
    src.add_argument("--pretrained", action="store_true", help="the published ImageNet weights of --model")
    src.add_argument("--model", help="a model name (python -m resnest_gluon lists them)")
    src.add_argument("--classes", type=int, default=None, help="classes of --params (default: 1000)")
    src.add_argument("--class-names", help="class names, one per line (default: the run's, or ImageNet's)")
    fmt = p.add_argument_group("format")
    fmt.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    fmt.add_argument(
        "--input-size", type=int, default=None, help="crop size (default: the run's or the model's)"
    )
    fmt.add_argument(
        "--batch-size", type=int, default=1, help="the traced batch (ONNX and OpenVINO keep it dynamic)"
    )
    fmt.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16", "int8"),
        default="auto",
        help="openvino: auto is bf16 where the CPU has it, else f32; int8 is calibrated on --rec-calib",
    )
    fmt.add_argument("--rec-calib", help="int8: calibration records (default: the run's --rec-train)")
    fmt.add_argument("--calib-batches", type=int, default=10, help="int8: calibration batches of 8 images")
    out = p.add_argument_group("output")
    out.add_argument(
        "--out-prefix", help="output prefix (default: RUN/export/FORMAT/MODEL, or export/FORMAT/MODEL)"
    )
    args = p.parse_args(argv)
    if sum(bool(x) for x in (args.run, args.params, args.pretrained)) != 1:
        p.error("give exactly one of --run, --params, --pretrained")
    if (args.params or args.pretrained) and not args.model:
        p.error("--params and --pretrained need --model NAME")
    if args.batch_size < 1 or args.calib_batches < 1:
        p.error("--batch-size and --calib-batches must be at least 1")
    return args


def load(args: argparse.Namespace):
    """The model to export, and what the run (if any) says: ``(net, crop, class_names, saved args)``."""
    import resnest_gluon
    from resnest_gluon.data.class_names import read_class_names
    from resnest_gluon.models.pretrained import load_params_checked
    from resnest_gluon.training.rundir import run_files

    saved, crop, names_path = {}, args.input_size, args.class_names
    model, classes, params = args.model, args.classes, args.params
    if args.run:
        saved, params = run_files(args.run, args.ema)
        model, classes = saved["model"], saved["classes"]
        crop = crop or saved.get("val_crop_size") or saved.get("crop_size")
        if names_path is None and os.path.isfile(os.path.join(args.run, "classes.txt")):
            names_path = os.path.join(args.run, "classes.txt")
    if model not in resnest_gluon.list_models():
        raise UserError(
            f"--model {model!r} is not a model name; choose one of: {', '.join(resnest_gluon.list_models())}"
        )
    crop = crop or resnest_gluon.model_info(model)["crop_size"]
    try:
        if args.pretrained:
            net = resnest_gluon.get_model(model, pretrained=True)
        else:
            if not os.path.isfile(params):
                raise UserError(f"--params {params} does not exist")
            net = resnest_gluon.get_model(model, classes=classes or 1000)
            load_params_checked(net, params)
        names = read_class_names(names_path) if names_path else None
    except (OSError, ValueError) as err:
        raise UserError(str(err)) from None
    return net, crop, names, saved


def export(args: argparse.Namespace) -> dict:
    """Writes the files; returns ``{format, files, meta}``."""
    from resnest_gluon import deploy

    net, crop, names, saved = load(args)
    model = net.model_name
    if args.out_prefix:
        prefix = args.out_prefix
    else:
        prefix = os.path.join(args.run or ".", "export", args.format, model)
    shape = (args.batch_size, 3, crop, crop)
    meta = dict(class_names=names) if names else {}
    if args.run:
        meta["run"] = os.path.abspath(args.run)
    calib = None
    if args.format == "int8" or (args.format == "openvino" and args.precision == "int8"):
        calib = args.rec_calib or saved.get("rec_train")
        if not calib:
            raise UserError(f"--format {args.format} needs calibration images: pass --rec-calib FILE.rec")
        if not os.path.isfile(calib):
            raise UserError(f"calibration records {calib} do not exist: pass --rec-calib FILE.rec")
    if args.format == "symbol":
        files = list(deploy.export(net, prefix, shape, meta=meta))
    elif args.format == "onnx":
        files = [deploy.export_onnx(net, prefix + ".onnx", shape, dynamic_batch=True, meta=meta)]
    elif args.format == "openvino":
        xml = deploy.export_openvino(net, prefix, shape, args.precision, calib, args.calib_batches, meta=meta)
        files = [xml, xml[: -len(".xml")] + ".bin"]
    else:
        deploy.quantize(net, calib, args.calib_batches, prefix, input_size=crop, meta=meta)
        files = [f"{prefix}-symbol.json", f"{prefix}-0000.params"]
    meta_file = deploy.meta_path(prefix)
    return dict(format=args.format, files=files + [meta_file], meta=deploy.read_meta(prefix))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = export(args)
    for path in result["files"]:
        print(f"{path}  ({os.path.getsize(path) / 1e6:.1f} MB)")
    meta = result["meta"]
    print(
        json.dumps({k: meta[k] for k in ("model", "classes", "input_size", "resize", "source_sha1")}),
    )
    return result
