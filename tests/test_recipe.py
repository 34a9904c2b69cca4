"""``--recipe MODEL``: the published runs as data, explicit flags winning, --print-recipe, args.json."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from resnest_gluon.training import recipes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_published_runs():
    assert recipes.names() == ["resnest101", "resnest200", "resnest269", "resnest50"]
    sizes = {name: (r["input_size"], r["crop_size"], r["final_drop"]) for name, r in recipes.RECIPES.items()}
    assert sizes == {
        "resnest50": (224, 224, 0.0),
        "resnest101": (224, 256, 0.0),
        "resnest200": (256, 320, 0.2),
        "resnest269": (320, 416, 0.2),
    }
    totals = {name: r["batch_size"] * recipes.REFERENCE_WORKERS for name, r in recipes.RECIPES.items()}
    assert totals == {"resnest50": 8192, "resnest101": 4096, "resnest200": 2048, "resnest269": 2048}
    for r in recipes.RECIPES.values():
        assert r["lr"] == 0.1 and r["epochs"] == 270 and r["warmup_epochs"] == 5 and r["dtype"] == "float32"
        assert r["no_wd"] and r["last_gamma"] and r["mixup"] and r["auto_aug"] == "resnest"
        assert r["label_smoothing"] == 0.1 and r["mixup_alpha"] == 0.2 and r["dropblock_prob"] == 0.1
    with pytest.raises(ValueError, match="resnest50"):
        recipes.recipe("resnet50")


def test_explicit_flags_win():
    p = argparse.ArgumentParser()
    p.add_argument("--recipe")
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--mixup", action=argparse.BooleanOptionalAction, default=False)
    for key in ("model", "batch_size", "warmup_epochs", "momentum", "wd", "no_wd", "last_gamma"):
        p.add_argument("--" + key.replace("_", "-"), dest=key, default=None)
    for key in ("label_smoothing", "mixup_alpha", "mixup_off_epoch", "auto_aug", "dropblock_prob", "dtype"):
        p.add_argument("--" + key.replace("_", "-"), dest=key, default=None)
    for key in ("input_size", "crop_size", "final_drop"):
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=float, default=None)
    argv = ["--recipe", "resnest200", "--epochs", "3", "--no-mixup", "--lr", "0.1"]
    args = p.parse_args(argv)
    explicit = recipes.explicit_options(p, argv)
    assert explicit == {"recipe", "epochs", "mixup", "lr"}
    resolved = recipes.apply(args, explicit)
    assert resolved["recipe"] == "resnest200" and resolved["model"] == "resnest200"
    assert resolved["epochs"] == 3 and resolved["mixup"] is False and resolved["input_size"] == 256
    assert args.recipe_overrides == ["epochs", "mixup"]  # --lr 0.1 is the recipe's own value


def run_train(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_print_recipe_prints_json_and_exits_0():
    out = run_train("--recipe", "resnest269", "--print-recipe")
    assert out.returncode == 0, out.stderr[-2000:]
    resolved = json.loads(out.stdout)
    assert resolved["recipe"] == "resnest269" and resolved["model"] == "resnest269"
    assert resolved["input_size"] == 320 and resolved["crop_size"] == 416 and resolved["final_drop"] == 0.2
    assert resolved["dtype"] == "float32" and resolved["lr"] == 0.1 and resolved["batch_size"] == 32
    assert resolved["epochs"] == 270 and resolved["mixup"] is True and resolved["auto_aug"] == "resnest"
    # An explicit flag wins; the rest stays the recipe's.
    out = run_train("--recipe", "resnest50", "--print-recipe", "--epochs", "3", "--final-drop", "0.3")
    resolved = json.loads(out.stdout)
    assert resolved["epochs"] == 3 and resolved["final_drop"] == 0.3 and resolved["input_size"] == 224
    assert resolved["batch_size"] == 128 and resolved["no_wd"] is True
    out = run_train("--recipe", "resnet50", "--print-recipe")
    assert out.returncode != 0 and "resnest50" in out.stderr


def test_args_json_records_the_recipe_and_resolved_values(tmp_path):
    import mxnet as mx
    import numpy as np

    from resnest_gluon.cli import train

    prefix = str(tmp_path / "train")
    record = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    rng = np.random.default_rng(0)
    for i in range(16):
        img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        record.write_idx(i, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(i % 4), i, 0), img))
    record.close()
    run = tmp_path / "run"
    overrides = ["--model", "resnest14", "--classes", "4", "--input-size", "32", "--crop-size", "32"]
    overrides += ["--epochs", "1", "--batch-size", "8", "--warmup-epochs", "0"]
    train.main(
        ["--recipe", "resnest50", "--rec-train", prefix + ".rec", "--ctx", "cpu", "--data-threads", "1"]
        + overrides
        + ["--save-dir", str(run)]
    )
    saved = json.loads((run / "args.json").read_text())
    assert saved["recipe"] == "resnest50" and saved["model"] == "resnest14"
    assert (
        saved["mixup"] is True and saved["auto_aug"] == "resnest" and saved["no_wd"] and saved["last_gamma"]
    )
    assert saved["lr"] == 0.1 and saved["label_smoothing"] == 0.1 and saved["dtype"] == "float32"
    assert saved["final_drop"] == 0.0 and saved["dropblock_prob"] == 0.1 and saved["mixup_alpha"] == 0.2
    assert set(saved["recipe_overrides"]) == {
        "model", "input_size", "crop_size", "epochs", "batch_size", "warmup_epochs"
    }  # fmt: skip
