"""Our C++ operator split_attention_sum: exact against the standard operators and the naive reference
(outputs and gradients), hybridized, saved and loaded; exports keep standard operators; clean fallback."""

import json
import logging
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd
from test_layers import naive_splat, randomize

import resnest_gluon
from resnest_gluon import SplitAttentionConv, deploy, ops, set_fused_sum

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def library():
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler on this machine: the operator cannot be built")
    assert ops.available(), f"{ops.load_error()} (`make` builds it)"


def block_and_input(radix, cardinality, dtype="float32", seed=0):
    width = 16 if 16 % (radix * cardinality) == 0 else 12
    block = SplitAttentionConv(width, 3, 1, 1, in_channels=width, radix=radix, cardinality=cardinality)
    randomize(block, seed=seed)
    block.cast(dtype)
    x = mx.nd.array(np.random.default_rng(seed).normal(size=(2, width, 9, 9)), dtype=dtype)
    return block, x


def run(block, x, fused, hybridize):
    """Output, input gradient and parameter gradients for a fixed random head on the output.

    BatchNorm uses its running statistics: in training mode, a batch of 2 cancels fc1's bias gradient to
    rounding noise, which no two summation orders agree on."""
    set_fused_sum(block, fused)
    block.hybridize(hybridize)
    x = x.copy()
    x.attach_grad()
    with autograd.record(train_mode=False):
        out = block(x)
        head = mx.nd.array(np.random.default_rng(5).normal(size=out.shape), dtype=out.dtype)
        loss = (out * head).sum()
    loss.backward()
    grads = {
        k: p.grad().asnumpy() for k, p in block._collect_params_with_prefix().items() if p.grad_req != "null"
    }
    return out.asnumpy(), x.grad.asnumpy(), grads


@pytest.mark.parametrize("radix,cardinality", [(2, 1), (2, 2), (4, 1), (3, 2)])
@pytest.mark.parametrize("hybridize", [False, True])
def test_same_outputs_and_gradients_as_standard_operators(radix, cardinality, hybridize):
    block, x = block_and_input(radix, cardinality, seed=radix + cardinality)
    for _ in range(2):  # MXNet's convolution settles on its final rounding after the first calls
        run(block, x, fused=False, hybridize=hybridize)
    out, dx, grads = run(block, x, fused=False, hybridize=hybridize)
    out_f, dx_f, grads_f = run(block, x, fused=True, hybridize=hybridize)
    if radix == 2:  # one product and one sum per element, in the same order: bit for bit
        np.testing.assert_array_equal(out_f, out)
    np.testing.assert_allclose(out_f, out, rtol=1e-6, atol=1e-7)
    assert set(grads_f) == set(grads) and "fc2.weight" in grads  # the attention's gradient reaches fc1/fc2
    # float32 sums in another order, then softmax's cancellation: compared relative to each one's scale
    for name, got, want in [("x", dx_f, dx)] + [(k, grads_f[k], grads[k]) for k in grads]:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize("radix,cardinality", [(2, 1), (2, 2)])
def test_matches_naive_reference_in_float64(radix, cardinality):
    block, x = block_and_input(radix, cardinality, dtype="float64", seed=7)
    set_fused_sum(block, True)
    p = {k: v.data().asnumpy() for k, v in block._collect_params_with_prefix().items()}
    expected = np.stack([naive_splat(xi, p, radix, cardinality, 1, 1, 1) for xi in x.asnumpy()])
    np.testing.assert_allclose(block(x).asnumpy(), expected, rtol=1e-10, atol=1e-12)


