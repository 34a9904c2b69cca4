"""SplitAttentionConv against a loop-by-loop reference; DropBlock in training, inference and hybridized."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from resnest_gluon import DropBlock, SplitAttentionConv, set_drop_prob


def randomize(block, seed=0):
    """Random weights and BatchNorm statistics, so a wrong channel order cannot hide behind symmetry."""
    rng = np.random.default_rng(seed)
    block.initialize()
    for name, p in block._collect_params_with_prefix().items():
        low, high = (0.5, 1.5) if name.endswith(("gamma", "running_var")) else (-0.5, 0.5)
        p.set_data(mx.nd.array(rng.uniform(low, high, p.shape)))


def conv2d(x, w, b, stride, pad, dilation):
    """Plain convolution of one image (C, H, W) with weights (O, C, k, k), loop over kernel taps."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[
                :,
                i * dilation : i * dilation + stride * oh : stride,
                j * dilation : j * dilation + stride * ow : stride,
            ]
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], patch)
    return out + (0 if b is None else b[:, None, None])


def batchnorm(x, p, prefix, eps=1e-5):
    g, b, m, v = (p[f"{prefix}.{n}"] for n in ("gamma", "beta", "running_mean", "running_var"))
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps) * g.reshape(shape) + b.reshape(shape)


