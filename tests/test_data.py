"""Input pipelines: shapes, normalisation, labels, sharding, the Python path, AutoAugment, label mixing."""

import itertools
import math
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from resnest_gluon import data
from resnest_gluon.data import autoaugment as aa
from resnest_gluon.data import cpp_iter, jpeg, jpeg_kernel, python_iter, recordio, transforms

N = 40
CLASSES = 4
MEAN = np.array(data.MEAN, np.float32)
STD = np.array(data.STD, np.float32)


def colour(i):
    """RGB colour of record ``i``; distinct per record so an output pixel tells which record it came from."""
    return np.array([(i * 6) % 256, (250 - i * 5) % 256, (i * 37) % 256], np.uint8)


def write_rec(prefix, images, labels, fmt=".jpg"):
    rec = mx.recordio.MXIndexedRecordIO(str(prefix) + ".idx", str(prefix) + ".rec", "w")
    for i, (img, label) in enumerate(zip(images, labels)):
        header = mx.recordio.IRHeader(0, float(label), i, 0)
        # pack_img takes OpenCV's BGR order.
        rec.write_idx(i, mx.recordio.pack_img(header, img[:, :, ::-1], quality=95, img_fmt=fmt))
    rec.close()
    return str(prefix) + ".rec"


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """40 constant-colour JPEGs of 40-64 px; the label is the record number (class = label % 4)."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(N):
        h, w = rng.integers(40, 65, size=2)
        images.append(np.broadcast_to(colour(i), (h, w, 3)).copy())
    return write_rec(tmp_path_factory.mktemp("rec") / "tiny", images, range(N))


def collect(it, epochs=1):
    """Per epoch, the labels of the real (not padded) samples, as ints."""
    out = []
    for _ in range(epochs):
        it.reset()
        labels = []
        for batch in it:
            n = batch.data[0].shape[0] - batch.pad
            labels += batch.label[0].asnumpy()[:n].astype(int).tolist()
        out.append(labels)
    return out


def expected(labels):
    """(B, 3) normalised value of each record's constant colour."""
    return (np.stack([colour(int(i)) for i in labels]).astype(np.float32) - MEAN) / STD


# ---------------------------------------------------------------------------------------- files
def test_num_records_and_missing_files(rec, tmp_path):
    assert data.num_records(rec) == N
    with pytest.raises(FileNotFoundError, match="im2rec"):
        data.num_records(str(tmp_path / "absent.rec"))
    lonely = tmp_path / "lonely.rec"
    lonely.write_bytes(open(rec, "rb").read())
    with pytest.raises(FileNotFoundError, match=r"lonely\.idx.*not found"):
        data.train_iter(str(lonely), 4, 32)
    (tmp_path / "lonely.idx").write_text("0\tnot-a-number\n")
    with pytest.raises(FileNotFoundError, match="unreadable"):
        data.val_iter(str(lonely), 4, 32)
    (tmp_path / "lonely.idx").write_text(f"0\t{10**9}\n")
    with pytest.raises(FileNotFoundError, match="does not match"):
        data.num_records(str(lonely))


def test_batch_larger_than_shard(rec):
    with pytest.raises(ValueError, match=r"batch_size 16 is larger than the 12 records.*<= 12"):
        data.val_iter(rec, 16, 32, num_parts=3, part_index=2)
    with pytest.raises(ValueError, match="larger than"):
        data.train_iter(rec, N + 1, 32)
    with pytest.raises(ValueError, match="fewer workers"):
        data.train_iter(rec, 1, 32, num_parts=N + 1, part_index=N)


