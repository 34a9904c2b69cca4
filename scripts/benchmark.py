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

import argparse
import importlib.util
import json
import logging
import os
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

# Before MXNet loads: it reads its OpenMP thread count once (see resnest_gluon.threads).
from resnest_gluon import threads

THREADS = threads.configure()

import mxnet as mx
import numpy as np

import resnest_gluon
from resnest_gluon.models.flops import count_macs, count_params

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


def complexity(net, input_size: int, ctx: mx.Context, dtype: str = "float32") -> Dict:
    """``params`` (trainable values) and ``macs`` (multiply-adds per image) of an initialised model."""
    net(mx.nd.zeros((1, 3, input_size, input_size), ctx=ctx, dtype=dtype)).wait_to_read()
    return dict(params=count_params(net), macs=count_macs(net, (1, 3, input_size, input_size)))


def time_calls(fn: Callable[[], object], iters: int) -> List[float]:
    """Seconds per call of ``fn`` (which must block until its result is ready), ``iters`` times."""
    times = []
    for _ in range(iters):
        mx.nd.waitall()
        start = time.perf_counter()
        fn()
        mx.nd.waitall()
        times.append(time.perf_counter() - start)
    return times


def mxnet_runner(net, batch_size: int, input_size: int, ctx: mx.Context, dtype: str) -> Callable:
    """A zero-argument function running ``net`` on a fixed random batch and waiting for the result."""
    x = mx.nd.random.uniform(-1, 1, shape=(batch_size, 3, input_size, input_size), ctx=ctx).astype(dtype)
    return lambda: net(x).wait_to_read()


def onnx_runner(session, batch_size: int, input_size: int) -> Callable:
    """Like :func:`mxnet_runner`, for an onnxruntime session."""
    x = np.random.uniform(-1, 1, (batch_size, 3, input_size, input_size)).astype(np.float32)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def summarize(times: Sequence[float], batch_size: int) -> Dict:
    """Median and interquartile spread of the per-batch times, as images/s and ms per batch."""
    t = np.asarray(times)
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    return dict(
        img_per_sec=batch_size / med,
        img_per_sec_p25=batch_size / q75,
        img_per_sec_p75=batch_size / q25,
        ms_per_batch=med * 1e3,
        ms_per_batch_p25=q25 * 1e3,
        ms_per_batch_p75=q75 * 1e3,
        iters=len(t),
        times_ms=[round(x * 1e3, 3) for x in t],
    )


def measure(
    candidates: Dict[str, Dict],
    batch_size: int,
    iters: int,
    rounds: int = 1,
    warmup: int = 2,
    progress: bool = True,
) -> List[Dict]:
    """Times several runners call by call in turn (A B C A B C ...); one record per candidate.

    Interleaving single calls keeps the candidates' i-th timings seconds apart, so the ratio of two
    candidates can be taken call by call (see :func:`ratios`) and load from other programs cancels out.

    Parameters
    ----------
    candidates : dict
        ``key -> {"run": zero-argument callable, "record": dict of fields copied into the result}``.
    batch_size : int
        Images per call (for images/s).
    iters : int
        Timed calls per candidate per round.
    rounds : int
        Rounds of ``iters`` calls (``rounds * iters`` timed calls per candidate in all).
    warmup : int
        Untimed calls per candidate before timing.
    """
    from resnest_gluon.progress import progress_bar

    for cand in candidates.values():
        time_calls(cand["run"], warmup)
    times = {key: [] for key in candidates}
    total = rounds * iters
    for _ in progress_bar(range(total), desc=f"batch {batch_size}", disable=not progress, leave=False):
        for key, cand in candidates.items():
            times[key] += time_calls(cand["run"], 1)
    return [dict(candidates[key]["record"], **summarize(times[key], batch_size)) for key in candidates]


