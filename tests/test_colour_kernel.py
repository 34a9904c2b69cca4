"""The compiled colour kernel (resnest_gluon/ops/colour.cc): the same pixels as MXNet's operators and PIL,
a level off OpenCV's fallback on the odd pixel, BGR and RGB, odd sizes, and the same batches in the
training transform as with the fallback."""

import os
import shutil

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image, ImageEnhance
from test_reference import (
    _COLOUR_CASES,
    _DRAWN_CASES,
    _colour_crops,
    _lighting_shift,
    jpeg_bytes,
    photographs,
)

from resnest_gluon.data import colour_kernel, transforms

IDENTITY = np.eye(3, 4, dtype=np.float32)


@pytest.fixture(scope="module", autouse=True)
def library():
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler on this machine: the colour kernel cannot be built")
    assert colour_kernel.available(), f"{colour_kernel.load_error()} (`make ops` builds it)"


def kernel(img, flavour, order, factors, shift, bgr, affine=IDENTITY):
    out = np.full((3,) + img.shape[:2], np.nan, np.float32)
    colour_kernel.colour_normalise(img, flavour, order, factors, shift, affine, out, bgr)
    return out


def pixels(out, bgr):
    """The kernel's output with the identity map, as integer HWC RGB."""
    hwc = out.transpose(1, 2, 0)
    assert np.array_equal(hwc, np.round(hwc))  # whole levels
    return (hwc[:, :, ::-1] if bgr else hwc).astype(int)


def reference(rgb, flavour, order, factors, alphas):
    """MXNet 1.9.1's operators, or torchvision's ColorJitter via PIL, then MXNet's lighting."""
    if flavour == "mxnet":
        ops = (mx.nd.image.random_brightness, mx.nd.image.random_contrast, mx.nd.image.random_saturation)
        want = mx.nd.array(rgb, dtype="uint8")
        for op, a in zip(order, factors):
            want = ops[op](want, a, a)
    else:
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        pil = Image.fromarray(rgb)
        for op, f in zip(order, factors):
            pil = enhancers[op](pil).enhance(f)
        want = mx.nd.array(np.asarray(pil), dtype="uint8")
    return mx.nd.image.adjust_lighting(want, alpha=alphas).asnumpy().astype(int)


@pytest.mark.parametrize("flavour", ["mxnet", "torchvision"])
@pytest.mark.parametrize("bgr", [True, False])
def test_kernel_is_mxnets_operators_and_pil(flavour, bgr):
    """Every pixel equal to MXNet's operators (below 320 px) and PIL's ImageEnhance (from 320), on the
    crops and factors of tests/test_reference.py; OpenCV's fallback is within 2 levels and 0.03 mean."""
    cases = _COLOUR_CASES + _DRAWN_CASES if flavour == "mxnet" else _DRAWN_CASES
    for rgb in _colour_crops():
        for order, factors, alphas in cases:
            factors = np.float32(factors).tolist()
            want = reference(rgb, flavour, order, factors, alphas)
            img = np.ascontiguousarray(rgb[:, :, ::-1]) if bgr else rgb.copy()
            shift = _lighting_shift(alphas)
            got = pixels(kernel(img, flavour, order, factors, shift, bgr), bgr)
            np.testing.assert_array_equal(got, want, err_msg=str((order, factors)))
            fallback = transforms._JITTER[flavour](img, order, factors, shift, bgr)
            diff = np.abs((fallback[:, :, ::-1] if bgr else fallback).astype(int) - got)
            assert diff.max() <= 2 and diff.mean() < 0.03


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (17, 300), (224, 224)])
@pytest.mark.parametrize("flavour", ["mxnet", "torchvision"])
def test_kernel_against_the_fallback_with_the_affine(shape, flavour):
    """Odd sizes (chunk tails), every order, fewer steps, no lighting: the kernel's normalised output
    against OpenCV's steps then ``write_chw``: a few levels at most, a small fraction of one on average."""
    rng = np.random.default_rng(7)
    photo = photographs()[1]
    img = cv2.resize(photo, shape[::-1], interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()  # BGR
    # 1 / std with a little mixing (as the unclipped map has): each row's weights sum to under 1 / 57.
    affine = np.array(
        [[0.0, 5e-4, 0.017, -2.1], [3e-4, 0.017, 4e-4, -2.0], [0.0172, 6e-4, 0.0, -1.8]], np.float32
    )
    scratch = np.empty(img.shape, np.float32)
    means = []
    for order in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0], [1], [2, 0], []):
        factors = rng.uniform(0.6, 1.4, len(order)).tolist()
        for shift in (None, rng.normal(0, 6, 3)):
            got = kernel(img, flavour, order, factors, shift, True, affine)
            want = np.empty_like(got)
            jittered = transforms._JITTER[flavour](img, order, factors, shift, True)
            transforms.write_chw(jittered, affine, want, scratch)
            diff = np.abs(got - want) * 57.0  # in grey levels
            assert diff.max() <= 3.01, (order, shift, diff.max())
            means.append(diff.mean())
    assert np.mean(means) < (0.05 if img.size > 300 else 0.5)  # one pixel a level off is a big share of 35


