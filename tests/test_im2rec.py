"""Tests for tools/im2rec.py and tools/rec_check.py on tiny images made here."""

import importlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(os.path.dirname(mx.__file__), "tools", "im2rec.py")


def _load(name):
    return importlib.import_module(f"resnest_gluon.cli.{name}")


im2rec = _load("im2rec")
rec_check = _load("rec_check")


def _photo(h, w, seed=0):
    """A smooth, photo-like BGR image (JPEG error stays small on it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [127 + 100 * np.sin(x / (7 + 3 * c + rng.random()) + y / (11 + c)) for c in range(3)]
    return np.clip(np.dstack(chans), 0, 255).astype(np.uint8)


def _jpeg_bytes(img, quality=95):
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _cmyk_jpeg(img):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[:, :, ::-1]).convert("CMYK").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _make_clean(root):
    """Images both tools pack identically."""
    _write(os.path.join(root, "cat", "a.jpg"), _jpeg_bytes(_photo(30, 40, 1)))
    _write(os.path.join(root, "cat", "b.jpg"), _jpeg_bytes(_photo(50, 20, 2)))
    _write(
        os.path.join(root, "cat", "gray.jpg"),
        _jpeg_bytes(cv2.cvtColor(_photo(30, 30, 3), cv2.COLOR_BGR2GRAY)),
    )
    _write(os.path.join(root, "dog", "c.png"), cv2.imencode(".png", _photo(28, 36, 4))[1].tobytes())
    _write(os.path.join(root, "dog", "cmyk.jpg"), _cmyk_jpeg(_photo(32, 40, 5)))
    bgra = np.dstack([_photo(32, 32, 6), np.linspace(0, 255, 32 * 32).reshape(32, 32).astype(np.uint8)])
    _write(os.path.join(root, "dog", "alpha.png"), cv2.imencode(".png", bgra)[1].tobytes())
    deep = _photo(30, 40, 7).astype(np.uint16) * 257
    _write(os.path.join(root, "dog", "deep.png"), cv2.imencode(".png", deep)[1].tobytes())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A class folder tree with good, odd and broken files."""
    root = str(tmp_path_factory.mktemp("images"))
    _make_clean(root)
    big = cv2.resize(_photo(30, 42, 8), (420, 300), interpolation=cv2.INTER_CUBIC)  # smooth: no aliasing
    _write(os.path.join(root, "dog", "big.jpg"), _jpeg_bytes(big))
    good = _jpeg_bytes(_photo(30, 40, 9))
    _write(os.path.join(root, "junk", "corrupt.jpg"), good[:4] + bytes(range(256)) * 4)
    _write(os.path.join(root, "junk", "truncated.jpg"), good[: len(good) // 2])
    _write(os.path.join(root, "junk", "empty.jpg"), b"")
    _write(os.path.join(root, "junk", "text.png"), b"this is not an image\n")
    return root


BROKEN = {"junk/corrupt.jpg", "junk/truncated.jpg", "junk/empty.jpg", "junk/text.png"}


def _reference_pixels(path, resize, center_crop):
    """What the reference pipeline makes of a file, before JPEG encoding (BGR)."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if center_crop:
        img = im2rec._center_crop(img)
    return cv2.resize(img, im2rec.target_size(img.shape[0], img.shape[1], resize))


def _read_lst(path):
    items, bad = im2rec.read_list(path)
    assert not bad
    return items


def _mx_records(prefix):
    rec = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "r")
    out = []
    for key in rec.keys:
        header, img = mx.recordio.unpack_img(rec.read_idx(key), cv2.IMREAD_COLOR)
        out.append((key, header, img))
    rec.close()
    return out


def test_frame_record_matches_mxnet_writer(tmp_path):
    magic = struct.pack("<I", im2rec.RECORDIO_MAGIC)
    payloads = [
        b"abc",
        magic + b"xyz",
        b"1234" + magic + b"5678" + magic,
        b"12" + magic + b"34",  # unaligned: not split
        magic * 3 + b"!",
        b"",
        os.urandom(1001),
    ]
    ours = tmp_path / "ours"
    writer = im2rec.RecordWriter(str(ours) + ".rec", str(ours) + ".idx")
    for i, p in enumerate(payloads):
        writer.write(i, p)
    writer.commit()
    ref = mx.recordio.MXIndexedRecordIO(str(tmp_path / "ref.idx"), str(tmp_path / "ref.rec"), "w")
    for i, p in enumerate(payloads):
        ref.write_idx(i, p)
    ref.close()
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "ref.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_text() == (tmp_path / "ref.idx").read_text()
    reader = mx.recordio.MXIndexedRecordIO(str(ours) + ".idx", str(ours) + ".rec", "r")
    assert [reader.read_idx(i) for i in range(len(payloads))] == payloads
    with open(str(ours) + ".rec", "rb") as f:
        assert [p for _, p in rec_check.iter_records(f, os.path.getsize(str(ours) + ".rec"))] == payloads
    assert not list(tmp_path.glob("*.tmp"))


def test_list_labels_and_splits(images, tmp_path):
    assert im2rec.main(["--list", "--recursive", str(tmp_path / "ours"), images]) == 0
    labels = {item.path.split("/")[0]: item.labels[0] for item in _read_lst(str(tmp_path / "ours.lst"))}
    assert labels == {"cat": 0.0, "dog": 1.0, "junk": 2.0}
    # splits and chunks as the reference names them
    im2rec.main(
        ["--list", "--recursive", "--train-ratio", "0.5", "--test-ratio", "0.25", str(tmp_path / "s"), images]
    )
    sizes = [len(_read_lst(str(tmp_path / f"s_{n}.lst"))) for n in ("train", "val", "test")]
    assert sizes == [6, 3, 3]


@pytest.mark.parametrize("workers", [1, 2])
def test_round_trip_with_all_readers(images, tmp_path, workers):
    prefix = str(tmp_path / "data")
    assert im2rec.main(["--list", "--recursive", prefix, images]) == 0
    items = _read_lst(prefix + ".lst")
    args = [prefix, images, "--resize", "24", "--center-crop", "--num-thread", str(workers), "--no-progress"]
    assert im2rec.main(args) == 2  # broken files were skipped

    report = (tmp_path / "data.skipped.tsv").read_text().splitlines()
    reasons = dict(line.split("\t")[1:] for line in report[1:])
    assert set(reasons) == BROKEN
    assert "empty" in reasons["junk/empty.jpg"] and "truncated" in reasons["junk/truncated.jpg"]

    kept = [item for item in items if item.path not in BROKEN]
    records = _mx_records(prefix)
    assert [key for key, _, _ in records] == [item.index for item in kept]  # list order
    for item, (_, header, img) in zip(kept, records):
        assert header.label == item.labels[0] and header.id == item.index
        assert img.shape == (24, 24, 3)
        expected = _reference_pixels(os.path.join(images, item.path), 24, True).astype(np.float32)
        # big.jpg is decoded at 1/8 size by libjpeg (better anti-aliasing than a plain bilinear shrink)
        tolerance = 6 if item.path.endswith("big.jpg") else 3
        assert np.abs(img - expected).mean() < tolerance, item.path

    it = mx.io.ImageRecordIter(
        path_imgrec=prefix + ".rec", data_shape=(3, 24, 24), batch_size=len(kept), shuffle=False
    )
    batch = it.next()
    got = batch.data[0].asnumpy()
    assert list(batch.label[0].asnumpy()) == [item.labels[0] for item in kept]
    for n, (_, _, img) in enumerate(records):
        assert np.abs(got[n].transpose(1, 2, 0) - img[:, :, ::-1]).mean() < 1.5  # RGB, same decoder

    dataset = mx.gluon.data.vision.ImageRecordDataset(prefix + ".rec")
    assert len(dataset) == len(kept)
    for n, (_, _, img) in enumerate(records):
        data, label = dataset[n]
        assert label == kept[n].labels[0]
        assert np.abs(data.asnumpy().astype(np.float32) - img[:, :, ::-1]).mean() < 1.5

    assert rec_check.main([prefix]) == 0


def test_order_kept_with_several_workers(tmp_path):
    root = tmp_path / "img"
    for i in range(30):
        _write(str(root / f"{i:02d}.jpg"), _jpeg_bytes(_photo(16 + i, 20, i)))
    prefix = str(tmp_path / "data")
    im2rec.main(["--list", prefix, str(root)])  # shuffled
    items = _read_lst(prefix + ".lst")
    stats = im2rec.pack_list(prefix + ".lst", str(root), im2rec.EncodeOptions(), 3, False, chunk_size=1)
    assert stats.written == 30 and stats.skipped == 0
    records = _mx_records(prefix)
    assert [k for k, _, _ in records] == [item.index for item in items]
    assert [img.shape[0] for _, _, img in records] == [16 + int(item.path[:2]) for item in items]


def test_interchangeable_with_reference(tmp_path):
    root = str(tmp_path / "img")
    _make_clean(root)
    for tool in ("ours", "ref"):
        os.makedirs(tmp_path / tool)
    im2rec.main(["--list", "--recursive", str(tmp_path / "ours" / "a"), root])
    subprocess.run(
        [sys.executable, REFERENCE, "--list", "--recursive", str(tmp_path / "ref" / "b"), root],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "ours" / "a.lst").read_text() == (tmp_path / "ref" / "b.lst").read_text()
    # each tool packs its own list and the other's: PREFIX = the folder packs every .lst in it
    shutil.copy(tmp_path / "ours" / "a.lst", tmp_path / "ref" / "a.lst")
    shutil.copy(tmp_path / "ref" / "b.lst", tmp_path / "ours" / "b.lst")
    flags = ["--resize", "20", "--quality", "90"]
    assert im2rec.main([str(tmp_path / "ours"), root, *flags, "--num-thread", "2", "--no-progress"]) == 0
    subprocess.run(
        [sys.executable, REFERENCE, str(tmp_path / "ref"), root, *flags], check=True, capture_output=True
    )
    for name in ("a", "b"):
        ours, ref = _mx_records(str(tmp_path / "ours" / name)), _mx_records(str(tmp_path / "ref" / name))
        assert len(ours) == len(ref) == 7
        for (k1, h1, img1), (k2, h2, img2) in zip(ours, ref):
            assert k1 == k2 and h1 == h2
            assert np.array_equal(img1, img2)  # same OpenCV calls: the same pixels
        for ext in (".rec", ".idx"):
            assert (tmp_path / "ours" / (name + ext)).read_bytes() == (
                tmp_path / "ref" / (name + ext)
            ).read_bytes()


def test_no_upscale_copies_plain_jpegs(tmp_path):
    from PIL import Image

    root = tmp_path / "img"
    small = _jpeg_bytes(_photo(30, 40, 1), quality=80)
    _write(str(root / "small.jpg"), small)
    _write(str(root / "large.jpg"), _jpeg_bytes(_photo(120, 90, 2)))
    _write(str(root / "gray.jpg"), _jpeg_bytes(cv2.cvtColor(_photo(30, 30, 3), cv2.COLOR_BGR2GRAY)))
    _write(str(root / "small.png"), cv2.imencode(".png", _photo(20, 30, 4))[1].tobytes())
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(_photo(20, 30, 5)).save(buf, "JPEG", exif=exif.tobytes())
    _write(str(root / "rotated.jpg"), buf.getvalue())
    prefix = str(tmp_path / "data")
    im2rec.main(["--list", "--no-shuffle", prefix, str(root)])
    assert im2rec.main([prefix, str(root), "--no-upscale", "--resize", "48", "--no-progress"]) == 0
    items = _read_lst(prefix + ".lst")
    rec = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "r")
    got = {}
    for item in items:
        header, data = mx.recordio.unpack(rec.read_idx(item.index))
        got[item.path] = (data, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))
    assert got["small.jpg"][0] == small  # byte for byte
    assert got["large.jpg"][1].shape == (64, 48, 3)  # shrunk
    assert got["gray.jpg"][1].shape == (30, 30, 3)  # converted to colour, not enlarged
    assert got["small.png"][1].shape == (20, 30, 3) and got["small.png"][0][:2] == b"\xff\xd8"
    assert got["rotated.jpg"][1].shape == (30, 20, 3)  # orientation applied, as a decode would
    # the default mode enlarges, as the reference does
    assert im2rec.main([prefix, str(root), "--resize", "48", "--no-progress"]) == 0
    header, img = mx.recordio.unpack_img(
        mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "r").read_idx(items[-1].index)
    )
    assert min(img.shape[:2]) == 48


def test_large_images_and_size_limit(tmp_path, monkeypatch):
    root = tmp_path / "img"
    _write(str(root / "huge.jpg"), _jpeg_bytes(np.full((3000, 4000, 3), 90, np.uint8)))
    _write(str(root / "wide.jpg"), _jpeg_bytes(_photo(260, 700, 1)))
    prefix = str(tmp_path / "data")
    im2rec.main(["--list", "--no-shuffle", prefix, str(root)])
    assert im2rec.main([prefix, str(root), "--resize", "32", "--no-progress"]) == 0
    shapes = [img.shape for _, _, img in _mx_records(prefix)]
    assert shapes == [(32, 42, 3), (32, 86, 3)]  # same rounding as the reference: 4000*32//3000, 700*32//260
    monkeypatch.setattr(im2rec, "OPENCV_MAX_PIXELS", 1000 * 1000)
    assert im2rec.main([prefix, str(root), "--resize", "32", "--no-progress"]) == 2
    assert "too large" in (tmp_path / "data.skipped.tsv").read_text()


def test_pack_label_and_pass_through(tmp_path):
    root = tmp_path / "img"
    data = _jpeg_bytes(_photo(20, 20, 1))
    _write(str(root / "x.jpg"), data)
    (tmp_path / "m.lst").write_text("7\t1.000000\t2.500000\t3.000000\tx.jpg\n")
    assert (
        im2rec.main([str(tmp_path / "m"), str(root), "--pack-label", "--pass-through", "--no-progress"]) == 0
    )
    header, img = mx.recordio.unpack(
        mx.recordio.MXIndexedRecordIO(str(tmp_path / "m.idx"), str(tmp_path / "m.rec"), "r").read_idx(7)
    )
    assert list(header.label) == [1.0, 2.5, 3.0] and header.id == 7 and img == data
    assert rec_check.check_rec(str(tmp_path / "m.rec"), str(tmp_path / "m.idx"))["labels"]["width"] == 3


def test_bad_list_lines_are_reported(tmp_path):
    root = tmp_path / "img"
    _write(str(root / "x.jpg"), _jpeg_bytes(_photo(20, 20, 1)))
    (tmp_path / "l.lst").write_text("0\t1.0\tx.jpg\nnot a line\n1\tabc\tx.jpg\n2\t0\tmissing.jpg\n")
    # 3 of 4 lines skipped: more than --max-skipped's default half, so nothing is written
    assert im2rec.main([str(tmp_path / "l"), str(root), "--no-progress"]) == 1
    assert not (tmp_path / "l.rec").exists() and not (tmp_path / "l.idx").exists()
    assert im2rec.main([str(tmp_path / "l"), str(root), "--no-progress", "--max-skipped", "0.8"]) == 2
    report = (tmp_path / "l.skipped.tsv").read_text()
    assert "line 2" in report and "line 3" in report and "missing.jpg" in report
    assert len(_mx_records(str(tmp_path / "l"))) == 1
    assert im2rec.main([str(tmp_path / "nothing"), str(root)]) == 1


def test_interrupted_run_keeps_previous_files(images, tmp_path, monkeypatch):
    prefix = str(tmp_path / "data")
    im2rec.main(["--list", "--recursive", prefix, os.path.join(images)])
    im2rec.main([prefix, images, "--resize", "16", "--no-progress"])
    before = {ext: open(prefix + ext, "rb").read() for ext in (".rec", ".idx")}
    calls = []
    real = im2rec.make_record

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(im2rec, "make_record", interrupted)
    assert im2rec.main([prefix, images, "--resize", "32", "--no-progress"]) == 130
    assert {ext: open(prefix + ext, "rb").read() for ext in (".rec", ".idx")} == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert rec_check.main([prefix, "--no-decode"]) == 0


@pytest.fixture
def good_rec(tmp_path):
    root = tmp_path / "img"
    for i in range(6):
        _write(str(root / f"c{i % 2}" / f"{i}.jpg"), _jpeg_bytes(_photo(20 + i, 24, i)))
    prefix = str(tmp_path / "data")
    im2rec.main(["--list", "--recursive", prefix, str(root)])
    assert im2rec.main([prefix, str(root), "--no-progress"]) == 0
    return prefix


def test_check_reports_good_file(good_rec, capsys):
    assert rec_check.main([good_rec, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["records"] == 6
    assert report["labels"] == {"min": 0.0, "max": 1.0, "classes": 2, "width": 1, "counts": {"0": 3, "1": 3}}
    assert report["shorter_side"] == {"min": 20, "max": 24}
    assert im2rec.main(["--check", good_rec]) == 0
    assert rec_check.check_rec(good_rec + ".rec", good_rec + ".idx", num_workers=2) == report | {
        "rec": good_rec + ".rec",
        "idx": good_rec + ".idx",
    }
    os.remove(good_rec + ".idx")  # sequential scan still works
    assert rec_check.main([good_rec + ".rec"]) == 0


def test_check_catches_truncated_rec(good_rec):
    data = open(good_rec + ".rec", "rb").read()
    with open(good_rec + ".rec", "wb") as f:
        f.write(data[:-100])
    report = rec_check.check_rec(good_rec + ".rec", good_rec + ".idx")
    assert not report["ok"] and report["records"] == 5
    assert any("damaged" in e for e in report["errors"])
    assert rec_check.main([good_rec]) == 1 and im2rec.main(["--check", good_rec]) == 1


def test_check_catches_mismatched_idx(good_rec):
    lines = open(good_rec + ".idx").read().splitlines()
    key, off = lines[2].split("\t")
    with open(good_rec + ".idx", "w") as f:
        f.write("\n".join(lines[:2] + [f"{key}\t{int(off) + 4}"] + lines[3:5]) + "\n9\t99999999\n")
    errors = " ".join(rec_check.check_rec(good_rec + ".rec", good_rec + ".idx")["errors"])
    assert "not record starts" in errors and "past the end" in errors and "not in the .idx" in errors
    assert rec_check.main([good_rec]) == 1


def test_check_catches_undecodable_record(tmp_path):
    writer = im2rec.RecordWriter(str(tmp_path / "x.rec"), str(tmp_path / "x.idx"))
    writer.write(0, im2rec.pack_header([1.0], 0) + _jpeg_bytes(_photo(20, 20)))
    writer.write(1, im2rec.pack_header([2.0], 1) + b"garbage bytes")
    writer.commit()
    report = rec_check.check_rec(str(tmp_path / "x.rec"), str(tmp_path / "x.idx"), num_workers=2)
    assert not report["ok"] and report["undecodable"]["count"] == 1
    assert report["undecodable"]["examples"][0]["id"] == 1


def test_dead_worker_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "img"
    for i in range(8):
        _write(str(root / f"{i}.jpg"), _jpeg_bytes(_photo(16, 16, i)))
    prefix = str(tmp_path / "data")
    im2rec.main(["--list", "--no-shuffle", prefix, str(root)])
    real = im2rec.make_record

    def crash(item, *args):
        if item.path == "5.jpg":
            os._exit(3)  # a worker killed, e.g. by the out-of-memory killer
        return real(item, *args)

    monkeypatch.setattr(im2rec, "make_record", crash)
    monkeypatch.setattr(im2rec, "worker_start_method", lambda: "fork")  # the workers see the patched function
    with pytest.raises(RuntimeError, match="worker died"):
        im2rec.pack_list(prefix + ".lst", str(root), im2rec.EncodeOptions(), 2, False, chunk_size=1)
    assert sorted(os.listdir(tmp_path)) == ["data.lst", "img"]


def test_workers_are_spawned_from_a_threaded_process():
    # a fork copies one thread: locks held by the others (OpenCV's, OpenMP's pools) would stay locked
    import threading

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, daemon=True)
    helper.start()
    try:
        assert im2rec.worker_start_method() == "spawn"
    finally:
        stop.set()
        helper.join()


def test_rec_check_spawns_its_workers_from_a_process_running_mxnet(tmp_path, monkeypatch):
    # A child forked from this process (MXNet loaded, its threads running) once died in threading's
    # after-fork hook; rec_check now takes the same rule as im2rec.
    import mxnet  # noqa: F401

    methods = []
    real = rec_check.multiprocessing.get_context
    monkeypatch.setattr(rec_check.multiprocessing, "get_context", lambda m=None: methods.append(m) or real(m))
    test_check_catches_undecodable_record(tmp_path)
    assert methods == ["spawn"]