def naive_splat(x, p, radix, cardinality, stride, pad, dilation):
    """Split attention written out group by group for one image, as in the paper (Fig. 2, right)."""
    R, K = radix, cardinality
    w = p["conv.weight"]
    C = w.shape[0] // R  # output channels
    cin_g, cout_g = x.shape[0] // (K * R), C // K
    # grouped conv: group g = r * K + k reads input slice g and writes output slice g
    u = np.concatenate(
        [
            conv2d(
                x[g * cin_g : (g + 1) * cin_g], w[g * cout_g : (g + 1) * cout_g], None, stride, pad, dilation
            )
            for g in range(K * R)
        ]
    )
    u = np.maximum(batchnorm(u, p, "bn"), 0)
    splits = [u[r * C : (r + 1) * C] for r in range(R)]  # radix r holds channels [k][c] of all groups
    out = np.zeros_like(splits[0])
    inter = p["fc1.weight"].shape[0]
    for k in range(K):
        cs = slice(k * cout_g, (k + 1) * cout_g)
        gap = sum(s[cs] for s in splits).mean(axis=(1, 2))
        ws = slice(k * inter // K, (k + 1) * inter // K)
        h = p["fc1.weight"][ws, :, 0, 0] @ gap + p["fc1.bias"][ws]
        h = np.maximum(_bn_slice(h, p, "bn1", ws), 0)
        a = p["fc2.weight"][k * R * cout_g : (k + 1) * R * cout_g, :, 0, 0] @ h
        a = (a + p["fc2.bias"][k * R * cout_g : (k + 1) * R * cout_g]).reshape(R, cout_g)
        a = 1 / (1 + np.exp(-a)) if R == 1 else np.exp(a) / np.exp(a).sum(axis=0, keepdims=True)
        for r in range(R):
            out[cs] += a[r][:, None, None] * splits[r][cs]
    return out


def _bn_slice(h, p, prefix, ws, eps=1e-5):
    g, b, m, v = (p[f"{prefix}.{n}"][ws] for n in ("gamma", "beta", "running_mean", "running_var"))
    return (h - m) / np.sqrt(v + eps) * g + b


CASES = [(r, k, s) for r in (1, 2, 4) for k in (1, 2) for s in (1, 2)]


@pytest.mark.parametrize("radix,cardinality,stride", CASES)
def test_splat_matches_naive_reference(radix, cardinality, stride):
    channels, in_channels = 16, 16
    block = SplitAttentionConv(
        channels,
        3,
        stride,
        1,
        1,
        in_channels=in_channels,
        radix=radix,
        cardinality=cardinality,
        reduction_factor=4,
    )
    randomize(block, seed=radix * 10 + cardinality + stride)
    x = mx.nd.array(np.random.default_rng(1).normal(size=(2, in_channels, 9, 9)))
    p = {k: v.data().asnumpy().astype(np.float64) for k, v in block._collect_params_with_prefix().items()}
    expected = np.stack(
        [naive_splat(xi, p, radix, cardinality, stride, 1, 1) for xi in x.asnumpy().astype(np.float64)]
    )
    imperative = block(x).asnumpy()
    block.hybridize(static_alloc=True, static_shape=True)
    hybridized = block(x).asnumpy()
    assert imperative.shape == expected.shape
    np.testing.assert_allclose(imperative, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hybridized, expected, rtol=1e-4, atol=1e-5)


def test_splat_dilation_matches_naive_reference():
    block = SplitAttentionConv(8, 3, 1, 2, 2, in_channels=8, radix=2, cardinality=2)
    randomize(block, seed=3)
    x = mx.nd.array(np.random.default_rng(2).normal(size=(1, 8, 7, 7)))
    p = {k: v.data().asnumpy().astype(np.float64) for k, v in block._collect_params_with_prefix().items()}
    expected = naive_splat(x.asnumpy()[0].astype(np.float64), p, 2, 2, 1, 2, 2)
    np.testing.assert_allclose(block(x).asnumpy()[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("radix,cardinality,stride", CASES)
def test_splat_hybridized_gradients_match(radix, cardinality, stride):
    def run(hybridize):
        block = SplitAttentionConv(8, 3, stride, 1, in_channels=8, radix=radix, cardinality=cardinality)
        randomize(block, seed=7)
        if hybridize:
            block.hybridize()
        x = mx.nd.array(np.random.default_rng(5).normal(size=(2, 8, 6, 6)))
        x.attach_grad()
        with autograd.record():
            y = block(x)
            loss = (y * y).sum()
        loss.backward()
        grads = {
            k: p.grad().asnumpy()
            for k, p in block._collect_params_with_prefix().items()
            if p.grad_req != "null"
        }
        return y.asnumpy(), x.grad.asnumpy(), grads

    y0, gx0, g0 = run(False)
    y1, gx1, g1 = run(True)
    np.testing.assert_allclose(y0, y1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx0, gx1, rtol=1e-4, atol=1e-5)
    for k in g0:
        np.testing.assert_allclose(g0[k], g1[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_splat_optional_norm_and_bad_groups():
    block = SplitAttentionConv(8, in_channels=8, radix=2, norm_layer=None, drop_ratio=0.2)
    block.initialize()
    assert not [k for k in block._collect_params_with_prefix() if "bn" in k]
    assert block(mx.nd.ones((1, 8, 5, 5))).shape == (1, 8, 5, 5)
    with pytest.raises(ValueError, match="cardinality"):
        SplitAttentionConv(8, in_channels=6, radix=2, cardinality=2)


@pytest.mark.parametrize("hybridize", [False, True])
def test_dropblock_identity_at_inference_and_active_in_training(hybridize):
    block = DropBlock(0.3, 3)
    if hybridize:
        block.hybridize()
    mx.random.seed(0)
    for size in (7, 12, 20):  # nothing sized at construction
        x = mx.nd.random.uniform(0.5, 1.5, shape=(4, 8, size, size))
        assert (block(x) == x).asnumpy().all()
        # one mask per batch: average the drawn share and the activation over several batches
        dropped, ratio = [], []
        for _ in range(10):
            with autograd.record(train_mode=True):
                y = block(x)
            dropped.append((y == 0).asnumpy().mean())
            ratio.append(y.sum().asscalar() / x.sum().asscalar())
        assert 0.1 < np.mean(dropped) < 0.5, dropped
        # kept units are rescaled so the expected activation is unchanged
        assert abs(np.mean(ratio) - 1) < 0.05, ratio
        # inference again after training: still exact (the flag was not frozen at tracing)
        assert (block(x) == x).asnumpy().all()


def test_dropblock_drops_whole_blocks():
    block = DropBlock(0.2, 3)
    with autograd.record(train_mode=True):
        y = block(mx.nd.ones((1, 1, 30, 30))).asnumpy()[0, 0]
    zeros = np.argwhere(y == 0)
    assert len(zeros) > 0
    # every dropped unit lies in some fully dropped 3x3 window (clipped at the border)
    for i, j in zeros:
        assert any(
            (y[max(a, 0) : a + 3, max(b, 0) : b + 3] == 0).all()
            for a in range(i - 2, i + 1)
            for b in range(j - 2, j + 1)
        )


def test_set_drop_prob_takes_effect_after_hybridize():
    net = mx.gluon.nn.HybridSequential()
    net.add(DropBlock(0.0), DropBlock(0.0))
    net.hybridize()
    x = mx.nd.ones((2, 4, 10, 10))
    with autograd.record(train_mode=True):
        assert (net(x) == x).asnumpy().all()
    assert set_drop_prob(net, 0.3) == 2
    with autograd.record(train_mode=True):
        assert (net(x) == 0).asnumpy().any()
    assert (net(x) == x).asnumpy().all()
    with pytest.raises(ValueError):
        DropBlock(0.1, block_size=4)


def test_dropblock_in_float16(tmp_path):
    """float16 training (GPUs) must not mix dtypes; MKLDNN has no float16, so run it without MKLDNN."""
    import os
    import subprocess
    import sys

    code = (
        "import mxnet as mx\n"
        "from resnest_gluon import DropBlock\n"
        "b = DropBlock(0.3); b.hybridize()\n"
        "x = mx.nd.ones((2, 4, 9, 9), dtype='float16')\n"
        "with mx.autograd.record(train_mode=True):\n"
        "    y = b(x)\n"
        "assert y.dtype.__name__ == 'float16', y.dtype\n"
        "assert (y == 0).asnumpy().any()\n"
        "assert (b(x) == x).asnumpy().all()\n"
        "print('ok')\n"
    )
    env = dict(os.environ, MXNET_MKLDNN_ENABLED="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_dropblock_gradient_is_its_mask():
    """The gradient is the output's own scaling (dropped units 0, kept ones count / kept), and no gradient
    flows through the random mask: it takes no backward pass of its own."""
    block = DropBlock(0.3, 3)
    block.hybridize()
    x = mx.nd.random.uniform(0.5, 1.5, shape=(2, 4, 11, 11))
    x.attach_grad()
    with autograd.record(train_mode=True):
        y = block(x)
    y.backward()
    np.testing.assert_allclose(x.grad.asnumpy(), (y / x).asnumpy(), rtol=1e-6)
    assert (x.grad == 0).asnumpy().any()


@pytest.mark.parametrize("hybridize", [False, True])
def test_dropblock_one_mask_per_batch_by_default(hybridize):
    """The reference's DropBlock: one (1, C, H, W) mask shared by the batch, rescaled by units / kept;
    ``per_sample`` (set_drop_per_sample) draws one per sample, each rescaled on its own."""
    from resnest_gluon.models.layers import set_drop_per_sample

    block = DropBlock(0.3, 3)
    if hybridize:
        block.hybridize()
    x = mx.nd.ones((6, 5, 12, 12))
    with autograd.record(train_mode=True):
        y = block(x).asnumpy()
    assert (y == 0).any()
    for i in range(1, 6):
        np.testing.assert_array_equal(y[i], y[0])
    kept = (y[0] != 0).sum()
    np.testing.assert_allclose(y[0][y[0] != 0], y[0].size / kept, rtol=1e-5)
    net = mx.gluon.nn.HybridSequential()
    net.add(block)
    assert set_drop_per_sample(net, True) == 1 and block.per_sample
    with autograd.record(train_mode=True):
        y = block(x).asnumpy()
    assert any(not np.array_equal(y[i], y[0]) for i in range(1, 6))
    for i in range(6):  # each sample rescaled by its own kept share
        np.testing.assert_allclose(y[i][y[i] != 0], y[i].size / (y[i] != 0).sum(), rtol=1e-5)
    assert (block(x) == x).asnumpy().all()
