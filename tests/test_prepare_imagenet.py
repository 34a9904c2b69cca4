"""scripts/prepare_imagenet.py on a miniature copy of the ILSVRC2012 archive layout."""

import importlib
import io
import os
import tarfile

import cv2
import mxnet as mx
import numpy as np
import pytest
from scipy.io import savemat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, path):
    return importlib.import_module("resnest_gluon.cli." + os.path.basename(path)[:-3])


im2rec = _load("im2rec", "tools/im2rec.py")
prep = _load("prepare_imagenet", "scripts/prepare_imagenet.py")

# ILSVRC2012_ID order is not the sorted WNID order, as in the real devkit
SYNSETS = [(1, "n01484850", "great white shark"), (2, "n01440764", "tench"), (3, "n01443537", "goldfish")]
VAL_TRUTH = [3, 1, 2, 2, 1, 3]


def _jpeg(value, h=20, w=28):
    img = np.full((h, w, 3), value, np.uint8)
    img[: h // 2] = 255 - value  # a little structure
    return cv2.imencode(".jpg", img)[1].tobytes()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_archives(folder):
    """Miniature ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and devkit, in the official layout."""
    with tarfile.open(os.path.join(folder, prep.TRAIN_TAR), "w") as outer:
        for cls, (_, wnid, _) in enumerate(SYNSETS):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i in range(3):
                    _add(inner, f"{wnid}_{i + 1}.JPEG", _jpeg(40 * cls + 10 * i))
            _add(outer, f"{wnid}.tar", buf.getvalue())
    with tarfile.open(os.path.join(folder, prep.VAL_TAR), "w") as tar:
        for n in range(len(VAL_TRUTH)):
            _add(tar, f"ILSVRC2012_val_{n + 1:08d}.JPEG", _jpeg(30 * n, 24, 18))
    # meta.mat: a struct array like the devkit's, including a non-leaf synset that must be ignored
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height"]
    rows = [(i, w, words, words + " gloss", 0, np.zeros(0), 0) for i, w, words in SYNSETS]
    rows.append((4, "n00000001", "fish", "a parent", 3, np.array([1, 2, 3]), 1))
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        synsets[r, 0] = row
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    with tarfile.open(os.path.join(folder, prep.DEVKIT), "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        truth = "".join(f"{t}\n" for t in VAL_TRUTH).encode()
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)


@pytest.fixture
def archives(tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    _make_archives(str(folder))
    return str(folder)


def _records(prefix):
    rec = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "r")
    out = [mx.recordio.unpack_img(rec.read_idx(k)) for k in rec.keys]
    rec.close()
    return out


def _mtimes(folder):
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(folder)
        for f in files
    }


def test_read_devkit(archives):
    synsets, truth = prep.read_devkit(os.path.join(archives, prep.DEVKIT))
    assert synsets == {i: (w, words) for i, w, words in SYNSETS}
    assert truth == VAL_TRUTH


def test_prepare_end_to_end_and_resume(archives, tmp_path):
    out = str(tmp_path / "imagenet")
    args = ["--download-dir", archives, "--out", out, "--resize", "16", "--num-thread", "2", "--no-progress"]
    assert prep.main(args) == 0

    wnids = sorted(w for _, w, _ in SYNSETS)
    assert open(os.path.join(out, "synsets.txt")).read().splitlines()[0] == "n01440764 tench"
    for wnid in wnids:
        assert sorted(os.listdir(os.path.join(out, "train", wnid))) == [f"{wnid}_{i}.JPEG" for i in (1, 2, 3)]
    id_to_wnid = {i: w for i, w, _ in SYNSETS}
    for n, truth in enumerate(VAL_TRUTH, 1):
        assert os.path.isfile(os.path.join(out, "val", id_to_wnid[truth], f"ILSVRC2012_val_{n:08d}.JPEG"))

    # labels are positions in the sorted WNIDs, for both splits
    for split, count in (("train", 9), ("val", 6)):
        items, bad = im2rec.read_list(os.path.join(out, split + ".lst"))
        assert not bad and len(items) == count
        records = _records(os.path.join(out, split))
        assert len(records) == count
        for item, (header, img) in zip(items, records):
            assert header.label == wnids.index(item.path.split("/")[0]) == item.labels[0]
            assert min(img.shape[:2]) == 16
    val_items, _ = im2rec.read_list(os.path.join(out, "val.lst"))
    assert sorted(i.labels[0] for i in val_items) == [0, 0, 1, 1, 2, 2]

    # a rerun finds everything done and touches nothing
    before = _mtimes(out)
    summary = prep.prepare(
        out, *(os.path.join(archives, n) for n in (prep.TRAIN_TAR, prep.VAL_TAR, prep.DEVKIT))
    )
    assert summary["train"]["extract"] == {"extracted": 0, "skipped": 3, "images": 0}
    assert summary["val"]["extract"]["skipped"] == 1
    assert not summary["train"]["packed"] and not summary["val"]["packed"]
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if not k.endswith("synsets.txt")} == {
        k: v for k, v in before.items() if not k.endswith("synsets.txt")
    }

    # an interrupted extraction (one class without its marker) is redone, and train is packed again
    os.remove(os.path.join(out, ".progress", "train_n01443537.done"))
    os.remove(os.path.join(out, "train", "n01443537", "n01443537_2.JPEG"))
    summary = prep.prepare(
        out,
        *(os.path.join(archives, n) for n in (prep.TRAIN_TAR, prep.VAL_TAR, prep.DEVKIT)),
        resize=16,
        progress=False,
    )
    assert summary["train"]["extract"] == {"extracted": 1, "skipped": 2, "images": 3}
    assert summary["train"]["packed"] and not summary["val"]["packed"]
    assert len(os.listdir(os.path.join(out, "train", "n01443537"))) == 3
    assert len(_records(os.path.join(out, "train"))) == 9


def test_missing_archive_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prep.main(["--download-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "image-net.org" in capsys.readouterr().err