def test_shard_bounds_match_mxnet_splitter():
    # MXNet's indexed RecordIO splitter cuts runs of ceil(N / parts).
    assert [data.shard_bounds(40, 3, k) for k in range(3)] == [(0, 14), (14, 28), (28, 40)]
    assert [data.shard_bounds(10, 4, k) for k in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    with pytest.raises(ValueError):
        data.shard_bounds(10, 2, 2)


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_val_shapes_labels_normalisation(rec, backend):
    it = data.val_iter(rec, 8, 32, threads=1, backend=backend)
    assert it.provide_data[0].shape == (8, 3, 32, 32)
    assert it.provide_label[0].shape == (8,)
    assert len(it) == 5 and it.num_samples == N
    labels, pixels = [], []
    for batch in it:
        x, y = batch.data[0], batch.label[0]
        assert x.shape == (8, 3, 32, 32) and x.dtype == np.float32
        assert y.shape == (8,) and y.dtype == np.float32
        labels += y.asnumpy().tolist()
        pixels.append(x.asnumpy().mean(axis=(2, 3)))
    assert labels == list(range(N))  # file order, unshuffled
    # Constant colours survive JPEG, resizing and cropping to within a grey level or two.
    np.testing.assert_allclose(np.concatenate(pixels), expected(labels), atol=2.5 / 57)


@pytest.mark.parametrize("backend", ["cpp", "python"])
@pytest.mark.parametrize("parts", [2, 3])
def test_val_sharding_disjoint_and_complete(rec, parts, backend):
    seen = []
    for k in range(parts):
        it = data.val_iter(rec, 5, 32, num_parts=parts, part_index=k, threads=1, backend=backend)
        pads = 0
        for batch in it:
            n = 5 - batch.pad
            y = batch.label[0].asnumpy()
            # Padded slots repeat real samples (never garbage), so a loop that forgets to slice stays finite.
            assert set(y[n:].astype(int)) <= set(y[:n].astype(int))
            np.testing.assert_allclose(
                batch.data[0].asnumpy().mean(axis=(2, 3))[:n], expected(y[:n]), atol=0.05
            )
            seen += y[:n].astype(int).tolist()
            pads += batch.pad
        begin, end = data.shard_bounds(N, parts, k)
        assert pads == len(it) * 5 - (end - begin)
    assert sorted(seen) == list(range(N))  # each record exactly once across workers


def test_val_bicubic_python_matches_cpp(tmp_path):
    rng = np.random.default_rng(3)
    images = [
        cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 2)
        for h, w in [(50, 70), (80, 60), (45, 90)]
    ]
    # PNG, so that both paths decode identical pixels.
    path = write_rec(tmp_path / "noise", images, range(3), fmt=".png")
    out = {}
    for backend in ("cpp", "python"):
        it = data.val_iter(path, 3, 32, interpolation="bicubic", threads=1, backend=backend)
        out[backend] = next(it).data[0].asnumpy()
    # OpenCV builds round bicubic weights slightly differently: allow one grey level.
    np.testing.assert_allclose(out["cpp"], out["python"], atol=1.01 / 57.0)
    # And the resize really is bicubic: a bilinear resize differs by several grey levels.
    lin = next(data.val_iter(path, 3, 32, interpolation="bilinear", threads=1, backend="cpp")).data[0]
    assert np.abs(lin.asnumpy() - out["cpp"]).max() > 2.5 / 57.0


def test_val_default_resize_and_interpolation(rec):
    with pytest.raises(ValueError, match="resize"):
        data.val_iter(rec, 4, 32, resize=30)
    with pytest.raises(ValueError, match="backend"):
        data.val_iter(rec, 4, 32, backend="gpu")
    assert transforms.interp_name("auto", 224) == "bilinear"
    assert transforms.interp_name("auto", 320) == "bicubic"
    assert math.ceil(224 / 0.875) == 256
    with pytest.raises(ValueError, match="interpolation"):
        transforms.interp_name("nearest", 224)


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_train_shapes_normalisation_and_reshuffle(rec, backend):
    # Without colour jitter and lighting, crops and flips of a constant image stay that constant.
    it = data.train_iter(rec, 6, 32, threads=1, jitter=0.0, lighting=0.0, backend=backend, seed=1)
    assert it.provide_data[0].shape == (6, 3, 32, 32)
    epochs = []
    for _ in range(2):
        it.reset()
        labels = []
        for batch in it:
            x, y = batch.data[0].asnumpy(), batch.label[0].asnumpy()
            assert x.shape == (6, 3, 32, 32) and y.dtype == np.float32
            n = 6 - batch.pad
            np.testing.assert_allclose(x.mean(axis=(2, 3)), expected(y), atol=2.5 / 57)
            assert x.std(axis=(2, 3)).max() < 0.05
            labels += y[:n].astype(int).tolist()
        epochs.append(labels)
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(N))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(N))  # shuffled, and anew each epoch


