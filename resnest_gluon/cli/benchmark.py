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
import textwrap
import time
from functools import partial
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import mxnet as mx
import numpy as np

import resnest_gluon
from resnest_gluon import ops, threads
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


def cpu_copy(name: str, net, impl: str = "resnest_gluon"):
    """A float32 copy of ``net`` (same weights) on the CPU, for the CPU-only paths (ONNX, INT8, OpenVINO)."""
    copy = build_net(name, impl=impl, ctx=mx.cpu())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.params")
        net.save_parameters(path)
        copy.load_parameters(path, ctx=mx.cpu(), cast_dtype=True)
    return copy


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


def time_stream(launch: Callable[[], object], iters: int) -> float:
    """Seconds for ``iters`` calls of ``launch`` queued back to back between two synchronisations.

    MXNet's calls return before the work is done, so this measures throughput (a GPU's kernels overlap the
    next call's launch), while :func:`time_calls` measures each call's latency.
    """
    mx.nd.waitall()
    start = time.perf_counter()
    for _ in range(iters):
        launch()
    mx.nd.waitall()
    return time.perf_counter() - start


def mxnet_runner(net, batch_size: int, input_size: int, ctx: mx.Context, dtype: str) -> Dict[str, Callable]:
    """``run`` (one call, waits for the result) and ``launch`` (queues one call) on a fixed random batch."""
    x = mx.nd.random.uniform(-1, 1, shape=(batch_size, 3, input_size, input_size), ctx=ctx).astype(dtype)
    return dict(run=lambda: net(x).wait_to_read(), launch=lambda: net(x))


def onnx_runner(session, batch_size: int, input_size: int) -> Dict[str, Callable]:
    """Like :func:`mxnet_runner`, for an onnxruntime session (its calls block)."""
    x = np.random.uniform(-1, 1, (batch_size, 3, input_size, input_size)).astype(np.float32)
    name = session.get_inputs()[0].name
    run = lambda: session.run(None, {name: x})  # noqa: E731
    return dict(run=run, launch=run)


def openvino_runner(compiled, batch_size: int, input_size: int) -> Dict[str, Callable]:
    """Like :func:`mxnet_runner`, for an OpenVINO compiled model (one infer request; its calls block)."""
    x = np.random.uniform(-1, 1, (batch_size, 3, input_size, input_size)).astype(np.float32)
    request = compiled.create_infer_request()
    run = lambda: request.infer({0: x})  # noqa: E731
    return dict(run=run, launch=run)


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
    stream: bool = False,
    interleave: str = "blocks",
) -> List[Dict]:
    """Times several runners in turn, in rounds; one record per candidate.

    ``interleave="blocks"`` (default): each round, each candidate makes one untimed call and then ``iters``
    timed calls back to back (A A A B B B ... A A A B B B). ``"calls"``: single calls in turn (A B C A B C).
    Either way the i-th timings of two candidates are close in time, so their ratio can be taken call by
    call (see :func:`ratios`) and load from other programs cancels out. Blocks are the default because a
    runtime's worker threads spin for a while after each call (OpenMP, onnxruntime's pool, OpenVINO's
    TBB): with single calls in turn, each candidate shares its cores with the previous one's spinning
    threads: ours against OpenVINO f32 read 0.54x-1.01x from run to run that way, 0.70x-0.77x in blocks.
    Each call is synchronised, so ``img_per_sec`` is batch / latency. With ``stream``, every candidate
    also runs ``iters`` calls between two synchronisations per round (``stream_img_per_sec``: throughput).

    Parameters
    ----------
    candidates : dict
        ``key -> {"run": blocking call, "launch": queued call (optional), "record": fields of the result}``.
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
    streams = {key: [] for key in candidates}
    for i in progress_bar(
        range(rounds * iters), desc=f"batch {batch_size}", disable=not progress, leave=False
    ):
        for key, cand in candidates.items():
            if interleave == "calls":
                times[key] += time_calls(cand["run"], 1)
            elif i % iters == 0:
                time_calls(cand["run"], 1)
                times[key] += time_calls(cand["run"], iters)
        if stream and (i + 1) % iters == 0:
            for key, cand in candidates.items():
                streams[key].append(batch_size * iters / time_stream(cand.get("launch", cand["run"]), iters))
    out = []
    for key, cand in candidates.items():
        record = dict(cand["record"], **summarize(times[key], batch_size), timing="per call (synced)")
        record["interleave"] = interleave
        if stream:
            record["stream_img_per_sec"] = float(np.median(streams[key]))
        out.append(record)
    return out


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> Dict:
    """The CPU's model name and the instruction-set extensions that matter for inference."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux
        pass
    isa = {
        "AVX2": "avx2" in flags,
        "AVX-512": "avx512f" in flags,
        "VNNI": bool({"avx512_vnni", "avx_vnni"} & flags),
        "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "AMX": bool({"amx_tile", "amx_bf16", "amx_int8"} & flags),
    }
    return dict(cpu=model, isa=isa, isa_text=", ".join(f"{k} {'yes' if v else 'no'}" for k, v in isa.items()))


