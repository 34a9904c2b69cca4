"""What a newcomer meets (issue 20): defaults that fit short runs, a demo that deletes nothing of the user's,
one training run's log (warm-up, crop, ETA, summary, no MKLDNN noise, TensorBoard, a failure's reason), the
classifier kept or started fresh, predict --ema, get_model(root=). Each test checks an option's effect.
ResNeSt-14 at 32 px on a few flat-colour records."""

import hashlib
import json
import os
import struct

import cv2
import mxnet as mx
import numpy as np
import pytest

import resnest_gluon
from resnest_gluon.cli import common, demo, predict, train
from resnest_gluon.errors import UserError
from resnest_gluon.training import TrainingError, lr_at
from resnest_gluon.training.loop import plan_steps

CLASSES = 4


def make_rec(prefix, n, size=32):
    """``n`` flat-colour PNG records whose green channel is the class."""
    record = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    for i in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = (100, 30 + 60 * (i % CLASSES), 100)
        record.write_idx(
            i, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(i % CLASSES), i, 0), img, img_fmt=".png")
        )
    record.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux")
    make_rec(str(root / "train"), 32)
    make_rec(str(root / "val"), 12)
    return root


def argv(data, run, *extra):
    return [
        "--ctx", "cpu", "--model", "resnest14", "--classes", str(CLASSES),
        "--rec-train", str(data / "train.rec"), "--rec-val", str(data / "val.rec"),
        "--batch-size", "8", "--lr", "0.1", "--jitter", "0",
        "--lighting", "0", "--data-threads", "1", "--save-dir", str(run), *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- the demo
def test_demo_refuses_a_folder_it_did_not_make_and_replaces_its_own(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="did not make"):
        demo.main(["--out-dir", str(mine)])
    with pytest.raises(UserError, match="did not make"):
        demo.main(["--out", str(mine)])  # the old spelling, same folder
    assert (mine / "my_notes.txt").read_text() == "keep me"
    # one line and status 1 at the command line
    assert common.debug_requested(["--debug"])
    ours = demo.prepare_out_dir(str(tmp_path / "ours"))
    (tmp_path / "ours" / "old_result.txt").write_text("from an earlier demo")
    assert demo.prepare_out_dir(ours) == ours  # its own folder: replaced
    assert sorted(os.listdir(ours)) == [demo.MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert os.listdir(demo.prepare_out_dir(str(empty))) == [demo.MARKER]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        demo.prepare_out_dir(str(tmp_path / "afile"))
    assert demo.parse_args(["--out", "x"]).out_dir == "x"


def test_demo_refusal_is_one_error_line(tmp_path):
    import subprocess
    import sys

    from resnest_gluon import cli

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_notes.txt").write_text("keep me")
    done = subprocess.run(
        cli.command_line("demo") + ["--out-dir", str(mine)],
        env=cli.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: --out-dir") and (mine / "my_notes.txt").exists()
    assert sys.executable  # the child ran with this interpreter (cli.command_line)


# --------------------------------------------------------------------------------- defaults, parsed
def test_warmup_is_cut_for_a_short_run_and_the_rate_peaks(data, tmp_path):
    short = train.parse_args(argv(data, tmp_path, "--epochs", "3"))
    assert short.warmup_epochs == 0.75 and any("warm-up cut from 5 to 0.75" in n for n in short.settled)
    plan = plan_steps(short, 32, 1)  # 4 steps per epoch, 12 in all
    total = short.epochs * plan.steps
    rates = [lr_at(s, plan.peak_lr, plan.warmup_steps, total) for s in range(total)]
    assert max(rates) == pytest.approx(plan.peak_lr, rel=0.01)  # with a 5-epoch warm-up it never would
    five = plan._replace(warmup_steps=5 * plan.updates)
    assert max(lr_at(s, five.peak_lr, five.warmup_steps, total) for s in range(total)) < 0.7 * plan.peak_lr
    long = train.parse_args(argv(data, tmp_path, "--epochs", "270"))
    assert long.warmup_epochs == 5 and not any("warm-up" in n for n in long.settled)
    given = train.parse_args(argv(data, tmp_path, "--epochs", "3", "--warmup-epochs", "2"))
    assert given.warmup_epochs == 2  # what the user asks for is kept


def test_validation_crop_follows_input_size_unless_given(data, tmp_path):
    assert train.parse_args(argv(data, tmp_path, "--input-size", "32")).val_crop_size == 32
    both = train.parse_args(argv(data, tmp_path, "--input-size", "32", "--crop-size", "40"))
    assert both.val_crop_size == 40 and both.input_size == 32
    plain = train.parse_args(argv(data, tmp_path, "--model", "resnest101"))
    assert plain.val_crop_size == 256 and plain.input_size == 224  # the paper's crop, as before
    assert any(
        "validation crop 32 (from --input-size" in n
        for n in train.parse_args(argv(data, tmp_path, "--input-size", "32")).settled
    )


def test_old_spellings_still_work(data, tmp_path):
    args = train.parse_args(argv(data, tmp_path, "--threads", "3", "--no-cuda"))
    assert args.data_threads == 3 and args.ctx == "cpu"
    assert train.parse_args(argv(data, tmp_path)[2:]).ctx == "auto"  # the default, resolved in main


# ------------------------------------------------------------------------------ one run, its log
def read_events(folder):
    """(tag, step, value) of every scalar in the tensorboardX event files of ``folder``."""
    from tensorboardX.proto import event_pb2

    found = []
    for name in sorted(os.listdir(folder)):
        raw = (folder / name).read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, event.step, value.simple_value))
    return found


def test_a_short_run_logs_what_it_chose_its_eta_and_summary(data, tmp_path, capfd):
    run, board = tmp_path / "run", tmp_path / "tb"
    args = argv(
        data, run, "--epochs", "2", "--input-size", "32", "--tensorboard", str(board), "--no-progress"
    )
    del args[args.index("--ctx") : args.index("--ctx") + 2]  # the default, auto
    result = train.main(args)
    assert "--ctx auto: no GPU, on the CPU" in (run / "train.log").read_text()
    assert json.loads((run / "args.json").read_text())["ctx"] == "cpu"
    log = (run / "train.log").read_text()
    saved = json.loads((run / "args.json").read_text())
    assert saved["warmup_epochs"] == 0.5 and saved["val_crop_size"] == 32 and saved["input_size"] == 32
    assert "warm-up cut from 5 to 0.5 epochs" in log and "validation crop 32 (from --input-size" in log
    epoch1 = next(line for line in log.splitlines() if "epoch 1/2" in line)
    assert " ETA " in epoch1 and " ETA " not in next(line for line in log.splitlines() if "epoch 2/2" in line)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"result: val top-1 {last['val_top1']:.2f}% at the last epoch (2)" in log
    assert "chosen on validation" in log and f"best:   val top-1 {result['best_top1']:.2f}%" in log
    size = (run / "resnest14-best.params").stat().st_size
    assert (
        f"resnest14-best.params ({size / 2**20:.1f} MiB)" in log
        and "classes.txt" not in log.split("files to ship")[1]
    )
    assert result["summary"]["ship"][0] == ("resnest14-best.params", size)
    # MXNet's oneDNN pooling notes were held back; nothing else was; no progress bars (--no-progress)
    err = capfd.readouterr().err
    assert "prop_kind is forward_scoring" not in err and "epoch 1/2" in err
    assert "%|" not in err and "validation 1" not in err
    # TensorBoard: the loss and rate of each of the 2 x 4 steps, every figure of each epoch
    scalars = read_events(board)
    steps = [(s, v) for t, s, v in scalars if t == "train/loss"]
    assert [s for s, _ in steps] == list(range(1, 9)) and all(np.isfinite(v) for _, v in steps)
    tops = {s: v for t, s, v in scalars if t == "epoch/val_top1"}
    assert tops[2] == pytest.approx(last["val_top1"]) and sorted(tops) == [1, 2]
    lrs = [v for t, s, v in scalars if t == "train/lr"]
    assert lrs[0] < max(lrs)  # the warm-up: the rate rises from the first step


def test_progress_bars_for_training_and_validation(data, tmp_path, capfd):
    train.main(argv(data, tmp_path / "run", "--epochs", "1", "--input-size", "32", "--progress"))
    err = capfd.readouterr().err
    assert "epoch 1/1:" in err and "validation 1:" in err and "%|" in err


def test_help_in_groups_each_default_once_required_marked(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for group in (
        "data:",
        "model:",
        "optimisation:",
        "regularisation",
        "fine-tuning",
        "distributed",
        "output:",
    ):
        assert f"\n{group}" in text, group
    assert "(default: None)" not in text and text.count("(default: runs/<model>)") == 1
    assert "(required)" in text.split("--rec-train REC_TRAIN", 2)[2].split("\n  --")[0]
    assert "--threads" not in text and "--no-cuda" not in text  # old spellings work, unlisted
    from resnest_gluon.cli import verify

    with pytest.raises(SystemExit):
        verify.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--run DIR" in text and "(default: None)" not in text and "--data-threads" in text


def test_a_failed_run_writes_its_reason_into_train_log(data, tmp_path, capfd):
    run = tmp_path / "run"
    args = argv(data, run, "--epochs", "1", "--input-size", "32")
    args[args.index("--classes") + 1] = "3"  # the labels go to 3
    with pytest.raises(TrainingError, match="outside"):
        train.main(args)
    log = (run / "train.log").read_text()
    assert "ERROR the run stopped:" in log and "outside" in log
    assert "the run stopped" not in capfd.readouterr().err  # the console gets cli.run's one error line


def test_tensorboard_without_tensorboardx_is_one_clear_error(data, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tbx(name, *a, **kw):
        if name.startswith("tensorboardX"):
            raise ImportError("no tensorboardX")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tbx)
    with pytest.raises(TrainingError, match="pip install tensorboardx"):
        train.check_args(train.parse_args(argv(data, tmp_path, "--tensorboard", str(tmp_path / "tb"))))


# ------------------------------------------------------------------------- the classifier: kept or fresh
@pytest.fixture
def source_run(tmp_path):
    """A run directory with a 4-class resnest14 and its class names."""
    net = resnest_gluon.get_model("resnest14", classes=CLASSES)
    net.initialize(mx.init.Xavier(magnitude=2))
    run = tmp_path / "source"
    run.mkdir()
    net.save_parameters(str(run / "resnest14-best.params"))
    (run / "classes.txt").write_text("cat\ndog\nfox\nowl\n")
    return run, net


@pytest.mark.parametrize(
    "names, flags, kept",
    [
        (["cat", "dog", "fox", "owl"], [], True),  # same classes: the head is kept
        (["ant", "bee", "cow", "elk"], [], False),  # other classes, same count: a fresh head
        (None, [], True),  # this run has no names: the count decides
        (["cat", "dog", "fox", "owl"], ["--reset-classifier"], False),
    ],
)
def test_classifier_is_kept_only_for_the_same_classes(source_run, data, tmp_path, names, flags, kept, caplog):
    run, source = source_run
    args = train.parse_args(
        argv(data, tmp_path / "new", "--pretrained", str(run / "resnest14-best.params"), *flags)
    )
    net = resnest_gluon.get_model("resnest14", classes=CLASSES)
    net.initialize(mx.init.Xavier(magnitude=2))
    fresh = net.fc.weight.data().asnumpy().copy()
    with caplog.at_level("INFO", logger="resnest_gluon"):
        train.prepare_finetune(net, args, mx.cpu(), load=True, class_names=names)
    loaded = net.fc.weight.data().asnumpy()
    np.testing.assert_array_equal(
        net.layer1[0].conv1.weight.data().asnumpy(), source.layer1[0].conv1.weight.data().asnumpy()
    )
    if kept:
        np.testing.assert_array_equal(loaded, source.fc.weight.data().asnumpy())
    else:
        np.testing.assert_array_equal(loaded, fresh)
        assert "starts fresh" in caplog.text
        assert ("--reset-classifier" if flags else "label 0: 'cat' there, 'ant' here") in caplog.text


# ---------------------------------------------------------------------------------------- predict --ema
def test_predict_ema_uses_the_ema_weights(tmp_path):
    """A run whose best and EMA weights differ: --ema must give the EMA file's probabilities, not the
    live ones (the same images, the same crop)."""
    run = tmp_path / "run"
    run.mkdir()
    nets = {}
    for name, seed in (("resnest14-best.params", 1), ("resnest14-ema-best.params", 2)):
        mx.random.seed(seed)
        net = resnest_gluon.get_model("resnest14", classes=3)
        net.initialize(mx.init.Xavier(magnitude=3))
        net.save_parameters(str(run / name))
        nets[name] = net
    (run / "args.json").write_text(json.dumps(dict(model="resnest14", classes=3, val_crop_size=32)))
    (run / "classes.txt").write_text("a\nb\nc\n")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), rng.randint(0, 256, (32, 32, 3)).astype(np.uint8))

    def probs(*extra):
        out = tmp_path / "p.json"
        source = [] if "--params" in extra else ["--run", str(run)]
        predict.main([str(images), *source, "--top-k", "3", "--quiet", "--out", str(out), *extra])
        rows = json.loads(out.read_text())
        return np.array([[dict(zip(r["names"], r["probs"]))[c] for c in "abc"] for r in rows])

    live, ema = probs(), probs("--ema")
    assert np.abs(live - ema).max() > 1e-3  # ignoring --ema would make them equal
    # each equals the same pipeline given that file alone
    names = [
        "--model",
        "resnest14",
        "--classes",
        "3",
        "--class-names",
        str(run / "classes.txt"),
        "--crop-size",
        "32",
    ]
    for name, got in (("resnest14-best.params", live), ("resnest14-ema-best.params", ema)):
        want = probs("--params", str(run / name), *names)
        np.testing.assert_allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------------------- get_model(root=...)
def test_get_model_root_is_read_when_the_file_is_only_there(tmp_path, monkeypatch):
    from resnest_gluon.models import pretrained

    net = resnest_gluon.get_model("resnest14")
    net.initialize(mx.init.Xavier(magnitude=2))
    path = tmp_path / "w.params"
    net.save_parameters(str(path))
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    monkeypatch.setitem(pretrained.SHA1, "resnest14", sha1)
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    other.mkdir()
    monkeypatch.setenv("RESNEST_GLUON_HOME", str(home))  # the file is not here
    (other / f"resnest14-{sha1[:8]}.params").write_bytes(path.read_bytes())
    x = mx.nd.array(np.random.RandomState(0).uniform(size=(1, 3, 32, 32)))
    loaded = resnest_gluon.get_model("resnest14", pretrained=True, root=str(other))
    np.testing.assert_allclose(loaded(x).asnumpy(), net(x).asnumpy(), rtol=1e-6)
    with pytest.raises(FileNotFoundError):
        resnest_gluon.get_model("resnest14", pretrained=True)  # without root=, $RESNEST_GLUON_HOME only
