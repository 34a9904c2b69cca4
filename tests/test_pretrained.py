"""Pretrained loading (files the tests write, never the network) and the PyTorch weight importer."""

import contextlib
import functools
import hashlib
import http.server
import threading
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
    assert str(tmp_path / "home") in message and "resnest-download resnest14" in message
    assert pretrained.GLUONCV_URL in message  # resnest14's publisher: gluoncv's model store
    with pytest.raises(FileNotFoundError, match="weights_step2/resnest50-bcfefe1d.zip"):
        get_model("resnest50", pretrained=True)


def test_registry_has_gluoncv_files_with_their_published_sha1_and_top1():
    from gluoncv.model_zoo.model_store import _model_sha1

    from resnest_gluon import model_info

    for name in ("resnest14", "resnest26", "resnest50", "resnest101", "resnest269"):
        assert pretrained.SHA1[name] == _model_sha1[name], name
    assert (model_info("resnest14")["top1"], model_info("resnest26")["top1"]) == (75.75, 78.68)
    card = pretrained.published("resnest26")
    assert card["file"] == "resnest26-36459074.params" and card["licence"] == "Apache-2.0"
    assert card["url"] == pretrained.GLUONCV_URL + "resnest26-36459074.zip" and "gluoncv" in card["protocol"]
    with pytest.raises(ValueError, match="no published weights for 'resnetd50'"):
        pretrained.published("resnetd50")


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


@contextlib.contextmanager
def serving(folder):
    """``folder`` served by a local HTTP server on 127.0.0.1 (no network); yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_mirror(saved, tmp_path):
    """The zip of the test's resnest14 file served over local HTTP."""
    _, path, sha1 = saved
    mirror = tmp_path / "served"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / f"resnest14-{sha1[:8]}.zip", "w") as zf:
        zf.write(path, f"resnest14-{sha1[:8]}.params")
    with serving(mirror) as url:
        yield url


def test_download_command_over_http_with_progress(saved, http_mirror, tmp_path, capsys):
    from resnest_gluon.cli import download as command

    net, _, sha1 = saved
    out = tmp_path / "weights"
    paths = command.main(["resnest14", "--dir", str(out), "--base-url", http_mirror, "--progress"])
    assert paths == [str(out / f"resnest14-{sha1[:8]}.params")]
    assert pretrained.file_sha1(paths[0]) == sha1 and sorted(p.name for p in out.iterdir()) == [
        f"resnest14-{sha1[:8]}.params"
    ]
    err = capsys.readouterr().err
    assert f"resnest14-{sha1[:8]}.zip" in err and "100%" in err  # the progress bar, to the end
    loaded = get_model("resnest14", pretrained=True, root=str(out))
    np.testing.assert_allclose(loaded(X).asnumpy(), net(X).asnumpy(), rtol=1e-6)
    # a second run keeps the checked file (no fetch: the server is not even asked)
    assert command.main(["resnest14", "--dir", str(out), "--base-url", "http://127.0.0.1:1/"]) == paths