def run(
    plan: Sequence[Dict],
    ctx: Optional[mx.Context] = None,
    dtype: str = "float32",
    compare_gluoncv: bool = False,
    imperative: bool = False,
    onnx: bool = False,
    quantize_rec: Optional[str] = None,
    calib_batches: int = 5,
    rounds: int = 1,
    keep_dropblock: bool = False,
    backend: Optional[str] = None,
    progress: bool = True,
) -> List[Dict]:
    """Measures every entry of ``plan`` (see :func:`default_plan`); returns one record per measurement.

    Records have ``model``, ``impl`` (``resnest_gluon``, ``gluoncv``, ``onnxruntime`` or
    ``resnest_gluon-int8``), ``mode`` (``hybridized`` or ``imperative``), ``batch_size``, ``input_size``,
    ``dtype``, ``img_per_sec`` (median) with ``img_per_sec_p25``/``_p75``, ``ms_per_batch`` (median) with
    its quartiles, ``params``, ``macs``, ``paper_gpu_img_per_sec`` and ``top1`` (published, or None).
    """
    ctx = ctx or mx.cpu()
    records = []
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
            backend=backend,
        )
        nets = {}
        net = build_net(name, ctx=ctx, dtype=dtype, keep_dropblock=keep_dropblock)
        cx = complexity(net, size, ctx, dtype)
        if imperative:
            nets["imperative"] = (net, dict(model=name, impl="resnest_gluon", mode="imperative", **cx))
            net = build_net(name, ctx=ctx, dtype=dtype, keep_dropblock=keep_dropblock)
            net(mx.nd.zeros((1, 3, size, size), ctx=ctx, dtype=dtype))
        session = _onnx_session(net, size) if onnx else None
        hybridize(net, size, ctx, dtype, backend)
        nets["ours"] = (net, dict(model=name, impl="resnest_gluon", mode="hybridized", **cx))
        for peer_name in GLUONCV_PEERS.get(name, []) if compare_gluoncv else []:
            peer = build_net(peer_name, impl="gluoncv", ctx=ctx, dtype=dtype)
            pcx = complexity(peer, size, ctx, dtype)
            hybridize(peer, size, ctx, dtype, backend)
            # the paper's speed and accuracy belong to our model only
            record = dict(model=peer_name, impl="gluoncv", mode="hybridized", top1=None, **pcx)
            record.update(paper_gpu_img_per_sec=None, dropblock=None)
            nets[f"gluoncv-{peer_name}"] = (peer, record)
        for batch_size in entry["batch_sizes"]:
            candidates = {
                key: dict(
                    run=mxnet_runner(n, batch_size, size, ctx, dtype),
                    record=dict(common, **rec, batch_size=batch_size),
                )
                for key, (n, rec) in nets.items()
            }
            if session is not None:
                candidates["onnx"] = dict(
                    run=onnx_runner(session, batch_size, size),
                    record=dict(
                        model=name, impl="onnxruntime", mode="graph", batch_size=batch_size, **cx, **common
                    ),
                )
            if quantize_rec:
                qnet = _quantized(name, quantize_rec, calib_batches, batch_size, size, ctx)
                candidates["int8"] = dict(
                    run=mxnet_runner(qnet, batch_size, size, ctx, "float32"),
                    record=dict(
                        model=name,
                        impl="resnest_gluon-int8",
                        mode="hybridized",
                        batch_size=batch_size,
                        **cx,
                        **dict(common, dtype="int8"),
                    ),
                )
            records += measure(candidates, batch_size, entry["iters"], rounds, progress=progress)
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


def hybridize(net, size: int, ctx: mx.Context, dtype: str, backend: Optional[str] = None) -> None:
    """``hybridize(static_alloc=True, static_shape=True)``, after partitioning for ``backend`` if given.

    ``backend="MKLDNN"`` fuses convolution + BatchNorm + ReLU (+ residual add) into one oneDNN primitive.
    """
    if backend:
        x = mx.nd.zeros((1, 3, size, size), ctx=ctx, dtype=dtype)
        net.optimize_for(x, backend=backend, static_alloc=True, static_shape=True)
    else:
        net.hybridize(static_alloc=True, static_shape=True)


def _onnx_session(net, size: int):
    from resnest_gluon import deploy

    with tempfile.TemporaryDirectory() as tmp:
        path = deploy.export_onnx(
            net, os.path.join(tmp, "model.onnx"), (1, 3, size, size), dynamic_batch=True
        )
        session = deploy.load_onnx(path)
    return session


def _quantized(name: str, rec: str, calib_batches: int, batch_size: int, size: int, ctx: mx.Context):
    from resnest_gluon import deploy

    net = build_net(name, ctx=ctx)
    return deploy.quantize(net, rec, calib_batches, batch_size=batch_size, input_size=size)


