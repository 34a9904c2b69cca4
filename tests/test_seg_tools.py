"""Segmentation tools on data the tests make: pair records, prepare-ade20k, predict-seg, train-seg."""

import csv
import json
import os
import zipfile

import cv2
import mxnet as mx
import numpy as np
import pytest

from resnest_gluon.cli import predict_seg, prepare_ade20k
from resnest_gluon.data.seg_records import (
    PairRecords,
    check_pair_records,
    encode_pair,
    pack_pair,
    unpack_pair,
    write_pair_records,
)
from resnest_gluon.data.segmentation import open_split


def _pair(rng, h=24, w=32, top=151):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 200 / h, xx * 200 / w, (yy + xx) * 100 / (h + w)], axis=2)
    img = (base + rng.integers(0, 50, 3)).astype(np.uint8)  # smooth: JPEG keeps it close
    mask = rng.integers(0, top, (h, w)).astype(np.uint16 if top > 256 else np.uint8)
    return img, mask


def test_pair_records_round_trip_masks_exactly_and_images_as_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [_pair(rng), _pair(rng, 17, 9), _pair(rng, 8, 8, top=1000)]  # the last one needs 16 bits
    n, skipped = write_pair_records(str(tmp_path / "p"), pairs)
    assert (n, skipped) == (3, [])
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
    reader = PairRecords(str(tmp_path / "p.rec"))
    assert len(reader) == 3
    for key, (img, mask) in zip(reader.keys, pairs):
        got_img, got_mask = reader.read(key)
        np.testing.assert_array_equal(got_mask, mask)  # lossless PNG
        assert got_img.shape == img.shape and np.abs(got_img.astype(int) - img).mean() < 5  # JPEG
    report = check_pair_records(str(tmp_path / "p.rec"))
    assert report["ok"] == 3 and not report["bad"] and max(report["mask_values"]) > 255


def test_pair_records_leave_out_broken_pairs_and_say_why(tmp_path):
    rng = np.random.default_rng(1)
    jpeg, png = encode_pair(*_pair(rng))
    small_png = encode_pair(*_pair(rng, 5, 5))[1]
    colour_png = cv2.imencode(".png", np.zeros((24, 32, 3), np.uint8))[1].tobytes()
    pairs = [(jpeg, png), (b"not a jpeg", png), (jpeg, small_png), (jpeg, colour_png), (jpeg[:-300], png)]
    names = ["good", "bad_image", "wrong_size", "rgb_mask", "truncated"]
    n, skipped = write_pair_records(str(tmp_path / "p"), pairs, names=names)
    assert n <= 2 and len(skipped) >= 3
    assert any("bad_image" in s and "image" in s for s in skipped)
    assert any("wrong_size" in s and "size" in s for s in skipped)
    assert any("rgb_mask" in s and "channels" in s for s in skipped)
    key, image, mask = unpack_pair(pack_pair(7, jpeg, png))
    assert key == 7 and bytes(image) == jpeg and bytes(mask) == png
    with pytest.raises(ValueError, match="not an image-mask pair"):
        unpack_pair(pack_pair(0, jpeg, png)[:-1])


def _ade_zip(path, rng, train=5, val=2, broken=("ADE_train_00000003",)):
    names = {}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ADEChallengeData2016/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n")
        for split, count, tag in (("training", train, "train"), ("validation", val, "val")):
            for i in range(1, count + 1):
                stem = f"ADE_{tag}_{i:08d}"
                img, mask = _pair(rng, 20 + i, 30)
                jpeg, png = encode_pair(img, mask)
                if stem in broken:
                    jpeg = b"\xff\xd8 broken"
                z.writestr(f"ADEChallengeData2016/images/{split}/{stem}.jpg", jpeg)
                z.writestr(f"ADEChallengeData2016/annotations/{split}/{stem}.png", png)
                names[stem] = mask
    return names


