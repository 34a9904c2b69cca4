"""Fine-tuning in scripts/train.py (--pretrained, --backbone-lr-mult, --freeze-stages, --class-names), the
EMA, --keep-best, --accumulate and scripts/average_checkpoints.py. ResNeSt-14 at 32 px throughout."""

import importlib
import json
import os
import sys

import mxnet as mx
import numpy as np
import pytest
from workers import horovodrun, report

import resnest_gluon
from resnest_gluon import cli
from resnest_gluon.training import TrainingError, read_metrics, save_params, saved_epochs
from resnest_gluon.training.ema import EMA
from resnest_gluon.training.finetune import freeze_stages, load_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    return importlib.import_module(f"resnest_gluon.cli.{name}")


train, demo, average_checkpoints, verify = (
    load_script(n) for n in ("train", "demo", "average_checkpoints", "verify")
)


def digits_rec(prefix, indices, labels, size=32):
    """Records of scikit-learn digits (PNG, exact pixels) with the given labels."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data
    record = mx.recordio.MXIndexedRecordIO(str(prefix) + ".idx", str(prefix) + ".rec", "w")
    for key, (i, label) in enumerate(zip(indices, labels)):
        header = mx.recordio.IRHeader(0, float(label), key, 0)
        record.write_idx(key, mx.recordio.pack_img(header, demo.digit_image(pixels[i], size), img_fmt=".png"))
    record.close()
    return str(prefix) + ".rec"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Task A: digits 0-5 (6 classes, 400 training images). Task B: digits 6-9 (4 classes) with 10
    labelled images per class, validated on 160 others."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    target = load_digits().target
    order = np.random.RandomState(0).permutation(len(target))
    a = [i for i in order if target[i] < 6]
    b = [i for i in order if target[i] >= 6]
    few = [i for c in range(6, 10) for i in [j for j in b if target[j] == c][:10]]
    rest = [i for i in b if i not in few][:160]
    paths = dict(
        a_train=digits_rec(root / "a_train", a[:400], target[a[:400]]),
        a_val=digits_rec(root / "a_val", a[400:500], target[a[400:500]]),
        b_train=digits_rec(root / "b_train", few, target[few] - 6),
        b_val=digits_rec(root / "b_val", rest, target[rest] - 6),
    )
    (root / "b_train.classes.txt").write_text("".join(f"digit {c}\n" for c in range(6, 10)))
    return root, paths


COMMON = [
    "--ctx", "cpu", "--model", "resnest14", "--input-size", "32", "--crop-size", "32", "--jitter", "0",
    "--lighting", "0", "--no-mirror", "--min-area", "0.35", "--data-threads", "1", "--no-wd",
    "--warmup-epochs", "0",
]  # fmt: skip


def task_args(paths, task, classes, save_dir, *extra):
    return COMMON + [
        "--classes", str(classes), "--rec-train", paths[f"{task}_train"], "--rec-val", paths[f"{task}_val"],
        "--save-dir", str(save_dir), *map(str, extra),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tasks):
    """A ResNeSt-14 trained on task A (4 epochs): its best checkpoint."""
    root, paths = tasks
    result = train.main(
        task_args(paths, "a", 6, root / "pre", "--epochs", 4, "--batch-size", 16, "--lr", 0.4, "--last-gamma")
    )
    assert result["best_top1"] > 80, result
    return str(root / "pre" / "resnest14-best.params")


# ------------------------------------------------------------------------------------- transfer is real
def test_fine_tuning_beats_training_from_scratch(tasks, pretrained, tmp_path, caplog):
    """Same data, seed, epochs and rate; the only difference is --pretrained (task A's checkpoint)."""
    _, paths = tasks
    run = ["--epochs", 5, "--batch-size", 10, "--lr", 0.4, "--seed", 1]
    with caplog.at_level("INFO", logger="resnest_gluon"):
        tuned = train.main(task_args(paths, "b", 4, tmp_path / "ft", *run, "--pretrained", pretrained))
    assert "classifier (6 classes) replaced by a fresh one for 4" in caplog.text
    scratch = train.main(task_args(paths, "b", 4, tmp_path / "scratch", *run))
    print(f"\nfine-tuned val top-1 {tuned['val_top1']:.1f}%, from scratch {scratch['val_top1']:.1f}%")
    assert tuned["val_top1"] >= scratch["val_top1"] + 25, (tuned["val_top1"], scratch["val_top1"])
    # the class names beside the training .rec travel into the run directory
    assert (tmp_path / "ft" / "classes.txt").read_text().splitlines() == [f"digit {c}" for c in range(6, 10)]
    saved = json.loads((tmp_path / "ft" / "args.json").read_text())
    assert saved["pretrained"] == pretrained and saved["class_names"].endswith("b_train.classes.txt")


# ------------------------------------------------------------------------------------- load_backbone
def fresh(classes, model="resnest14"):
    net = resnest_gluon.get_model(model, classes=classes)
    net.initialize(mx.init.Xavier())
    return net


def test_load_backbone_keeps_or_replaces_the_classifier(tmp_path):
    source = fresh(6)
    path = str(tmp_path / "six.params")
    save_params(source, path)
    same, other = fresh(6), fresh(4)
    fc_before = other.fc.weight.data().copy()
    assert load_backbone(same, "resnest14", path)["classifier"] == "loaded"
    info = load_backbone(other, "resnest14", path)
    assert info["classifier"] == "replaced" and info["file_classes"] == 6
    src = source._collect_params_with_prefix()
    for net in (same, other):
        for key, param in net._collect_params_with_prefix().items():
            if not key.startswith("fc.") or net is same:
                np.testing.assert_array_equal(param.data().asnumpy(), src[key].data().asnumpy(), err_msg=key)
    np.testing.assert_array_equal(other.fc.weight.data().asnumpy(), fc_before.asnumpy())


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """48 training / 20 validation digit records, 4 classes."""
    root = tmp_path_factory.mktemp("small")
    labels = np.arange(200) % 10
    keep = np.flatnonzero(labels < 4)
    digits_rec(root / "train", keep[:48], labels[keep[:48]])
    digits_rec(root / "val", keep[48:68], labels[keep[48:68]])
    return dict(train=str(root / "train.rec"), val=str(root / "val.rec"), root=root)


def small_args(data, save_dir, *extra):
    return COMMON + [
        "--classes", "4", "--rec-train", data["train"], "--rec-val", data["val"], "--batch-size", "8",
        "--lr", "0.2", "--save-dir", str(save_dir), *map(str, extra),
    ]  # fmt: skip


def test_pretrained_errors(small_data, tmp_path, monkeypatch):
    # a file of another architecture names the first mismatching key and shape
    other = str(tmp_path / "resnest26.params")
    save_params(fresh(4, "resnest26"), other)
    with pytest.raises(TrainingError, match=r"does not fit resnest14: .*(missing|has|shape)"):
        train.main(small_args(small_data, tmp_path / "a", "--epochs", 1, "--pretrained", other))
    # truncated and garbage files
    good = str(tmp_path / "good.params")
    save_params(fresh(4), good)
    truncated = tmp_path / "truncated.params"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    garbage = tmp_path / "garbage.params"
    garbage.write_bytes(os.urandom(3000))
    for bad in (truncated, garbage):
        with pytest.raises(TrainingError, match="not a readable MXNet .params file"):
            train.main(small_args(small_data, tmp_path / bad.stem, "--epochs", 1, "--pretrained", bad))
    # a missing file is an argument error, before any data is read
    with pytest.raises(TrainingError, match="does not exist"):
        train.check_args(
            train.parse_args(small_args(small_data, tmp_path / "m", "--pretrained", "nope.params"))
        )
    # the published file not on disk: where to put it, where it is published
    monkeypatch.setenv("RESNEST_GLUON_HOME", str(tmp_path / "models"))
    argv = small_args(small_data, tmp_path / "p", "--epochs", 1, "--pretrained")
    argv[argv.index("resnest14")] = "resnest50"
    with pytest.raises(
        TrainingError, match=r"not found at .*models.*github.com/zhanghang1989/ResNeSt/releases"
    ):
        train.main(argv)
    # a model without published weights (resnetd50, the paper's baseline; resnest14's are published)
    argv = small_args(small_data, tmp_path / "q", "--epochs", 1, "--pretrained")
    argv[argv.index("resnest14")] = "resnetd50"
    with pytest.raises(TrainingError, match="no published weights for 'resnetd50'"):
        train.main(argv)


@pytest.mark.parametrize("stages", ["-1", "5"])
def test_freeze_stages_out_of_range(small_data, tmp_path, stages):
    with pytest.raises(TrainingError, match=r"--freeze-stages .* out of range: resnest14 has 4 stages"):
        train.check_args(train.parse_args(small_args(small_data, tmp_path, "--freeze-stages", stages)))
    with pytest.raises(ValueError, match="between 0"):
        freeze_stages(fresh(4), int(stages))


def test_class_names_count_must_match(small_data, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    with pytest.raises(TrainingError, match="names 3 classes but --classes is 4"):
        train.main(small_args(small_data, tmp_path / "run", "--epochs", 1, "--class-names", names))


def test_frozen_stages_and_fixed_backbone_do_not_change(small_data, tmp_path):
    start = str(tmp_path / "start.params")
    save_params(fresh(4), start)
    before = {k: v.asnumpy() for k, v in mx.nd.load(start).items()}
    train.main(
        small_args(
            small_data, tmp_path / "frozen", "--epochs", 1, "--pretrained", start, "--freeze-stages", 2
        )
    )
    after = {
        k: v.asnumpy() for k, v in mx.nd.load(str(tmp_path / "frozen" / "resnest14-0001.params")).items()
    }
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for key in before:
        same = np.array_equal(before[key], after[key])
        if key.startswith(frozen):  # weights and BatchNorm statistics alike
            assert same, key
        elif key.startswith(("layer4.", "fc.")) and not key.endswith(("running_var", "running_mean")):
            assert not same, key
    train.main(
        small_args(
            small_data, tmp_path / "fixed", "--epochs", 1, "--pretrained", start, "--backbone-lr-mult", 0
        )
    )
    after = {k: v.asnumpy() for k, v in mx.nd.load(str(tmp_path / "fixed" / "resnest14-0001.params")).items()}
    for key in before:
        if not key.endswith(("running_var", "running_mean")):  # statistics still follow the data
            assert np.array_equal(before[key], after[key]) != key.startswith("fc."), key


# ------------------------------------------------------------------------------------- EMA
def test_ema_bias_correction_and_swap():
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    ema = EMA(net, 0.9)
    history = []
    for step in range(5):
        net.weight.set_data(mx.nd.full((2, 3), float(step + 1)))
        ema.update()
        history.append(step + 1.0)
    # the bias-corrected average: sum d^(t-i) (1-d) w_i / (1 - d^t)
    weights = np.array([0.9 ** (4 - i) for i in range(5)]) * 0.1
    expected = (weights * history).sum() / (1 - 0.9**5)
    np.testing.assert_allclose(ema.shadow["weight"].asnumpy(), expected, rtol=1e-6)
    with ema.applied():
        np.testing.assert_allclose(net.weight.data().asnumpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(net.weight.data().asnumpy(), 5.0)
    first = EMA(net, 0.999)
    first.update()  # the first update copies the weights, whatever the decay
    np.testing.assert_array_equal(first.shadow["weight"].asnumpy(), 5.0)


def test_ema_restores_from_its_file(tmp_path):
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    ema = EMA(net, 0.9)
    for value in (1.0, 3.0):
        net.weight.set_data(mx.nd.full((2, 3), value))
        ema.update()
    with ema.applied():
        save_params(net, str(tmp_path / "ema.params"))
    restored = EMA(net, 0.9)
    restored.load(str(tmp_path / "ema.params"), ema.updates)
    net.weight.set_data(mx.nd.full((2, 3), 7.0))
    restored.update()
    ema.update()  # the same next step: the same average and the same bias correction
    np.testing.assert_allclose(restored.shadow["weight"].asnumpy(), ema.shadow["weight"].asnumpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="not this model's EMA file"):
        EMA(fresh(4), 0.9).load(str(tmp_path / "ema.params"), 2)


def test_ema_keep_best_accumulate_resume_and_average(small_data, tmp_path):
    start = str(tmp_path / "start.params")
    save_params(fresh(4), start)
    run = tmp_path / "run"

    def argv(epochs):
        return small_args(
            small_data, run, "--epochs", epochs, "--pretrained", start, "--ema", 0.9, "--keep", 1,
            "--keep-best", 2, "--accumulate", 2,
        )  # fmt: skip

    train.main(argv(3))
    saved = json.loads((run / "args.json").read_text())
    assert saved["steps_per_epoch"] == 6 and saved["updates_per_epoch"] == 3 and saved["update_batch"] == 16
    assert saved["peak_lr"] == pytest.approx(0.2 * 16 / 256)
    os.remove(start)  # a resumed fine-tuning run must not need (or apply) the pretrained file again
    result = train.main(argv(4) + ["--resume"])
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert all(r["val_top1_ema"] is not None and r["val_top5_ema"] is not None for r in rows)
    assert result["best_top1_ema"] == max(r["val_top1_ema"] for r in rows)
    for name in ("resnest14-ema.params", "resnest14-ema-best.params", "resnest14-0004-ema.params"):
        assert (run / name).exists(), name
    # the last checkpoint and the 2 best by val top-1 stay, each with its EMA file
    best = sorted(rows, key=lambda r: (-r["val_top1"], r["epoch"]))[:2]
    kept = sorted({4} | {r["epoch"] for r in best})
    assert saved_epochs(str(run), "resnest14") == kept
    assert sorted(n for n in os.listdir(run) if n.endswith("-ema.params") and n[10:14].isdigit()) == [
        f"resnest14-{e:04d}-ema.params" for e in kept
    ]
    # the average of the 2 best checkpoints: the mean of their arrays, scored by verify.py
    out = str(tmp_path / "avg.params")
    avg = average_checkpoints.main([str(run), "--best", "2", "--out", out])
    assert sorted(avg["epochs"]) == sorted(r["epoch"] for r in best)
    files = [mx.nd.load(str(run / f"resnest14-{e:04d}.params")) for e in avg["epochs"]]
    averaged = mx.nd.load(out)
    for key in ("fc.weight", "layer4.0.bn3.running_mean"):
        np.testing.assert_allclose(
            averaged[key].asnumpy(), (files[0][key] + files[1][key]).asnumpy() / 2, rtol=1e-5
        )
    scored = verify.main(
        [
            "--model",
            "resnest14",
            "--classes",
            "4",
            "--rec-val",
            small_data["val"],
            "--params",
            out,
            "--crop-size",
            "32",
            "--batch-size",
            "8",
        ]
    )
    assert scored["images"] == 20
    with pytest.raises(TrainingError, match="fewer than --best 5"):
        average_checkpoints.main([str(run), "--best", "5", "--out", out])


def test_ema_on_two_workers_matches_and_rank0_weights_are_broadcast(small_data, tmp_path):
    """--lr 0 with every BatchNorm frozen: the model stays the pretrained file, so two workers validate it
    exactly as one process does only if rank 1 got rank 0's weights."""
    start = str(tmp_path / "start.params")
    reference = tmp_path / "ref"
    train.main(small_args(small_data, reference, "--epochs", 2))
    os.replace(reference / "resnest14-best.params", start)
    single = verify.main(
        [
            "--model",
            "resnest14",
            "--classes",
            "4",
            "--rec-val",
            small_data["val"],
            "--params",
            start,
            "--crop-size",
            "32",
            "--batch-size",
            "8",
        ]
    )
    run = tmp_path / "hvd"
    argv = small_args(
        small_data, run, "--epochs", 1, "--pretrained", start, "--freeze-stages", 4, "--ema", 0.5
    )
    argv[argv.index("--lr") + 1] = "0"
    env = cli.child_env(dict(os.environ, OMP_NUM_THREADS="1"))  # the workers import this checkout
    proc = horovodrun(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), *argv], env=env, timeout=300
    )
    assert proc.returncode == 0, report(proc)
    (row,) = read_metrics(str(run / "metrics.jsonl"))
    assert row["workers"] == 2
    assert row["val_top1"] == pytest.approx(single["top1"]) and row["val_top1_ema"] == pytest.approx(
        single["top1"]
    )


def test_accumulated_gradients_are_the_sum_in_a_static_graph():
    """--accumulate relies on grad_req='add' in a hybridized static_alloc graph: the gradient after two
    backward passes is the sum of the two batches' gradients."""
    x1, x2 = mx.nd.random.uniform(shape=(2, 3, 32, 32)), mx.nd.random.uniform(shape=(2, 3, 32, 32))
    nets = [fresh(4), fresh(4)]
    for key, param in nets[1]._collect_params_with_prefix().items():
        param.set_data(nets[0]._collect_params_with_prefix()[key].data())
    for req, net in zip(("write", "add"), nets):
        for param in net.collect_params().values():
            if param.grad_req != "null":
                param.grad_req = req
        net.hybridize(static_alloc=True, static_shape=True)
    summed = {}
    for x in (x1, x2):  # write: one batch at a time
        with mx.autograd.record():
            nets[0](x).sum().backward()
        for key, param in nets[0]._collect_params_with_prefix().items():
            if param.grad_req != "null":
                summed[key] = summed.get(key, 0) + param.grad().asnumpy()
    for x in (x1, x2):
        with mx.autograd.record():
            nets[1](x).sum().backward()
    grads = {
        k: p.grad().asnumpy()
        for k, p in nets[1]._collect_params_with_prefix().items()
        if p.grad_req != "null"
    }
    for key in ("conv1.0.weight", "layer4.0.conv3.weight", "fc.weight"):
        np.testing.assert_allclose(grads[key], summed[key], rtol=1e-4, atol=1e-5, err_msg=key)