def ratios(records: Iterable[Dict]) -> List[Dict]:
    """Our hybridized images/s over that of every record timed beside it (same model entry, batch, size).

    Returns dicts ``{"model", "versus", "batch_size", "input_size", "ratio"}``.
    """
    records = list(records)

    def is_ours(r):
        return r["impl"] == "resnest_gluon" and r["mode"] == "hybridized"

    ours = {(r["peer_of"], r["batch_size"], r["input_size"]): r for r in records if is_ours(r)}
    out = []
    for r in records:
        mine = ours.get((r.get("peer_of"), r["batch_size"], r["input_size"]))
        if mine is not None and not is_ours(r):
            model, bs, size = mine["model"], r["batch_size"], r["input_size"]
            out.append(
                dict(
                    model=model,
                    versus=f"{r['model']} ({r['impl']}, {r['mode']})",
                    batch_size=bs,
                    input_size=size,
                    ratio=mine["img_per_sec"] / r["img_per_sec"],
                    paired=_paired_ratio(mine, r),
                )
            )
    return out


def _paired_ratio(mine: Dict, other: Dict) -> Optional[Dict]:
    """Median and quartiles of the call-by-call time ratios other / ours (None without paired timings)."""
    a, b = mine.get("times_ms"), other.get("times_ms")
    if not a or not b or len(a) != len(b):
        return None
    q25, med, q75 = np.percentile(np.asarray(b) / np.asarray(a), [25, 50, 75])
    return dict(median=float(med), p25=float(q25), p75=float(q75), n=len(a))


