"""The region JPEG decoder (resnest_gluon/ops/jpeg_region.cc) and the nearest-neighbour affine kernel
(resnest_gluon/ops/affine.cc): OpenCV's and PIL's pixels exactly, the same training batches as without
them, OpenCV's decoder wherever they do not apply, and no crash where MXNet's own libjpeg is global."""

import os
import shutil
import struct
import subprocess
import sys
from functools import partial

import cv2
import numpy as np
import pytest
from PIL import Image
from test_colour_kernel import batches_on_and_off
from test_reference import photographs

from resnest_gluon.data import autoaugment as aa
from resnest_gluon.data import colour_kernel, jpeg, jpeg_kernel, transforms

SAMPLING = {"4:2:0": 0x221111, "4:2:2": 0x211111, "4:4:4": 0x111111}


@pytest.fixture(scope="module", autouse=True)
def library():
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler on this machine: the kernels cannot be built")
    if not os.path.isfile("/usr/include/jpeglib.h"):
        pytest.skip("no libjpeg-turbo headers on this machine: the region decoder cannot be built")
    assert jpeg_kernel.available(), f"{jpeg_kernel.load_error()} (`make ops` builds it)"
    assert colour_kernel.available(), f"{colour_kernel.load_error()} (`make ops` builds it)"


def encode(rgb, sampling="4:2:0", progressive=False, restart=0):
    params = [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, SAMPLING[sampling]]
    params += [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive), cv2.IMWRITE_JPEG_RST_INTERVAL, restart]
    return cv2.imencode(".jpg", rgb[:, :, ::-1], params)[1].ravel()


def random_parts(h, w, rng, n):
    for _ in range(n):
        ch, cw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        yield int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


@pytest.mark.parametrize("sampling", sorted(SAMPLING))
@pytest.mark.parametrize("kind", ["baseline", "progressive", "restart"])
def test_parts_have_opencvs_pixels(sampling, kind):
    rng = np.random.default_rng(len(sampling) + len(kind))
    for img in photographs()[:3]:
        payload = encode(img, sampling, kind == "progressive", 3 if kind == "restart" else 0)
        want = cv2.imdecode(payload, cv2.IMREAD_COLOR)
        h, w = want.shape[:2]
        assert jpeg.jpeg_header(payload) == (h, w, 1)
        whole = jpeg_kernel.decode(payload, h, w)
        np.testing.assert_array_equal(whole, want)
        edges = [(0, 0, 1, 1), (h - 1, w - 1, 1, 1), (0, w - 17, h, 17), (15, 16, 17, 33), (7, 9, 0, 5)]
        for y, x, ch, cw in edges + list(random_parts(h, w, rng, 12)):
            got = jpeg_kernel.decode(payload, h, w, (y, x, ch, cw))
            np.testing.assert_array_equal(got[y : y + ch, x : x + cw], want[y : y + ch, x : x + cw])


def test_histograms_counted_while_decoding():
    for img in photographs()[:2]:
        payload = encode(img)
        h, w = img.shape[:2]
        hist = np.zeros((3, 256), np.uint32)
        got = jpeg_kernel.decode(payload, h, w, None, hist)
        np.testing.assert_array_equal(hist, aa._histograms(got))
    with pytest.raises(ValueError, match="whole image"):
        jpeg_kernel.decode(payload, h, w, (0, 0, 5, 5), hist)


