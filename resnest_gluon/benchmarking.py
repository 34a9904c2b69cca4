"""Timing and reporting for inference benchmarks: what ``resnest-benchmark`` (and any other speed table)
measures with, and how it writes its figures.

Timing (:func:`time_calls` for latency, :func:`time_stream` for throughput, :func:`measure` to interleave
several candidates round by round, :func:`summarize` for medians and spreads), the machine
(:func:`environment`, :func:`cpu_info`, :func:`fp32_peak`, :func:`describe`), and the reports
(:func:`ratios`, :func:`format_table`, :func:`format_ratios`, :func:`plot`, :func:`plot_paths`,
:func:`save_json`). Results are plain dicts: printing and drawing are separate steps over them.
"""

import json
import logging
import os
import tempfile
import textwrap
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import mxnet as mx
import numpy as np

from . import threads
from .models.flops import count_macs, count_params

logger = logging.getLogger("resnest_gluon.benchmark")


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
