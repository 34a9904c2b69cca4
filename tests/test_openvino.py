"""OpenVINO export of a tiny ResNeSt: float32 equals MXNet, bf16 and INT8 keep the digits' top-1."""

import collections
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import resnest_gluon
from resnest_gluon import deploy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conv_precisions(compiled):
    """Execution precision of each convolution OpenVINO compiled: {"f32": n, "bf16": m, "u8": k}."""
    counts = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            counts[info["runtimePrecision"].astype(str)] += 1
    return dict(counts)


@pytest.fixture(scope="module")
def digits():
    """resnest14 at 32 px trained for 3 epochs on sklearn's digits (as scripts/demo.py draws them)."""
    from sklearn.datasets import load_digits

    from resnest_gluon.cli import demo

    data = load_digits()
    images = np.stack([demo.digit_image(p, 32) for p in data.data]).transpose(0, 3, 1, 2)
    images = ((images.astype(np.float32) - 128.0) / 64.0).astype(np.float32)
    train, val = demo.stratified_split(data.target, 0.3, 0)
    mx.random.seed(0)
    net = resnest_gluon.get_model("resnest14", classes=10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    for _ in range(3):
        order = rng.permutation(train)
        for i in range(0, len(order) - 31, 32):
            x, y = mx.nd.array(images[order[i : i + 32]]), mx.nd.array(data.target[order[i : i + 32]])
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(32)
    return net, images[val], data.target[val], [images[train[i : i + 32]] for i in range(0, 128, 32)]


def top1(logits, labels):
    return 100.0 * float((logits.argmax(1) == labels).mean())


def test_float32_equals_mxnet_and_files_are_complete(tmp_path):
    mx.random.seed(0)
    net = resnest_gluon.get_model("resnest14", classes=10, dropblock_prob=0.1)
    net.initialize(mx.init.Xavier())
    x = np.random.RandomState(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()
    xml = deploy.export_openvino(net, str(tmp_path / "ov" / "tiny"), (1, 3, 32, 32), precision="f32")
    assert sorted(os.listdir(tmp_path / "ov")) == ["tiny.bin", "tiny.meta.json", "tiny.xml"]
    meta = deploy.read_meta(xml)
    assert (meta["format"], meta["precision"], meta["files"]) == ("openvino", "f32", ["tiny.xml", "tiny.bin"])
    assert (meta["classes"], meta["input_size"], meta["model"]) == (10, 32, "resnest14")
    compiled = deploy.load_openvino(xml)
    assert set(conv_precisions(compiled)) == {"f32"}
    np.testing.assert_allclose(deploy.run_openvino(compiled, x), expected, rtol=0, atol=1e-4)
    assert deploy.run_openvino(xml, x[:1]).shape == (1, 10)  # dynamic batch
    in_memory = deploy.compile_openvino(net, (1, 3, 32, 32), "f32")  # the same, through a temporary folder
    np.testing.assert_array_equal(deploy.run_openvino(in_memory, x), deploy.run_openvino(compiled, x))


def test_openvino_sends_no_telemetry_and_starts_no_process(tmp_path):
    """Importing OpenVINO, and its converter, post usage events from processes forked in a thread pool: in a
    process running MXNet's threads such a fork can deadlock (it hung the test suite). In a fresh process,
    an export and a compile through our functions start no process and send nothing."""
    code = (
        "import multiprocessing.process, sys\n"
        "started = []\n"
        "multiprocessing.process.BaseProcess.start = lambda self: started.append(self)\n"
        "import resnest_gluon\n"
        "from resnest_gluon import deploy\n"
        "net = resnest_gluon.get_model('resnest14', classes=4)\n"
        "net.initialize()\n"
        "deploy.export_openvino(net, sys.argv[1], (1, 3, 32, 32), precision='f32')\n"
        "deploy.compile_openvino(net, (1, 3, 32, 32), 'f32')\n"
        "print('started', len(started))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["started", "0"], done.stdout


def test_bad_arguments_say_what_to_do(tmp_path):
    net = resnest_gluon.get_model("resnest14", classes=10)
    net.initialize()
    with pytest.raises(ValueError, match="precision must be one of"):
        deploy.export_openvino(net, str(tmp_path / "x"), (1, 3, 32, 32), precision="fp64")
    with pytest.raises(ValueError, match="needs calib_data"):
        deploy.export_openvino(net, str(tmp_path / "x"), (1, 3, 32, 32), precision="int8")
    with pytest.raises(FileNotFoundError, match="export_openvino"):
        deploy.load_openvino(str(tmp_path / "missing.xml"))
    assert not os.listdir(tmp_path)


def test_bf16_and_int8_keep_the_digits_top1(digits, tmp_path):
    net, x, labels, calib = digits
    fp32 = top1(net(mx.nd.array(x)).asnumpy(), labels)
    assert fp32 > 80, fp32  # a model that learnt, so that a drop would show
    bf16_capable = "BF16" in deploy.openvino_capabilities()
    assert deploy.resolve_precision("auto") == ("bf16" if bf16_capable else "f32")
    for precision in ("bf16", "int8"):
        xml = deploy.export_openvino(
            net, str(tmp_path / precision), (1, 3, 32, 32), precision=precision, calib_data=calib
        )
        compiled = deploy.load_openvino(xml)
        convs = conv_precisions(compiled)
        if precision == "int8":
            assert convs.get("u8", 0) >= sum(convs.values()) - 1, convs  # all but the first convolution
        elif bf16_capable:
            assert set(convs) == {"bf16"}, convs
        got = top1(deploy.run_openvino(compiled, x), labels)
        assert abs(got - fp32) <= 0.5, (precision, got, fp32)
