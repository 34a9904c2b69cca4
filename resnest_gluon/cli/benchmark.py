"""Inference speed of ResNeSt models: images/s and latency, beside the paper's published figures.

Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955 (Table 3 and Figure 1 report
images/s of the Gluon implementation on one V100).

Each model is built, hybridized with ``static_alloc=True, static_shape=True``, warmed up and timed; the
clock is read only after ``mx.nd.waitall()``. When several implementations are compared (``--compare
gluoncv``, ``--onnx``, ``--quantize``) their timings are interleaved round by round in the same process, so
load from other programs on the machine affects all of them alike.

Examples
--------
The paper's table on this machine (every ResNeSt at its paper crop, the ablation models at 224)::

    python scripts/benchmark.py --json bench.json --plot bench.png

Our ResNeSt-50 against gluoncv's, batch 1 and 8::

    python scripts/benchmark.py --model resnest50 --batch-size 1 8 --input-size 224 --compare gluoncv
"""

import importlib.util
import json
import logging
import os
import tempfile
from functools import partial
from typing import Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np

import resnest_gluon
from resnest_gluon import ops, threads
from resnest_gluon.benchmarking import (
    add_peak_share,
    complexity,
    describe,
    environment,
    format_ratios,
    format_table,
    fp32_peak,
    label,
    measure,
    mxnet_runner,
    onnx_runner,
    openvino_runner,
    plot,
    plot_paths,
    ratios,
    save_json,
)
from resnest_gluon.errors import UserError

from . import common

logger = logging.getLogger("benchmark")

# Images/s in the paper (one V100, Gluon; batch size and precision not stated), by (model, input size).
PAPER_GPU_IMG_PER_SEC = {
    ("resnest101", 256): 291.3,
    ("resnest200", 320): 105.3,
    ("resnest269", 416): 51.2,
    ("resnetd50", 224): 688.2,
    ("resnest50_fast_1s1x64d", 224): 617.6,
    ("resnest50_fast_2s1x64d", 224): 533.0,
    ("resnest50_fast_4s1x64d", 224): 458.3,
    ("resnest50_fast_2s2x40d", 224): 481.8,
}

# gluoncv's models timed beside each of ours by --compare gluoncv (ResNet-D-50 is the paper's baseline).
GLUONCV_PEERS = {
    "resnest14": ["resnest14"],
    "resnest26": ["resnest26"],
    "resnest50": ["resnest50", "resnet50_v1d"],
    "resnest101": ["resnest101"],
    "resnest200": ["resnest200"],
    "resnest269": ["resnest269"],
    "resnetd50": ["resnet50_v1d"],
}

# Models bigger than ResNeSt-101 take seconds per image on a small CPU: the default run gives them
# batch 1 and few iterations.
BIG_MODELS = ("resnest200", "resnest269")


def default_plan(quick: bool = False) -> List[Dict]:
    """The paper's table: every ResNeSt at its crop size, the ablation models and ResNet-D-50 at 224.

    Returns a list of ``{"model", "input_size", "batch_sizes", "iters"}``.
    """
    names = [n for n in resnest_gluon.list_models() if n != "resnest14" and n != "resnest26"]
    plan = []
    for name in names:
        info = resnest_gluon.model_info(name)
        big = name in BIG_MODELS or info["crop_size"] > 256
        plan.append(
            dict(
                model=name,
                input_size=info["crop_size"],
                batch_sizes=[1] if (big or quick) else [1, 8],
                iters=2 if big else (3 if quick else 10),
            )
        )
    return plan


def build_net(
    name: str,
    impl: str = "resnest_gluon",
    ctx: Optional[mx.Context] = None,
    dtype: str = "float32",
    keep_dropblock: bool = False,
):
    """An initialised model: ours from the registry, or gluoncv's ``name`` (random weights, no download).

    Our models are built as the registry builds them, DropBlock at 0 (an identity that costs nothing);
    ``keep_dropblock`` raises it to the training recipe's value to show what that would cost at inference.
    """
    ctx = ctx or mx.cpu()
    if impl == "gluoncv":
        from gluoncv.model_zoo import get_model as gluoncv_model

        net = gluoncv_model(name, pretrained=False)
    else:
        net = resnest_gluon.get_model(name)
        if keep_dropblock:
            resnest_gluon.set_drop_prob(net, resnest_gluon.model_info(name)["dropblock_prob"])
    net.initialize(mx.init.Xavier(), ctx=ctx)
    if dtype != "float32":
        net.cast(dtype)
    return net