def test_prepare_ade20k_packs_resumes_and_keeps_good_pairs(tmp_path):
    rng = np.random.default_rng(2)
    archive, out = str(tmp_path / "ADEChallengeData2016.zip"), str(tmp_path / "ade")
    masks = _ade_zip(archive, rng)
    status = prepare_ade20k.main(["--zip", archive, "--out-dir", out, "--part-size", "2", "--no-progress"])
    assert status == 2  # one broken pair left out
    with open(os.path.join(out, "training.skipped.txt")) as f:
        assert "ADE_train_00000003" in f.read()
    names = open(os.path.join(out, "classes.txt")).read().splitlines()
    assert len(names) == 150 and names[0] == "wall"
    items, load = open_split(out, "training")
    assert len(items) == 4
    _, mask = load(items[2])  # the fourth training image (the third is broken)
    np.testing.assert_array_equal(mask, masks["ADE_train_00000004"])
    assert len(open_split(out, "validation")[0]) == 2
    assert not os.path.exists(os.path.join(out, ".progress"))

    # a rerun on a damaged archive keeps the finished splits untouched
    before = open(os.path.join(out, "training.rec"), "rb").read()
    _ade_zip(archive, np.random.default_rng(3), broken=[f"ADE_train_{i:08d}" for i in range(1, 6)])
    prepare_ade20k.main(["--zip", archive, "--out-dir", out, "--no-progress"])
    assert open(os.path.join(out, "training.rec"), "rb").read() == before

    # a stopped run: finished parts are kept and not rewritten
    out2 = str(tmp_path / "ade2")
    _ade_zip(archive, np.random.default_rng(4), broken=())
    source = prepare_ade20k.Source(archive)
    calls = []
    real_read = source.read

    def stopping_read(name):
        calls.append(name)
        if len(calls) > 8:  # two parts of 2 pairs (image + mask each) are done, the third stops
            raise KeyboardInterrupt
        return real_read(name)

    source.read = stopping_read
    with pytest.raises(KeyboardInterrupt):
        prepare_ade20k.pack_split(source, out2, "training", part_size=2, progress=False)
    done = sorted(os.listdir(os.path.join(out2, ".progress")))
    assert done == ["training-00000.idx", "training-00000.rec", "training-00000.skipped.txt"] + [
        "training-00001.idx",
        "training-00001.rec",
        "training-00001.skipped.txt",
    ]
    calls.clear()
    source.read = real_read
    counts = prepare_ade20k.pack_split(source, out2, "training", part_size=2, progress=False)
    assert counts["pairs"] == 5


def _small_params(path, classes=3):
    from resnest_gluon import get_model

    net = get_model("deeplab_resnest50_ade", backbone="resnest14", classes=classes)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.save_parameters(path)


