"""scripts/train.py and scripts/demo.py end to end on tiny RecordIO files: one process and two Horovod
workers, resume after SIGKILL, and every early error. ResNeSt-14 at 32 px, a few steps per run."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from workers import horovodrun, report

from resnest_gluon import cli
from resnest_gluon.data import MEAN, STD
from resnest_gluon.training import TrainingError, drop_prob_at, latest_checkpoint, lr_at, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")

CLASSES = 4


def load_script(name):
    return importlib.import_module(f"resnest_gluon.cli.{name}")


train = load_script("train")


def make_rec(prefix, n, classes=CLASSES, labels=None, size=32):
    """``n`` flat-colour PNG records: green = class (learnable), red and blue = record number (traceable
    through crops and flips; PNG keeps it exact). Returns the labels."""
    labels = np.arange(n) % classes if labels is None else np.asarray(labels)
    record = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    for i in range(n):
        green = 30 + (200 * (int(labels[i]) % classes)) // max(classes - 1, 1)
        img = np.empty((size, size, 3), np.uint8)
        img[:] = (4 * i + 2, green, 4 * i + 2)  # BGR
        header = mx.recordio.IRHeader(0, float(labels[i]), i, 0)
        record.write_idx(i, mx.recordio.pack_img(header, img, img_fmt=".png"))
    record.close()
    return labels


def record_number(data):
    """Inverse of make_rec's red channel for a normalised (B, 3, H, W) batch."""
    red = data[:, 0].mean(axis=(1, 2)) * STD[0] + MEAN[0]
    return np.round((red - 2) / 4).astype(int)


def base_args(tmp_path, **kw):
    args = dict(
        model="resnest14",
        classes=CLASSES,
        rec_train=str(tmp_path / "train.rec"),
        rec_val=str(tmp_path / "val.rec"),
        input_size=32,
        crop_size=32,
        epochs=3,
        batch_size=8,
        lr=0.2,
        warmup_epochs=0,
        jitter=0,
        lighting=0,
        data_threads=1,
        save_dir=str(tmp_path / "run"),
        ctx="cpu",
    )
    args.update(kw)
    argv = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_rec(str(root / "train"), 64)
    # validation: a third of the labels are wrong on purpose, so accuracy is neither 0 nor 100 %, and 37
    # images leave padded batches to exclude
    labels = np.arange(37) % CLASSES
    labels[::3] = (labels[::3] + 1) % CLASSES
    rec = root / "val"
    record = mx.recordio.MXIndexedRecordIO(str(rec) + ".idx", str(rec) + ".rec", "w")
    for i in range(37):
        green = 30 + (200 * (i % CLASSES)) // (CLASSES - 1)
        img = np.empty((32, 32, 3), np.uint8)
        img[:] = (100, green, 100)
        record.write_idx(
            i, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(labels[i]), i, 0), img, img_fmt=".png")
        )
    record.close()
    return root


