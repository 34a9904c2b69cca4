"""The data pipeline against the ResNeSt reference's protocol, each reference written from its description:
evaluation crops, AutoAugment's operations, policy and position, the TF-style crop, clipped colour."""

import io
import math

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from resnest_gluon import data
from resnest_gluon.data import autoaugment as aa
from resnest_gluon.data import transforms

MEAN, STD = np.array(transforms.MEAN, np.float32), np.array(transforms.STD, np.float32)


def photographs():
    """scikit-learn's two sample photographs (427 x 640), upright and turned, and a 300 x 451 cut-out."""
    china, flower = load_sample_images().images
    return [china, np.ascontiguousarray(flower.transpose(1, 0, 2)), flower[60:360, 100:551], china[:, ::-1]]


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.fixture(scope="module")
def photo_rec(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("photos") / "photos")
    rec = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    encoded = [jpeg_bytes(img) for img in photographs()]
    for i, payload in enumerate(encoded):
        rec.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(i), i, 0), payload))
    rec.close()
    return prefix + ".rec", encoded


def reference_eval(payload: bytes, crop: int) -> np.ndarray:
    """The reference's evaluation crop, from its description: below 320 px the short side resized to
    ceil(crop / 0.875) bilinearly and the centre crop; from 320 px the centre square of side
    crop / (crop + 32) x the short side, corners rounded, resized to crop x crop by PIL's bicubic."""
    img = Image.open(io.BytesIO(payload)).convert("RGB")
    w, h = img.size
    if crop < 320:
        short = math.ceil(crop / 0.875)
        nw, nh = (short, int(h * short / w)) if w < h else (int(w * short / h), short)
        small = cv2.resize(np.asarray(img), (nw, nh), interpolation=cv2.INTER_LINEAR)
        y, x = (nh - crop) // 2, (nw - crop) // 2
        return small[y : y + crop, x : x + crop]
    side = crop / (crop + 32) * min(w, h)
    top, left = round((h - side) / 2), round((w - side) / 2)
    square = img.crop((left, top, round(left + side), round(top + side)))
    return np.asarray(square.resize((crop, crop), Image.BICUBIC))


def to_uint8(batch: np.ndarray) -> np.ndarray:
    """Normalised (B, 3, H, W) -> RGB (B, H, W, 3) 0..255."""
    return batch.transpose(0, 2, 3, 1) * STD + MEAN


@pytest.mark.parametrize("crop", [224, 256, 320, 416])
def test_eval_preprocess_matches_the_reference(photo_rec, crop):
    path, encoded = photo_rec
    it = data.val_iter(path, len(encoded), crop, threads=0)  # the defaults
    ours = to_uint8(next(it).data[0].asnumpy())
    for i, payload in enumerate(encoded):
        ref = reference_eval(payload, crop).astype(np.float32)
        diff = np.abs(ours[i] - ref).mean()
        assert diff < 1.0, (crop, i, diff)
    if crop >= 320:  # and the 0.875 resize-and-crop is another protocol altogether
        old_it = data.val_iter(path, len(encoded), crop, threads=0, resize=math.ceil(crop / 0.875))
        old = to_uint8(next(old_it).data[0].asnumpy())
        assert np.abs(old[0] - reference_eval(encoded[0], crop)).mean() > 5.0


def test_predict_preprocess_is_the_evaluation(photo_rec, tmp_path):
    from resnest_gluon.cli.predict import Preprocess

    path, encoded = photo_rec
    file = tmp_path / "p.jpg"
    file.write_bytes(encoded[1])
    for crop in (224, 416):
        got, status = Preprocess(crop)(str(file))
        want = next(data.val_iter(path, len(encoded), crop, threads=0)).data[0].asnumpy()[1]
        np.testing.assert_allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------------------------------ AutoAugment
def small_photo() -> np.ndarray:
    return cv2.resize(load_sample_images().images[0], (160, 107), interpolation=cv2.INTER_AREA)


GREY = np.array([0.299, 0.587, 0.114])


def _blend(degenerate, img, factor):
    return np.clip(degenerate + factor * (img.astype(np.float64) - degenerate), 0, 255)


