"""scripts/verify.py: counts every image once (one process or two Horovod workers), writes JSON, and fails
clearly on bad input. ResNeSt-14 at 32 px on a tiny validation .rec."""

import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import resnest_gluon
from resnest_gluon.training import TrainingError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
VERIFY = os.path.join(REPO, "scripts", "verify.py")


def load_verify():
    from resnest_gluon.cli import verify

    return verify


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """41 random-noise images with random labels (an odd count: padded last batches), and random weights."""
    root = tmp_path_factory.mktemp("verify")
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 10, 41)
    record = mx.recordio.MXIndexedRecordIO(str(root / "val.idx"), str(root / "val.rec"), "w")
    for i, label in enumerate(labels):
        img = rng.randint(0, 256, (40, 40, 3)).astype(np.uint8)
        record.write_idx(
            i, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(label), i, 0), img, img_fmt=".png")
        )
    record.close()
    net = resnest_gluon.get_model("resnest14", classes=10)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.save_parameters(str(root / "net.params"))
    return root


def argv(root, *extra):
    return [
        "--model", "resnest14", "--classes", "10", "--rec-val", str(root / "val.rec"),
        "--params", str(root / "net.params"), "--crop-size", "32", *extra,
    ]  # fmt: skip


def reference_counts(root):
    """Top-1/top-5 hits computed directly, image by image, without the script's batching and padding."""
    from resnest_gluon.data import val_iter

    net = resnest_gluon.get_model("resnest14", classes=10)
    net.load_parameters(str(root / "net.params"))
    top1 = top5 = n = 0
    for batch in val_iter(str(root / "val.rec"), 1, 32, threads=1):
        scores = net(batch.data[0].as_in_context(mx.cpu())).asnumpy()[0]
        label = int(batch.label[0].asnumpy()[0])
        order = np.argsort(-scores)
        top1 += order[0] == label
        top5 += label in order[:5]
        n += 1
    return 100.0 * top1 / n, 100.0 * top5 / n, n


def test_one_process_matches_reference_and_writes_json(setup, tmp_path):
    out = tmp_path / "out.json"
    result = load_verify().main(argv(setup, "--batch-size", "8", "--json", str(out)))
    top1, top5, n = reference_counts(setup)
    assert result["images"] == n == 41
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["images_per_sec"] > 0 and result["crop_size"] == 32
    assert json.loads(out.read_text())["top1"] == pytest.approx(top1)


def test_two_workers_sum_to_the_same_counts(setup, tmp_path):
    single = load_verify().main(argv(setup, "--batch-size", "8"))
    out = tmp_path / "hvd.json"
    cmd = [HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable, VERIFY]
    cmd += argv(setup, "--batch-size", "8", "--json", str(out), "--threads", "1")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    both = json.loads(out.read_text())
    assert both["workers"] == 2 and both["images"] == 41
    assert both["top1"] == pytest.approx(single["top1"]) and both["top5"] == pytest.approx(single["top5"])


def test_paper_crop_size_is_the_default():
    args = load_verify().parse_args(["--model", "resnest269", "--rec-val", "v.rec", "--pretrained"])
    assert args.crop_size is None and resnest_gluon.model_info("resnest269")["crop_size"] == 416


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "resnest15"], r"unknown model 'resnest15'; choose one of"),
        (["--params", "/nonexistent.params"], r"/nonexistent.params does not exist"),
        (["--rec-val", "/nonexistent/val.rec"], r"val.rec"),
        (["--classes", "5"], r"outside 0..4 for --classes 5"),
    ],
)
def test_errors(setup, change, message):
    args = argv(setup)
    for i in range(0, len(change), 2):
        args[args.index(change[i]) + 1] = change[i + 1]
    with pytest.raises(TrainingError, match=message):
        load_verify().main(args)


def test_params_of_another_model_are_refused(setup, tmp_path):
    other = resnest_gluon.get_model("resnest14", classes=7)
    other.initialize()
    other.save_parameters(str(tmp_path / "other.params"))
    args = argv(setup)
    args[args.index("--params") + 1] = str(tmp_path / "other.params")
    with pytest.raises(TrainingError, match=r"does not fit resnest14.*--classes"):
        load_verify().main(args)


def test_openvino_backend_matches_the_reference(setup):
    verify = load_verify()
    result = verify.main(argv(setup, "--batch-size", "8", "--backend", "openvino", "--precision", "f32"))
    top1, top5, n = reference_counts(setup)
    assert result["images"] == n and result["backend"] == "openvino" and result["precision"] == "f32"
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    rec = str(setup / "val.rec")
    result = verify.main(argv(setup, "--backend", "openvino", "--precision", "int8", "--rec-calib", rec))
    assert result["precision"] == "int8" and result["images"] == n
    with pytest.raises(TrainingError, match="needs --rec-calib"):
        verify.main(argv(setup, "--backend", "openvino", "--precision", "int8"))
    with pytest.raises(TrainingError, match="runs on the CPU"):
        verify.main(argv(setup, "--backend", "openvino", "--ctx", "gpu"))