def test_deeplab_names_are_gluoncv_files_and_download_like_the_classifiers(tmp_path, monkeypatch, capsys):
    """``resnest-download deeplab_resnest50_ade``: gluoncv's URL and SHA-1, the same checked download."""
    from gluoncv.model_zoo.model_store import _model_sha1

    from resnest_gluon.cli import download as command

    for name in ("deeplab_resnest50_ade", "deeplab_resnest101_ade", "deeplab_resnest200_ade",
                 "deeplab_resnest269_ade"):  # fmt: skip
        assert pretrained.SHA1[name] == _model_sha1[name], name
        assert pretrained.url_of(name) == f"{pretrained.GLUONCV_URL}{name}-{_model_sha1[name][:8]}.zip"
        assert name not in pretrained.CLASSIFIERS  # 'all' fetches the classifiers only
    assert "ADE20K" in pretrained.published("deeplab_resnest101_ade")["protocol"]
    # a small DeepLab stands in for the published file; the table is pointed at its SHA-1
    name = "deeplab_resnest50_ade"
    net = get_model(name, backbone="resnest14", classes=5)
    net.initialize(mx.init.Xavier(magnitude=2))
    path = tmp_path / "deeplab.params"
    net.save_parameters(str(path))
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    monkeypatch.setitem(pretrained.SHA1, name, sha1)
    mirror, out = tmp_path / "served", tmp_path / "weights"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / f"{name}-{sha1[:8]}.zip", "w") as zf:
        zf.write(path, f"{name}-{sha1[:8]}.params")
    with pytest.raises(FileNotFoundError, match=f"resnest-download {name}"):
        get_model(name, backbone="resnest14", classes=5, pretrained=True, root=str(out))
    with serving(mirror) as url:
        paths = command.main([name, "--dir", str(out), "--base-url", url, "--progress"])
    assert paths == [str(out / f"{name}-{sha1[:8]}.params")] and pretrained.file_sha1(paths[0]) == sha1
    assert f"{name}-{sha1[:8]}.zip" in capsys.readouterr().err
    loaded = get_model(name, backbone="resnest14", classes=5, pretrained=True, root=str(out))
    x = mx.nd.array(np.random.default_rng(2).uniform(size=(1, 3, 32, 32)))
    np.testing.assert_allclose(loaded(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(pretrained.DownloadError, match=rf"cannot download http://127\.0\.0\.1:1/{name}-"):
        pretrained.download(
            name, root=str(tmp_path / "offline"), base_url="http://127.0.0.1:1/", progress=False
        )
    assert list((tmp_path / "offline").iterdir()) == []


def test_download_offline_is_one_error_line_naming_the_url(saved, tmp_path):
    import subprocess
    import sys

    from resnest_gluon import cli

    url = "http://127.0.0.1:1/"  # nothing listens on port 1: refused at once, as offline
    with pytest.raises(pretrained.DownloadError, match=r"cannot download http://127\.0\.0\.1:1/resnest14-"):
        pretrained.download("resnest14", root=str(tmp_path / "w"), base_url=url, progress=False)
    assert list((tmp_path / "w").iterdir()) == []  # nothing left behind
    env = dict(cli.child_env(), RESNEST_GLUON_HOME=str(tmp_path / "w"), RESNEST_GLUON_URL=url)
    done = subprocess.run(
        [sys.executable, "-m", "resnest_gluon", "download", "resnest50"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("error: cannot download http://127.0.0.1:1/resnest50-bcfefe1d.zip: ")
    assert [line for line in lines if line.startswith("error")] == lines[-1:]


def test_download_rejects_unknown_names(capsys):
    from resnest_gluon.cli import download as command

    with pytest.raises(SystemExit):
        command.main(["resnetd50"])
    assert "no published weights for resnetd50" in capsys.readouterr().err


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


def test_convert_weights_missing_file_is_one_error_line(tmp_path, capsys):
    from resnest_gluon import cli

    argv = ["--model", "resnest14", "--input", str(tmp_path / "none.safetensors"), "--output", "x.params"]
    assert cli.run("convert-weights", argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "none.safetensors does not exist" in err[0]
    assert not (tmp_path / "x.params").exists()


def test_export_of_the_published_weights_carries_imagenet_names(saved, tmp_path):
    from resnest_gluon.cli import export

    _, path, sha1 = saved
    root = tmp_path / "home"
    root.mkdir()
    (root / f"resnest14-{sha1[:8]}.params").write_bytes(path.read_bytes())
    argv = ["--model", "resnest14", "--pretrained", "--format", "symbol", "--input-size", "32"]
    meta = export.main(argv + ["--out-prefix", str(tmp_path / "out" / "r14")])["meta"]
    assert meta["source_sha1"] == sha1 and meta["source"] == str(root / f"resnest14-{sha1[:8]}.params")
    assert len(meta["class_names"]) == 1000 and meta["class_names"][0] == "n01440764 tench"
    assert (meta["classes"], meta["input_size"], meta["resize"]) == (1000, 32, 37)
