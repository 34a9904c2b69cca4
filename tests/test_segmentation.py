"""Semantic segmentation: DeepLabV3 on the dilated ResNeSt (gluoncv's published layout and logits)."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd
from mxnet.gluon import HybridBlock

import resnest_gluon
from resnest_gluon import get_model, model_info
from resnest_gluon.models.deeplab import SEG_MODELS
from resnest_gluon.models.resize import bilinear_resize


def layout(net):
    return {k: tuple(p.shape) for k, p in net._collect_params_with_prefix().items()}


def small_deeplab(classes=5, **kwargs):
    """The smallest DeepLab: on ResNeSt-14 (the heads are the full-size ones)."""
    return get_model("deeplab_resnest50_ade", backbone="resnest14", classes=classes, **kwargs)


@pytest.mark.parametrize("name", sorted(SEG_MODELS))
def test_layout_equals_gluoncv_so_published_files_load(name):
    """Same keys and shapes as gluoncv's model: its published file loads unchanged (load is strict)."""
    from gluoncv.model_zoo import get_model as gluoncv_model

    ref = gluoncv_model(name, pretrained=False, pretrained_base=False)
    net = get_model(name)
    assert layout(net) == layout(ref)
    assert len(layout(net)) == len(layout(ref)) and net.classes == 150
    info = model_info(name)
    assert info["backbone"] == name.split("_")[1] and len(info["sha1"]) == 40
    assert 80 < info["pixacc"] < 83 and 45 < info["miou"] < 49


def _gluoncv_with_random_weights(height, width, seed=0):
    from gluoncv.model_zoo.deeplabv3 import DeepLabV3 as GluonDeepLab

    ref = GluonDeepLab(150, backbone="resnest50", pretrained_base=False, height=height, width=width)
    ref.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(seed)
    for key, p in ref._collect_params_with_prefix().items():
        if key.endswith(("gamma", "beta", "running_mean", "running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
    return ref


def test_same_logits_as_gluoncv_from_its_file_at_480_and_at_another_size(tmp_path):
    """gluoncv's model writes the file (random weights); ours loads it and gives its logits to 1e-4, main and
    auxiliary, hybridized at 480 px, then (the same model) at 96x64, where gluoncv needs a model built for
    that size, and imperatively. At 480 px the largest difference was 1.0e-5 (logits up to 7.5)."""
    ref = _gluoncv_with_random_weights(480, 480)
    path = str(tmp_path / "gluoncv.params")
    ref.save_parameters(path)
    rng = np.random.default_rng(1)
    x = mx.nd.array(rng.uniform(-1, 1, (1, 3, 480, 480)))
    main, aux = (o.asnumpy() for o in ref(x))
    del ref

    net = get_model("deeplab_resnest50_ade", pretrained=path, aux=True)
    net.hybridize(static_alloc=True, static_shape=True)
    out, out_aux = net(x)
    assert out.shape == (1, 150, 480, 480)
    np.testing.assert_allclose(out.asnumpy(), main, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out_aux.asnumpy(), aux, rtol=1e-4, atol=1e-4)

    small = _gluoncv_with_random_weights(96, 64, seed=2)
    small.save_parameters(path)
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 96, 64)))
    expected = small(x)[0].asnumpy()
    net.load_parameters(path)
    net.set_aux(False)  # inference: the main logits alone
    out = net(x)
    assert out.shape == (2, 150, 96, 64)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-4, atol=1e-4)
    net.hybridize(False)
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_small_deeplab_trains_at_any_size_with_its_auxiliary_head():
    net = small_deeplab(aux=True)
    net.initialize(mx.init.Xavier())
    for shape in ((2, 3, 64, 64), (2, 3, 72, 40)):  # batch 2: the attention BN sees 1x1 maps
        x = mx.nd.random.uniform(shape=shape)
        with autograd.record():
            out, aux = net(x)
            loss = out.mean() + 0.5 * aux.mean()
        loss.backward()
        assert out.shape == aux.shape == (shape[0], 5) + shape[2:]
    grads = {k: p.grad() for k, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}
    missing = [k for k, g in grads.items() if not np.abs(g.asnumpy()).sum() > 0]
    assert not missing, missing
    assert not np.isnan(out.asnumpy()).any()


