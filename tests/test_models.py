"""The model family: published parameter layout, forward/backward, hybridize, export, options."""

import gzip
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import resnest_gluon
from resnest_gluon import get_model, list_models, model_info

# The exact keys and shapes of the published .params files (a copy of the project's reference data).
MANIFEST = os.path.join(os.path.dirname(__file__), "data", "param_manifest.json.gz")


def load_manifest():
    with gzip.open(MANIFEST, "rt") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


def layout(net):
    return {k: list(p.shape) for k, p in net._collect_params_with_prefix().items()}


def test_registry_lists_the_family():
    names = list_models()
    for size in (14, 26, 50, 101, 200, 269):
        assert f"resnest{size}" in names
    fast = ["1s1x64d", "2s1x64d", "4s1x64d", "1s2x40d", "2s2x40d", "4s2x40d", "1s4x24d"]
    assert all(f"resnest50_fast_{v}" in names for v in fast)
    assert "resnetd50" in names
    crops = {n: model_info(n)["crop_size"] for n in names}
    assert (crops["resnest50"], crops["resnest101"], crops["resnest200"], crops["resnest269"]) == (
        224,
        256,
        320,
        416,
    )
    with pytest.raises(ValueError, match="resnest50"):
        get_model("resnest51")


@pytest.mark.parametrize("name", sorted(load_manifest()))
def test_parameter_layout_equals_published(manifest, name):
    net = get_model(name)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    got = layout(net)
    expected = {k: s for k, s in manifest[name]["params"]}
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert sum(int(np.prod(s)) for s in got.values()) == manifest[name]["num_params"]


def _tiny_train_step(net, size, batch=2, classes=7):
    x = mx.nd.random.uniform(shape=(batch, 3, size, size))
    with autograd.record():
        y = net(x)
        loss = mx.nd.softmax_cross_entropy(y, mx.nd.array(np.arange(batch) % classes))
    loss.backward()
    return y


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_model(name):
    size = 32 if model_info(name)["layers"][2] > 6 else 64
    net = get_model(name, classes=7, dropblock_prob=0.1)
    net.initialize(mx.init.Xavier(magnitude=2))
    y = _tiny_train_step(net, size)
    assert y.shape == (2, 7)
    assert np.isfinite(y.asnumpy()).all()
    no_grad = [
        k
        for k, p in net._collect_params_with_prefix().items()
        if p.grad_req != "null" and not np.abs(p.grad().asnumpy()).sum() > 0
    ]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_hybridized_model_equals_imperative():
    def run(hybridize):
        mx.random.seed(0)
        net = get_model("resnest14", classes=5)
        net.initialize(mx.init.Xavier(magnitude=2))
        if hybridize:
            net.hybridize(static_alloc=True, static_shape=True)
        x = mx.nd.array(np.random.default_rng(0).uniform(size=(2, 3, 32, 32)))
        with autograd.record():
            y = net(x)
            loss = (y**2).sum()
        loss.backward()
        grads = {
            k: p.grad().asnumpy()
            for k, p in net._collect_params_with_prefix().items()
            if p.grad_req != "null"
        }
        return y.asnumpy(), net(x).asnumpy(), grads

    y0, e0, g0 = run(False)
    y1, e1, g1 = run(True)
    np.testing.assert_allclose(y0, y1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e0, e1, rtol=1e-4, atol=1e-5)
    for k in g0:
        np.testing.assert_allclose(g0[k], g1[k], rtol=1e-3, atol=1e-4, err_msg=k)


def test_export_and_symbolblock_imports(tmp_path):
    net = get_model("resnest14", classes=4, dropblock_prob=0.1)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    y = net(x)
    prefix = str(tmp_path / "resnest14")
    net.export(prefix, epoch=0)
    loaded = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params")
    np.testing.assert_allclose(loaded(x).asnumpy(), y.asnumpy(), rtol=1e-5, atol=1e-6)


def test_any_input_size_with_one_hybridized_model():
    net = get_model("resnest14", classes=3, dropblock_prob=0.2)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    for size in (32, 48, 64, 57):
        with autograd.record(train_mode=True):
            assert net(mx.nd.ones((2, 3, size, size))).shape == (2, 3)
        assert net(mx.nd.ones((1, 3, size, size))).shape == (1, 3)


def test_kwargs_override_the_registry_row():
    net = get_model(
        "resnest50",
        classes=10,
        dropblock_prob=0.3,
        final_drop=0.0,
        norm_layer=mx.gluon.nn.BatchNorm,
        norm_kwargs={"momentum": 0.8},
        last_gamma=True,
    )
    drops = [b.drop_prob for b in _blocks(net, resnest_gluon.DropBlock)]
    assert drops and set(drops) == {0.3}
    assert net.fc._units == 10
    net.initialize()
    assert (net.layer1[0].bn3.gamma.data() == 0).asnumpy().all()
    assert net.layer1[0].bn1._kwargs["momentum"] == 0.8
    net200 = get_model("resnest200", final_drop=0.0, dropblock_prob=0.0)
    assert not _blocks(net200, mx.gluon.nn.Dropout)


def _blocks(net, kind):
    found = []
    net.apply(lambda b: found.append(b) if isinstance(b, kind) else None)
    return found


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_and_stage_features(output_stride):
    net = get_model("resnest14", output_stride=output_stride, features_only=True)
    net.initialize()
    net.hybridize()
    feats = net(mx.nd.ones((1, 3, 64, 64)))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert feats[-1].shape[2:] == (64 // output_stride, 64 // output_stride)
    assert feats[0].shape[2:] == (16, 16)
    # features_only keeps the classifier so that published weights still load
    assert "fc.weight" in net._collect_params_with_prefix()


@pytest.mark.parametrize("name", ["resnest14", "resnest26", "resnest50", "resnetd50"])
def test_same_outputs_as_gluoncv_with_the_same_weights(name, tmp_path):
    """gluoncv ships the published Gluon ResNeSt code: with one set of weights both must agree.

    ``load_parameters`` is strict, so this also proves resnetd50 has ResNet-D-50's exact layout."""
    from gluoncv.model_zoo import get_model as gluoncv_model

    ref = gluoncv_model("resnet50_v1d" if name == "resnetd50" else name)
    ref.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(0)
    for key, p in ref._collect_params_with_prefix().items():
        if key.endswith(("gamma", "beta", "running_mean", "running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
    x = mx.nd.array(rng.uniform(size=(2, 3, 64, 64)))
    expected = ref(x).asnumpy()
    ref.save_parameters(str(tmp_path / "ref.params"))
    net = get_model(name)
    net.load_parameters(str(tmp_path / "ref.params"))
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)
    net.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_dropblock_starts_off_and_costs_nothing_until_raised(tmp_path):
    net = get_model("resnest50")
    assert model_info("resnest50")["dropblock_prob"] == 0.1  # the recipe's value, for the training script
    blocks = _blocks(net, resnest_gluon.DropBlock)
    assert len(blocks) == 3 * (6 + 3) and {b.drop_prob for b in blocks} == {0.0}
    net = get_model("resnest14", classes=3)
    net.initialize()
    net.hybridize()
    net(mx.nd.ones((1, 3, 32, 32)))
    net.export(str(tmp_path / "off"))
    assert "uniform" not in (tmp_path / "off-symbol.json").read_text()
    assert resnest_gluon.set_drop_prob(net, 0.1) == 3 * 2
    net(mx.nd.ones((1, 3, 32, 32)))
    net.export(str(tmp_path / "on"))
    assert "uniform" in (tmp_path / "on-symbol.json").read_text()
