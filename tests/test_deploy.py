"""Export, ONNX and INT8 quantization of a tiny ResNeSt (resnest14, 10 classes, 32 px)."""

import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import resnest_gluon
from resnest_gluon import deploy
from resnest_gluon.errors import UserError

SHAPE = (4, 3, 32, 32)


def tiny_net(**kwargs):
    mx.random.seed(0)
    net = resnest_gluon.get_model("resnest14", classes=10, **kwargs)
    net.initialize(mx.init.Xavier())
    return net


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    return mx.nd.array(rng.uniform(-1, 1, SHAPE).astype(np.float32))


def test_export_reimport_same_outputs(tmp_path, data):
    # DropBlock on: export must switch it off and the outputs stay those of inference
    net = tiny_net(dropblock_prob=0.1)
    expected = net(data).asnumpy()
    sym_file, params_file = deploy.export(net, str(tmp_path / "out" / "tiny"), SHAPE)
    assert os.path.isfile(sym_file) and os.path.isfile(params_file)
    assert sorted(os.listdir(tmp_path / "out")) == ["tiny-0000.params", "tiny-symbol.json", "tiny.meta.json"]
    loaded = deploy.load_exported(str(tmp_path / "out" / "tiny"))
    np.testing.assert_allclose(loaded(data).asnumpy(), expected, rtol=1e-5, atol=1e-6)
    # the exported graph accepts another batch size
    assert loaded(data[:1]).shape == (1, 10)


def test_every_export_writes_its_metadata(tmp_path):
    from resnest_gluon.data.transforms import MEAN, STD
    from resnest_gluon.models.pretrained import file_sha1, load_params_checked

    source = str(tmp_path / "trained.params")
    tiny_net().save_parameters(source)
    net = resnest_gluon.get_model("resnest14", classes=10)
    load_params_checked(net, source)
    names = [f"class {i}" for i in range(10)]
    deploy.export(net, str(tmp_path / "sym"), (1, 3, 32, 32), meta={"class_names": names})
    deploy.export_onnx(net, str(tmp_path / "net.onnx"), (1, 3, 40, 40))
    sym, onnx_meta = deploy.read_meta(str(tmp_path / "sym")), deploy.read_meta(str(tmp_path / "net.onnx"))
    assert sym == deploy.read_meta(str(tmp_path / "sym-symbol.json"))  # found from the prefix or a file
    assert sym["format"] == "symbol" and sym["files"] == ["sym-symbol.json", "sym-0000.params"]
    assert onnx_meta["format"] == "onnx" and onnx_meta["files"] == ["net.onnx"]
    for meta, size in ((sym, 32), (onnx_meta, 40)):
        assert (meta["model"], meta["classes"], meta["input_size"]) == ("resnest14", 10, size)
        assert meta["resize"] == int(np.ceil(size / 0.875)) and meta["interpolation"] == "bilinear"
        assert meta["mean"] == list(MEAN) and meta["std"] == list(STD)
        assert (meta["channel_order"], meta["layout"], meta["pixel_scale"]) == ("RGB", "NCHW", "0-255")
        assert meta["source"] == source and meta["source_sha1"] == file_sha1(source)
    assert sym["class_names"] == names and onnx_meta["class_names"] is None
    with pytest.raises(ValueError, match="3 class names for a model with 10 classes"):
        deploy.export(net, str(tmp_path / "bad"), (1, 3, 32, 32), meta={"class_names": ["a", "b", "c"]})
    assert not any(p.name.startswith("bad") for p in tmp_path.iterdir())  # checked before writing


def graph_ops(net):
    return {node["op"] for node in json.loads(net._cached_graph[1].tojson())["nodes"]}


def test_prepare_for_inference_fuses_and_matches_plain_graph(data):
    net = tiny_net(dropblock_prob=0.1)
    assert deploy.prepare_for_inference(net, fuse=False) is net
    plain = net(data).asnumpy()
    assert not any(op.startswith("_sg_mkldnn") for op in graph_ops(net))
    assert deploy.fusion_available() and not deploy.fusion_available(mx.gpu(0))
    deploy.prepare_for_inference(net)  # default: fused on a CPU with oneDNN
    fused = net(data).asnumpy()
    assert deploy.is_fused(net) and "_sg_mkldnn_conv" in graph_ops(net)
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-4)
    assert np.abs(plain).max() > 1e-3  # not a trivially zero output


def test_prepare_for_inference_refuses_impossible_fusion(monkeypatch):
    net = tiny_net()
    monkeypatch.setenv("MXNET_MKLDNN_ENABLED", "0")
    assert not deploy.fusion_available()
    with pytest.raises(ValueError, match="fuse=None or fuse=False"):
        deploy.prepare_for_inference(net, fuse=True)
    deploy.prepare_for_inference(net)  # falls back to the plain graph
    assert not deploy.is_fused(net)