def test_small_deeplab_hybridized_equals_imperative_and_exports(tmp_path):
    from resnest_gluon import deploy

    net = small_deeplab()
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=(1, 3, 64, 48))
    expected = net(x).asnumpy()
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    assert net(mx.nd.zeros((1, 3, 40, 56))).shape == (1, 5, 40, 56)
    deploy.export(net, str(tmp_path / "seg"), (1, 3, 64, 48))
    same = deploy.load_exported(str(tmp_path / "seg"))
    np.testing.assert_allclose(same(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)
    assert same(mx.nd.zeros((1, 3, 40, 56))).shape == (1, 5, 40, 56)  # nothing sized at export
    deploy.prepare_for_inference(net)  # oneDNN fusion where the CPU has it (1.9e-6 here)
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_published_file_is_checked(tmp_path):
    name = "deeplab_resnest50_ade"
    with pytest.raises(FileNotFoundError, match=f"resnest-download {name}"):
        get_model(name, pretrained=True, root=str(tmp_path))
    sha1 = SEG_MODELS[name]["sha1"]
    (tmp_path / f"{name}-{sha1[:8]}.params").write_bytes(b"not the file")
    with pytest.raises(ValueError, match="SHA-1"):
        get_model(name, pretrained=True, root=str(tmp_path))


def test_registry_keeps_classifiers_apart():
    assert "deeplab_resnest50_ade" not in resnest_gluon.list_models()  # the classification commands' list
    with pytest.raises(ValueError, match="deeplab_resnest50_ade"):
        get_model("deeplab_resnest51_ade")


# ----------------------------------------------------------------------------------------- data, metrics
def blocks(h, w, labels=(0, 3, 7, -1), seed=0):
    """A mask of four rectangles of distinct labels (one ignored) and an image that paints each label its own
    colour, so that alignment can be read off the image wherever it is flat."""
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))
    mask = np.empty((h, w), np.int32)
    mask[:y, :x], mask[:y, x:], mask[y:, :x], mask[y:, x:] = labels
    # affinely independent colours: no blend of some of them is another one
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    colours = {lab: np.array(palette[i], np.uint8) for i, lab in enumerate(labels)}
    img = np.zeros((h, w, 3), np.uint8)
    for lab, colour in colours.items():
        img[mask == lab] = colour
    return img, mask, colours


def test_train_transform_keeps_image_and_mask_aligned_and_labels_unmixed():
    from resnest_gluon.data.segmentation import IGNORE, train_transform

    rng = np.random.default_rng(0)
    flips, pads = 0, 0
    for i in range(40):
        img, mask, colours = blocks(int(rng.integers(30, 90)), int(rng.integers(30, 90)), seed=i)
        out_img, out_mask = train_transform(img, mask, rng, crop_size=48, base_size=52, blur=False)
        assert out_img.shape == (48, 48, 3) and out_img.dtype == np.uint8
        assert out_mask.shape == (48, 48) and out_mask.dtype == np.int32
        assert set(np.unique(out_mask)) <= {0, 3, 7, IGNORE}  # nearest: never a label between two
        for lab, colour in colours.items():  # flat colour inside a block: its mask label is that block's
            inside = (out_img == colour).all(axis=2)
            assert (out_mask[inside] == lab).all()
        padded = (out_img == 0).all(axis=2) & (out_mask == IGNORE)
        pads += bool(padded.any())
        # the top-left block (label 0) is left of the top-right one (3) unless the pair was mirrored
        cols = {lab: np.nonzero((out_mask == lab).any(axis=0))[0] for lab in (0, 3)}
        if len(cols[0]) and len(cols[3]):
            flips += cols[0].mean() > cols[3].mean()
    assert 5 < flips < 35 and pads > 5  # both mirror sides and padding (scale down to 26 px) were drawn


def test_train_transform_pads_with_the_ignore_label_and_blurs_only_the_image():
    from resnest_gluon.data.segmentation import train_transform

    img, mask, _ = blocks(20, 30)
    rng = np.random.default_rng(3)
    for _ in range(10):
        out_img, out_mask = train_transform(img, mask, rng, crop_size=64, base_size=30, scale=(1.0, 1.0))
        # 30 px wide, 20 high at scale 1: the crop's bottom-right overhangs, filled with the ignore label
        assert ((out_mask == -1).sum(axis=None)) >= 64 * 64 - 20 * 30
        assert set(np.unique(out_mask)) <= {0, 3, 7, -1}
    out_img, out_mask = train_transform(img, mask, rng, crop_size=64, base_size=30, ignore_label=255)
    assert 255 in out_mask


