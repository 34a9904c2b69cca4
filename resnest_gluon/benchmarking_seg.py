"""Segmentation inference against gluoncv: our DeepLab ResNeSt and gluoncv's, same weights, side by side.

gluoncv's ``DeepLabV3`` (random weights and BatchNorm statistics) writes a ``.params`` file; our model
loads it unchanged, so both compute the same logits. Each runs at its best settings: our model through
:func:`resnest_gluon.deploy.prepare_for_inference` (hybridized with static memory, oneDNN-fused, our
split-attention operator), gluoncv's hybridized with static memory and, where it partitions, oneDNN-fused
too. Their calls are timed in interleaved blocks in one process (:func:`resnest_gluon.benchmarking.measure`),
so load from other programs affects both alike. Peak resident memory (``ru_maxrss``) is measured in a
separate process per model, each building, loading, preparing and running the model a few times.
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings
from typing import Dict, List, Optional

import mxnet as mx
import numpy as np

__all__ = ["build_pair", "peak_memory", "seg_benchmark", "write_gluoncv_params"]

MODEL = "deeplab_resnest50_ade"


def _gluoncv_model(size: int):
    from gluoncv.model_zoo.deeplabv3 import DeepLabV3

    # gluoncv fixes the pooling branch's and the output's size when it builds the model
    return DeepLabV3(150, backbone="resnest50", pretrained_base=False, height=size, width=size, aux=True)


def write_gluoncv_params(path: str, size: int = 480, seed: int = 0) -> None:
    """gluoncv's model with Xavier weights and random BatchNorm statistics, saved to ``path``."""
    with warnings.catch_warnings():  # gluoncv initialises its heads itself
        warnings.simplefilter("ignore", UserWarning)
        net = _gluoncv_model(size)
        net.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(seed)
    for key, p in net._collect_params_with_prefix().items():
        if key.endswith(("gamma", "beta", "running_mean", "running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
    net.save_parameters(path)


def _prepare_gluoncv(net, fuse: bool) -> str:
    """gluoncv's best settings: oneDNN-fused when its graph partitions, else hybridized (static memory)."""
    if fuse:
        try:
            net.hybridize(static_alloc=True, static_shape=True, backend="MKLDNN")
            net(mx.nd.zeros((1, 3, net._up_kwargs["height"], net._up_kwargs["width"])))[0].wait_to_read()
            return "hybridized, static alloc, oneDNN-fused"
        except Exception:  # noqa: BLE001 - any failure falls back to the plain graph
            pass
    net.hybridize(static_alloc=True, static_shape=True)
    return "hybridized, static alloc"


def build(impl: str, params: str, size: int, fuse: bool = True):
    """``(net, settings)``: one model, loaded from ``params`` and prepared for inference."""
    if impl == "gluoncv":
        with warnings.catch_warnings():  # gluoncv initialises its heads itself
            warnings.simplefilter("ignore", UserWarning)
            net = _gluoncv_model(size)
        net.load_parameters(params, ctx=mx.cpu())
        return net, _prepare_gluoncv(net, fuse)
    import resnest_gluon
    from resnest_gluon.deploy import prepare_for_inference

    net = resnest_gluon.get_model(MODEL, pretrained=params)
    prepare_for_inference(net, fuse=None if fuse else False)
    return net, "prepare_for_inference (" + ("oneDNN-fused, " if fuse else "") + "static alloc)"


def _main_output(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def build_pair(params: str, size: int, fuse: bool = True) -> Dict[str, tuple]:
    return {impl: build(impl, params, size, fuse) for impl in ("gluoncv", "resnest_gluon")}


def seg_benchmark(
    size: int = 480,
    iters: int = 5,
    rounds: int = 1,
    warmup: int = 2,
    fuse: bool = True,
    memory: bool = True,
    progress: bool = False,
) -> List[Dict]:
    """Times both models at ``size`` x ``size``, batch 1, float32; one record per model, ours with
    ``speedup`` (gluoncv's median time over ours) and both with ``max_abs_diff`` of their logits and, with
    ``memory``, ``peak_rss_mb``."""
    from resnest_gluon.benchmarking import measure

    with tempfile.TemporaryDirectory() as tmp:
        params = os.path.join(tmp, "deeplab.params")
        write_gluoncv_params(params, size)
        nets = build_pair(params, size, fuse)
        x = mx.nd.array(np.random.default_rng(1).uniform(-1, 1, (1, 3, size, size)).astype(np.float32))
        outs = {k: _main_output(net(x)).asnumpy() for k, (net, _) in nets.items()}
        diff = float(np.abs(outs["gluoncv"] - outs["resnest_gluon"]).max())
        candidates = {
            impl: dict(
                run=(lambda net=net: _main_output(net(x)).wait_to_read()),
                record=dict(model=MODEL, impl=impl, settings=settings, input_size=size, batch_size=1),
            )
            for impl, (net, settings) in nets.items()
        }
        records = measure(candidates, 1, iters, rounds=rounds, warmup=warmup, progress=progress)
        del nets, candidates
        for rec in records:
            rec["max_abs_diff"] = diff
            if memory:
                rec["peak_rss_mb"] = peak_memory(rec["impl"], params, size, fuse)
    ours, theirs = (next(r for r in records if r["impl"] == k) for k in ("resnest_gluon", "gluoncv"))
    ours["speedup"] = theirs["ms_per_batch"] / ours["ms_per_batch"]
    if memory:
        ours["memory_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    return records


def _vm_hwm_mb() -> float:
    # the process's own high-water mark; ru_maxrss would also count the parent's, which a child inherits
    # through fork and keeps across exec on Linux
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def _memory_child(impl: str, params: str, size: int, fuse: bool, calls: int = 3) -> None:
    net, _ = build(impl, params, size, fuse)
    x = mx.nd.zeros((1, 3, size, size))
    for _ in range(calls):
        _main_output(net(x)).wait_to_read()
    print(json.dumps(dict(peak_rss_mb=_vm_hwm_mb())))


def peak_memory(impl: str, params: str, size: int, fuse: bool = True) -> Optional[float]:
    """Peak resident memory (MB) of a fresh process that builds, loads, prepares and runs one model."""
    from resnest_gluon.cli import child_env

    code = (
        "import sys; from resnest_gluon.benchmarking_seg import _memory_child; "
        f"_memory_child({impl!r}, {params!r}, {size}, {fuse})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=900
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return round(json.loads(line)["peak_rss_mb"], 1)
    return None


def format_seg(records: List[Dict]) -> str:
    """A small table: model, settings, median ms (quartiles), peak memory, and the ratios."""
    lines = ["impl            median ms  (p25-p75)          peak RSS MB  settings"]
    for r in records:
        lines.append(
            f"{r['impl']:<15} {r['ms_per_batch']:9.0f}  "
            f"({r['ms_per_batch_p25']:.0f}-{r['ms_per_batch_p75']:.0f}){'':>8} "
            f"{r.get('peak_rss_mb') or float('nan'):11.0f}  {r['settings']}"
        )
    ours = next(r for r in records if r["impl"] == "resnest_gluon")
    lines.append(
        f"speedup (gluoncv median / ours): {ours['speedup']:.2f}x; logits differ by at most "
        f"{ours['max_abs_diff']:.1e}"
        + (f"; memory ours / gluoncv: {ours['memory_ratio']:.2f}" if "memory_ratio" in ours else "")
    )
    return "\n".join(lines)