@pytest.mark.parametrize("parts", [2, 3])
def test_train_sharding_covers_epoch(rec, parts):
    sizes, seen = [], []
    for k in range(parts):
        it = data.train_iter(rec, 4, 32, num_parts=parts, part_index=k, threads=1)
        begin, end = data.shard_bounds(N, parts, k)
        for labels in collect(it, epochs=2):
            assert sorted(labels) == list(range(begin, end))
        sizes.append(it.num_samples)
        seen += labels
    assert sum(sizes) == N and sorted(seen) == list(range(N))


def test_train_augmentations_change_pixels(rec):
    it = data.train_iter(rec, 8, 32, threads=1, jitter=0.4, lighting=0.1)
    batch = next(it)
    dev = batch.data[0].asnumpy().mean(axis=(2, 3)) - expected(batch.label[0].asnumpy())
    assert np.isfinite(dev).all() and np.abs(dev).max() > 0.05  # colour jitter did something


def test_python_path_autoaugment_workers(rec):
    it = data.train_iter(rec, 6, 32, num_parts=2, part_index=1, threads=2, auto_aug=True, dtype="float16")
    assert it.provide_data[0].shape == (6, 3, 32, 32)
    labels = collect(it, epochs=2)
    assert [sorted(e) for e in labels] == [list(range(20, 40))] * 2
    it.reset()
    batch = next(it)
    assert batch.data[0].dtype == np.float16 and batch.label[0].dtype == np.float32
    assert np.isfinite(batch.data[0].asnumpy()).all()
    with pytest.raises(ValueError, match="Python path"):
        data.train_iter(rec, 6, 32, auto_aug=True, backend="cpp")


# --------------------------------------------------------------------------------- AutoAugment
@pytest.mark.parametrize("name", sorted(aa.TORCHVISION_OPS))
def test_torchvision_ops_keep_shape_and_dtype(name):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    for magnitude in (0, 5, 9):
        out = aa.apply_torchvision_op(img, name, magnitude, rng)
        assert out.shape == img.shape and out.dtype == np.uint8


def test_torchvision_ops_values():
    rng = np.random.default_rng(0)
    op = aa.apply_torchvision_op
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(op(img, "Invert", 0, rng), 255 - img)
    np.testing.assert_array_equal(op(img, "Solarize", 0, rng), img)  # threshold 256: nothing
    np.testing.assert_array_equal(op(img, "Solarize", 9, rng), 255 - img)  # threshold 0: all
    half = np.array([[[10, 127, 128], [200, 255, 0]]], np.uint8)
    # magnitude 4.5 would be 128; magnitude 4 gives threshold 256 - 4 * 256 / 9 = 142.2.
    np.testing.assert_array_equal(op(half, "Solarize", 4, rng), [[[10, 127, 128], [55, 0, 0]]])
    np.testing.assert_array_equal(op(img, "Posterize", 0, rng), img)  # keeps 8 bits
    np.testing.assert_array_equal(op(img, "Posterize", 9, rng), img & 0xF0)  # keeps 4 bits
    assert op(half, "Posterize", 9, rng).tolist() == [[[0, 112, 128], [192, 240, 0]]]
    grad = np.tile(np.arange(50, 150, dtype=np.uint8)[None, :, None], (4, 1, 3))
    stretched = op(grad, "AutoContrast", 0, rng)
    assert stretched.min() == 0 and stretched.max() == 255
    np.testing.assert_array_equal(op(img, "Rotate", 0, rng), img)  # 0 degrees
    with pytest.raises(ValueError, match="unknown"):
        op(img, "Cutout", 3, rng)