def _cubic(t, a=-1.0):
    """The cubic convolution kernel; PIL's geometric transforms use a = -1."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t < 1, near, np.where(t < 2, far, 0.0))


def _warp(img, inverse):
    """PIL-style warp, black outside: ``inverse(x, y)`` maps output pixel centres to input coordinates
    (pixel centres at +0.5); nearest neighbour, or bicubic (a = -1, neighbours clamped to the image,
    truncated to an integer)."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    xi, yi, order = inverse(xs, ys)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = np.zeros(img.shape, np.float64)
    if order == "nearest":
        out[inside] = img[np.floor(yi[inside]).astype(int), np.floor(xi[inside]).astype(int)]
        return out
    x, y = xi - 0.5, yi - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    for j in range(-1, 3):
        for i in range(-1, 3):
            weight = (_cubic(x - (x0 + i)) * _cubic(y - (y0 + j)))[..., None]
            out += weight * img[np.clip(y0 + j, 0, h - 1), np.clip(x0 + i, 0, w - 1)]
    out[~inside] = 0
    return np.floor(np.clip(out, 0, 255))


def reference_op(img: np.ndarray, name: str, level: int, sign: int) -> np.ndarray:
    """One operation as the issue's mapping describes it (levels 0-10)."""
    x = img.astype(np.float64)
    factor = level * 1.8 / 10 + 0.1
    if name in ("Posterize", "Posterize2"):
        bits = 4 - int(level * 4 / 10)
        return img & np.uint8((0xFF << (8 - bits)) & 0xFF)
    if name == "Solarize":
        threshold = 256 - int(level * 256 / 10)
        return np.where(img >= threshold, 255 - img, img)
    if name == "Invert":
        return 255 - img
    if name == "Color":
        return _blend((x @ GREY)[..., None], img, factor)
    if name == "Contrast":
        return _blend(round((x @ GREY).mean()), img, factor)
    if name == "Brightness":
        return _blend(0.0, img, factor)
    if name == "Sharpness":
        smooth = x.copy()
        kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
        smooth[1:-1, 1:-1] = cv2.filter2D(x, -1, kernel)[1:-1, 1:-1]
        return _blend(smooth, img, factor)
    if name == "AutoContrast":
        lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
        return np.clip((x - lo) * 255.0 / np.maximum(hi - lo, 1), 0, 255)
    if name == "Equalize":
        # PIL's equalisation per channel: a level maps to the count of darker pixels in steps of (pixels
        # not at the brightest level) / 255, starting half a step in.
        out = np.empty_like(x)
        for c in range(3):
            hist = np.bincount(img[..., c].ravel(), minlength=256)
            step = (hist.sum() - hist[np.flatnonzero(hist)[-1]]) // 255
            darker = np.cumsum(hist) - hist
            out[..., c] = np.minimum((step // 2 + darker) // step, 255)[img[..., c]]
        return out
    h, w = img.shape[:2]
    if name == "Rotate":  # counter-clockwise by int(level * 3) degrees about the centre
        t = math.radians(sign * int(level * 30 / 10))

        def inverse(xs, ys):
            dx, dy = xs - w / 2, ys - h / 2
            return (
                w / 2 + math.cos(t) * dx - math.sin(t) * dy,
                h / 2 + math.sin(t) * dx + math.cos(t) * dy,
                "nearest",
            )

        return _warp(img, inverse)
    s = sign * level * 0.3 / 10
    if name == "ShearX":  # output (x, y) <- input (x + s y, y)
        return _warp(img, lambda xs, ys: (xs + s * ys, ys, "cubic"))
    if name == "ShearY":
        return _warp(img, lambda xs, ys: (xs, ys + s * xs, "cubic"))
    raise KeyError(name)


OPS = ["ShearX", "ShearY", "Rotate", "Color", "Contrast", "Brightness", "Sharpness", "Posterize", "Solarize",
       "AutoContrast", "Equalize", "Invert"]  # fmt: skip


@pytest.mark.parametrize("name", OPS)
def test_apply_op_matches_the_described_mapping(name):
    img = small_photo()
    signs = (1, -1) if name in ("Rotate", "ShearX", "ShearY") else (1,)
    for level in (0, 5, 10):
        for sign in signs:
            out = aa.apply_op(img, name, level, sign=sign)
            assert out.shape == img.shape and out.dtype == np.uint8
            diff = np.abs(out.astype(np.float64) - reference_op(img, name, level, sign)).mean()
            assert diff <= 1.0, (name, level, sign, diff)


def test_apply_op_landmarks():
    img = small_photo()
    grey = aa.apply_op(img, "Color", 0)  # factor 0.1: nearly grey
    assert np.abs(grey.astype(int) - grey.mean(axis=2, keepdims=True)).mean() < 3
    assert not aa.apply_op(img, "Posterize", 10).any()  # 0 bits kept
    np.testing.assert_array_equal(aa.apply_op(img, "Solarize", 0), img)
    np.testing.assert_array_equal(aa.apply_op(img, "Solarize", 10), 255 - img)
    turned = aa.apply_op(img, "Rotate", 10)
    assert not turned[0, 0].any() and not turned[-1, -1].any()  # black corners
    np.testing.assert_array_equal(aa.apply_op(img, "Posterize2", 7), aa.apply_op(img, "Posterize", 7))
    bgr = aa.apply_op(img[:, :, ::-1], "Color", 4, bgr=True)
    np.testing.assert_array_equal(bgr[:, :, ::-1], aa.apply_op(img, "Color", 4))
    with pytest.raises(ValueError, match="unknown"):
        aa.apply_op(img, "Cutout", 3)
    with pytest.raises(ValueError, match="level"):
        aa.apply_op(img, "Rotate", 11)


def test_resnest_policy_table():
    p = aa.policy("resnest")
    assert len(p) == 25 and all(len(sub) == 2 for sub in p)
    assert p[0] == (("Posterize2", 0.4, 8), ("Rotate", 0.6, 9))
    assert p[15] == (("Rotate", 0.8, 8), ("Color", 1.0, 0))
    assert p[18] == (("ShearX", 0.6, 5), ("Equalize", 1.0, 9))
    assert p[24] == (("Equalize", 0.8, 8), ("Equalize", 0.6, 3))
    names = {name for sub in p for name, _, _ in sub}
    assert names == {"Posterize2", "Rotate", "Solarize", "AutoContrast", "Equalize", "Color", "Invert",
                     "Contrast", "Sharpness", "ShearX"}  # fmt: skip
    assert all(0 <= prob <= 1 and 0 <= level <= 10 for sub in p for _, prob, level in sub)
    assert aa.policy("torchvision")[15] == (("Rotate", 0.8, 8), ("Color", 1.0, 2))
    with pytest.raises(ValueError, match="flavour"):
        aa.policy("cifar")


def test_resnest_autoaugment_runs_on_the_whole_image_before_the_crop(photo_rec):
    img = cv2.resize(load_sample_images().images[1], (120, 80))
    payload = np.frombuffer(jpeg_bytes(img), np.uint8)
    seen = []

    class InvertWhole:  # reads the whole image (so the region decoder decodes all of it)
        def draw(self, rng):
            return []

        def reads(self, steps, box, h, w):
            return None

        def uses_histograms(self, steps):
            return False

        def crop(self, image, box, rng, bgr=False, steps=None, hist=None):
            seen.append(image.shape)
            y, x, ch, cw = box
            return 255 - image[y : y + ch, x : x + cw]

    plain = transforms.TrainTransform(32, 0.0, 0.0, None, "bilinear")
    augmented = transforms.TrainTransform(32, 0.0, 0.0, "resnest", "bilinear")
    assert augmented.whole_image_aa and augmented.auto_aug.flavour == "resnest"
    augmented.auto_aug = InvertWhole()
    draw = plain.draw(np.random.default_rng(0), 1)[0]
    a, _ = plain(payload, draw, np.random.default_rng(1))
    b, _ = augmented(payload, draw, np.random.default_rng(1))
    assert seen == [(80, 120, 3)]  # the whole decoded image, not the 32 px crop
    assert np.abs((255 - a.astype(int)) - b).max() <= 1  # then the same crop of it
    # train_iter's AutoAugment is this flavour; the torchvision one stays on the crop.
    it = data.train_iter(photo_rec[0], 2, 32, threads=0, auto_aug=True)
    assert it._transform.whole_image_aa and it._transform.auto_aug.flavour == "resnest"
    assert np.isfinite(next(it).data[0].asnumpy()).all()
    tv = transforms.TrainTransform(32, 0.0, 0.0, "torchvision", "bilinear")
    assert not tv.whole_image_aa and tv.auto_aug.flavour == "torchvision"


# -------------------------------------------------------------------------------------- training crops
def test_tf_style_crop_from_320():
    big = transforms.TrainTransform(320, 0.4, 0.1, None, transforms.interp_name("auto", 320))
    small = transforms.TrainTransform(224, 0.4, 0.1, None, transforms.interp_name("auto", 224))
    assert (
        big.tf_crop
        and not small.tf_crop
        and big.interp == cv2.INTER_CUBIC
        and small.interp == cv2.INTER_LINEAR
    )
    rng = np.random.default_rng(0)
    h, w = 480, 640
    for _ in range(300):
        ratios = rng.uniform(3 / 4, 4 / 3, 10).tolist()
        box = transforms._tf_crop_box(h, w, ratios, rng.random(10).tolist(), *rng.random(2).tolist())
        if box is None:
            continue
        y, x, ch, cw = box
        assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w
        assert 0.1 * h * w <= ch * cw <= h * w and 0.74 <= cw / ch <= 1.35
        assert (ch, cw) != (h, w)
    # The whole image drawn: the evaluation's centre square instead.
    assert transforms._tf_crop_box(h, w, [4 / 3], [1.0], 0.0, 0.0) is None
    # side 320 / 352 x 480 = 436.4: top round(21.8), left round(101.8), far corners round(corner + side)
    assert transforms.centre_box(h, w, 320) == (102, 22, 538, 458)


def test_colour_is_clipped_after_each_operation():
    """Brightness 1.4 then contrast 0.6 on a bright image: clipping at 255 in between changes the result."""
    img = np.full((64, 8, 3), 230, np.uint8)
    img[:32] = 20
    out = transforms.jitter_rounded(img, [0, 1], [1.4, 0.6], None, bgr=True)
    bright = np.clip(np.round(img * 1.4), 0, 255)  # 28 and 255 (clipped from 322)
    mean = bright.mean()
    want = np.clip(np.round(bright * 0.6 + 0.4 * mean), 0, 255)
    np.testing.assert_allclose(out, want, atol=1)
    unclipped = img * 1.4 * 0.6 + 0.4 * (img * 1.4).mean()
    assert np.abs(unclipped - want).max() > 10
    # The default pipeline clips; clip_colour=False is the one affine map.
    assert transforms.TrainTransform(32, 0.4, 0.1, None, "bilinear").clip_colour


def test_operations_left_for_the_crop_give_the_same_pixels():
    """``before_crop`` + ``finish`` on the crop region == the whole sub-policy on the image, then the crop:
    the same pixels when only tables are left, within a twentieth of a grey level with Color, Brightness
    or Contrast (OpenCV's rounding of PIL's truncated blend)."""
    img = cv2.resize(load_sample_images().images[0], (160, 107))[:, :, ::-1].copy()  # BGR, as decoded
    deferred = 0
    for sub in aa.policy("resnest") + [(("Brightness", 1.0, 8), ("Contrast", 1.0, 2))]:
        always = aa.AutoAugment("resnest", [tuple((name, 1.0, level) for name, _, level in sub)])
        whole = always(img, np.random.default_rng(0), bgr=True)[20:90, 30:140].astype(np.float64)
        image, finish = always.before_crop(img, np.random.default_rng(0), bgr=True)
        region = image[20:90, 30:140]
        if finish is not None:
            deferred += 1
            region = finish(region)
        if all(name in aa.TABLE_OPS for name, _, _ in sub):
            np.testing.assert_array_equal(region, whole)
        else:
            assert np.abs(region - whole).mean() < 0.05, sub
    assert deferred >= 20
    steps = [("Equalize", 8, 1), ("Solarize", 5, 1), ("AutoContrast", 5, 1), ("Posterize2", 7, 1)]
    chained = img
    for name, level, sign in steps:
        chained = aa.apply_op(chained, name, level, sign)
    np.testing.assert_array_equal(cv2.LUT(img, aa.channel_tables(img, steps)), chained)


@pytest.mark.parametrize("index", [0, 5, 11, 15, 17, 18])
def test_crop_gives_the_whole_image_chain_cut_to_the_box(index):
    """``AutoAugment.crop`` (the local operation computed only where the crop reads it) == the whole
    sub-policy on the whole image, then the crop: within a twentieth of a grey level mean, at the image's
    edges too, for both signs; the sub-policies with Rotate, ShearX or Sharpness, and a few without."""
    img = cv2.resize(load_sample_images().images[0], (320, 213))[:, :, ::-1].copy()  # BGR, as decoded
    sub = aa.policy("resnest")[index]
    always = aa.AutoAugment("resnest", [tuple((name, 1.0, level) for name, _, level in sub)])
    boxes = [(20, 30, 150, 200), (0, 0, 213, 320), (150, 250, 63, 70), (0, 5, 90, 40)]
    for seed in range(4):  # both signs of Rotate and ShearX
        for y, x, ch, cw in boxes:
            whole = always(img, np.random.default_rng(seed), bgr=True)[y : y + ch, x : x + cw]
            region = always.crop(img, (y, x, ch, cw), np.random.default_rng(seed), bgr=True)
            assert region.shape == whole.shape and region.dtype == np.uint8
            assert np.abs(region.astype(float) - whole).mean() < 0.05, (sub, seed, (y, x, ch, cw))


@pytest.mark.parametrize("shear", [0.15, -0.15, 0.03, 0.0])
def test_shear_x_region_is_pils_bicubic_affine(shear):
    img = cv2.resize(load_sample_images().images[1], (200, 150))
    pil = Image.fromarray(img).transform(
        (200, 150), Image.AFFINE, (1, shear, 0, 0, 1, 0), resample=Image.BICUBIC
    )
    want = np.asarray(pil).astype(int)
    for y, x, ch, cw in [(0, 0, 150, 200), (10, 20, 100, 120), (100, 150, 50, 50)]:
        got = aa.shear_x_region(img, shear, (y, x, ch, cw))
        diff = np.abs(got - want[y : y + ch, x : x + cw])
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05  # float32 against PIL's double


def test_bench_transform_returns_per_image_figures(photo_rec):
    from resnest_gluon.cli import bench_pipeline

    rows = bench_pipeline.bench_transform(photo_rec[0], rounds=2, size=32)
    assert [r["pipeline"] for r in rows] == ["decode_limit", "train", "train_unclipped", "train_autoaug"]
    assert all(r["ms_per_image"] > 0 and r["ratio"] > 0 for r in rows)
    # Clipping's cost is paired per round: a ratio of two positive times, minus 1.
    assert -1.0 < rows[1]["clipping_cost"] < 10.0 and "clipping_cost" not in rows[3]
    rows = bench_pipeline.bench_transform(photo_rec[0], ("train",), rounds=1, size=32)
    assert "clipping_cost" not in rows[1]


def test_lighting_shift_is_opencvs_saturating_add():
    """The lighting step adds whole arrays: the same pixels as ``cv2.add`` with a per-channel scalar (each
    shift rounded half to even, the sum clipped), for shifts of either sign, ties and shifts past 255."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    shifts = [(2.5, -3.5, 0.5), (0.0, 0.0, 0.0), (-300.0, 1.4, 260.2)] + rng.normal(0, 8, (20, 3)).tolist()
    for shift in shifts:
        want = cv2.add(img, (shift[0], shift[1], shift[2], 0.0))
        np.testing.assert_array_equal(transforms.add_per_channel(img, shift), want)


def test_clipped_colour_equals_opencvs_chain():
    """``jitter_rounded`` in every order equals the chain written with one ``cv2.addWeighted`` per operation
    and ``cv2.add`` for the lighting shift: its faster calls give the same pixels."""
    rng = np.random.default_rng(3)
    img = cv2.resize(load_sample_images().images[1], (61, 47))
    grey_w = np.array([[0.114, 0.587, 0.299]] * 3, np.float32)  # BGR
    for order in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        for _ in range(4):
            alphas = rng.uniform(0.6, 1.4, 3).tolist()
            shift = rng.normal(0, 6, 3)
            want = img
            for op, a in zip(order, alphas):
                if op == 0:
                    want = cv2.addWeighted(want, a, want, 0.0, 0.0)
                elif op == 1:
                    m = cv2.mean(want[::8])
                    grey = 0.114 * m[0] + 0.587 * m[1] + 0.299 * m[2]
                    want = cv2.addWeighted(want, a, want, 0.0, (1.0 - a) * grey)
                else:
                    want = cv2.addWeighted(want, a, cv2.transform(want, grey_w), 1.0 - a, 0.0)
            want = cv2.add(want, (shift[2], shift[1], shift[0], 0.0))
            got = transforms.jitter_rounded(img, order, alphas, shift, bgr=True)
            np.testing.assert_array_equal(got, want)


def _colour_crops():
    """Six small RGB crops of the sample photographs, one of uniform noise, one mostly black and white
    (clipped at both ends by every factor away from 1)."""
    crops = [cv2.resize(img[:150, :170], (56, 48)) for img in photographs()]
    crops += [cv2.resize(photographs()[k][200:427, 300:560], (40, 36)) for k in (0, 2)]
    rng = np.random.default_rng(5)
    crops.append(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return crops + [rng.choice(np.array([0, 9, 240, 255], np.uint8), (16, 16, 3))]


_COLOUR_CASES = [  # (order, factors, lighting alphas): both ends of U(0.6, 1.4) and the middle
    ([0, 1, 2], [1.4, 0.6, 1.25], (0.1, -0.2, 0.05)),
    ([2, 1, 0], [0.6, 1.4, 0.77], (-0.15, 0.0, 0.3)),
    ([1, 2, 0], [1.13, 1.39, 0.61], (0.02, 0.1, -0.1)),
    ([2, 0, 1], [0.85, 1.0, 1.3], (0.0, 0.0, 0.0)),
]
# Factors as drawn, away from those (0.6, 1.25, ...) that make PIL's ``m + f (x - m)`` land exactly on an
# integer, which PIL's float32 arithmetic puts a hair below (then truncated) where x < m.
_DRAWN_CASES = [
    ([0, 1, 2], [1.3871, 0.6123, 1.2417], (0.1, -0.2, 0.05)),
    ([2, 1, 0], [0.6389, 1.3612, 0.7713], (-0.15, 0.0, 0.3)),
    ([1, 2, 0], [1.1302, 1.3906, 0.6071], (0.02, 0.1, -0.1)),
    ([2, 0, 1], [0.8537, 1.0049, 1.2983], (0.0, 0.0, 0.0)),
]


def _lighting_shift(alphas) -> np.ndarray:
    return (np.asarray(alphas) * transforms._EIGVAL) @ transforms._EIGVEC.T


@pytest.mark.parametrize("bgr", [True, False])
def test_colour_step_is_mxnets_operators(bgr):
    """``colour="mxnet"`` (below 320 px) against MXNet 1.9.1's own ``random_brightness``/``contrast``/
    ``saturation`` (each with its factor fixed) and ``adjust_lighting``, in the given order: within 0.05 grey
    levels mean and 3 levels on any pixel. What differs is where a value lies within 1/8192 below an integer
    (OpenCV rounds after a shift of just under half a level, MXNet truncates) or contrast's mean (the
    rounded grey's, a few thousandths off MXNet's float sum): one level, up to x1.4 per later step."""
    ops = (mx.nd.image.random_brightness, mx.nd.image.random_contrast, mx.nd.image.random_saturation)
    means = []
    for rgb in _colour_crops():
        for order, factors, alphas in _COLOUR_CASES + _DRAWN_CASES:
            factors = np.float32(factors).tolist()  # MXNet's factors are float32
            want = mx.nd.array(rgb, dtype="uint8")
            for op, a in zip(order, factors):
                want = ops[op](want, a, a)
            want = mx.nd.image.adjust_lighting(want, alpha=alphas).asnumpy().astype(int)
            img = np.ascontiguousarray(rgb[:, :, ::-1]) if bgr else rgb.copy()
            got = transforms.jitter_mxnet(img, order, factors, _lighting_shift(alphas), bgr=bgr)
            np.testing.assert_array_equal(img, rgb[:, :, ::-1] if bgr else rgb)  # the input left alone
            got = (got[:, :, ::-1] if bgr else got).astype(int)
            diff = np.abs(got - want)
            assert diff.max() <= 3 and diff.mean() < 0.05, (order, factors, diff.max(), diff.mean())
            means.append(diff.mean())
    assert np.mean(means) < 0.01
    # Truncation, not rounding: 1.25 x 7 is 8; saturation 0.5 moves (200, 100, 40) towards 0.114 x 40.
    pixel = np.array([[[7, 200, 100]]], np.uint8)
    assert transforms.jitter_mxnet(pixel, [0], [1.25], None, bgr=False).tolist() == [[[8, 250, 125]]]
    pixel = np.array([[[200, 100, 40]]], np.uint8)
    assert transforms.jitter_mxnet(pixel, [2], [0.5], None, bgr=False).tolist() == [[[102, 52, 22]]]


@pytest.mark.parametrize("bgr", [True, False])
def test_large_crop_colour_step_is_pils(bgr):
    """``colour="torchvision"`` (320 px and up) against torchvision's ``ColorJitter`` on a PIL image, i.e.
    PIL's ``ImageEnhance.Brightness``/``Contrast``/``Color`` with the same factors and order, then MXNet's
    lighting: within 0.05 grey levels mean and 3 levels on any pixel (the same truncation offset, and
    OpenCV's grey level one off PIL's on 0.13 % of colours), with factors as drawn (see ``_DRAWN_CASES``)."""
    from PIL import ImageEnhance

    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for rgb in _colour_crops():
        for order, factors, alphas in _DRAWN_CASES:
            pil = Image.fromarray(rgb)
            for op, f in zip(order, factors):
                pil = enhancers[op](pil).enhance(f)
            lit = mx.nd.image.adjust_lighting(mx.nd.array(np.asarray(pil), dtype="uint8"), alpha=alphas)
            want = lit.asnumpy().astype(int)
            img = np.ascontiguousarray(rgb[:, :, ::-1]) if bgr else rgb
            got = transforms.jitter_torchvision(img, order, factors, _lighting_shift(alphas), bgr=bgr)
            got = (got[:, :, ::-1] if bgr else got).astype(int)
            diff = np.abs(got - want)
            assert diff.max() <= 3 and diff.mean() < 0.05, (order, factors, diff.max(), diff.mean())


def test_colour_step_follows_the_crop_size():
    """The reference's colour step by crop size (MXNet's below 320 px, torchvision's from 320), its
    factors' ranges, and the named alternatives."""
    small, large = (transforms.TrainTransform(s, 0.4, 0.1, None, "bilinear") for s in (224, 320))
    assert (small.colour, large.colour) == ("mxnet", "torchvision")
    assert transforms.TrainTransform(320, 0.4, 0.1, None, "bilinear", colour="rounded").colour == "rounded"
    with pytest.raises(ValueError, match="colour must be"):
        transforms.TrainTransform(224, 0.4, 0.1, None, "bilinear", colour="opencv")
    # jitter 1.5: MXNet's factors are 1 + U(-1.5, 1.5), torchvision's U(0, 2.5)
    for s in (224, 320):
        draws = transforms.TrainTransform(s, 1.5, 0.1, None, "bilinear").draw(np.random.default_rng(0), 200)
        factors = np.array([d[5][1] for d in draws])
        assert (factors.min() < 0) == (s < 320) and factors.max() <= 2.5 and factors.min() >= -0.5


def test_autocontrast_from_the_channel_ranges_is_pils():
    """AutoContrast reads only each channel's lowest and highest value (PIL's first and last non-empty
    histogram bins): the same tables as from the histograms, and PIL's pixels, on photographs, views of
    them, flat channels and single pixels."""
    from PIL import ImageOps

    photo = load_sample_images().images[1]
    flat = photo.copy()
    flat[..., 1] = 77
    tiny = [np.zeros((5, 7, 3), np.uint8), photo[9:10, 3:4]]
    cases = [photo, photo[40:300:3, 17:500], photo[::-1], flat] + tiny
    for img in cases:
        want = aa._autocontrast_table(aa._histograms(np.ascontiguousarray(img)))
        np.testing.assert_array_equal(aa._range_table(*aa._channel_range(img)), want)
        np.testing.assert_array_equal(
            aa.apply_op(img, "AutoContrast", 5), np.asarray(ImageOps.autocontrast(Image.fromarray(img)))
        )


def test_pixel_operations_grey_is_pils_on_almost_every_colour():
    """Color and Contrast in the pipeline take PIL's grey level from ``cv2.cvtColor``: on all 2^24 colours,
    at most one level from PIL's "L" conversion, and on fewer than 0.2 % of them (measured: 0.13 %)."""
    v = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([v >> 16, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    want = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.int16)
    for img, bgr in ((rgb, False), (np.ascontiguousarray(rgb[:, :, ::-1]), True)):
        diff = np.abs(aa._grey(img, bgr) - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.002