def test_export_of_a_fused_net_is_the_plain_graph(tmp_path, data):
    net = deploy.prepare_for_inference(tiny_net())
    expected = net(data).asnumpy()
    sym_file, _ = deploy.export(net, str(tmp_path / "tiny"), SHAPE)
    with open(sym_file) as f:
        assert "_sg_mkldnn" not in f.read()  # portable to any MXNet build
    assert deploy.is_fused(net)  # the caller's model is left as it was
    loaded = deploy.load_exported(str(tmp_path / "tiny"))
    np.testing.assert_allclose(loaded(data).asnumpy(), expected, rtol=0, atol=1e-4)


def test_load_exported_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="export the model first"):
        deploy.load_exported(str(tmp_path / "nothing"))


def test_onnx_matches_mxnet_and_is_tensorrt_parsable(tmp_path, data):
    net = tiny_net(dropblock_prob=0.1)
    expected = net(data).asnumpy()
    path = deploy.export_onnx(net, str(tmp_path / "tiny.onnx"), SHAPE)
    ops = deploy.onnx_ops(path)
    # the check the issue asks for: nothing TensorRT cannot parse, ScatterND (from swapaxes) in particular
    assert "ScatterND" not in ops
    assert ops <= deploy.TENSORRT_ONNX_OPS, sorted(ops - deploy.TENSORRT_ONNX_OPS)
    assert {"Conv", "Softmax"} <= ops  # the split-attention block is really in the graph
    got = deploy.run_onnx(path, data.asnumpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["tiny.meta.json", "tiny.onnx"]  # no temporary files left


def test_onnx_has_no_unused_initializers_and_loads_without_warnings(tmp_path):
    import onnx

    path = deploy.export_onnx(tiny_net(), str(tmp_path / "tiny.onnx"), SHAPE, dynamic_batch=True)
    graph = onnx.load(path).graph
    used = {name for node in graph.node for name in node.input}
    assert [i.name for i in graph.initializer if i.name not in used] == []
    # onnxruntime logs from C++ to stderr: load it in a child process at warning level and read that
    code = (
        "import sys, onnxruntime as ort\n"
        "ort.set_default_logger_severity(1)\n"
        "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "print('loaded')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "loaded", out.stderr[-2000:]
    assert "[W:onnxruntime" not in out.stderr and "[E:onnxruntime" not in out.stderr, out.stderr[-2000:]


def test_check_onnx_ops_rejects_unlisted_operator(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ScatterND", ["x", "i", "u"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    path = str(tmp_path / "scatter.onnx")
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ValueError, match="ScatterND"):
        deploy.check_onnx_ops(path)


def test_quantize_int8_close_to_float32(tmp_path):
    net = tiny_net()
    rng = np.random.RandomState(1)
    calib = [(mx.nd.array(rng.uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)), None) for _ in range(4)]
    test_x = mx.nd.array(rng.uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32))
    expected = net(test_x).asnumpy()
    prefix = str(tmp_path / "int8" / "tiny")
    qnet = deploy.quantize(net, calib, num_calib_batches=4, out_prefix=prefix)
    got = qnet(test_x).asnumpy()
    assert got.shape == expected.shape and np.isfinite(got).all()
    # "close-ish": int8 logits within a fraction of the logit range, same class on most samples
    assert np.abs(got - expected).max() < 0.25 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.8
    # saved model reloads and gives the same outputs; its graph really is quantized
    assert os.path.isfile(prefix + "-symbol.json") and os.path.isfile(prefix + "-0000.params")
    with open(prefix + "-symbol.json") as f:
        assert "quantized_" in f.read()
    reloaded = deploy.load_exported(prefix)
    np.testing.assert_allclose(reloaded(test_x).asnumpy(), got, rtol=0, atol=1e-5)
    meta = deploy.read_meta(prefix)
    assert (meta["format"], meta["precision"], meta["input_size"], meta["classes"]) == (
        "int8",
        "int8",
        32,
        10,
    )


def make_rec(path, count=16, size=40):
    rng = np.random.RandomState(2)
    writer = mx.recordio.MXIndexedRecordIO(path[:-4] + ".idx", path, "w")
    for i in range(count):
        img = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        header = mx.recordio.IRHeader(0, float(i % 10), i, 0)
        writer.write_idx(i, mx.recordio.pack_img(header, img, quality=90, img_fmt=".jpg"))
    writer.close()
    return path


def test_quantize_from_rec(tmp_path):
    rec = make_rec(str(tmp_path / "calib.rec"))
    net = tiny_net()
    qnet = deploy.quantize(net, rec, num_calib_batches=2, batch_size=8, input_size=32)
    batch = next(iter(deploy.rec_calibration_iter(rec, 8, 32)))
    out = qnet(batch.data[0].as_in_context(mx.cpu())).asnumpy()
    assert out.shape == (8, 10) and np.isfinite(out).all()