def fp32_peak(size: int = 2048, iters: int = 10) -> Dict:
    """The CPU's float32 peak as MXNet reaches it: a ``size``-cube GEMM through oneDNN (FullyConnected).

    Returns ``{"gflops": best, "gflops_median", "size"}``; the best of ``iters`` calls is the peak (load
    from other programs only ever lowers it).
    """
    ctx = mx.cpu()
    a = mx.nd.random.uniform(-1, 1, (size, size), ctx=ctx)
    w = mx.nd.random.uniform(-1, 1, (size, size), ctx=ctx)
    run = lambda: mx.nd.FullyConnected(a, w, num_hidden=size, no_bias=True).wait_to_read()  # noqa: E731
    time_calls(run, 1)
    times = np.asarray(time_calls(run, iters))
    flops = 2.0 * size**3
    return dict(gflops=flops / times.min() / 1e9, gflops_median=flops / np.median(times) / 1e9, size=size)


# Paths that --all times beside our model: our own ResNet-D-50 is the paper's baseline (same engine).
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


def ratios(records: Iterable[Dict]) -> List[Dict]:
    """Our baseline's images/s over that of every record timed beside it (same model entry, batch, size).

    Returns dicts ``{"model", "versus", "batch_size", "input_size", "ratio", "paired"}``.
    """
    records = list(records)
    ours = {(r["peer_of"], r["batch_size"], r["input_size"]): r for r in records if r.get("baseline")}
    out = []
    for r in records:
        mine = ours.get((r.get("peer_of"), r["batch_size"], r["input_size"]))
        if mine is not None and r is not mine:
            model, bs, size = mine["model"], r["batch_size"], r["input_size"]
            out.append(
                dict(
                    model=model,
                    versus=label(r),
                    batch_size=bs,
                    input_size=size,
                    ratio=mine["img_per_sec"] / r["img_per_sec"],
                    paired=_paired_ratio(mine, r),
                )
            )
    return out


def label(r: Dict) -> str:
    """A record's path, e.g. ``resnest50 (resnest_gluon, fused)`` or ``resnest50 (openvino, bf16)``."""
    calib = f", {r['calib_mode']} calibration" if r.get("calib_mode") else ""
    return f"{r['model']} ({r['impl']}, {r['mode']}{calib})"


def _paired_ratio(mine: Dict, other: Dict) -> Optional[Dict]:
    """Median and quartiles of the call-by-call time ratios other / ours (None without paired timings)."""
    a, b = mine.get("times_ms"), other.get("times_ms")
    if not a or not b or len(a) != len(b):
        return None
    q25, med, q75 = np.percentile(np.asarray(b) / np.asarray(a), [25, 50, 75])
    return dict(median=float(med), p25=float(q25), p75=float(q75), n=len(a))


def add_peak_share(records: Iterable[Dict], peak_gflops: Optional[float]) -> None:
    """Adds ``gflops`` (2 x multiply-adds x images/s) and ``peak_share`` (of the fp32 GEMM peak)."""
    for r in records:
        r["gflops"] = 2.0 * r["macs"] * r["img_per_sec"] / 1e9
        r["peak_share"] = r["gflops"] / peak_gflops if peak_gflops else None