def test_what_it_does_not_decode_is_left_to_opencv():
    img = photographs()[2]
    h, w = img.shape[:2]
    payload = encode(img)
    grey = cv2.imencode(".jpg", img[:, :, 0])[1].ravel()
    assert jpeg_kernel.decode(grey, h, w) is None  # one component
    assert jpeg_kernel.decode(payload, h + 1, w) is None  # not the size the caller expects
    assert jpeg_kernel.decode(payload, h, w, (h - 3, 0, 4, 4)) is None  # part outside the image
    cut = np.ascontiguousarray(payload[: len(payload) // 2])
    assert jpeg_kernel.decode(cut, h, w) is None  # truncated: a warning in libjpeg
    broken = payload.copy()
    broken[len(broken) // 3 : len(broken) // 3 + 2] = (0xFF, 0xD5)  # a restart marker where none belongs
    assert jpeg_kernel.decode(broken, h, w) is None  # "corrupt JPEG data": a warning
    garbled = payload.copy()
    garbled[len(garbled) // 3 : len(garbled) // 3 + 64] = 0x55  # valid codes, wrong picture: no warning
    got = jpeg_kernel.decode(garbled, h, w)
    assert got is None or np.array_equal(got, cv2.imdecode(garbled, cv2.IMREAD_COLOR))
    assert jpeg_kernel.decode(np.frombuffer(b"\xff\xd8\xff\xd9", np.uint8), 4, 4) is None


def with_exif_orientation(payload: np.ndarray, orientation: int) -> np.ndarray:
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIH2x", 0x0112, 3, 1, orientation) + struct.pack(">I", 0)
    block = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block
    raw = payload.tobytes()
    return np.frombuffer(raw[:2] + app1 + raw[2:], np.uint8)


def test_exif_orientation_is_read_and_a_rotated_image_goes_to_opencv():
    img = photographs()[2]
    payload = encode(img)
    h, w = img.shape[:2]
    assert jpeg.jpeg_header(with_exif_orientation(payload, 1)) == (h, w, 1)
    turned = with_exif_orientation(payload, 6)
    assert jpeg.jpeg_header(turned) == (h, w, 6)
    assert cv2.imdecode(turned, cv2.IMREAD_COLOR).shape[:2] == (w, h)  # OpenCV applies it
    transform = transforms.TrainTransform(64, 0.0, 0.0, None, "bilinear")
    draw = transform.draw(np.random.default_rng(0), 1)[0]
    outs = []
    for switch in ("1", "0"):
        os.environ[jpeg_kernel.ENV] = switch
        try:
            outs.append(transform(turned, draw, np.random.default_rng(1))[0])
        finally:
            del os.environ[jpeg_kernel.ENV]
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("auto_aug", [None, "resnest"])
@pytest.mark.parametrize("size", [64, 320])
def test_training_transform_gives_the_same_batches_with_and_without_it(auto_aug, size, monkeypatch):
    """Every sub-policy's reads (the crop, a rotation's source, the whole image with its histograms)."""
    payloads = [encode(img) for img in photographs()] * 8
    transform = transforms.TrainTransform(size, 0.4, 0.1, auto_aug, transforms.interp_name("auto", size))
    draws = transform.draw(np.random.default_rng(size), len(payloads))
    outs = batches_on_and_off(jpeg_kernel.ENV, transform, payloads, draws, monkeypatch)
    np.testing.assert_array_equal(outs["1"], outs["0"])


def test_autoaugment_reads_only_what_it_says(monkeypatch):
    """``reads`` covers every pixel ``crop`` looks at: outside it the image is NaN-free garbage (255),
    and the crop comes out the same."""
    img = cv2.imdecode(encode(photographs()[0]), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    policy = aa.AutoAugment("resnest")
    rng = np.random.default_rng(5)
    checked = 0
    for sub in policy.sub_policies:
        for _ in range(6):
            steps = [(name, level, 1 if rng.random() < 0.5 else -1) for name, _, level in sub]
            steps = [s for s in steps if rng.random() < 0.8]
            box = transforms._crop_box(
                h, w, [rng.uniform(0.08, 1)], [rng.uniform(-0.28, 0.28)], *rng.random(2)
            )
            part = policy.reads(steps, box, h, w)
            if part is None:
                continue
            y, x, ch, cw = part
            masked = np.full_like(img, 255)
            masked[y : y + ch, x : x + cw] = img[y : y + ch, x : x + cw]
            want = policy.crop(img, box, None, bgr=True, steps=steps)
            np.testing.assert_array_equal(policy.crop(masked, box, None, bgr=True, steps=steps), want)
            checked += 1
    assert checked > 50


def test_rotate_kernel_gives_pils_pixels(monkeypatch):
    affine_nearest = colour_kernel.affine_nearest
    rng = np.random.default_rng(2)
    for img in photographs():
        h, w = img.shape[:2]
        for _ in range(10):
            box = transforms._crop_box(
                h, w, [rng.uniform(0.08, 1)], [rng.uniform(-0.28, 0.28)], *rng.random(2)
            )
            step = ("Rotate", int(rng.integers(0, 11)), 1 if rng.random() < 0.5 else -1)
            sy, sx, sh, sw = src_box = aa._source_box(*step, box, h, w)
            src = img[sy : sy + sh, sx : sx + sw]
            got = aa._rotate_region(src, src_box, step, box, h, w)
            # The plain loop (what a CPU without AVX-512 VBMI runs) gives the same pixels.
            monkeypatch.setattr(colour_kernel, "affine_nearest", partial(affine_nearest, portable=True))
            np.testing.assert_array_equal(aa._rotate_region(src, src_box, step, box, h, w), got)
            monkeypatch.setattr(colour_kernel, "affine_nearest", affine_nearest)
            monkeypatch.setenv(colour_kernel.ENV, "0")
            want = aa._rotate_region(src, src_box, step, box, h, w)
            monkeypatch.delenv(colour_kernel.ENV)
            np.testing.assert_array_equal(got, want)
            y, x, ch, cw = box
            whole = np.asarray(
                Image.fromarray(img).rotate(step[2] * int(step[1] * 3), resample=Image.NEAREST)
            )
            np.testing.assert_array_equal(got, whole[y : y + ch, x : x + cw])


def test_a_kernel_with_other_pixels_is_not_used(caplog):
    """The load-time check: a decoder that does not give OpenCV's pixels (here: one that writes nothing)."""
    assert "differ" in jpeg_kernel._check(lambda *args: 0)
    assert "cannot decode" in jpeg_kernel._check(lambda *args: 1)
    assert jpeg_kernel._check(jpeg_kernel._KERNEL._fn) is None


def test_no_crash_where_mxnets_libjpeg_is_global(tmp_path):
    """Under Horovod, libmxnet.so (which exports its own libjpeg) is in the global scope: a decoder linked
    the usual way bound its libjpeg calls to MXNet's copy and crashed (SIGSEGV) on its first image."""
    script = tmp_path / "global.py"
    script.write_text(
        "import ctypes, os\n"
        "import mxnet, numpy as np, cv2\n"
        "ctypes.CDLL(os.path.join(os.path.dirname(mxnet.__file__), 'libmxnet.so'), mode=ctypes.RTLD_GLOBAL)\n"
        "from resnest_gluon.data import jpeg_kernel\n"
        "noise = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)\n"
        "img = cv2.GaussianBlur(noise, (5, 5), 2)\n"
        "payload = cv2.imencode('.jpg', img)[1].ravel()\n"
        "assert jpeg_kernel.available(), jpeg_kernel.load_error()\n"
        "got = jpeg_kernel.decode(payload, 64, 80, (5, 7, 30, 40))\n"
        "assert (got[5:35, 7:47] == cv2.imdecode(payload, 1)[5:35, 7:47]).all()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_build_into_a_new_path(tmp_path):
    from resnest_gluon import ops

    lib = ops.build_jpeg(str(tmp_path / "jpeg.so"))
    assert os.path.getsize(lib) > 0 and os.listdir(tmp_path) == ["jpeg.so"]