def test_output_at_any_alignment():
    """The output is streamed past the cache in 16-byte stores: a slot starting 4, 8 or 12 bytes off a
    16-byte boundary gets the same numbers (head and tail written one by one), and nothing beside it."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
    steps = ([1, 0, 2], [1.2, 0.9, 0.7], (3.0, -2.0, 1.0))
    want = kernel(img, "mxnet", *steps, True)
    for skip in range(4):
        flat = np.full(want.size + 8, np.nan, np.float32)
        start = skip + (-flat.ctypes.data // 4) % 4  # 4 * skip bytes past a 16-byte boundary
        out = flat[start : start + want.size].reshape(want.shape)
        colour_kernel.colour_normalise(img, "mxnet", *steps, IDENTITY, out, True)
        np.testing.assert_array_equal(out, want)
        assert np.isnan(flat[:start]).all() and np.isnan(flat[start + want.size :]).all()


def test_kernel_checks_its_arguments():
    img = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="img must be"):
        kernel(img[:, :5], "mxnet", [0], [1.1], None, True)  # not contiguous
    with pytest.raises(ValueError, match="out must be"):
        colour_kernel.colour_normalise(img, "mxnet", [0], [1.1], None, IDENTITY, np.empty((3, 6, 4)), True)
    with pytest.raises(ValueError, match="flavour"):
        kernel(img, "rounded", [0], [1.1], None, True)
    with pytest.raises(ValueError, match="order"):
        kernel(img, "mxnet", [3], [1.1], None, True)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(colour_kernel.ENV, "0")
    assert not colour_kernel.available() and "=0" in colour_kernel.load_error()
    monkeypatch.delenv(colour_kernel.ENV)
    assert colour_kernel.available()


@pytest.mark.parametrize("size", [224, 320])
@pytest.mark.parametrize("auto_aug", [None, "torchvision"])
def test_transform_gives_the_fallbacks_batch(size, auto_aug, monkeypatch):
    """The training transform's output with the kernel (MXNet's flavour at 224 px, PIL's at 320; BGR
    crops, and RGB ones after torchvision's AutoAugment) against the same draws on OpenCV."""
    payloads = [np.frombuffer(jpeg_bytes(p), np.uint8) for p in photographs()]
    transform = transforms.TrainTransform(size, 0.4, 0.1, auto_aug, transforms.interp_name("auto", size))
    draws = transform.draw(np.random.default_rng(3), len(payloads))
    outs = batches_on_and_off(colour_kernel.ENV, transform, payloads, draws, monkeypatch)
    diff = np.abs(outs["1"] - outs["0"]) * 58.4  # about grey levels
    assert diff.max() <= 3.01 and diff.mean() < 0.01, (diff.max(), diff.mean())
    # And the same as the transform's uint8 crop through write_chw (the path the ctx= iterator takes).
    monkeypatch.setenv(colour_kernel.ENV, "0")
    img, affine = transform(payloads[0], draws[0], np.random.default_rng(0))
    want = np.empty((3, size, size), np.float32)
    transforms.write_chw(img, affine, want, np.empty((size, size, 3), np.float32))
    np.testing.assert_array_equal(outs["0"][0], want)


def batches_on_and_off(env, transform, payloads, draws, monkeypatch) -> dict:
    """The transform's float32 batch with ``env`` set to "1" and to "0" (a kernel in use, then not)."""
    size = transform.size
    outs = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(env, switch)
        out = np.empty((len(payloads), 3, size, size), np.float32)
        scratch = np.empty((size, size, 3), np.float32)
        for j, (payload, draw) in enumerate(zip(payloads, draws)):
            transform.write(payload, draw, np.random.default_rng(j), out[j], scratch)
        outs[switch] = out
    return outs


def test_build_into_a_new_path_and_a_failed_build_leaves_the_old(tmp_path):
    from resnest_gluon import ops

    lib = ops.build_colour(str(tmp_path / "colour.so"))
    assert os.path.getsize(lib) > 0
    (tmp_path / "colour.so").write_bytes(b"previous build")
    with pytest.raises(RuntimeError, match="building .* failed"):
        ops.build_colour(str(tmp_path / "colour.so"), compiler="false")
    assert (tmp_path / "colour.so").read_bytes() == b"previous build"
    assert os.listdir(tmp_path) == ["colour.so"]