def test_float64_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    x = mx.nd.array(rng.normal(size=(2, 12, 3, 3)), dtype="float64")
    w = mx.nd.array(rng.uniform(size=(2, 2, 2, 3)), dtype="float64")  # radix 2, cardinality 2, C = 6
    head = mx.nd.array(rng.normal(size=(2, 6, 3, 3)), dtype="float64")
    x.attach_grad()
    w.attach_grad()
    with autograd.record():
        loss = (mx.nd.split_attention_sum(x, w, radix=2, cardinality=2) * head).sum()
    loss.backward()

    def f(xv, wv):
        out = mx.nd.split_attention_sum(
            mx.nd.array(xv, dtype="float64"), mx.nd.array(wv, dtype="float64"), radix=2, cardinality=2
        )
        return float((out * head).sum().asscalar())

    def numeric(loss, value, idx, eps=1e-6):
        bump = np.zeros_like(value)
        bump[idx] = eps
        return (loss(value + bump) - loss(value - bump)) / (2 * eps)

    xv, wv = x.asnumpy(), w.asnumpy()
    for idx in [(0, 0, 0, 0), (1, 7, 2, 1), (1, 11, 0, 2)]:
        assert abs(numeric(lambda v: f(v, wv), xv, idx) - x.grad.asnumpy()[idx]) < 1e-6
    for idx in [(0, 0, 0, 0), (1, 1, 1, 2), (0, 1, 0, 1)]:
        assert abs(numeric(lambda v: f(xv, v), wv, idx) - w.grad.asnumpy()[idx]) < 1e-6


def test_other_dtypes_and_shapes_are_refused_with_the_reason():
    x = mx.nd.ones((1, 8, 2, 2), dtype="float16")
    with pytest.raises(mx.MXNetError, match="float32 or float64"):
        mx.nd.split_attention_sum(
            x, mx.nd.ones((1, 8), dtype="float16"), radix=2, cardinality=1
        ).wait_to_read()
    with pytest.raises(mx.MXNetError, match="weights have 6 elements"):
        mx.nd.split_attention_sum(
            mx.nd.ones((1, 8, 2, 2)), mx.nd.ones((1, 6)), radix=2, cardinality=1
        ).wait_to_read()
    with pytest.raises(mx.MXNetError, match="do not divide"):
        mx.nd.split_attention_sum(
            mx.nd.ones((1, 6, 2, 2)), mx.nd.ones((1, 6)), radix=4, cardinality=1
        ).wait_to_read()


def tiny_net():
    mx.random.seed(0)
    net = resnest_gluon.get_model("resnest14", classes=10)
    net.initialize(mx.init.Xavier())
    return net


def graph_ops(net):
    return {node["op"] for node in json.loads(net._cached_graph[1].tojson())["nodes"]}


def test_inference_graph_uses_it_exactly_and_exports_do_not(tmp_path):
    net = tiny_net()
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    deploy.prepare_for_inference(net)
    fused = net(x).asnumpy()
    assert "split_attention_sum" in graph_ops(net)
    set_fused_sum(net, False)
    standard = net(x).asnumpy()
    assert "split_attention_sum" not in graph_ops(net)
    np.testing.assert_array_equal(fused, standard)  # both oneDNN-fused: only the weighted sum differs

    set_fused_sum(net, True)
    sym_file, params_file = deploy.export(net, str(tmp_path / "net"), x.shape)
    with open(sym_file) as f:
        assert "split_attention_sum" not in f.read()
    reloaded = deploy.load_exported(str(tmp_path / "net"))
    np.testing.assert_allclose(reloaded(x).asnumpy(), fused, rtol=1e-4, atol=1e-5)
    assert net(x).shape == fused.shape and "split_attention_sum" in graph_ops(net)  # fused again

    plain = deploy.prepare_for_inference(net, fuse=False)
    plain(x).wait_to_read()
    assert "split_attention_sum" not in graph_ops(plain)


def test_a_graph_with_it_saves_and_loads(tmp_path):
    net = tiny_net()
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    set_fused_sum(net, True)
    net.hybridize()
    expected = net(x).asnumpy()
    net.export(str(tmp_path / "custom"))  # the user's own export: it needs the library to load
    with open(tmp_path / "custom-symbol.json") as f:
        assert "split_attention_sum" in f.read()
    loaded = mx.gluon.SymbolBlock.imports(
        str(tmp_path / "custom-symbol.json"), ["data"], str(tmp_path / "custom-0000.params")
    )
    np.testing.assert_array_equal(loaded(x).asnumpy(), expected)
    net.save_parameters(str(tmp_path / "w.params"))
    fresh = resnest_gluon.get_model("resnest14", classes=10)
    fresh.load_parameters(str(tmp_path / "w.params"))
    np.testing.assert_array_equal(fresh(x).asnumpy(), expected)  # fresh: standard operators


