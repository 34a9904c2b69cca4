"""Pretrained loading (files the tests write, never the network) and the PyTorch weight importer."""

import hashlib
import zipfile

import mxnet as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from resnest_gluon import get_model
from resnest_gluon.models import pretrained
from resnest_gluon.models.convert import load_torch_weights


def trained_like(name, **kwargs):
    net = get_model(name, **kwargs)
    net.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(0)
    for key, p in net._collect_params_with_prefix().items():
        if key.endswith(("running_mean", "running_var", "gamma")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
    return net


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """resnest14 weights saved as if published: the checksum table is pointed at the file the test wrote."""
    net = trained_like("resnest14")
    path = tmp_path / "weights.params"
    net.save_parameters(str(path))
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    monkeypatch.setitem(pretrained.SHA1, "resnest14", sha1)
    monkeypatch.setenv("RESNEST_GLUON_HOME", str(tmp_path / "home"))
    return net, path, sha1


X = mx.nd.array(np.random.default_rng(1).uniform(size=(1, 3, 32, 32)))


def test_round_trip_through_a_params_file(saved):
    net, path, _ = saved
    loaded = get_model("resnest14", pretrained=str(path))
    np.testing.assert_allclose(loaded(X).asnumpy(), net(X).asnumpy(), rtol=1e-6)


def test_pretrained_true_finds_the_file_under_root(saved, tmp_path):
    net, path, sha1 = saved
    root = tmp_path / "home"
    root.mkdir()
    (root / f"resnest14-{sha1[:8]}.params").write_bytes(path.read_bytes())
    loaded = get_model("resnest14", pretrained=True)  # root from $RESNEST_GLUON_HOME
    np.testing.assert_allclose(loaded(X).asnumpy(), net(X).asnumpy(), rtol=1e-6)
    other = tmp_path / "other"
    other.mkdir()
    (other / f"resnest14-{sha1[:8]}.params").write_bytes(path.read_bytes())
    assert get_model("resnest14", pretrained=True, root=str(other)) is not None


def test_missing_file_says_where_to_put_it(saved, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_model("resnest14", pretrained=True)
    message = str(err.value)
    assert str(tmp_path / "home") in message and "weights_step2" in message


def test_wrong_checksum_is_refused(saved, tmp_path):
    _, path, sha1 = saved
    root = tmp_path / "home"
    root.mkdir()
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    (root / f"resnest14-{sha1[:8]}.params").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="SHA-1"):
        get_model("resnest14", pretrained=True)


def test_file_for_another_model_names_the_first_mismatch(saved):
    _, path, _ = saved
    with pytest.raises(ValueError, match=r"layer1\.1\.|does not fit resnest26"):
        get_model("resnest26", pretrained=str(path))
    with pytest.raises(ValueError, match=r"fc\.(bias|weight).*shape.*replace net.fc"):
        get_model("resnest14", classes=10, pretrained=str(path))


def test_download_from_a_local_mirror(saved, tmp_path):
    net, path, sha1 = saved
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    name = f"resnest14-{sha1[:8]}"
    with zipfile.ZipFile(mirror / f"{name}.zip", "w") as zf:
        zf.write(path, f"{name}.params")
    got = pretrained.download("resnest14", base_url=mirror.as_uri())
    assert got == pretrained.pretrained_path("resnest14")
    loaded = get_model("resnest14", pretrained=True)
    np.testing.assert_allclose(loaded(X).asnumpy(), net(X).asnumpy(), rtol=1e-6)


def test_download_with_a_bad_checksum_leaves_nothing(saved, tmp_path, monkeypatch):
    _, path, sha1 = saved
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    name = f"resnest14-{sha1[:8]}"
    with zipfile.ZipFile(mirror / f"{name}.zip", "w") as zf:
        zf.writestr(f"{name}.params", b"not the weights")
    with pytest.raises(OSError, match="SHA-1"):
        pretrained.download("resnest14", base_url=mirror.as_uri())
    assert not (tmp_path / "home" / f"{name}.params").exists()
    assert list((tmp_path / "home").iterdir()) == []


def to_torch_layout(net):
    """Our parameters under the official PyTorch ResNeSt names (BN weight/bias, splat bn0)."""
    state = {}
    for key, p in net._collect_params_with_prefix().items():
        value = p.data().asnumpy()
        module, _, leaf = key.rpartition(".")
        if module.endswith(".conv2.bn"):
            module = module[: -len("bn")] + "bn0"
        leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)
        state[f"{module}.{leaf}"] = value
        if leaf == "running_var":
            state[f"{module}.num_batches_tracked"] = np.array(100, dtype=np.int64)
    return state


def test_import_official_pytorch_layout_from_safetensors(tmp_path):
    net = trained_like("resnest14", classes=6)
    state = to_torch_layout(net)
    assert "layer1.0.conv2.bn0.weight" in state and "bn1.bias" in state and "fc.weight" in state
    save_file(state, str(tmp_path / "resnest14.safetensors"))
    fresh = get_model("resnest14", classes=6)
    load_torch_weights(fresh, str(tmp_path / "resnest14.safetensors"))
    np.testing.assert_allclose(fresh(X).asnumpy(), net(X).asnumpy(), rtol=1e-5, atol=1e-6)


def test_importer_refuses_renamed_and_missing_keys():
    net = trained_like("resnest14")
    state = to_torch_layout(net)
    renamed = dict(state)
    renamed["layer1.0.conv2.attn.weight"] = renamed.pop("layer1.0.conv2.fc1.weight")
    with pytest.raises(ValueError, match="unknown key 'layer1.0.conv2.attn.weight'"):
        load_torch_weights(get_model("resnest14"), renamed)
    missing = dict(state)
    del missing["layer4.0.bn3.running_mean"]
    with pytest.raises(ValueError, match="missing"):
        load_torch_weights(get_model("resnest14"), missing)


def test_convert_weights_script(tmp_path):
    net = trained_like("resnest14", classes=6)
    save_file(to_torch_layout(net), str(tmp_path / "w.safetensors"))
    from resnest_gluon.cli import convert_weights

    script = vars(convert_weights)
    out = tmp_path / "w.params"
    script["main"](
        [
            "--model",
            "resnest14",
            "--classes",
            "6",
            "--input",
            str(tmp_path / "w.safetensors"),
            "--output",
            str(out),
        ]
    )
    loaded = get_model("resnest14", classes=6, pretrained=str(out))
    np.testing.assert_allclose(loaded(X).asnumpy(), net(X).asnumpy(), rtol=1e-5, atol=1e-6)
    # the documented door, by its absolute path, from another folder (the test does not depend on the cwd)
    import os
    import subprocess
    import sys

    from resnest_gluon import cli

    door = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "convert_weights.py"
    )
    argv = ["--model", "resnest14", "--classes", "6", "--input", str(tmp_path / "w.safetensors")]
    done = subprocess.run(
        [sys.executable, door, *argv, "--output", str(tmp_path / "door.params")],
        cwd=tmp_path,
        env=cli.child_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    by_door = get_model("resnest14", classes=6, pretrained=str(tmp_path / "door.params"))
    np.testing.assert_allclose(by_door(X).asnumpy(), net(X).asnumpy(), rtol=1e-5, atol=1e-6)