def test_val_transform_and_normalize():
    from resnest_gluon.data.segmentation import ade20k_mask, normalize, val_transform

    img, mask, colours = blocks(60, 90)
    out_img, out_mask = val_transform(img, mask, crop_size=40)
    assert out_img.shape == (40, 40, 3) and out_mask.shape == (40, 40)
    for lab, colour in colours.items():
        assert (out_mask[(out_img == colour).all(axis=2)] == lab).all()
    chw = normalize(out_img)
    assert chw.shape == (3, 40, 40) and chw.dtype == np.float32
    assert ade20k_mask(np.array([[0, 1, 150]], np.uint8)).tolist() == [[-1, 0, 149]]


def test_metric_equals_gluoncv_and_counts_add_up_across_shards():
    from gluoncv.utils.metrics.segmentation import SegmentationMetric as GluonMetric

    from resnest_gluon.data.segmentation import SegmentationMetric

    rng = np.random.default_rng(0)
    classes = 6
    logits = rng.normal(size=(4, classes, 9, 11)).astype(np.float32)
    label = rng.integers(-1, classes, size=(4, 9, 11)).astype(np.int32)
    label[label == 5] = 4  # class 5 never labelled nor predicted: its IoU counts 0 in gluoncv's mean
    logits[:, 5] = -10
    ref = GluonMetric(classes)
    ref.update(mx.nd.array(label), mx.nd.array(logits))
    whole = SegmentationMetric(classes)
    whole.update(label, logits)
    np.testing.assert_allclose(whole.get(), ref.get(), rtol=1e-12)
    assert whole.labelled == int((label >= 0).sum())  # the ignore label is left out
    shards = [SegmentationMetric(classes) for _ in range(2)]
    shards[0].update(label[:3], logits[:3])
    shards[1].update(label[3:], logits[3:])
    total = SegmentationMetric(classes)
    total.set_counts(shards[0].counts() + shards[1].counts())
    np.testing.assert_array_equal(total.counts(), whole.counts())
    pixacc, miou = whole.get(present_only=True)
    assert miou > whole.get()[1] and pixacc == whole.get()[0]
    perfect = SegmentationMetric(classes)
    perfect.update(label, np.where(label < 0, 0, label))
    assert perfect.get(present_only=True) == (1.0, 1.0)


# ----------------------------------------------------------------------------------------- commands
def make_seg_folder(root, counts=(("training", 4), ("validation", 2)), size=(40, 48)):
    """ADE20K's layout with 3 classes: a noisy grey background (0), a red box (1) and a blue disc (2), and
    a border of 255 (ignored with --classes 3 --mask-offset 0)."""
    import cv2

    rng = np.random.default_rng(0)
    h, w = size
    for split, n in counts:
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(90, 160, (h, w, 3)).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            y, x = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
            img[y : y + 14, x : x + 16], mask[y : y + 14, x : x + 16] = (230, 30, 30), 1
            cy, cx = int(rng.integers(10, h - 10)), int(rng.integers(10, w - 10))
            disc = (np.arange(h)[:, None] - cy) ** 2 + (np.arange(w)[None] - cx) ** 2 < 49
            img[disc], mask[disc] = (30, 30, 230), 2
            mask[:1], img[:1] = 255, 0
            cv2.imwrite(str(root / "images" / split / f"im{i:03d}.jpg"), img[:, :, ::-1])
            cv2.imwrite(str(root / "annotations" / split / f"im{i:03d}.png"), mask)


def test_train_seg_then_verify_seg_on_a_tiny_folder(tmp_path):
    import json

    from resnest_gluon.cli import train_seg, verify_seg

    make_seg_folder(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data-root", str(tmp_path / "data"), "--classes", "3", "--mask-offset", "0"]
    model = ["--model", "deeplab_resnest50_ade", "--backbone", "resnest14"]
    result = train_seg.main(
        model
        + common
        + ["--ctx", "cpu", "--crop-size", "32", "--base-size", "40", "--epochs", "1", "--batch-size", "2"]
        + ["--lr", "0.5", "--data-threads", "2", "--save-dir", str(run)]
    )
    assert 0 <= result["val_miou"] <= 100 and 0 <= result["val_pixacc"] <= 100
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1] and np.isfinite(rows[0]["train_loss"])
    # poly over 2 updates (4 images, batch 2): the last update's rate is peak * (1 - 1/2) ** 0.9
    assert rows[0]["lr"] == pytest.approx(0.5 * 2 / 256 * 0.5**0.9)
    best = run / "deeplab_resnest50_ade-best.params"
    assert best.exists()

    weights = [
        "--params",
        str(best),
        "--base-size",
        "40",
        "--crop-size",
        "32",
        "--json",
        str(tmp_path / "v.json"),
    ]
    single = verify_seg.main(model + common + weights)
    assert single["images"] == 2 and single["labelled_pixels"] == 2 * 39 * 48  # the 255 border left out
    assert json.load(open(tmp_path / "v.json"))["miou"] == single["miou"]
    multi = ["--scales", "0.75", "1.25", "--flip", "--limit", "1"]  # 1.25: sliding windows
    multi = verify_seg.main(model + common + weights + multi)
    assert multi["labelled_pixels"] == 39 * 48 and 0 <= multi["miou"] <= 100