def cpu_copy(name: str, net, impl: str = "resnest_gluon"):
    """A float32 copy of ``net`` (same weights) on the CPU, for the CPU-only paths (ONNX, INT8, OpenVINO)."""
    copy = build_net(name, impl=impl, ctx=mx.cpu())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.params")
        net.save_parameters(path)
        copy.load_parameters(path, ctx=mx.cpu(), cast_dtype=True)
    return copy


OUR_PEERS = {"resnest50": ["resnetd50"]}


def run(
    plan: Sequence[Dict],
    ctx: Optional[mx.Context] = None,
    dtype: str = "float32",
    compare_gluoncv: bool = False,
    imperative: bool = False,
    onnx: bool = False,
    quantize_rec: Optional[str] = None,
    calib_batches: int = 5,
    calib_modes: Sequence[str] = ("naive",),
    rounds: int = 1,
    keep_dropblock: bool = False,
    fuse: bool = True,
    plain: bool = False,
    openvino: Sequence[str] = (),
    our_peers: bool = False,
    stream: bool = False,
    progress: bool = True,
    interleave: str = "blocks",
) -> List[Dict]:
    """Measures every entry of ``plan`` (see :func:`default_plan`); returns one record per measurement.

    Our model as :func:`resnest_gluon.deploy.prepare_for_inference` gives it (oneDNN-fused on a CPU) is the
    baseline of every ratio; ``fuse=False`` makes the baseline the plain graph; ``plain`` also times every
    MXNet model (ours and the peers) plain beside fused. The ONNX (onnxruntime), INT8 (``quantize_rec``: a
    ``.rec``, or ``"random"`` for random calibration images, which is enough to time it) and OpenVINO
    (``openvino``: precisions) paths run on the CPU whatever ``ctx``, from a CPU copy of our model.

    Records have ``model``, ``impl`` (``resnest_gluon``, ``gluoncv``, ``onnxruntime``, ``openvino`` or
    ``resnest_gluon-int8``), ``mode`` (``fused``, ``fused-std`` (fused, without our C++ operator: with
    ``plain`` where it is built), ``plain``, ``imperative``, ``graph``, ``f32``, ``bf16``,
    ``int8``), ``baseline``, ``ctx``, ``batch_size``, ``input_size``, ``dtype``, ``img_per_sec`` (median,
    each call synchronised) with ``img_per_sec_p25``/``_p75``, ``ms_per_batch`` (median) with its quartiles,
    ``stream_img_per_sec`` (with ``stream``), ``params``, ``macs``, ``paper_gpu_img_per_sec`` and ``top1``.
    """
    from resnest_gluon import deploy

    ctx = ctx or mx.cpu()
    records = []
    fuse = fuse and deploy.fusion_available(ctx)  # the plain graph on a GPU
    modes = ["fused", "plain"] if (fuse and plain) else (["fused"] if fuse else ["plain"])
    for entry in plan:
        name, size = entry["model"], entry["input_size"]
        info = resnest_gluon.model_info(name)
        common = dict(
            peer_of=name,
            input_size=size,
            dtype=dtype,
            ctx=str(ctx),
            paper_gpu_img_per_sec=PAPER_GPU_IMG_PER_SEC.get((name, size)),
            top1=info["top1"],
            dropblock=keep_dropblock,
            baseline=False,
        )
        nets = {}  # key -> (net, record)
        peers = [("resnest_gluon", name)]
        peers += [("resnest_gluon", p) for p in (OUR_PEERS.get(name, []) if our_peers else [])]
        peers += [("gluoncv", p) for p in (GLUONCV_PEERS.get(name, []) if compare_gluoncv else [])]
        for impl, model in peers:
            ours = impl == "resnest_gluon"
            extra = ["imperative"] if imperative and ours and model == name else []
            if plain and fuse and ours and model == name and ops.available():
                extra.insert(0, "fused-std")  # the same fused graph without our split-attention operator
            for i, mode in enumerate(modes + extra):
                net = build_net(
                    model, impl=impl, ctx=ctx, dtype=dtype, keep_dropblock=ours and keep_dropblock
                )
                cx = complexity(net, size, ctx, dtype)
                if mode != "imperative":
                    hybridize_for_inference(
                        net, mode.startswith("fused"), keep_dropblock=ours and keep_dropblock
                    )
                    if mode == "fused-std":
                        resnest_gluon.set_fused_sum(net, False)
                record = dict(common, model=model, impl=impl, mode=mode, **cx)
                record["baseline"] = ours and model == name and i == 0
                if model != name or not ours:  # the paper's speed and accuracy belong to our model only
                    record.update(top1=None, paper_gpu_img_per_sec=None, dropblock=None)
                nets[f"{impl}-{model}-{mode}"] = (net, record)
        # the CPU-only paths: our model's complexity, not its published accuracy (INT8/bf16 change it)
        cpu = dict(common, model=name, ctx=str(mx.cpu()), top1=None, **complexity_of(nets, name))
        derived = {}  # key -> (make_runner(batch, size), record): the CPU-only paths
        if onnx or quantize_rec or openvino:
            source = cpu_copy(name, nets[f"resnest_gluon-{name}-{modes[0]}"][0])
            calib = (
                calibration(quantize_rec, calib_batches, size)
                if (quantize_rec or "int8" in openvino)
                else None
            )
        if onnx:
            session = _onnx_session(source, size)
            derived["onnx"] = (partial(onnx_runner, session), dict(cpu, impl="onnxruntime", mode="graph"))
        for calib_mode in calib_modes if quantize_rec else ():
            qnet = deploy.quantize(
                cpu_copy(name, source), calib, len(calib), batch_size=len(calib[0]), calib_mode=calib_mode
            )
            derived[f"int8-{calib_mode}"] = (
                partial(mxnet_runner, qnet, ctx=mx.cpu(), dtype="float32"),
                dict(cpu, impl="resnest_gluon-int8", mode="int8", dtype="int8", calib_mode=calib_mode),
            )
        for precision in openvino:
            compiled = _openvino_model(source, size, precision, calib)
            record = dict(cpu, impl="openvino", mode=precision, dtype=OPENVINO_DTYPES[precision])
            derived[f"openvino-{precision}"] = (partial(openvino_runner, compiled), record)
        for batch_size in entry["batch_sizes"]:
            candidates = {
                key: dict(
                    **mxnet_runner(n, batch_size, size, ctx, dtype), record=dict(rec, batch_size=batch_size)
                )
                for key, (n, rec) in nets.items()
            }
            for key, (make, rec) in derived.items():
                candidates[key] = dict(**make(batch_size, size), record=dict(rec, batch_size=batch_size))
            records += measure(
                candidates,
                batch_size,
                entry["iters"],
                rounds,
                progress=progress,
                stream=stream,
                interleave=interleave,
            )
            for rec in records[-len(candidates) :]:
                logger.info(
                    "%s %s %s batch %d @%d: %.2f img/s (%.1f ms/batch)",
                    rec["model"],
                    rec["impl"],
                    rec["mode"],
                    batch_size,
                    size,
                    rec["img_per_sec"],
                    rec["ms_per_batch"],
                )
    return records


