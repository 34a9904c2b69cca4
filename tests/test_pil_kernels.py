"""AutoAugment's compiled kernels (resnest_gluon/ops/tables.cc and colour.cc): the tables composed from
histograms, the table lookup (AVX-512 VBMI and plain), and PIL's ImageEnhance steps and Sharpness, each
against what it replaces (numpy, OpenCV) or imitates (PIL), pixel for pixel."""

import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps, ImageStat
from test_reference import photographs

from resnest_gluon.data import autoaugment as aa
from resnest_gluon.data import colour_kernel

LEVELS = (0, 1, 4, 5, 8, 10)


@pytest.fixture(scope="module", autouse=True)
def library():
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler on this machine: the kernels cannot be built")
    assert colour_kernel.available(), f"{colour_kernel.load_error()} (`make ops` builds it)"


def images():
    """The photographs (BGR), a cut-out at odd offsets, and small noise images down to 1 x 1."""
    rng = np.random.default_rng(0)
    photos = [np.ascontiguousarray(p[:, :, ::-1]) for p in photographs()[:2]]
    noise = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(1, 1), (2, 5), (3, 3), (17, 29)]]
    return photos + [photos[0][13:211, 7:301]] + noise


@pytest.mark.parametrize("portable", [False, True])
def test_lookup_is_opencvs_on_strided_regions(portable):
    rng = np.random.default_rng(1)
    for img in images():
        h, w = img.shape[:2]
        for same in (False, True):
            table = rng.integers(0, 256, (3, 256), dtype=np.uint8)
            if same:
                table[1:] = table[0]
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            region = img[y:, x:]  # rows strided, widths not a multiple of 64 bytes
            want = cv2.LUT(region, np.ascontiguousarray(table.T).reshape(256, 1, 3))
            np.testing.assert_array_equal(colour_kernel.lut(region, table, portable=portable), want)
            inplace = region.copy()
            colour_kernel.lut(inplace, table, out=inplace, portable=portable)
            np.testing.assert_array_equal(inplace, want)


def _image_of(hist):
    """An image (N x 1 x 3) whose channels have the histograms ``hist`` (rows with equal sums)."""
    return np.stack([np.repeat(np.arange(256, dtype=np.uint8), row) for row in hist], axis=1)[:, None]


def test_table_runs_are_numpys(monkeypatch):
    """Runs of one to three table steps with a histogram step, from photographs' and degenerate histograms
    (one level, flat), as autoaugment's numpy composition gives them."""
    rng = np.random.default_rng(2)
    names = ["Posterize2", "Solarize", "Invert", "Equalize", "AutoContrast"]
    hists = [aa._histograms(img).astype(np.uint32) for img in images()[:3]]
    hists += [np.eye(3, 256, 40, dtype=np.uint32) * 7, np.full((3, 256), 3, np.uint32)]
    checked = 0
    for hist in hists:
        img = _image_of(hist)
        for _ in range(40):
            steps = [(names[rng.integers(5)], int(rng.integers(0, 11)), 1) for _ in range(rng.integers(1, 4))]
            if not any(n in ("Equalize", "AutoContrast") for n, _, _ in steps):
                continue
            got = colour_kernel.table_run(hist, *aa._run_arrays(steps))
            monkeypatch.setenv(colour_kernel.ENV, "0")
            want = np.broadcast_to(aa._run_table(img, steps, hist), (3, 256))
            monkeypatch.delenv(colour_kernel.ENV)
            np.testing.assert_array_equal(got, want, err_msg=str(steps))
            checked += 1
    assert checked > 100
    empty = colour_kernel.table_run(np.zeros((3, 256), np.uint32), *aa._run_arrays([("Equalize", 1, 1)]))
    np.testing.assert_array_equal(empty, np.broadcast_to(np.arange(256), (3, 256)))  # PIL: unchanged
    with pytest.raises(ValueError, match="histogram step"):
        colour_kernel.table_run(None, np.array([1], np.int32), np.zeros((1, 256), np.uint8))


@pytest.mark.parametrize("bgr", [True, False])
def test_enhance_is_pils(bgr):
    """Brightness, Contrast and Color at every level: PIL's pixels exactly; the grey sum is PIL's mean."""
    for img in images():
        rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1] if bgr else img))
        grey = int(ImageStat.Stat(rgb.convert("L")).mean[0] + 0.5)
        total = colour_kernel.pil_enhance(img, [], bgr, out=False)
        assert int(total / (img.shape[0] * img.shape[1]) + 0.5) == grey
        for level in LEVELS:
            f = level * 1.8 / 10 + 0.1
            for name in ("Brightness", "Contrast", "Color"):
                want = np.asarray(getattr(ImageEnhance, name)(rgb).enhance(f))
                got = colour_kernel.pil_enhance(img, [(name, f, grey)], bgr)
                np.testing.assert_array_equal(
                    got[:, :, ::-1] if bgr else got, want, err_msg=f"{name} {level}"
                )


def test_enhance_chains_and_counts_without_writing():
    """Color then Contrast (the policy's sub-policies 14 and 23) in one call, with Contrast's level from the
    grey sum of the coloured image, which is never written."""
    for img in images()[:3]:
        rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
        coloured = ImageEnhance.Color(rgb).enhance(0.82)
        grey = int(ImageStat.Stat(coloured.convert("L")).mean[0] + 0.5)
        total = colour_kernel.pil_enhance(img, [("Color", 0.82, 0)], True, out=False)
        assert int(total / (img.shape[0] * img.shape[1]) + 0.5) == grey
        want = np.asarray(ImageEnhance.Contrast(coloured).enhance(1.54))[:, :, ::-1]
        got = colour_kernel.pil_enhance(img, [("Color", 0.82, 0), ("Contrast", 1.54, grey)], True)
        np.testing.assert_array_equal(got, want)


def test_sharpness_is_pils():
    for img in images():
        rgb = Image.fromarray(img)
        for level in LEVELS:
            f = level * 1.8 / 10 + 0.1
            want = np.asarray(ImageEnhance.Sharpness(rgb).enhance(f))
            np.testing.assert_array_equal(colour_kernel.pil_sharpness(img, f), want, err_msg=str(level))


@pytest.mark.parametrize("sub_policy", [14, 17, 19])
def test_crop_is_the_whole_image_chain(sub_policy):
    """AutoAugment.crop with the kernels (Contrast's level counted without writing the coloured image, one
    enhance call on the region) gives PIL's whole-image chain, cut to the box."""
    policy = aa.AutoAugment("resnest")
    rng = np.random.default_rng(3)
    for img in images()[:3]:
        h, w = img.shape[:2]
        for _ in range(4):
            ch, cw = int(rng.integers(20, h)), int(rng.integers(20, w))
            box = (int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw)), ch, cw)
            steps = [(name, level, 1) for name, _, level in aa.RESNEST_POLICY[sub_policy]]
            got = policy.crop(img, box, None, bgr=True, steps=steps)
            whole = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
            for name, level, _ in steps:
                if name in ("Invert", "Equalize"):
                    whole = getattr(ImageOps, name.lower())(whole)
                else:
                    whole = getattr(ImageEnhance, name)(whole).enhance(level * 1.8 / 10 + 0.1)
            y, x = box[:2]
            want = np.asarray(whole)[y : y + ch, x : x + cw, ::-1]
            np.testing.assert_array_equal(got, want, err_msg=str(steps))