def test_imagenet_policy():
    assert len(aa.IMAGENET_POLICY) == 25 and all(len(sub) == 2 for sub in aa.IMAGENET_POLICY)
    policy = aa.ImageNetPolicy()
    img = np.random.default_rng(1).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    a = [policy(img, np.random.default_rng(s)) for s in range(20)]
    b = [policy(img, np.random.default_rng(s)) for s in range(20)]
    assert all(x.shape == img.shape and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # reproducible from the generator
    assert sum(not np.array_equal(x, img) for x in a) >= 10  # and it does change most images


# ------------------------------------------------------------------------------------- labels
def test_smooth_one_hot():
    out = data.smooth_one_hot(mx.nd.array([0, 2, 1]), 4, eps=0.1).asnumpy()
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
    np.testing.assert_array_equal(data.smooth_one_hot(mx.nd.array([3]), 4, eps=0.0).asnumpy(), [[0, 0, 0, 1]])


def test_mixup():
    x = mx.nd.array(np.arange(3 * 2).reshape(3, 2))
    y = data.smooth_one_hot(mx.nd.array([0, 1, 2]), 3, eps=0.0)
    lam = np.random.default_rng(7).beta(0.2, 0.2)
    mx_, my = data.mixup(x, y, 0.2, np.random.default_rng(7))
    np.testing.assert_allclose(mx_.asnumpy(), lam * x.asnumpy() + (1 - lam) * x.asnumpy()[::-1], rtol=1e-5)
    np.testing.assert_allclose(
        my.asnumpy()[0], [lam, 0, 1 - lam], rtol=1e-5, atol=1e-7
    )  # first sample mixed with the last
    np.testing.assert_allclose(my.asnumpy().sum(axis=1), 1.0, rtol=1e-6)
    same_x, same_y = data.mixup(x, y, 0.0, np.random.default_rng(7))
    assert same_x is x and same_y is y


def test_no_stray_files(rec):
    assert sorted(os.listdir(os.path.dirname(rec))) == ["tiny.idx", "tiny.rec"]


def test_colour_affine_equals_step_by_step():
    """The fused colour matrix == brightness/contrast/saturation, lighting, normalisation one by one."""
    img = np.random.default_rng(5).uniform(0, 255, (9, 11, 3))
    for seed in range(4):
        affine = transforms._colour_affine(img.reshape(-1, 3).mean(0), 0.4, 0.1, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        order, alphas = rng.permutation(3), rng.uniform(0.6, 1.4, 3)
        x = img.copy()
        grey = lambda v: v @ np.array([0.299, 0.587, 0.114])
        for op, a in zip(order, alphas):
            if op == 0:
                x = a * x
            elif op == 1:
                x = a * x + (1 - a) * grey(x).mean()
            else:
                x = a * x + (1 - a) * grey(x)[..., None]
        x = x + transforms._EIGVEC @ (rng.normal(0, 0.1, 3).astype(np.float32) * transforms._EIGVAL)
        x = (x - MEAN) / STD
        got = img @ affine[:, :3].T + affine[:, 3]
        np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)


def test_python_reader_label_vectors_and_split_records(tmp_path):
    import struct

    jpg = cv2.imencode(".jpg", np.full((40, 48, 3), 90, np.uint8))[1].tobytes()
    prefix = str(tmp_path / "odd")
    rec = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    rec.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [3.0, 7.0], 0, 0), jpg))
    # RecordIO splits a payload holding its magic word at an aligned position into parts.
    packed = mx.recordio.pack(mx.recordio.IRHeader(0, 1.0, 1, 0), jpg)
    packed += b"\0" * (-len(packed) % 4) + struct.pack("<I", 0xCED7230A) + b"tail"
    rec.write_idx(1, packed)
    rec.close()
    offsets = dict(data.read_index(prefix + ".rec"))
    reader = recordio.RecordReader(prefix + ".rec", offsets)
    with open(prefix + ".rec", "rb") as f:
        f.seek(offsets[1])
        assert struct.unpack("<II", f.read(8))[1] >> 29 != 0  # really written in parts
    for key, label in ((0, 3.0), (1, 1.0)):
        got, img = reader.read(key)
        assert got == label and img.shape == (40, 48, 3) and abs(float(img.mean()) - 90) < 2


