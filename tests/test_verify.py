"""scripts/verify.py: counts every image once (one process or two Horovod workers), writes JSON, and fails
clearly on bad input. ResNeSt-14 at 32 px on a tiny validation .rec."""

import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from workers import horovodrun, report

import resnest_gluon
from resnest_gluon import cli
from resnest_gluon.training import TrainingError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def reference_counts(root, crop=32):
    """Top-1/top-5 hits computed directly, image by image, without the script's batching and padding."""
    from resnest_gluon.data import val_iter

    net = resnest_gluon.get_model("resnest14", classes=10)
    net.load_parameters(str(root / "net.params"))
    top1 = top5 = n = 0
    for batch in val_iter(str(root / "val.rec"), 1, crop, threads=1):
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
    cmd = [sys.executable, VERIFY] + argv(
        setup, "--batch-size", "8", "--json", str(out), "--data-threads", "1"
    )
    # the workers import this checkout's resnest_gluon, whatever is installed
    env = cli.child_env(dict(os.environ, OMP_NUM_THREADS="1"))
    proc = horovodrun(cmd, timeout=180, env=env)
    assert proc.returncode == 0, report(proc)
    both = json.loads(out.read_text())
    assert both["workers"] == 2 and both["images"] == 41
    assert both["top1"] == pytest.approx(single["top1"]) and both["top5"] == pytest.approx(single["top5"])


def test_paper_crop_size_is_the_default(setup, monkeypatch):
    """Without --crop-size, verify.main scores at the model's paper crop: here resnest14's made 48 px (not
    224, not the 40 px of the images), and the top-1/top-5 equal the reference at 48 px."""
    args = load_verify().parse_args(["--model", "resnest269", "--rec-val", "v.rec", "--pretrained"])
    assert args.crop_size is None and resnest_gluon.model_info("resnest269")["crop_size"] == 416
    real = resnest_gluon.model_info
    monkeypatch.setattr(resnest_gluon, "model_info", lambda name: dict(real(name), crop_size=48))
    plain = argv(setup, "--batch-size", "8")
    del plain[plain.index("--crop-size") : plain.index("--crop-size") + 2]
    result = load_verify().main(plain)
    top1, top5, n = reference_counts(setup, crop=48)
    assert result["crop_size"] == 48 and result["images"] == n
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)


def make_run(setup, tmp_path, names="abcdefghij"):
    """A run directory as scripts/train.py leaves it: args.json (val crop 32), classes.txt, best weights."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(setup / "net.params", run / "resnest14-best.params")
    (run / "args.json").write_text(json.dumps(dict(model="resnest14", classes=10, val_crop_size=32)))
    (run / "classes.txt").write_text("\n".join(names) + "\n")
    return run


def test_run_gives_model_classes_crop_and_checkpoint(setup, tmp_path):
    verify = load_verify()
    run = make_run(setup, tmp_path)
    result = verify.main(["--run", str(run), "--rec-val", str(setup / "val.rec"), "--batch-size", "8"])
    top1, top5, n = reference_counts(setup)  # at 32 px: the run's crop, not resnest14's 224
    assert result["crop_size"] == 32 and result["classes"] == 10 and result["images"] == n
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["params"] == str(run / "resnest14-best.params") and result["class_names"] == list(
        "abcdefghij"
    )
    with pytest.raises(TrainingError, match="--classes 7 but the run"):
        verify.main(["--run", str(run), "--rec-val", str(setup / "val.rec"), "--classes", "7"])


def test_run_refuses_records_of_other_classes(setup, tmp_path):
    run = make_run(setup, tmp_path)
    rec = tmp_path / "data" / "val.rec"
    rec.parent.mkdir()
    for suffix in (".rec", ".idx"):
        shutil.copy(setup / f"val{suffix}", rec.with_suffix(suffix))
    (rec.parent / "val.classes.txt").write_text("\n".join("abcdefghiz") + "\n")
    with pytest.raises(TrainingError, match="not the classes of --rec-val.*label 9"):
        load_verify().main(["--run", str(run), "--rec-val", str(rec)])


def test_pretrained_without_the_weights_is_one_error_line(setup, tmp_path):
    env = cli.child_env(dict(os.environ, RESNEST_GLUON_HOME=str(tmp_path), OMP_NUM_THREADS="1"))
    cmd = cli.command_line("verify") + [
        "--model",
        "resnest50",
        "--rec-val",
        str(setup / "val.rec"),
        "--pretrained",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --pretrained:") and "Traceback" not in done.stderr
    assert [line for line in lines if "error" in line.lower()] == lines[-1:]
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=180, env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


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


def test_an_exported_graph_is_scored_from_its_metadata_alone(setup, tmp_path):
    from resnest_gluon import deploy

    net = resnest_gluon.get_model("resnest14", classes=10)
    net.load_parameters(str(setup / "net.params"))
    prefix = str(tmp_path / "exported")
    deploy.export(net, prefix, (1, 3, 32, 32))  # the .meta.json says resnest14, 10 classes, crop 32
    verify = load_verify()
    result = verify.main(["--symbol", prefix, "--rec-val", str(setup / "val.rec"), "--batch-size", "8"])
    top1, top5, n = reference_counts(setup)
    assert (result["model"], result["classes"], result["crop_size"], result["images"]) == (
        "resnest14",
        10,
        32,
        n,
    )
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    os.remove(deploy.meta_path(prefix))
    with pytest.raises(TrainingError, match="no .*exported.meta.json"):
        verify.main(["--symbol", prefix, "--rec-val", str(setup / "val.rec")])