def subprocess_env():
    """One OpenMP thread, and this checkout first on PYTHONPATH: the workers import the code under test,
    not whichever resnest_gluon is installed."""
    return cli.child_env(dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


# ----------------------------------------------------------------------------------------- schedule
def test_schedule_warmup_cosine_and_dropblock_ramp():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(99, 1.0, 10, 100) < 1e-3
    assert lr_at(0, 1.0, 0, 100) == pytest.approx(1.0)
    assert [drop_prob_at(e, 5, 0.1) for e in (0, 2, 4)] == pytest.approx([0.0, 0.05, 0.1])


# ----------------------------------------------------------------------------------------- one process
def test_single_process_run_then_nonfinite_loss_keeps_last_good_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    argv = base_args(data, save_dir=run, keep=2, no_wd=True, last_gamma=True, mixup=True, mixup_off_epoch=1)
    result = train.main(argv)
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("epoch", "lr", "train_loss", "val_top1", "val_top5", "samples_per_sec", "time"):
        assert all(r[key] is not None for r in rows), key
    assert [r["mixup"] for r in rows] == [True, True, False]
    # (Whether training learns is checked on the digits below: on these flat colours, 24 steps of batch 8
    # with BatchNorm give a loss too noisy for "the loss falls" to mean anything.)
    assert 0 < rows[-1]["val_top1"] < 100 and rows[-1]["val_top5"] == 100  # top-5 of 4 classes
    assert result["epoch"] == 3 and result["val_top1"] == rows[-1]["val_top1"]
    saved = json.loads((run / "args.json").read_text())
    assert saved["num_training_samples"] == 64 and saved["steps_per_epoch"] == 8 and saved["workers"] == 1
    assert (run / "curves.png").stat().st_size > 1000 and (run / "train.log").stat().st_size > 0
    # the last 2 epoch checkpoints (params + states) and the best, nothing half-written
    names = sorted(os.listdir(run))
    assert "resnest14-0001.params" not in names
    for epoch in (2, 3):
        assert f"resnest14-{epoch:04d}.params" in names and f"resnest14-{epoch:04d}.states" in names
    assert "resnest14-best.params" in names and not [n for n in names if n.endswith(".tmp")]

    # a run already in the folder: refuse to overwrite it without --resume
    with pytest.raises(TrainingError, match="already holds a run"):
        train.main(argv)

    # continue with an absurd learning rate: the loss becomes non-finite, the run stops naming the step
    good = mx.nd.load(str(run / "resnest14-0003.params"))
    with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch 4, step \d+ of 8"):
        train.main(base_args(data, save_dir=run, keep=2, epochs=6, lr=1e36, resume=True))
    assert latest_checkpoint(str(run), "resnest14")[0] == 3
    kept = mx.nd.load(str(run / "resnest14-0003.params"))
    assert all(np.array_equal(good[k].asnumpy(), kept[k].asnumpy()) for k in good)
    assert all(np.isfinite(v.asnumpy()).all() for v in kept.values())


def test_colour_step_runs_on_the_training_gpu_only():
    """On a GPU the Python path's colour step moves there (a Context object needs no GPU to exist);
    on a CPU, or with the C++ iterator, it stays in the data threads."""
    gpu_args = train.parse_args(base_args(Path("d"), ctx="gpu"))
    assert train.colour_ctx(gpu_args, mx.gpu(1)) == mx.gpu(1)
    assert train.colour_ctx(train.parse_args(base_args(Path("d"))), mx.cpu()) is None
    assert train.colour_ctx(train.parse_args(base_args(Path("d"), data_backend="cpp")), mx.gpu(0)) is None


def test_undecodable_training_record_stops_with_a_clear_error(data, tmp_path):
    labels = make_rec(str(tmp_path / "train"), 16)
    # Replace record 11 by bytes that are no image (same key, so the index still fits).
    record = mx.recordio.MXIndexedRecordIO(str(tmp_path / "bad.idx"), str(tmp_path / "bad.rec"), "w")
    good = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    for i in range(16):
        payload = good.read_idx(i)
        if i == 11:
            payload = mx.recordio.pack(mx.recordio.IRHeader(0, float(labels[i]), i, 0), b"no image here")
        record.write_idx(i, payload)
    record.close()
    good.close()
    argv = base_args(data, rec_train=str(tmp_path / "bad.rec"), save_dir=tmp_path / "run", epochs=1)
    with pytest.raises(TrainingError, match=r"record 11 of .*bad\.rec.* not a decodable image.*rec_check"):
        train.main(argv)


def test_resume_after_sigkill(data, tmp_path):
    run = tmp_path / "run"
    argv = base_args(data, save_dir=run, epochs=4, batch_size=4)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "train.py")] + argv,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = run / "resnest14-0001.params"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = latest_checkpoint(str(run), "resnest14")
    assert done is not None and done[0] < 4
    result = train.main(argv + ["--resume"])
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # continues, no epoch twice
    assert result["epoch"] == 4 and np.isfinite(rows[-1]["train_loss"])
    # the schedule continued: the learning rate keeps decaying across the resume
    assert all(a["lr"] > b["lr"] for a, b in zip(rows, rows[1:]))
    assert "resumed from" in (run / "train.log").read_text()


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(model="resnest15"), r"unknown model 'resnest15'; choose one of: .*resnest50"),
        (dict(rec_train="/nonexistent/train.rec"), r"train.rec does not exist"),
        (dict(classes=2), r"label 2, outside 0..1 for --classes 2"),
        (dict(batch_size=128), r"--batch-size 128 is larger than a worker's shard \(64 of 64"),
        (dict(ctx="cpu", dtype="float16"), r"float16 needs --ctx gpu"),
    ],
)
def test_early_errors(data, tmp_path, change, message):
    with pytest.raises(TrainingError, match=message):
        train.main(base_args(data, save_dir=tmp_path / "run", **change))


def test_missing_or_broken_index(data, tmp_path):
    for suffix in (".rec", ".idx"):
        os.link(data / f"train{suffix}", tmp_path / f"train{suffix}")
    os.remove(tmp_path / "train.idx")
    with pytest.raises(TrainingError, match=r"train\.idx"):
        train.main(base_args(data, rec_train=tmp_path / "train.rec", save_dir=tmp_path / "run"))
    # an index that points past the end of its record file (e.g. a .rec cut short)
    (tmp_path / "train.idx").write_text("0\t0\n1\t999999999\n")
    with pytest.raises(TrainingError, match=r"train\.rec"):
        train.main(base_args(data, rec_train=tmp_path / "train.rec", save_dir=tmp_path / "run"))