OPENVINO_DTYPES = {"f32": "float32", "bf16": "bfloat16", "int8": "int8"}


def complexity_of(nets: Dict, name: str) -> Dict:
    """``params`` and ``macs`` of our model ``name`` among the built ``nets``."""
    rec = next(r for _, r in nets.values() if r["impl"] == "resnest_gluon" and r["model"] == name)
    return dict(params=rec["params"], macs=rec["macs"])


def calibration(rec: Optional[str], batches: int, size: int, batch_size: int = 8) -> List[np.ndarray]:
    """Calibration batches for the INT8 paths: centre crops of ``rec``, or random images (``"random"``)."""
    from resnest_gluon import deploy

    if rec and rec != "random":
        return deploy.calibration_batches(rec, batches, batch_size, size)
    rng = np.random.RandomState(0)
    return [rng.uniform(-1, 1, (batch_size, 3, size, size)).astype(np.float32) for _ in range(batches)]


def hybridize_for_inference(net, fuse: bool, keep_dropblock: bool = False) -> None:
    """:func:`resnest_gluon.deploy.prepare_for_inference` (``fuse``: where possible, else the plain graph).

    With ``keep_dropblock`` the DropBlock layers keep their rate (to show what they would cost).
    """
    from resnest_gluon import deploy

    if keep_dropblock:
        backend = (
            deploy.graph.FUSION_BACKEND if fuse and deploy.fusion_available(deploy.net_context(net)) else None
        )
        net.hybridize(backend=backend, static_alloc=True, static_shape=True)
    else:
        deploy.prepare_for_inference(net, fuse=None if fuse else False)