def test_quantize_rejects_bad_arguments(tmp_path):
    net = tiny_net()
    with pytest.raises(ValueError, match="num_calib_batches"):
        deploy.quantize(net, [], num_calib_batches=0)
    with pytest.raises(ValueError, match="no batches"):
        deploy.quantize(net, [], num_calib_batches=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deploy.quantize(net, str(tmp_path / "missing.rec"), num_calib_batches=2)


def test_quantize_script_end_to_end(tmp_path):
    from resnest_gluon.cli import quantize as script

    net = tiny_net()
    net(mx.nd.zeros((1, 3, 32, 32)))
    params = str(tmp_path / "tiny.params")
    net.save_parameters(params)
    rec = make_rec(str(tmp_path / "val.rec"), count=20)
    out = str(tmp_path / "int8" / "tiny")
    argv = ["--model", "resnest14", "--classes", "10", "--params", params, "--rec-calib", rec]
    argv += [
        "--rec-val",
        rec,
        "--out-prefix",
        out,
        "--input-size",
        "32",
        "--batch-size",
        "8",
        "--calib-batches",
        "2",
    ]
    result = script.main(argv + ["--json", str(tmp_path / "q.json"), "--calib-mode", "naive", "entropy"])
    assert result["val_images"] == 20
    assert [p["path"] for p in result["paths"]] == [
        "mxnet float32 (fused)",
        "mxnet int8 (naive calibration)",
        "mxnet int8 (entropy calibration)",
    ]
    assert result["paths"][1]["top1"] == result["int8_top1"] and result["calib_mode"] == "naive"
    assert 0 <= result["int8_top1"] <= 100 and 0 <= result["float32_top1"] <= 100
    assert result["top1_drop"] == pytest.approx(result["float32_top1"] - result["int8_top1"])
    assert os.path.isfile(out + "-symbol.json") and os.path.isfile(out + "-0000.params")
    assert deploy.read_meta(out)["format"] == "int8"
    with pytest.raises(UserError, match="missing.params does not exist"):
        script.main(argv[:4] + ["--params", str(tmp_path / "missing.params")] + argv[6:])
    # the old spelling --out still works, hidden
    assert script.parse_args(argv[:10] + ["--out", "old"] + argv[12:]).out_prefix == "old"


def run_export(argv, tmp_path):
    from resnest_gluon.cli import export as export_cli

    return export_cli.main([str(a) for a in argv])


def fake_run(tmp_path, classes=3):
    """A run directory as resnest-train leaves it: args.json, classes.txt, the best checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    tiny = resnest_gluon.get_model("resnest14", classes=classes)
    tiny.initialize(mx.init.Xavier())
    tiny.save_parameters(str(run / "resnest14-best.params"))
    rec = make_rec(str(tmp_path / "train.rec"))
    saved = dict(model="resnest14", classes=classes, val_crop_size=32, rec_train=rec)
    (run / "args.json").write_text(json.dumps(saved))
    (run / "classes.txt").write_text("cat\ndog\nfox\n")
    return run, tiny


def test_export_command_every_format_from_a_run(tmp_path):
    from resnest_gluon.models.pretrained import file_sha1

    run, tiny = fake_run(tmp_path)
    x = np.random.RandomState(3).uniform(-2, 2, (2, 3, 32, 32)).astype(np.float32)
    expected = tiny(mx.nd.array(x)).asnumpy()
    got = {}
    for fmt in ("symbol", "onnx", "int8"):
        result = run_export(["--run", run, "--format", fmt], tmp_path)
        meta = result["meta"]
        assert meta["format"] == fmt and all(os.path.isfile(f) for f in result["files"])
        assert meta["class_names"] == ["cat", "dog", "fox"] and meta["input_size"] == 32
        assert meta["source_sha1"] == file_sha1(str(run / "resnest14-best.params"))
        got[fmt] = result["files"]
    assert got["onnx"][0] == str(run / "export" / "onnx" / "resnest14.onnx")
    np.testing.assert_allclose(deploy.run_onnx(got["onnx"][0], x), expected, atol=1e-4)
    sym = deploy.load_exported(str(run / "export" / "symbol" / "resnest14"))
    np.testing.assert_allclose(sym(mx.nd.array(x)).asnumpy(), expected, atol=1e-4)
    int8 = deploy.load_exported(str(run / "export" / "int8" / "resnest14"))
    assert int8(mx.nd.array(x)).shape == (2, 3)


def test_export_command_mistakes_are_one_line(tmp_path):
    from resnest_gluon.cli import run as run_command

    run, _ = fake_run(tmp_path)
    (run / "args.json").write_text(json.dumps(dict(model="resnest14", classes=3, val_crop_size=32)))
    assert run_command("export", ["--run", str(run), "--format", "int8"]) == 1  # no calibration records
    assert run_command("export", ["--run", str(tmp_path), "--format", "onnx"]) == 1  # not a run
    args = ["--model", "resnest14", "--params", str(tmp_path / "none.params"), "--format", "onnx"]
    assert run_command("export", args) == 1


def test_metadata_names_the_evaluation_rule_of_large_crops():
    from resnest_gluon.deploy.meta import build_meta

    net = resnest_gluon.get_model("resnest14", classes=10)
    small, large = (build_meta(net, (1, 3, s, s), "onnx", ["m.onnx"]) for s in (256, 320))
    assert small["resize"] == 293 and small["interpolation"] == "bilinear"
    assert large["resize"] is None and large["interpolation"].startswith("bicubic (PIL")
    assert "320/(320+32) x the shorter side" in large["preprocess"]