# ----------------------------------------------------------------------------------------- horovod
WRAPPER = """
import importlib.util, os, signal, sys, time
import numpy as np
from resnest_gluon.cli import train
from resnest_gluon.interrupts import report_crashes
from resnest_gluon.training import dist, loop
report_crashes()  # as every command does: a native crash prints the Python stack of every thread
out, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
seen, nets = [], []
make_iter, build_net, train_epoch = train.make_train_iter, train.build_net, loop.train_epoch

def record_iter(args, epoch, ctx):
    for batch in make_iter(args, epoch, ctx):
        seen.append((epoch, batch.data[0].asnumpy()))
        yield batch

def keep_net(args, ctx):
    nets.append(build_net(args, ctx))
    return nets[-1]

def die_in_epoch_2(*args, **kw):
    if args[3] == 1 and dist.rank() == 1:
        with open(os.path.join(out, "died"), "w") as f:
            f.write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    return train_epoch(*args, **kw)

train.make_train_iter, train.build_net = record_iter, keep_net
if mode == "die":
    loop.train_epoch = die_in_epoch_2
train.main(argv)
rank = dist.rank()
np.savez(os.path.join(out, f"params{{rank}}.npz"),
         **{{k: p.data().asnumpy() for k, p in nets[0].collect_params().items()}})
np.savez(os.path.join(out, f"seen{{rank}}.npz"), **{{f"{{i}}_{{e}}": d for i, (e, d) in enumerate(seen)}})
"""


def horovod(tmp_path, mode, argv, timeout=240):
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format())
    return horovodrun([sys.executable, wrapper, tmp_path, mode, *argv], env=subprocess_env(), timeout=timeout)


def test_two_workers_identical_params_disjoint_shards_summed_metrics(data, tmp_path):
    verify = load_script("verify")
    run = tmp_path / "run"
    proc = horovod(tmp_path, "ok", base_args(data, save_dir=run, epochs=3, batch_size=8, last_gamma=True))
    assert proc.returncode == 0, report(proc)
    # same parameters on both ranks after training (trained weights and averaged BN statistics)
    p0, p1 = np.load(tmp_path / "params0.npz"), np.load(tmp_path / "params1.npz")
    assert sorted(p0.files) == sorted(p1.files) and len(p0.files) > 50
    for key in p0.files:
        np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
    # each epoch, the two ranks saw disjoint halves that together make the whole training file
    for epoch in range(3):
        shards = []
        for rank in (0, 1):
            seen = np.load(tmp_path / f"seen{rank}.npz")
            batches = [seen[k] for k in seen.files if k.endswith(f"_{epoch}")]
            shards.append(set(np.concatenate([record_number(b) for b in batches]).tolist()))
        assert len(shards[0]) == len(shards[1]) == 32
        assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(64))
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0]["workers"] == 2
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    # the top-1/top-5 that the two workers summed equal one worker's on the whole validation file
    single = verify.main(
        ["--model", "resnest14", "--classes", str(CLASSES), "--rec-val", str(data / "val.rec"),
         "--params", str(run / "resnest14-0003.params"), "--crop-size", "32", "--batch-size", "16"]
    )  # fmt: skip
    assert single["images"] == 37
    assert rows[-1]["val_top1"] == pytest.approx(single["top1"]) and 0 < single["top1"] < 100
    assert rows[-1]["val_top5"] == pytest.approx(single["top5"])
    # only rank 0 wrote the run directory; no temporary leftovers
    assert not [n for n in os.listdir(run) if ".tmp" in n]


def test_a_dying_worker_ends_the_job_quickly(data, tmp_path):
    proc = horovod(tmp_path, "die", base_args(data, save_dir=tmp_path / "run", epochs=3, batch_size=4))
    ended = time.time()
    assert proc.returncode != 0
    died = float((tmp_path / "died").read_text())
    assert ended - died < 30, f"the job took {ended - died:.0f}s to end after a worker died"
    found = latest_checkpoint(str(tmp_path / "run"), "resnest14")
    assert found is None or found[0] == 1  # nothing after the epoch in which the worker died


# ----------------------------------------------------------------------------------------- demo
def test_one_process_learns_the_digits(tmp_path):
    """Four epochs on 600 of the demo's digits in a plain process, default data path: 87.39 % top-1 measured
    (2026-12-06), and verify.py agrees with the best validation. The bar sits between that and what a
    broken recipe reaches (4x the learning rate: 58 %), so a change that hurts learning fails here. (The
    fine-tuning step has its own tests in test_finetune.py; test_demo_quick runs it.)"""
    demo = load_script("demo")
    argv = ["--workers", "1", "--limit", "600", "--epochs", "4", "--no-finetune", "--out-dir", str(tmp_path)]
    summary = demo.main(argv)
    assert summary["workers"] == 1 and summary["epochs"] == 4
    assert summary["best_val_top1"] > 75
    assert summary["verify_top1"] == pytest.approx(summary["best_val_top1"])


def test_demo_quick(tmp_path):
    demo = load_script("demo")
    summary = demo.main(["--quick", "--out-dir", str(tmp_path / "demo")])
    assert summary["workers"] == 2 and summary["epochs"] == 1
    assert summary["val_images"] == 60 and summary["train_images"] == 240
    assert summary["verify_top1"] == pytest.approx(summary["best_val_top1"])
    assert os.path.getsize(summary["curves"]) > 1000
    assert (tmp_path / "demo" / "images" / "train" / "0").is_dir()