def test_predict_seg_writes_label_png_overlay_and_class_shares(tmp_path):
    params = str(tmp_path / "m.params")
    _small_params(params)
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (h, w) in (("a.jpg", (40, 56)), ("b.png", (33, 30))):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"nope")
    names = tmp_path / "names.txt"
    names.write_text("sky\ntree\nroad\n")
    out = str(tmp_path / "out")
    argv = [str(folder), "--model", "deeplab_resnest50_ade", "--backbone", "resnest14", "--classes", "3"]
    argv += ["--params", params, "--class-names", str(names), "--mask-offset", "0", "--out-dir", out]
    status = predict_seg.main(argv + ["--base-size", "48", "--crop-size", "48"])
    assert status == 1  # the broken file is reported
    label = cv2.imread(os.path.join(out, "a.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (40, 56) and label.max() < 3
    assert cv2.imread(os.path.join(out, "b.overlay.jpg")).shape == (33, 30, 3)
    with open(os.path.join(out, "a.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["name"] for r in rows} <= {"sky", "tree", "road"}
    assert abs(sum(float(r["share"]) for r in rows) - 1) < 1e-4
    assert sum(int(r["pixels"]) for r in rows) == 40 * 56
    counts = np.bincount(label.ravel(), minlength=3)
    assert {int(r["class"]): int(r["pixels"]) for r in rows} == {c: int(n) for c, n in enumerate(counts) if n}


def test_train_and_verify_seg_read_pair_records(tmp_path):
    from resnest_gluon.cli import train_seg, verify_seg

    rng = np.random.default_rng(6)
    root = tmp_path / "data"
    root.mkdir()
    for split, n in (("training", 4), ("validation", 2)):
        pairs = [_pair(rng, 40, 48, top=3) for _ in range(n)]
        write_pair_records(str(root / split), pairs)
    run = str(tmp_path / "run")
    argv = ["--ctx", "cpu", "--model", "deeplab_resnest50_ade", "--backbone", "resnest14", "--classes", "3"]
    argv += ["--data-root", str(root), "--mask-offset", "0", "--crop-size", "32", "--base-size", "40"]
    result = train_seg.main(argv + ["--epochs", "1", "--batch-size", "2", "--save-dir", run])
    assert "val_miou" in result or "best_miou" in result
    params = [f for f in os.listdir(run) if f.endswith(".params")]
    assert params
    argv = [
        "--model",
        "deeplab_resnest50_ade",
        "--backbone",
        "resnest14",
        "--classes",
        "3",
        "--mask-offset",
        "0",
    ]
    argv += ["--params", os.path.join(run, sorted(params)[0]), "--data-root", str(root)]
    scores = verify_seg.main(
        argv + ["--base-size", "40", "--crop-size", "32", "--json", str(tmp_path / "v.json")]
    )
    assert scores["images"] == 2 and 0 <= scores["miou"] <= 100
    assert scores["labelled_pixels"] == 2 * 40 * 48
    assert json.load(open(tmp_path / "v.json"))["images"] == 2


def test_deeplab_exports_to_onnx_and_openvino_with_the_same_outputs(tmp_path):
    """ONNX (onnxruntime) and OpenVINO f32 give MXNet's logits for a small DeepLab; the model itself still
    takes any input size after the export."""
    from resnest_gluon import deploy, get_model
    from resnest_gluon.deploy.onnx_export import onnx_ops, run_onnx

    net = get_model(
        "deeplab_resnest50_ade", backbone="resnest14", classes=5, head_channels=32, rates=(2, 4, 6)
    )
    net.initialize(mx.init.Xavier())
    x = np.random.default_rng(7).uniform(-1, 1, (2, 3, 64, 48)).astype(np.float32)
    ref = net(mx.nd.array(x)).asnumpy()
    path = deploy.export_onnx(net, str(tmp_path / "seg.onnx"), (2, 3, 64, 48))
    assert "MatMul" in onnx_ops(path) and "Resize" not in onnx_ops(path)  # the upsampling's two products
    np.testing.assert_allclose(run_onnx(path, x), ref, rtol=1e-4, atol=1e-4)
    assert net(mx.nd.zeros((1, 3, 40, 40))).shape == (1, 5, 40, 40)  # back to the input's own size
    pytest.importorskip("openvino")
    from resnest_gluon.deploy.openvino_export import run_openvino

    xml = deploy.export_openvino(net, str(tmp_path / "seg"), (2, 3, 64, 48), precision="f32")
    np.testing.assert_allclose(run_openvino(xml, x), ref, rtol=1e-4, atol=1e-4)


def test_demo_seg_paste_marks_strokes_and_leaves_faint_scan_grey_out():
    """The mask holds the strokes (ink of at least half); the scans' faint grey does not tint the square."""
    from resnest_gluon.cli import demo_seg

    digit = np.full((8, 8), 1 / 16, np.float32)  # a scan's background grey
    digit[2:6, 3:5] = 1.0
    canvas = np.full((20, 20, 3), 100.0)
    mask = np.zeros((20, 20), np.int32)
    demo_seg.paste(canvas, mask, digit, 6, np.random.default_rng(0), 16, 2, 2)
    assert set(np.unique(mask)) == {0, 7}
    assert (canvas[mask == 7] != 100).all()
    corner = canvas[2:5, 2:5]  # the square's corner: scan grey only
    np.testing.assert_array_equal(corner, 100.0)


def test_demo_seg_quick_scores_both_runs_and_writes_overlays(tmp_path):
    from resnest_gluon.cli import demo, demo_seg

    images, masks = demo_seg.make_scenes(4, 48, demo_seg.digits_split()[1], np.random.default_rng(0))
    assert images.shape == (4, 48, 48, 3) and masks.max() <= 10 and (masks > 0).any() and (masks == 0).any()
    out = str(tmp_path / "demo")
    demo.main(["--task", "seg", "--quick", "--out-dir", out])  # the door: scripts/demo.py --task seg
    summary = json.load(open(os.path.join(out, "summary.json")))
    for run in ("scratch", "finetuned"):
        assert 0 <= summary[run]["miou"] <= 100 and np.isfinite(summary[run]["last_loss"])
    # the verdict names both runs' mIoU and their difference
    tuned, scratch = summary["finetuned"]["miou"], summary["scratch"]["miou"]
    assert summary["finetuned_minus_scratch_miou"] == pytest.approx(tuned - scratch)
    assert (
        f"fine-tuned {tuned:.1f} %" in summary["result"] and f"scratch {scratch:.1f} %" in summary["result"]
    )
    assert all(0 <= summary["pretrain"][k] <= 1 for k in ("train_accuracy", "val_accuracy"))
    val = PairRecords(os.path.join(out, "val.rec"))
    masks = np.stack([val.read(key)[1] for key in val.keys])
    assert summary["all_background"]["pixacc"] == pytest.approx(100 * (masks == 0).mean())
    assert f"would score {summary['all_background']['miou']:.1f} %" in summary["result"]
    assert len(summary["overlays"]) == 2 and all(os.path.isfile(p) for p in summary["overlays"])
    assert len(PairRecords(os.path.join(out, "train.rec"))) == 32


def test_pack_mask_list_pairs_images_with_same_named_masks(tmp_path):
    from resnest_gluon.data.seg_records import pack_mask_list, pair_parts, pair_problem

    rng = np.random.default_rng(8)
    (tmp_path / "img" / "a").mkdir(parents=True)
    (tmp_path / "masks" / "a").mkdir(parents=True)
    masks = {}
    for i, ext in enumerate((".jpg", ".png", ".jpg")):
        img, mask = _pair(rng, 20, 24, top=5)
        cv2.imwrite(str(tmp_path / "img" / "a" / f"{i}{ext}"), img[..., ::-1])
        if i < 2:  # the third has no mask
            cv2.imwrite(str(tmp_path / "masks" / "a" / f"{i}.png"), mask)
        masks[i] = mask
    lst = tmp_path / "pairs.lst"
    lst.write_text("".join(f"{i}\t0\ta/{i}{ext}\n" for i, ext in enumerate((".jpg", ".png", ".jpg"))))
    n, skipped = pack_mask_list(str(lst), str(tmp_path / "img"), str(tmp_path / "masks"))
    assert n == 2 and len(skipped) == 1 and "a/2.jpg" in skipped[0]
    reader = PairRecords(str(tmp_path / "pairs.rec"))
    for key, i in zip(reader.keys, (0, 1)):
        np.testing.assert_array_equal(reader.read(key)[1], masks[i])
    import struct

    payload = reader.read_raw(reader.keys[0])
    label = struct.unpack_from("<2f", payload, 24)
    image, mask = pair_parts(label, payload[32:])
    assert pair_problem(image, mask) is None and pair_parts([3.0], payload[32:]) is None
    assert "size" in pair_problem(image, encode_pair(*_pair(rng, 5, 5))[1])


def test_im2rec_mask_root_packs_pairs_and_rec_check_checks_both_parts(tmp_path):
    from resnest_gluon.cli import im2rec, rec_check
    from resnest_gluon.data.seg_records import encode_pair, write_pair_records

    rng = np.random.default_rng(9)
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        img, mask = _pair(rng, 20, 24, top=4)
        cv2.imwrite(str(tmp_path / "img" / f"{i}.jpg"), img[..., ::-1])
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), mask if i < 2 else mask[:5])  # the last: wrong size
    (tmp_path / "p.lst").write_text("".join(f"{i}\t0\t{i}.jpg\n" for i in range(3)))
    prefix, root = str(tmp_path / "p"), str(tmp_path / "img")
    assert im2rec.main([prefix, root, "--mask-root", str(tmp_path / "masks"), "--no-progress"]) == 2
    assert len(PairRecords(prefix + ".rec")) == 2
    assert rec_check.main([prefix]) == 0

    good, bad_mask = encode_pair(*_pair(rng, 20, 24)), encode_pair(*_pair(rng, 6, 6))[1]
    write_pair_records(str(tmp_path / "q"), [good, (good[0], bad_mask)], check=False)
    assert rec_check.main([str(tmp_path / "q")]) == 1  # the second record's mask has another size


def test_train_sync_bn_builds_the_classifier_with_syncbn():
    from resnest_gluon.cli import train
    from resnest_gluon.training.syncbn import SyncBatchNorm

    args = train.parse_args(["--rec-train", "x.rec", "--model", "resnest14", "--classes", "3", "--sync-bn"])
    net = train.build_net(args, mx.cpu())
    found = []
    net.apply(lambda b: found.append(b) if isinstance(b, SyncBatchNorm) else None)
    assert found and net(mx.nd.zeros((1, 3, 32, 32))).shape == (1, 3)


def test_seg_benchmark_times_both_models_on_the_same_weights():
    from resnest_gluon.benchmarking_seg import format_seg, seg_benchmark

    records = seg_benchmark(size=64, iters=1, warmup=1, memory=False)
    assert {r["impl"] for r in records} == {"gluoncv", "resnest_gluon"}
    ours = next(r for r in records if r["impl"] == "resnest_gluon")
    assert ours["max_abs_diff"] < 1e-3 and ours["speedup"] > 0 and "speedup" in format_seg(records)