def test_backbone_starts_from_a_classification_file(tmp_path):
    """``pretrained_backbone`` (get_model) and ``--pretrained FILE`` (train-seg) copy a classifier's weights
    into the dilated backbone; the classifier itself is dropped and the heads start fresh."""
    import argparse

    from resnest_gluon.cli.train_seg import load_backbone_weights

    classifier = get_model("resnest14", classes=10)
    classifier.initialize(mx.init.Xavier())
    path = str(tmp_path / "resnest14.params")
    classifier.save_parameters(path)
    expected = classifier.layer4[0].conv2.conv.weight.data().asnumpy()

    net = small_deeplab(pretrained_backbone=path)  # heads initialised, backbone loaded
    np.testing.assert_array_equal(net.layer4[0].conv2.conv.weight.data().asnumpy(), expected)
    assert net(mx.nd.zeros((1, 3, 32, 32))).shape == (1, 5, 32, 32)

    net = small_deeplab()
    net.initialize(mx.init.Xavier())
    args = argparse.Namespace(model="deeplab_resnest50_ade", backbone="resnest14", pretrained=path)
    assert load_backbone_weights(net, args, mx.cpu()) == "resnest14"
    np.testing.assert_array_equal(net.layer4[0].conv2.conv.weight.data().asnumpy(), expected)
    other = get_model("resnest26")
    other.initialize()
    other.save_parameters(path)
    with pytest.raises(ValueError, match="is not a resnest14: it has 'layer1.1"):
        small_deeplab(pretrained_backbone=path)


class _Resize(HybridBlock):
    """``bilinear_resize`` to ``like``'s size, or to a fixed ``size``."""

    def __init__(self, size=None):
        super().__init__()
        self.size = size

    def hybrid_forward(self, F, x, *like):
        return bilinear_resize(F, x, *like, size=self.size)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 3, 7, 9), (50, 33)),  # odd sizes, up
        ((1, 4, 12, 16), (96, 128)),  # DeepLab's 8x
        ((2, 4, 9, 13), (4, 5)),  # down
        ((1, 2, 1, 5), (4, 17)),  # a single input row
        ((1, 2, 6, 1), (1, 8)),  # a single output row, a single input column
        ((1, 2, 5, 6), (1, 1)),
        ((1, 3, 8, 8), (8, 8)),  # same size: a copy
    ],
)
@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("hybrid", [False, True])
def test_fast_resize_equals_bilinear_resize2d(shape, size, fixed, hybrid):
    """The two matrix products give BilinearResize2D's numbers (align_corners), forward and backward, to
    float rounding (a few 1e-6 on maps with values up to about 45), imperative and hybridized, to ``like``'s
    size and to a fixed one."""
    rng = np.random.default_rng(sum(shape) + sum(size))
    x = mx.nd.array(rng.standard_normal(shape) * 10)
    like = mx.nd.zeros(shape[:2] + size)
    head = mx.nd.array(rng.standard_normal(shape[:2] + size))  # the gradient arriving from above
    x.attach_grad()
    with autograd.record():
        ref = mx.nd.contrib.BilinearResize2D(x, like=like, mode="like")
    ref.backward(head)
    ref_grad = x.grad.asnumpy()
    block = _Resize(size if fixed else None)
    if hybrid:
        block.hybridize(static_alloc=True, static_shape=True)
    with autograd.record():
        out = block(x) if fixed else block(x, like)
    out.backward(head)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.asnumpy(), ref_grad, rtol=1e-5, atol=1e-5)
