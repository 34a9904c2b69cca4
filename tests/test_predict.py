"""scripts/predict.py on folders of images: verify.py's preprocessing image for image, every input kind and
backend, bad files reported while the others are predicted; class names from im2rec to the predictions."""

import importlib
import json
import os
import sys

import cv2
import numpy as np
import pytest

import resnest_gluon
from resnest_gluon.data import val_iter
from resnest_gluon.data.class_names import class_names_beside, imagenet_class_names
from resnest_gluon.models.pretrained import load_params_checked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(path, name):
    return importlib.import_module("resnest_gluon.cli." + os.path.basename(path)[:-3])


predict = load_module("scripts/predict.py", "_script_predict")
train = load_module("scripts/train.py", "_script_train")
verify = load_module("scripts/verify.py", "_script_verify")
im2rec = load_module("tools/im2rec.py", "im2rec")
demo = load_module("scripts/demo.py", "_script_demo")

NAMES = ["0-zero", "1-one", "2-two"]  # sorted: the folder order is the label order


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """``val/<name>/*.jpg``: digits 0-2 as JPEGs of several sizes and aspect ratios (so that the resize and
    centre crop matter), packed as they are with im2rec --pass-through; a model trained on them."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("predict")
    digits = load_digits()
    rng = np.random.RandomState(0)
    for split, picks in (("train", range(0, 600)), ("val", range(600, 700))):
        for i in picks:
            if digits.target[i] > 2:
                continue
            img = demo.digit_image(digits.data[i], 40)
            if split == "val":  # other sizes and shapes than the crop
                h, w = rng.randint(36, 60), rng.randint(36, 60)
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            path = root / "images" / split / NAMES[digits.target[i]] / f"{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    for split in ("train", "val"):
        prefix = str(root / split)
        images = str(root / "images" / split)
        assert im2rec.main(["--list", "--recursive", prefix, images]) == 0
        assert im2rec.main([prefix, images, "--pass-through", "--no-progress"]) == 0
    run = root / "run"
    train.main(
        [
            "--ctx", "cpu", "--model", "resnest14", "--classes", "3", "--rec-train", str(root / "train.rec"),
            "--rec-val", str(root / "val.rec"), "--input-size", "32", "--crop-size", "32", "--epochs", "3",
            "--batch-size", "16", "--lr", "0.4", "--warmup-epochs", "0", "--jitter", "0", "--lighting", "0",
            "--no-mirror", "--min-area", "0.35", "--data-threads", "1", "--ema", "0.9",
            "--save-dir", str(run),
        ]
    )  # fmt: skip
    return root


def run_predict(argv, tmp_path, name="out.json"):
    out = str(tmp_path / name)
    status = predict.main(list(map(str, argv)) + ["--out", out, "--quiet"])
    if name.endswith(".json"):
        with open(out) as f:
            return status, json.load(f)
    return status, out


# ------------------------------------------------------------------------------------- class names
def test_im2rec_list_writes_class_names_shared_by_splits(folder, tmp_path):
    assert (folder / "val.classes.txt").read_text().splitlines() == NAMES
    lst = (folder / "val.lst").read_text().splitlines()
    assert all(line.split("\t")[2].split("/")[0] == NAMES[int(float(line.split("\t")[1]))] for line in lst)
    prefix = str(tmp_path / "s")
    args = [
        "--list",
        "--recursive",
        "--train-ratio",
        "0.5",
        "--test-ratio",
        "0.25",
        prefix,
        str(folder / "images" / "val"),
    ]
    assert im2rec.main(args) == 0
    assert (tmp_path / "s.classes.txt").read_text().splitlines() == NAMES
    for split in ("s_train", "s_val", "s_test"):
        assert (tmp_path / f"{split}.lst").exists()
        assert class_names_beside(str(tmp_path / f"{split}.rec")) == str(tmp_path / "s.classes.txt")
    assert class_names_beside(str(tmp_path / "other.rec")) is None


def test_imagenet_class_names_in_prepare_imagenet_label_order():
    from gluoncv.data.imagenet.classification import ImageNet1kAttr

    names = imagenet_class_names()
    attr = ImageNet1kAttr()
    wnids = [n.split(" ", 1)[0] for n in names]
    assert len(names) == 1000 and wnids == sorted(wnids) == list(attr.synset)  # sorted WNIDs = label order
    assert names[0] == "n01440764 tench" and [n.split(" ", 1)[1] for n in names] == list(attr.classes)


# ------------------------------------------------------------------------------------- predict = verify
def test_predict_agrees_with_verify_image_for_image(folder, tmp_path):
    run = folder / "run"
    status, rows = run_predict([folder / "images" / "val", "--run", run, "--top-k", "2"], tmp_path)
    assert status == 0 and all(r["status"] == "ok" for r in rows)
    # verify.py's pipeline on the pass-through records of the same files
    net = resnest_gluon.get_model("resnest14", classes=3)
    load_params_checked(net, str(run / "resnest14-best.params"))
    lst = [line.split("\t") for line in (folder / "val.lst").read_text().splitlines()]
    data = val_iter(str(folder / "val.rec"), 10, 32)
    preds = []
    for batch in data:
        out = net(batch.data[0]).asnumpy()[: 10 - (batch.pad or 0)]
        preds += list(out.argmax(axis=1))
    by_path = {r["path"]: r for r in rows}
    agree = 0
    for (_, label, rel), pred in zip(lst, preds):
        row = by_path[str(folder / "images" / "val" / rel)]
        assert row["names"][0] == NAMES[pred], rel
        assert sum(row["probs"]) <= 1.0 + 1e-6 and row["probs"][0] >= row["probs"][1]
        agree += NAMES[int(float(label))] == row["names"][0]
    scored = verify.main(
        ["--model", "resnest14", "--classes", "3", "--rec-val", str(folder / "val.rec"), "--params",
         str(run / "resnest14-best.params"), "--crop-size", "32"]
    )  # fmt: skip
    assert scored["top1"] == pytest.approx(100.0 * agree / len(lst))


def test_model_sources_backends_tta_and_csv(folder, tmp_path):
    run, images = folder / "run", folder / "images" / "val" / NAMES[2]
    _, base = run_predict([images, "--run", run], tmp_path)
    _, ema = run_predict([images, "--run", run, "--ema"], tmp_path, "ema.json")
    assert len(ema) == len(base) and all(r["status"] == "ok" for r in ema)
    params = run / "resnest14-best.params"
    names = run / "classes.txt"
    _, same = run_predict(
        [images, "--params", params, "--model", "resnest14", "--classes", 3, "--class-names", names,
         "--crop-size", 32, "--batch-size", 3, "--threads", 0], tmp_path, "p.json"
    )  # fmt: skip
    assert [r["names"] for r in same] == [r["names"] for r in base]
    np.testing.assert_allclose([r["probs"] for r in same], [r["probs"] for r in base], rtol=1e-4, atol=1e-6)
    # an exported symbol and an ONNX file give the same top-1
    from resnest_gluon.deploy import export, export_onnx

    net = resnest_gluon.get_model("resnest14", classes=3)
    load_params_checked(net, str(params))
    export(net, str(tmp_path / "exp"), (1, 3, 32, 32))
    export_onnx(net, str(tmp_path / "m.onnx"), (2, 3, 32, 32))
    for source in (["--symbol", tmp_path / "exp"], ["--onnx", tmp_path / "m.onnx"]):
        _, rows = run_predict(
            [images, *source, "--class-names", names, "--crop-size", 32], tmp_path, "s.json"
        )
        assert [r["names"][0] for r in rows] == [r["names"][0] for r in base], source
    # resnest-export writes PREFIX.meta.json: the export alone is enough, no other flag
    from resnest_gluon.cli import export as export_cli

    for fmt, flag, made in (
        ("onnx", "--onnx", "e.onnx"),
        ("symbol", "--symbol", "e"),
        ("openvino", "--openvino", "e.xml"),
    ):
        precision = ["--precision", "f32"] if fmt == "openvino" else []
        export_cli.main(["--run", str(run), "--format", fmt, "--out-prefix", str(tmp_path / "e")] + precision)
        meta = json.loads((tmp_path / "e.meta.json").read_text())
        assert meta["class_names"] == NAMES and meta["input_size"] == 32 and meta["classes"] == 3
        _, rows = run_predict([images, flag, tmp_path / made], tmp_path, "m.json")
        assert [r["names"] for r in rows] == [r["names"] for r in base], fmt
        np.testing.assert_allclose([r["probs"] for r in rows], [r["probs"] for r in base], atol=1e-4)
    _, flip = run_predict([images, "--run", run, "--tta", "flip"], tmp_path, "f.json")
    assert [r["probs"] for r in flip] != [r["probs"] for r in base]
    status, csv_path = run_predict([images, "--run", run, "--top-k", 2], tmp_path, "out.csv")
    lines = open(csv_path).read().splitlines()
    assert lines[0] == "path,status,name_1,prob_1,name_2,prob_2" and len(lines) == len(base) + 1


# ------------------------------------------------------------------------------------- bad input
def test_bad_files_are_reported_and_the_rest_predicted(folder, tmp_path, capsys):
    good = sorted((folder / "images" / "val" / NAMES[1]).iterdir())[:3]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(500))
    (bad / "notes.md").write_text("not an image")
    (bad / "sub").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in good) + "bad/sub\n")
    argv = [listing, bad / "empty.jpg", bad / "corrupt.jpg", bad / "notes.md", "--run", folder / "run"]
    status, rows = run_predict(argv, tmp_path)
    assert status == 2
    statuses = {os.path.basename(r["path"]): r["status"] for r in rows}
    assert [statuses[p.name] for p in good] == ["ok"] * 3
    assert all(r["names"] for r in rows if r["status"] == "ok")
    assert statuses["sub"].startswith("cannot read") and statuses["empty.jpg"] == "empty file"
    assert statuses["corrupt.jpg"].startswith("not a decodable image")
    assert statuses["notes.md"].startswith("not a decodable image")
    err = capsys.readouterr().err
    assert "empty.jpg: empty file" in err and "3 of 7 images predicted" in err


def test_errors_before_any_work(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    run = ["--run", str(folder / "run")]
    with pytest.raises(predict.PredictError, match="holds no images"):
        predict.main([str(tmp_path / "empty")] + run)
    with pytest.raises(predict.PredictError, match="nope.jpg does not exist"):
        predict.main([str(tmp_path / "nope.jpg")] + run)
    listing = tmp_path / "list.txt"
    listing.write_text("missing.jpg\n")
    with pytest.raises(predict.PredictError, match=r"missing.jpg \(listed in .*list.txt\) does not exist"):
        predict.main([str(listing)] + run)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(predict.PredictError, match="names 2 classes but the model has 3"):
        predict.main([str(folder / "images" / "val")] + run + ["--class-names", str(names)])
    params = str(folder / "run" / "resnest14-best.params")
    with pytest.raises(predict.PredictError, match=r"fc\.(weight|bias).*shape") as err:
        predict.main(
            [str(folder / "images" / "val"), "--params", params, "--model", "resnest14", "--classes", "5"]
        )
    assert "are --model" not in str(err.value)  # the message says what does not fit, nothing to guess
    with pytest.raises(SystemExit):
        predict.parse_args([str(folder / "images" / "val")])  # no model
    with pytest.raises(predict.PredictError, match="not a training run directory"):
        predict.main([str(folder / "images" / "val"), "--run", str(tmp_path)])


def test_command_line_exit_statuses(folder, tmp_path):
    import subprocess

    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "scripts", "predict.py"), "--run", str(folder / "run")]
    (tmp_path / "x.jpg").write_bytes(b"junk")
    image = str(sorted((folder / "images" / "val" / NAMES[0]).iterdir())[0])
    done = subprocess.run(cmd + [image], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "0-zero (" in done.stdout
    done = subprocess.run(cmd + [image, str(tmp_path / "x.jpg")], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "x.jpg: not a decodable image" in done.stderr
    done = subprocess.run(cmd + [str(tmp_path / "none")], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "does not exist" in done.stderr