def _onnx_session(net, size: int):
    from resnest_gluon import deploy

    with tempfile.TemporaryDirectory() as tmp:
        path = deploy.export_onnx(
            net, os.path.join(tmp, "model.onnx"), (1, 3, size, size), dynamic_batch=True
        )
        session = deploy.load_onnx(path, threads=_threads())
    return session


def _openvino_model(net, size: int, precision: str, calib: Optional[List[np.ndarray]]):
    from resnest_gluon import deploy

    return deploy.compile_openvino(
        net, (1, 3, size, size), precision, calib, len(calib or [0]), threads=_threads()
    )


def _threads() -> int:
    """MXNet's OpenMP thread count, given to onnxruntime and OpenVINO too (the same engine settings)."""
    return threads.mxnet_threads()


def load_pipeline_module():
    """:mod:`resnest_gluon.cli.bench_pipeline`, imported when ``--data`` asks for it."""
    from . import bench_pipeline

    return bench_pipeline


def parse_args(argv=None):
    parser = common.parser(
        __doc__.split("\n\n")[0],
        epilog="The whole CPU picture in one command:\n"
        "  python scripts/benchmark.py --all --json cpu.json --plot cpu.png",
    )
    p = parser.add_argument_group("models and inputs")
    p.add_argument("--model", action="append", help="model name (repeat); default: the paper's table")
    p.add_argument("--batch-size", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    p.add_argument(
        "--input-size", type=int, default=None, help="input size (default: each model's paper crop)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    common.add_ctx(p, help_gpu="gpu(0)")
    p = parser.add_argument_group("timing")
    p.add_argument("--iters", type=int, default=None, help="timed batches per round (default 10, 2 for big)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (use >1 on a busy machine)")
    p.add_argument("--quick", action="store_true", help="default table with batch 1 and 3 iterations only")
    p = parser.add_argument_group("what to time")
    p.add_argument(
        "--all",
        action="store_true",
        help="every CPU path for ResNeSt-50 at 224 px, batch 1 and 8 (unless --model etc. say otherwise): "
        "ours fused and plain, our ResNet-D-50, gluoncv's resnest50 and resnet50_v1d (fused and plain), "
        "INT8, onnxruntime, OpenVINO f32/bf16/int8, and the fp32 GEMM peak",
    )
    p.add_argument(
        "--no-fuse", action="store_true", help="time the plain MXNet graphs (default: oneDNN-fused on a CPU)"
    )
    p.add_argument("--plain", action="store_true", help="also time every MXNet model plain, beside fused")
    p.add_argument("--imperative", action="store_true", help="also time the non-hybridized model")
    p.add_argument("--compare", choices=["gluoncv"], default=None, help="also time gluoncv's peer models")
    p.add_argument("--onnx", action="store_true", help="also time the ONNX export with onnxruntime (CPU)")
    p.add_argument(
        "--quantize",
        metavar="REC",
        nargs="?",
        const="random",
        default=None,
        help="also time our INT8 model (CPU), calibrated on this .rec (none given: random images)",
    )
    p.add_argument("--calib-batches", type=int, default=5, help="calibration batches (of 8) for INT8 paths")
    p.add_argument(
        "--calib-mode",
        nargs="+",
        default=["naive"],
        choices=["naive", "entropy"],
        help="MXNet INT8 calibration(s) to time (one INT8 row each)",
    )
    p.add_argument(
        "--openvino",
        nargs="*",
        choices=["f32", "bf16", "int8"],
        default=None,
        help="also time the OpenVINO export (CPU) in these precisions (none given: f32 bf16 int8)",
    )
    p.add_argument(
        "--peak", action="store_true", help="measure the fp32 GEMM peak and each row's share of it"
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="also time runs of calls between two syncs (throughput; default with --ctx gpu)",
    )
    p.add_argument(
        "--interleave",
        choices=["blocks", "calls"],
        default="blocks",
        help="each round, every path makes --iters calls back to back (blocks, default) or one call in turn",
    )
    p.add_argument(
        "--keep-dropblock",
        action="store_true",
        help="time our models with DropBlock at the recipe's value (an identity that still costs time)",
    )
    p.add_argument(
        "--data", metavar="PREFIX", default=None, help="also run scripts/bench_pipeline.py on PREFIX.rec"
    )
    p = parser.add_argument_group("output")
    p.add_argument("--json", default=None, help="write the records to this file")
    p.add_argument(
        "--plot",
        default=None,
        help="draw a chart here (PNG): the paths side by side if several were timed, else accuracy/latency",
    )
    common.add_progress(p)
    args = parser.parse_args(argv)
    if args.all:
        args.model = args.model or ["resnest50"]
        args.input_size = args.input_size or 224
        args.compare, args.onnx, args.plain, args.peak = "gluoncv", True, True, True
        args.quantize = args.quantize or "random"
        args.openvino = args.openvino or []
    if args.openvino == []:
        args.openvino = ["f32", "bf16", "int8"]
    return args


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.model:
        unknown = [m for m in args.model if m not in resnest_gluon.list_models()]
        if unknown:
            raise UserError(f"unknown model(s) {unknown}; choose from {resnest_gluon.list_models()}")
        plan = [
            dict(
                model=m,
                input_size=args.input_size or resnest_gluon.model_info(m)["crop_size"],
                batch_sizes=args.batch_size or [1, 8],
                iters=args.iters or 10,
            )
            for m in args.model
        ]
    else:
        plan = default_plan(args.quick)
        for entry in plan:
            if args.batch_size:
                entry["batch_sizes"] = args.batch_size
            if args.input_size:
                entry["input_size"] = args.input_size
            if args.iters:
                entry["iters"] = args.iters
    if args.quantize and args.quantize != "random" and not os.path.isfile(args.quantize):
        raise UserError(f"--quantize {args.quantize}: no such .rec file")
    if args.openvino and importlib.util.find_spec("openvino") is None:
        raise UserError(
            "--openvino needs the openvino package: pip install -c requirements/lock.txt openvino"
        )
    ctx = mx.gpu(0) if common.resolve_ctx(args) == "gpu" else mx.cpu()
    if args.ctx == "gpu" and (args.onnx or args.quantize or args.openvino):
        logger.info(
            "--onnx/--quantize/--openvino run on the CPU, from a CPU copy of the model (ctx cpu rows)"
        )
    env = environment()
    peak = fp32_peak() if args.peak else None
    print(describe(env, peak), flush=True)  # measured again after the run: the best of both is the peak
    records = run(
        plan,
        ctx=ctx,
        dtype=args.dtype,
        compare_gluoncv=args.compare == "gluoncv",
        imperative=args.imperative,
        onnx=args.onnx,
        quantize_rec=args.quantize,
        calib_batches=args.calib_batches,
        calib_modes=args.calib_mode,
        rounds=args.rounds,
        keep_dropblock=args.keep_dropblock,
        fuse=not args.no_fuse,
        plain=args.plain,
        openvino=args.openvino or (),
        our_peers=args.all,
        stream=args.stream or args.ctx == "gpu",
        interleave=args.interleave,
        progress=common.progress_enabled(args),
    )
    if peak:
        again = fp32_peak()
        peak = dict(again, gflops_before=peak["gflops"]) if again["gflops"] > peak["gflops"] else peak
    add_peak_share(records, peak["gflops"] if peak else None)
    env["load_average_after"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    for rec in records:
        rec.update(env, fp32_peak_gflops=peak["gflops"] if peak else None)
    print(format_table(records))
    rows = ratios(records)
    if rows:
        print(format_ratios(rows))
        if args.json:
            save_json(rows, os.path.splitext(args.json)[0] + ".ratios.json")
    print(f"load average after: {env['load_average_after']}")
    if peak:
        print(describe(env, peak).splitlines()[-1] + " (best before and after the run)")
    if args.data:
        pipeline = load_pipeline_module().run(args.data, progress=common.progress_enabled(args))
        for row in pipeline:
            print(json.dumps(row))
        if args.json:
            # kept apart: the main file's records all describe one model measurement
            save_json(pipeline, os.path.splitext(args.json)[0] + ".pipeline.json")
    if args.json:
        save_json(records, args.json)
    if args.plot:
        several = len({label(r) for r in records}) > len({r["peer_of"] for r in records})
        if several:
            title = describe(env, peak).replace("; load", "\nload")
            plot_paths(records, args.plot, title)
        else:
            plot(records, args.plot)
    return records