def test_bench_pipeline_end_to_end(tmp_path):
    import json

    from resnest_gluon.cli import bench_pipeline as bench

    out = tmp_path / "bench.json"
    argv = ["--make-data", "12", "--data", str(tmp_path / "mini"), "--threads", "1", "--batches", "2"]
    rows = bench.main(
        argv + ["--batch-size", "4", "--input-size", "32", "--repeats", "1", "--json", str(out)]
    )
    assert {r["name"] for r in rows} == {"decode_resize", "decode_rrc", "decode_mxnet", *bench.PIPELINES}
    assert all(r["images_per_s"] > 0 for r in rows)
    for r in rows:  # training iterators carry the ratios to a decode limit measured right before them
        if r["name"] in bench.TRAIN_PIPELINES:
            assert r["ratio_per_cpu_s"] > 0 and r["ratio_per_thread_wall"] > 0 and r["limit_images_per_s"] > 0
    assert "goal" in bench.summarise(rows)
    assert data.num_records(str(tmp_path / "mini.rec")) == 12
    assert json.loads(out.read_text())["results"] == rows
    assert sorted(os.listdir(tmp_path)) == ["bench.json", "mini.idx", "mini.rec"]  # no temporary leftovers
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", "x", "--threads", "0"])
    # --make-short-side: packed as ImageNet is (shorter side exactly S)
    rec = bench.make_data(str(tmp_path / "s480" / "x"), 4, short_side=480, quality=95)
    reader = recordio.RecordReader(rec, dict(data.read_index(rec)))
    assert [min(jpeg.jpeg_size(reader.read_raw(k)[1])) for k in range(4)] == [480] * 4


# ------------------------------------------------------------------ fast Python path internals
class _Replay:
    """Stands in for a generator and hands :func:`transforms._colour_affine` exactly these numbers."""

    def __init__(self, order, alphas, noise):
        self.order, self.alphas, self.noise = order, alphas, noise

    def permutation(self, n):
        return np.array(self.order)

    def uniform(self, lo, hi, n):
        return np.array(self.alphas)

    def standard_normal(self, n):
        return np.array(self.noise)


def test_batch_draws_give_the_reference_affine():
    """Colour maps computed for a whole batch (before the image means are known) equal the
    one-image-at-a-time reference, for every order of the jitter operations."""
    rng = np.random.default_rng(3)
    order = np.array(list(itertools.permutations(range(3))) * 2)
    alphas, noise = rng.uniform(0.6, 1.4, (12, 3)), rng.standard_normal((12, 3))
    mean = [90.0, 120.0, 30.0]
    for jitter, lighting in ((0.4, 0.1), (0.0, 0.1), (0.4, 0.0)):
        for bgr in (False, True):
            base, k = transforms._affine_parts(jitter, lighting, order, alphas, noise, bgr)
            for i in range(12):
                reference = _Replay(order[i].tolist(), alphas[i].tolist(), noise[i].tolist())
                expected = transforms._colour_affine(mean, jitter, lighting, reference, bgr)
                got = base[i].copy()
                got[:, 3] += k[i].dot(mean)
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The draws of a batch are a function of the generator alone.
    tr = transforms.TrainTransform(32, 0.4, 0.1, False, "bilinear")
    a, b = tr.draw(np.random.default_rng(3), 6), tr.draw(np.random.default_rng(3), 6)
    assert len(a) == 6 and all(x[:3] == y[:3] for x, y in zip(a, b))
    assert all(np.array_equal(x[3], y[3]) and np.array_equal(x[4], y[4]) for x, y in zip(a, b))


def test_crop_box_bounds_and_fallback():
    rng = np.random.default_rng(0)
    for h, w in [(300, 500), (500, 300), (64, 64)]:
        for _ in range(200):
            areas = rng.uniform(0.08, 1.0, 10).tolist()
            ratios = rng.uniform(math.log(3 / 4), math.log(4 / 3), 10).tolist()
            y, x, ch, cw = transforms._crop_box(h, w, areas, ratios, *rng.random(2).tolist())
            assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w
            assert 0.08 * h * w * 0.9 <= ch * cw <= h * w and 0.7 <= cw / ch <= 1.4
    # Nothing fits (area beyond the image): the largest centred square.
    assert transforms._crop_box(40, 100, [2.0] * 10, [0.0] * 10, 0.5, 0.5) == (0, 30, 40, 40)