def test_without_the_library_the_standard_operators_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(ops, "LIBRARY", str(tmp_path / "missing.so"))
    monkeypatch.setattr(ops, "_state", {"loaded": None, "error": None})
    with caplog.at_level(logging.WARNING, logger="resnest_gluon.ops"):
        assert not ops.available()
    assert "missing.so is not built: run `make`" in caplog.text
    net = tiny_net()
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    deploy.prepare_for_inference(net)
    net(x).wait_to_read()
    assert "split_attention_sum" not in graph_ops(net)
    with pytest.raises(RuntimeError, match="not available: .*missing.so is not built"):
        set_fused_sum(net, True)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("RESNEST_GLUON_OPS", "0")
    monkeypatch.setattr(ops, "_state", {"loaded": None, "error": None})
    assert not ops.available() and "RESNEST_GLUON_OPS=0" in ops.load_error()


def test_stale_library_is_not_loaded(monkeypatch, tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"old")
    os.utime(lib, (0, 0))
    monkeypatch.setattr(ops, "LIBRARY", str(lib))
    monkeypatch.setattr(ops, "_state", {"loaded": None, "error": None})
    assert not ops.available() and "older than its sources" in ops.load_error()


def test_failed_build_leaves_nothing_and_says_why(tmp_path):
    good = tmp_path / "lib.so"
    good.write_bytes(b"previous build")
    with pytest.raises(RuntimeError, match="building .* failed"):
        ops.build(str(good), compiler="false")
    assert good.read_bytes() == b"previous build" and os.listdir(tmp_path) == ["lib.so"]
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        ops.build(str(good), compiler="no-such-compiler")


def test_build_and_check_commands(tmp_path):
    out = tmp_path / "built.so"
    cmd = [sys.executable, "-m", "resnest_gluon.ops"]
    subprocess.run(cmd + ["build", "--output", str(out)], check=True, cwd=ROOT, capture_output=True)
    assert out.stat().st_size > 0
    nm = subprocess.run(["nm", "-D", str(out)], capture_output=True, text=True)
    assert nm.returncode == 0 and " T initialize" in nm.stdout  # the entry point MXNet looks up
    check = subprocess.run(cmd + ["check"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0 and "split_attention_sum: in use" in check.stdout
    bad = subprocess.run(
        cmd + ["build", "--output", str(out), "--optional"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CXX": "no-such-compiler"},
    )
    assert bad.returncode == 0 and "warning: no C++ compiler" in bad.stderr


@pytest.mark.skipif(not (os.environ.get("NVCC") or shutil.which("nvcc")), reason="no nvcc on this machine")
def test_cuda_variant_builds_and_its_cpu_kernels_still_run(tmp_path):
    """With nvcc the GPU kernels compile and link in; this MXNet has no GPU, so only the CPU path runs."""
    lib = ops.build(str(tmp_path / "cuda.so"), cuda=True)
    code = f"""
import mxnet as mx, numpy as np
mx.library.load({lib!r}, verbose=False)
x = mx.nd.array(np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2))
w = mx.nd.array([[0.25, 0.5, 0.75, 0.5]])
print(mx.nd.split_attention_sum(x, w, radix=2, cardinality=1).asnumpy().ravel().tolist())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    x = np.arange(16, dtype=np.float32).reshape(4, 4)  # channels (radix 0: 0, 1; radix 1: 2, 3) x pixels
    expected = np.concatenate([0.25 * x[0] + 0.75 * x[2], 0.5 * x[1] + 0.5 * x[3]])
    assert json.loads(out.strip().splitlines()[-1]) == expected.tolist()


def test_loads_after_horovod():
    """horovod.mxnet puts libmxnet.so, which has its own copy of lib_api's classes, in the global scope; the
    library must keep binding to its own copy (it used to die of SIGFPE inside mx.library.load)."""
    pytest.importorskip("horovod.mxnet")
    code = f"""
import horovod.mxnet
import mxnet as mx
mx.library.load({ops.LIBRARY!r}, verbose=False)
x = mx.nd.ones((1, 4, 2, 2))
print(mx.nd.split_attention_sum(x, mx.nd.ones((1, 4)) * 0.5, radix=2, cardinality=1).sum().asscalar())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) == 8.0