def format_table(records: Iterable[Dict]) -> str:
    """A Markdown table of the records, with the paper's GPU figure beside each of our models."""
    lines = [
        "| model | impl | mode | input | batch | dtype | img/s (median) | img/s p25-p75 | ms/batch "
        "| params (M) | GMACs | paper V100 img/s | top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        paper = r.get("paper_gpu_img_per_sec") if r["impl"] == "resnest_gluon" else None
        top1 = r.get("top1") if r["impl"] == "resnest_gluon" else None
        mode = r["mode"] + (f"+{r['backend']}" if r.get("backend") else "")
        lines.append(
            f"| {r['model']} | {r['impl']} | {mode} | {r['input_size']} | {r['batch_size']} "
            f"| {r['dtype']} "
            f"| {r['img_per_sec']:.2f} | {r['img_per_sec_p25']:.2f}-{r['img_per_sec_p75']:.2f} "
            f"| {r['ms_per_batch']:.1f} | {r['params'] / 1e6:.1f} | {r['macs'] / 1e9:.2f} "
            f"| {paper if paper is not None else '-'} | {top1 if top1 is not None else '-'} |"
        )
    return "\n".join(lines)


def format_ratios(rows: Iterable[Dict]) -> str:
    """One line per ratio."""
    return "\n".join(
        f"{r['model']} / {r['versus']} @ {r['input_size']} px, batch {r['batch_size']}: "
        f"{r['ratio']:.2f}x (ratio of medians)"
        + (
            f"; call by call {r['paired']['median']:.2f}x, quartiles {r['paired']['p25']:.2f}-"
            f"{r['paired']['p75']:.2f}, n={r['paired']['n']}"
            if r.get("paired")
            else ""
        )
        for r in rows
    )


def plot(records: Iterable[Dict], path: str, batch_size: int = 1) -> Optional[str]:
    """Accuracy vs latency (the paper's Figure 1) with our hybridized latency at ``batch_size``.

    Only records with a published top-1 are drawn; returns ``path``, or None if there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        r
        for r in records
        if r["impl"] == "resnest_gluon"
        and r["mode"] == "hybridized"
        and r["batch_size"] == batch_size
        and r.get("top1") is not None
    ]
    if not points:
        logger.warning("no model with a published top-1 at batch %d: no chart drawn", batch_size)
        return None
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_x = [p["ms_per_batch"] / p["batch_size"] for p in points]
    families = {
        "ResNeSt": [p for p in points if not p["model"].startswith(("resnest50_fast", "resnetd"))],
        "ResNeSt-50-fast (ablation)": [p for p in points if p["model"].startswith("resnest50_fast")],
        "ResNet-D": [p for p in points if p["model"].startswith("resnetd")],
    }
    for (label, group), marker in zip(families.items(), ("o-", "s", "^")):
        if not group:
            continue
        group = sorted(group, key=lambda p: p["ms_per_batch"])
        x = [p["ms_per_batch"] / p["batch_size"] for p in group]
        ax.plot(x, [p["top1"] for p in group], marker, label=label)
        # neighbours by accuracy get their labels on alternate sides, so the clustered ablation stays legible
        order = {id(p): i for i, p in enumerate(sorted(group, key=lambda p: p["top1"]))}
        for p, xi in zip(group, x):
            left = label != "ResNeSt" and order[id(p)] % 2
            ax.annotate(
                f"{p['model'].replace('resnest50_fast_', '')}@{p['input_size']}",
                (xi, p["top1"]),
                fontsize=7,
                xytext=(-4, -3) if left else (4, 1),
                textcoords="offset points",
                ha="right" if left else "left",
            )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(
        [t for t in (50, 100, 200, 500, 1000, 2000, 5000, 10000) if min(all_x) / 1.5 <= t <= max(all_x) * 1.5]
    )
    ax.set_xlabel(
        f"latency per image, ms ({points[0]['ctx']}, batch {batch_size}, {points[0]['dtype']}, log scale)"
    )
    ax.set_ylabel("published ImageNet top-1 (%)")
    ax.set_title("Accuracy vs latency (our measured latency on this machine)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_save(lambda tmp: fig.savefig(tmp, dpi=120, format=os.path.splitext(path)[1][1:] or "png"), path)
    plt.close(fig)
    return path


def _atomic_save(write: Callable[[str], None], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(records: List[Dict], path: str) -> None:
    """Writes the records as a JSON list (via a temporary file)."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(records, f, indent=1)

    _atomic_save(write, path)


def load_pipeline_module():
    """``scripts/bench_pipeline.py`` imported by path (scripts are not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_pipeline.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: --data needs scripts/bench_pipeline.py")
    spec = importlib.util.spec_from_file_location("bench_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def environment() -> Dict:
    """Versions and core count, written next to the results."""
    import platform

    return dict(
        mxnet=mx.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        omp_threads=THREADS,
        processor=platform.processor() or platform.machine(),
        mkldnn=bool(mx.runtime.Features().is_enabled("MKLDNN")),
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="model name (repeat); default: the paper's table")
    p.add_argument("--batch-size", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    p.add_argument(
        "--input-size", type=int, default=None, help="input size (default: each model's paper crop)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--ctx", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--iters", type=int, default=None, help="timed batches per round (default 10, 2 for big)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (use >1 on a busy machine)")
    p.add_argument("--quick", action="store_true", help="default table with batch 1 and 3 iterations only")
    p.add_argument("--imperative", action="store_true", help="also time the non-hybridized model")
    p.add_argument("--compare", choices=["gluoncv"], default=None, help="also time gluoncv's peer models")
    p.add_argument("--onnx", action="store_true", help="also time the ONNX export with onnxruntime")
    p.add_argument("--quantize", metavar="REC", default=None, help="also time INT8, calibrated on this .rec")
    p.add_argument("--calib-batches", type=int, default=5, help="calibration batches for --quantize")
    p.add_argument(
        "--keep-dropblock",
        action="store_true",
        help="time our models with DropBlock at the recipe's value (an identity that still costs time)",
    )
    p.add_argument(
        "--data", metavar="PREFIX", default=None, help="also run scripts/bench_pipeline.py on PREFIX.rec"
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=["MKLDNN"],
        help="partition every MXNet model's graph for this backend",
    )
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--plot", default=None, help="draw accuracy vs latency here (PNG)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.model:
        unknown = [m for m in args.model if m not in resnest_gluon.list_models()]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; choose from {resnest_gluon.list_models()}")
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
    if args.quantize and not os.path.isfile(args.quantize):
        raise SystemExit(f"--quantize {args.quantize}: no such .rec file")
    ctx = mx.gpu(0) if args.ctx == "gpu" else mx.cpu()
    records = run(
        plan,
        ctx=ctx,
        dtype=args.dtype,
        compare_gluoncv=args.compare == "gluoncv",
        imperative=args.imperative,
        onnx=args.onnx,
        quantize_rec=args.quantize,
        calib_batches=args.calib_batches,
        rounds=args.rounds,
        keep_dropblock=args.keep_dropblock,
        backend=args.backend,
        progress=not args.no_progress,
    )
    env = environment()
    for rec in records:
        rec.update(env)
    print(f"environment: {json.dumps(env)}")
    print(format_table(records))
    rows = ratios(records)
    if rows:
        print(format_ratios(rows))
        if args.json:
            save_json(rows, os.path.splitext(args.json)[0] + ".ratios.json")
    if args.data:
        pipeline = load_pipeline_module().run(args.data, progress=not args.no_progress)
        for row in pipeline:
            print(json.dumps(row))
        if args.json:
            # kept apart: the main file's records all describe one model measurement
            save_json(pipeline, os.path.splitext(args.json)[0] + ".pipeline.json")
    if args.json:
        save_json(records, args.json)
    if args.plot:
        plot(records, args.plot)
    return records


if __name__ == "__main__":
    main()