def test_jpeg_size_from_header(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_OPTIMIZE, 1]):
        buf = cv2.imencode(".jpg", img, params)[1]
        assert jpeg.jpeg_size(buf) == (37, 53)
    # An APP segment (as EXIF would add) before the frame header is skipped over.
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    app = b"\xff\xe1" + (2 + 300).to_bytes(2, "big") + bytes(300)
    assert jpeg.jpeg_size(np.frombuffer(jpg[:2] + app + jpg[2:], np.uint8)) == (37, 53)
    assert jpeg.jpeg_size(cv2.imencode(".png", img)[1]) is None
    assert jpeg.jpeg_size(np.frombuffer(b"\xff\xd8\xff", np.uint8)) is None
    assert jpeg.jpeg_size(np.frombuffer(jpg[:40], np.uint8)) in (None, (37, 53))  # truncated: no crash


def test_reduced_decode_matches_full_decode(monkeypatch):
    """A crop that stays >= the output size after a 2/4/8-fold reduction is decoded reduced, same picture."""
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    smooth = np.stack([xx / 640 * 255, yy / 480 * 255, (xx + yy) / 1120 * 255], -1).astype(np.uint8)
    payload = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    flags = []
    real = cv2.imdecode
    monkeypatch.setattr(transforms.cv2, "imdecode", lambda buf, f: flags.append(f) or real(buf, f))
    monkeypatch.setenv(jpeg_kernel.ENV, "0")  # OpenCV's full decode, not the region decoder
    # Whole-image crop (area 1, ratio 4/3 fits 640 x 480 exactly), no flip, 64 px output: 480 // 4 >= 64.
    base, k = transforms._affine_parts(
        0.0, 0.0, np.array([[0, 1, 2]]), np.ones((1, 3)), np.zeros((1, 3)), bgr=True
    )
    draw = ([1.0] * 10, [math.log(4 / 3)] * 10, [0.0, 0.0, 0.9], base[0], k[0], None)
    fast = transforms.TrainTransform(64, 0.0, 0.0, False, "bilinear", reduced_decode=True)
    plain = transforms.TrainTransform(64, 0.0, 0.0, False, "bilinear", reduced_decode=False)
    a, affine_a = fast(payload, draw, None)
    b, affine_b = plain(payload, draw, None)
    assert flags == [cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_COLOR]
    assert a.shape == b.shape == (64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0  # same picture, a grey level or two apart
    np.testing.assert_allclose(affine_a, affine_b, atol=1e-3)
    # A crop smaller than 2x the output is decoded in full.
    flags.clear()
    small = ([0.02] * 10, [0.0] * 10, [0.5, 0.5, 0.9], base[0], k[0], None)
    fast(payload, small, None)
    assert flags == [cv2.IMREAD_COLOR]


def test_held_batches_stay_intact_and_buffers_are_reused(rec):
    """Batches go to MXNet without a copy and buffers are reused, but never one the caller still holds."""
    it = data.train_iter(rec, 8, 32, threads=2, seed=4, backend="python")
    ref = data.train_iter(rec, 8, 32, threads=0, seed=4, backend="python")
    held = [next(it).data[0] for _ in range(5)]  # all kept: five distinct buffers
    expected_batches = [next(ref).data[0].asnumpy() for _ in range(5)]
    for got, want in zip(held, expected_batches):
        np.testing.assert_array_equal(
            got.asnumpy(), want
        )  # same as with no threads, untouched by later batches
    assert not np.array_equal(expected_batches[0], expected_batches[1])
    it.reset()
    pool = it._buffers
    ids = set()
    for batch in it:  # each batch dropped right away: the pool keeps recycling its few buffers
        batch.data[0].wait_to_read()
        ids |= {id(b) for b in pool._buffers}
    assert len(pool._buffers) <= 2 + 3 and len(ids) <= 5


def test_colour_step_on_context_equals_worker_threads(rec, monkeypatch):
    """``ctx=``: uint8 crops from the workers, one batched colour step there; same batches as the default
    on OpenCV (the compiled colour kernel is a level off on the odd pixel: tests/test_colour_kernel.py)."""
    monkeypatch.setenv("RESNEST_GLUON_COLOUR_KERNEL", "0")
    kwargs = dict(threads=1, seed=2, jitter=0.4, lighting=0.1)
    default = data.train_iter(rec, 8, 32, backend="python", **kwargs)
    batched = data.train_iter(rec, 8, 32, ctx=mx.cpu(), **kwargs)  # 'auto' takes the Python path
    for _ in range(3):
        a, b = next(default), next(batched)
        assert b.data[0].shape == (8, 3, 32, 32) and b.data[0].context == mx.cpu()
        np.testing.assert_array_equal(a.label[0].asnumpy(), b.label[0].asnumpy())
        np.testing.assert_allclose(a.data[0].asnumpy(), b.data[0].asnumpy(), atol=1e-4)
    half = next(data.train_iter(rec, 8, 32, ctx=mx.cpu(), dtype="float16", **kwargs))
    assert half.data[0].dtype == np.float16
    with pytest.raises(ValueError, match="Python path"):
        data.train_iter(rec, 8, 32, ctx=mx.cpu(), backend="cpp")


def test_default_backends(rec):
    """Both default to the Python path (40 % of the C++ iterator's CPU per image with the pip wheel, and
    the only one with the reference's evaluation from 320 px)."""
    assert isinstance(data.train_iter(rec, 8, 32), python_iter.ThreadIter)
    assert isinstance(data.train_iter(rec, 8, 32, backend="cpp"), cpp_iter.RecordIter)
    assert isinstance(data.val_iter(rec, 8, 32), python_iter.ThreadIter)
    assert isinstance(data.val_iter(rec, 8, 32, backend="cpp"), cpp_iter.RecordIter)
    with pytest.raises(ValueError, match="resize="):
        data.val_iter(rec, 8, 320, backend="cpp")
    assert isinstance(data.val_iter(rec, 8, 320, backend="cpp", resize=366), cpp_iter.RecordIter)


def test_close_leaves_no_work_running(rec):
    """close() drops the batches not started, waits for those being assembled, and ends the threads; the
    iterator then refuses to go on instead of skipping the dropped batches."""
    it = data.train_iter(rec, 8, 32, threads=2)
    next(it)  # three more batches are now in flight
    workers = list(it._pool._threads)
    assert workers
    it.close()
    assert not any(t.is_alive() for t in workers)
    with pytest.raises(RuntimeError, match="closed"):
        next(it)
    it.close()  # twice is harmless


def test_python_path_sets_opencv_threads(rec):
    previous = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        data.val_iter(rec, 8, 32, backend="python", opencv_threads=None)
        assert cv2.getNumThreads() == 2
        data.train_iter(rec, 8, 32, backend="python")  # the workers are the parallelism
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(previous)


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_mirror_and_min_area_switches(tmp_path, backend):
    """Left half dark, right half bright: without mirroring the left stays darker in every crop."""
    img = np.zeros((48, 48, 3), np.uint8)
    img[:, 24:] = 255
    path = write_rec(tmp_path / "halves", [img] * 8, [0] * 8)
    kwargs = dict(jitter=0.0, lighting=0.0, threads=1, backend=backend)
    it = data.train_iter(path, 8, 32, mirror=False, min_area=1.0, **kwargs)
    x = next(iter(it)).data[0].asnumpy()
    assert (x[:, :, :, :8].mean(axis=(1, 2, 3)) < x[:, :, :, -8:].mean(axis=(1, 2, 3))).all()
    flipped = 0
    for epoch in range(4):
        it = data.train_iter(path, 8, 32, seed=epoch, min_area=1.0, **kwargs)
        x = next(iter(it)).data[0].asnumpy()
        flipped += int((x[:, :, :, :8].mean(axis=(1, 2, 3)) > x[:, :, :, -8:].mean(axis=(1, 2, 3))).sum())
    assert 0 < flipped < 32  # mirroring on by default: some crops flipped, not all