def format_table(records: Iterable[Dict]) -> str:
    """A Markdown table of the records: speed, our baseline over each row call by call, share of the peak."""
    records = list(records)
    stream = any("stream_img_per_sec" in r for r in records)
    base = {(r["peer_of"], r["batch_size"], r["input_size"]): r for r in records if r.get("baseline")}
    head = [
        "path",
        "ctx",
        "input",
        "batch",
        "dtype",
        "img/s (median, each call synced)",
        "p25-p75",
        "ms/batch",
    ]
    head += ["img/s streamed"] if stream else []
    head += ["ours / it, call by call (p25-p75)", "GFLOP/s", "of fp32 peak", "params (M)", "GMACs"]
    head += ["paper V100 img/s", "top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        mine = base.get((r.get("peer_of"), r["batch_size"], r["input_size"]))
        paired = _paired_ratio(mine, r) if mine is not None and mine is not r else None
        versus = "baseline" if r.get("baseline") else "-"
        if paired:
            versus = f"{paired['median']:.2f}x ({paired['p25']:.2f}-{paired['p75']:.2f})"
        share = r.get("peak_share")
        cells = [label(r), r.get("ctx", "-"), r["input_size"], r["batch_size"], r["dtype"]]
        cells += [f"{r['img_per_sec']:.2f}", f"{r['img_per_sec_p25']:.2f}-{r['img_per_sec_p75']:.2f}"]
        cells += [f"{r['ms_per_batch']:.1f}"]
        cells += [f"{r['stream_img_per_sec']:.2f}" if "stream_img_per_sec" in r else "-"] if stream else []
        cells += [versus, f"{r['gflops']:.0f}" if "gflops" in r else "-"]
        cells += [f"{100 * share:.0f} %" if share is not None else "-"]
        cells += [f"{r['params'] / 1e6:.1f}", f"{r['macs'] / 1e9:.2f}"]
        cells += [r.get("paper_gpu_img_per_sec") or "-", r.get("top1") or "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
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
    """Accuracy vs latency (the paper's Figure 1) with our baseline's latency at ``batch_size``.

    Only records with a published top-1 are drawn; returns ``path``, or None if there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        r
        for r in records
        if r.get("baseline") and r["batch_size"] == batch_size and r.get("top1") is not None
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


def plot_paths(records: Iterable[Dict], path: str, title: str = "") -> Optional[str]:
    """Every path's images/s side by side, one panel per batch size, each bar labelled with our baseline
    over it (call by call) and its share of the fp32 peak. Returns ``path`` (None if nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    batches = sorted({r["batch_size"] for r in records})
    if not records:
        return None
    fig, axes = plt.subplots(
        1, len(batches), figsize=(6.5 * len(batches), 0.42 * len(records) / len(batches) + 1.8)
    )
    axes = np.atleast_1d(axes)
    base = {(r["peer_of"], r["batch_size"], r["input_size"]): r for r in records if r.get("baseline")}
    for ax, bs in zip(axes, batches):
        rows = sorted((r for r in records if r["batch_size"] == bs), key=lambda r: r["img_per_sec"])
        y = np.arange(len(rows))
        colors = [
            "tab:red" if r.get("baseline") else "tab:blue" if r["impl"] == "resnest_gluon" else "tab:gray"
            for r in rows
        ]
        ax.barh(y, [r["img_per_sec"] for r in rows], color=colors)
        ax.set_yticks(y, [label(r) for r in rows], fontsize=8)
        for yi, r in zip(y, rows):
            mine = base.get((r["peer_of"], bs, r["input_size"]))
            paired = _paired_ratio(mine, r) if mine is not None and mine is not r else None
            text = "baseline" if r.get("baseline") else (f"{paired['median']:.2f}x" if paired else "")
            if r.get("peak_share") is not None:
                text += f", {100 * r['peak_share']:.0f} % of peak"
            ax.annotate(
                text,
                (r["img_per_sec"], yi),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_xlabel(f"images/s at batch {bs} (median); label: ours / it")
        ax.set_xlim(0, max(r["img_per_sec"] for r in rows) * 1.8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("\n".join(textwrap.fill(line, 130) for line in title.splitlines()), fontsize=9)
    fig.tight_layout()
    _atomic_save(lambda tmp: fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:] or "png"), path)
    plt.close(fig)
    return path


def _atomic_save(write: Callable[[str], None], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
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
    """:mod:`resnest_gluon.cli.bench_pipeline`, imported when ``--data`` asks for it."""
    from . import bench_pipeline

    return bench_pipeline


def environment() -> Dict:
    """The machine and software behind the figures (CPU, instruction set, threads, load, versions, date)."""
    import datetime
    import platform
    from importlib import metadata

    versions = {}
    for package in ("gluoncv", "onnx", "onnxruntime", "openvino"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return dict(
        **cpu_info(),
        mxnet=mx.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        **versions,
        cpu_count=os.cpu_count(),
        usable_cores=threads.usable_cores(),
        omp_threads=threads.configured(),
        mxnet_threads=threads.mxnet_threads(),
        load_average=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        mkldnn=bool(mx.runtime.Features().is_enabled("MKLDNN")),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def describe(env: Dict, peak: Optional[Dict]) -> str:
    """Lines naming the CPU, its instruction set, threads, load and libraries (printed above every table)."""
    lines = [
        f"CPU: {env['cpu']} ({env['usable_cores']} usable cores); {env['isa_text']}",
        f"threads: {env['mxnet_threads']} (OMP_NUM_THREADS from {env['omp_threads']['source']}; onnxruntime "
        f"and OpenVINO get the same); load average {env['load_average']} at {env['date']}",
        "software: "
        + ", ".join(
            f"{k} {env[k]}"
            for k in ("python", "mxnet", "numpy", "gluoncv", "onnx", "onnxruntime", "openvino")
            if env.get(k)
        )
        + (" (MXNet with oneDNN/MKLDNN)" if env["mkldnn"] else ""),
    ]
    if peak:
        lines.append(
            f"fp32 peak: {peak['gflops']:.0f} GFLOP/s (best of 10; median {peak['gflops_median']:.0f}), "
            f"{peak['size']}^3 GEMM through oneDNN (FullyConnected)"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The whole CPU picture in one command:\n"
        "  python scripts/benchmark.py --all --json cpu.json --plot cpu.png",
    )
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
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument(
        "--plot",
        default=None,
        help="draw a chart here (PNG): the paths side by side if several were timed, else accuracy/latency",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
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
    if args.quantize and args.quantize != "random" and not os.path.isfile(args.quantize):
        raise SystemExit(f"--quantize {args.quantize}: no such .rec file")
    if args.openvino and importlib.util.find_spec("openvino") is None:
        raise SystemExit(
            "--openvino needs the openvino package: pip install -c requirements/lock.txt openvino"
        )
    ctx = mx.gpu(0) if args.ctx == "gpu" else mx.cpu()
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
        progress=not args.no_progress,
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
        pipeline = load_pipeline_module().run(args.data, progress=not args.no_progress)
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
