"""Semantic segmentation: DeepLabV3 on the dilated ResNeSt (gluoncv's published layout and logits)."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import resnest_gluon
from resnest_gluon import get_model, model_info
from resnest_gluon.models.deeplab import SEG_MODELS


def layout(net):
    return {k: tuple(p.shape) for k, p in net._collect_params_with_prefix().items()}


def small_deeplab(classes=5, **kwargs):
    """The smallest DeepLab: on ResNeSt-14 (the heads are the full-size ones)."""
    return get_model("deeplab_resnest50_ade", backbone="resnest14", classes=classes, **kwargs)


@pytest.mark.parametrize("name", sorted(SEG_MODELS))
def test_layout_equals_gluoncv_so_published_files_load(name):
    """Same keys and shapes as gluoncv's model: its published file loads unchanged (load is strict)."""
    from gluoncv.model_zoo import get_model as gluoncv_model

    ref = gluoncv_model(name, pretrained=False, pretrained_base=False)
    net = get_model(name)
    assert layout(net) == layout(ref)
    assert len(layout(net)) == len(layout(ref)) and net.classes == 150
    info = model_info(name)
    assert info["backbone"] == name.split("_")[1] and len(info["sha1"]) == 40
    assert 80 < info["pixacc"] < 83 and 45 < info["miou"] < 49


def _gluoncv_with_random_weights(height, width, seed=0):
    from gluoncv.model_zoo.deeplabv3 import DeepLabV3 as GluonDeepLab

    ref = GluonDeepLab(150, backbone="resnest50", pretrained_base=False, height=height, width=width)
    ref.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(seed)
    for key, p in ref._collect_params_with_prefix().items():
        if key.endswith(("gamma", "beta", "running_mean", "running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
    return ref


def test_same_logits_as_gluoncv_from_its_file_at_480_and_at_another_size(tmp_path):
    """gluoncv's model writes the file (random weights); ours loads it and gives its logits to 1e-4, main and
    auxiliary, hybridized at 480 px, then (the same model) at 96x64, where gluoncv needs a model built for
    that size, and imperatively. At 480 px the largest difference was 1.0e-5 (logits up to 7.5)."""
    ref = _gluoncv_with_random_weights(480, 480)
    path = str(tmp_path / "gluoncv.params")
    ref.save_parameters(path)
    rng = np.random.default_rng(1)
    x = mx.nd.array(rng.uniform(-1, 1, (1, 3, 480, 480)))
    main, aux = (o.asnumpy() for o in ref(x))
    del ref

    net = get_model("deeplab_resnest50_ade", pretrained=path, aux=True)
    net.hybridize(static_alloc=True, static_shape=True)
    out, out_aux = net(x)
    assert out.shape == (1, 150, 480, 480)
    np.testing.assert_allclose(out.asnumpy(), main, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out_aux.asnumpy(), aux, rtol=1e-4, atol=1e-4)

    small = _gluoncv_with_random_weights(96, 64, seed=2)
    small.save_parameters(path)
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 96, 64)))
    expected = small(x)[0].asnumpy()
    net.load_parameters(path)
    net.set_aux(False)  # inference: the main logits alone
    out = net(x)
    assert out.shape == (2, 150, 96, 64)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-4, atol=1e-4)
    net.hybridize(False)
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_small_deeplab_trains_at_any_size_with_its_auxiliary_head():
    net = small_deeplab(aux=True)
    net.initialize(mx.init.Xavier())
    for shape in ((2, 3, 64, 64), (2, 3, 72, 40)):  # batch 2: the attention BN sees 1x1 maps
        x = mx.nd.random.uniform(shape=shape)
        with autograd.record():
            out, aux = net(x)
            loss = out.mean() + 0.5 * aux.mean()
        loss.backward()
        assert out.shape == aux.shape == (shape[0], 5) + shape[2:]
    grads = {k: p.grad() for k, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}
    missing = [k for k, g in grads.items() if not np.abs(g.asnumpy()).sum() > 0]
    assert not missing, missing
    assert not np.isnan(out.asnumpy()).any()


def test_small_deeplab_hybridized_equals_imperative_and_exports(tmp_path):
    from resnest_gluon import deploy

    net = small_deeplab()
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=(1, 3, 64, 48))
    expected = net(x).asnumpy()
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    assert net(mx.nd.zeros((1, 3, 40, 56))).shape == (1, 5, 40, 56)
    deploy.export(net, str(tmp_path / "seg"), (1, 3, 64, 48))
    same = deploy.load_exported(str(tmp_path / "seg"))
    np.testing.assert_allclose(same(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)
    assert same(mx.nd.zeros((1, 3, 40, 56))).shape == (1, 5, 40, 56)  # nothing sized at export


def test_published_file_is_checked(tmp_path):
    name = "deeplab_resnest50_ade"
    with pytest.raises(FileNotFoundError, match="gluoncv"):
        get_model(name, pretrained=True, root=str(tmp_path))
    sha1 = SEG_MODELS[name]["sha1"]
    (tmp_path / f"{name}-{sha1[:8]}.params").write_bytes(b"not the file")
    with pytest.raises(ValueError, match="SHA-1"):
        get_model(name, pretrained=True, root=str(tmp_path))


def test_registry_keeps_classifiers_apart():
    assert "deeplab_resnest50_ade" not in resnest_gluon.list_models()  # the classification commands' list
    with pytest.raises(ValueError, match="deeplab_resnest50_ade"):
        get_model("deeplab_resnest51_ade")
