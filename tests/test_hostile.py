"""The second hostile-user audit: full disks, NaN weights, FIFOs and devices, two runs on one directory,
mismatched Horovod ranks, stale lists, odd labels, odd names, crashes and stops. The tools run as a user
runs them (subprocesses) where the failure is a whole-run one; the rest call the functions."""

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time

import cv2
import mxnet as mx
import numpy as np
import pytest
from test_reliability import (
    ENV,
    IM2REC,
    TRAIN,
    copy_pair,
    corrupt_record,
    image_folder,
    jpeg,
    leftovers,
    one_line,
    packed,  # noqa: F401 - the fixture
    run,
    train_argv,
    wait_until,
)
from workers import HOROVODRUN, horovodrun

import resnest_gluon
from resnest_gluon import deploy
from resnest_gluon.cli import average_checkpoints, im2rec, predict
from resnest_gluon.data.lst import parse_line
from resnest_gluon.data.recordio import RecordReader
from resnest_gluon.files import NotRegularFile, WriteFailed, read_regular
from resnest_gluon.training import TrainingError, check_labels
from resnest_gluon.training.checkpoints import save_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(REPO, "scripts", "predict.py")
EXPORT = os.path.join(REPO, "scripts", "export.py")


def limited(max_file_bytes):
    """preexec_fn: files of the child may grow to ``max_file_bytes`` only (writes past it fail with EFBIG,
    as on a full disk)."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return apply


def run_limited(script, *args, max_file_bytes, timeout=300):
    cmd = [sys.executable, script, *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=ENV, preexec_fn=limited(max_file_bytes)
    )


def write_records(prefix, labels, flag=0, image=None):
    """A .rec/.idx of one image per label (``labels``: floats, or tuples with ``flag``)."""
    image = image if image is not None else jpeg(0)
    rec = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    for i, label in enumerate(labels):
        header = mx.recordio.IRHeader(flag, label, i, 0)
        rec.write_idx(i, mx.recordio.pack(header, image))
    rec.close()
    return prefix + ".rec"


@pytest.fixture(scope="module")
def two_epochs(packed, tmp_path_factory):  # noqa: F811
    """A finished 2-epoch run directory with validation (best file) and its own data."""
    save_dir = str(tmp_path_factory.mktemp("hostile") / "run")
    rec = str(packed / "data.rec")
    proc = run(TRAIN, *train_argv(rec, save_dir, "--epochs", "2", "--keep", "3", val=rec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save_dir


def clone(run_dir, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(run_dir, dst)
    return dst


# ---------------------------------------------------------------------------- verified writes (disk full)
def test_a_params_write_cut_short_never_replaces_the_file(tmp_path, monkeypatch):
    path = str(tmp_path / "w.params")
    arrays = {"a": mx.nd.ones((64, 64)), "b": mx.nd.zeros((3,))}
    save_arrays(arrays, path)
    good = open(path, "rb").read()
    real_save = mx.nd.save

    def save_cut_short(fname, data):  # what mx.nd.save does when its final flush fails: no error
        real_save(fname, data)
        with open(fname, "r+b") as f:
            f.truncate(os.path.getsize(fname) - 100)

    monkeypatch.setattr(mx.nd, "save", save_cut_short)
    with pytest.raises(WriteFailed, match=r"cannot write .*w\.params: .*MiB free"):
        save_arrays({"a": mx.nd.zeros((64, 64)), "b": mx.nd.ones((3,))}, path)
    assert open(path, "rb").read() == good and not leftovers(tmp_path)


def test_train_on_a_full_disk_is_one_line_and_keeps_the_checkpoints(packed, two_epochs, tmp_path):  # noqa: F811
    save_dir = clone(two_epochs, tmp_path)
    before = {n: open(os.path.join(save_dir, n), "rb").read() for n in os.listdir(save_dir) if "params" in n}
    rec = str(packed / "data.rec")
    argv = train_argv(rec, save_dir, "--epochs", "3", "--keep", "1", "--resume", val=rec)
    proc = run_limited(TRAIN, *argv, max_file_bytes=1 << 20)  # every checkpoint is larger
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "cannot write" in one_line(proc) and "MiB free" in proc.stderr
    after = {n: open(os.path.join(save_dir, n), "rb").read() for n in os.listdir(save_dir) if "params" in n}
    assert after == before and not leftovers(save_dir)  # nothing pruned, nothing truncated


def test_im2rec_on_a_full_disk_names_the_file_and_leaves_no_tmp(packed, tmp_path):  # noqa: F811
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "data"), (".lst",))
    proc = run_limited(IM2REC, prefix, packed / "img", "--no-progress", max_file_bytes=4096)
    assert proc.returncode == 1
    assert "cannot write" in one_line(proc) and "data.rec.tmp" in proc.stderr and "MiB free" in proc.stderr
    assert not leftovers(tmp_path) and not os.path.exists(prefix + ".rec")


def test_a_batch_that_does_not_fit_in_memory_says_what_to_lower(packed, tmp_path):  # noqa: F811
    def small_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # MXNet alone maps about 1 GiB

    argv = train_argv(str(packed / "data.rec"), str(tmp_path / "run"), "--batch-size", "40")
    argv[argv.index("--input-size") + 1] = "512"
    cmd = [sys.executable, TRAIN, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, preexec_fn=small_memory)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "out of memory with --batch-size 40" in one_line(proc) and "lower --batch-size" in proc.stderr


# ------------------------------------------------------------------------------------ non-finite weights
def test_nan_weights_are_never_saved_and_the_best_file_is_kept(packed, two_epochs, tmp_path):  # noqa: F811
    save_dir = clone(two_epochs, tmp_path)
    best = open(os.path.join(save_dir, "resnest14-best.params"), "rb").read()
    rec = str(packed / "data.rec")
    argv = train_argv(rec, save_dir, "--epochs", "3", "--resume", "--lr", "1e6", val=rec)
    proc = run(TRAIN, *argv)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "--resume changes the run's recipe: --lr 0.1 -> 1000000.0" in proc.stderr  # said, not silent
    assert "NaN or infinite" in one_line(proc) and "nothing of this epoch was saved" in proc.stderr
    assert not os.path.exists(os.path.join(save_dir, "resnest14-0003.params"))
    assert open(os.path.join(save_dir, "resnest14-best.params"), "rb").read() == best


def test_a_resume_names_changed_augmentation_options(tmp_path):
    from argparse import Namespace

    from resnest_gluon.training.checks import recipe_changes

    saved = {"lr": 0.1, "colour": "auto", "unclipped_colour": False, "train_crop": "tf", "fast_decode": False}
    (tmp_path / "args.json").write_text(json.dumps(saved))
    now = Namespace(**dict(saved, colour="rounded", fast_decode=True))
    assert recipe_changes(str(tmp_path), now) == ["--fast-decode False -> True", "--colour auto -> rounded"]


# ----------------------------------------------------------------------------------- run-directory lock
HOLD = "import sys, time; from resnest_gluon.training.rundir import lock_run_dir; lock_run_dir(sys.argv[1]); "
HOLD += "print('held', flush=True); time.sleep(600)"


def hold_lock(save_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, save_dir], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_directory_in_use_is_refused_naming_the_holder(packed, tmp_path):  # noqa: F811
    save_dir = str(tmp_path / "run")
    os.makedirs(save_dir)
    holder = hold_lock(save_dir)
    try:
        proc = run(TRAIN, *train_argv(str(packed / "data.rec"), save_dir))
        assert proc.returncode == 1 and f"in use by another run (pid {holder.pid} on" in one_line(proc)
        assert sorted(os.listdir(save_dir)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_resume_passes_over_a_corrupt_newest_checkpoint_and_a_stale_lock(packed, two_epochs, tmp_path):  # noqa: F811
    save_dir = clone(two_epochs, tmp_path)
    hold_lock(save_dir).kill()  # SIGKILL: its .lock file stays, naming a dead process
    newest = os.path.join(save_dir, "resnest14-0002.params")
    with open(newest, "r+b") as f:
        f.truncate(1000)
    rec = str(packed / "data.rec")
    proc = run(TRAIN, *train_argv(rec, save_dir, "--epochs", "3", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint of epoch 2 is unusable" in one_line(proc) and "resnest14-0002.params" in proc.stderr
    assert "resumed from" in proc.stderr and "resnest14-0001.params" in proc.stderr
    rows = [json.loads(line) for line in open(os.path.join(save_dir, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    mx.nd.load(newest)  # epoch 2 trained again, and whole


# ------------------------------------------------------------------------------------- labels, records
def test_labels_come_from_the_records_not_a_stale_list(tmp_path):
    rec = write_records(str(tmp_path / "d"), [0, 1, 7, 7])
    (tmp_path / "d.lst").write_text("".join(f"{i}\t{i % 4}\tx{i}.jpg\n" for i in range(4)))  # stale
    with pytest.raises(TrainingError, match="record 2 of .* has label 7, outside 0..3"):
        check_labels(rec, 4)


@pytest.mark.parametrize("label", [2.5, -1.0, float("nan")])
def test_a_label_that_is_no_class_says_so_without_a_wrong_hint(tmp_path, label):
    rec = write_records(str(tmp_path / "d"), [0, label, 1])
    with pytest.raises(TrainingError, match="must be whole numbers 0..3") as info:
        check_labels(rec, 4)
    assert "pass --classes" not in str(info.value)


def test_nan_labels_in_a_list_are_not_packed():
    with pytest.raises(ValueError, match="not a finite number"):
        parse_line("0\tnan\ta.jpg")


def test_multi_label_lines_say_which_label_is_used_and_are_refused_for_training(packed, tmp_path):  # noqa: F811
    root = packed / "img"
    lst = tmp_path / "m.lst"
    lst.write_text("0\t1\t3\tc0/000.jpg\n1\t2\t0\tc1/001.jpg\n")
    proc = run(IM2REC, str(tmp_path / "m"), root, "--no-progress")
    assert proc.returncode == 0 and "only the FIRST label of each is packed" in proc.stderr
    proc = run(IM2REC, str(tmp_path / "m"), root, "--no-progress", "--pack-label")
    assert proc.returncode == 0
    with pytest.raises(TrainingError, match="record 0 of .* holds 2 labels"):
        check_labels(str(tmp_path / "m.rec"), 4)


def test_a_record_file_cut_short_while_read_is_named(packed, tmp_path):  # noqa: F811
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "data"))
    offsets = dict(tuple(map(int, line.split())) for line in open(prefix + ".idx"))
    reader = RecordReader(prefix + ".rec", offsets)
    by_offset = sorted(offsets, key=offsets.get)
    last, middle = by_offset[-1], by_offset[20]
    reader.read(last)
    with open(prefix + ".rec", "r+b") as f:  # another job rewrites it: was SIGBUS through the memory map
        f.truncate(offsets[middle] + 20)
    with pytest.raises(ValueError, match=rf"data\.rec' is cut short: record {last} "):
        reader.read(last)
    with pytest.raises(ValueError, match=rf"record {middle} at offset {offsets[middle]}"):
        reader.read(middle)


def test_cpp_backend_names_the_undecodable_record(packed, tmp_path):  # noqa: F811
    bad = corrupt_record(str(packed / "data"), str(tmp_path / "bad"), 5, np.random.default_rng(0))
    argv = train_argv(bad + ".rec", str(tmp_path / "run"), "--data-backend", "cpp", "--no-hybridize")
    proc = run(TRAIN, *argv)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "record 5 of" in one_line(proc) and "bad.rec" in proc.stderr


def test_cpp_backend_names_a_training_file_cut_short(packed, tmp_path):  # noqa: F811
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "cut"))
    offsets = dict(tuple(map(int, line.split())) for line in open(prefix + ".idx"))
    last = max(offsets, key=offsets.get)
    with open(prefix + ".rec", "r+b") as f:  # the index still fits: the last record is cut short
        f.truncate(offsets[last] + 40)
    argv = train_argv(prefix + ".rec", str(tmp_path / "run"), "--data-backend", "cpp", "--no-hybridize")
    proc = run(TRAIN, *argv)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"cut.rec' is cut short: record {last} " in one_line(proc) and "Fatal Python" not in proc.stderr


def test_cpp_backend_names_a_training_file_cut_short_while_read(packed, tmp_path):  # noqa: F811
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "live"))
    argv = train_argv(prefix + ".rec", str(tmp_path / "run"), "--data-backend", "cpp", "--no-hybridize")
    argv[argv.index("--epochs") + 1] = "3"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, TRAIN, *argv], stdout=subprocess.DEVNULL, stderr=err, env=ENV
        )
        deadline = time.monotonic() + 120
        while "epoch 1/3" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)  # another job rewrites the file while the iterator reads it
        with open(prefix + ".rec", "r+b") as f:
            f.truncate(os.path.getsize(prefix + ".rec") // 2)
        proc.send_signal(signal.SIGCONT)
        status = proc.wait(timeout=300)
    stderr = log.read_text()
    # was: a traceback (the scan for the bad record stopped at the index that no longer fits the file)
    assert status == 1 and "Traceback" not in stderr and "Fatal Python" not in stderr, stderr[-3000:]
    assert "error (rank 0): training data: " in stderr and "live.rec" in stderr


# ----------------------------------------------------------------------------- FIFOs, devices, names
def test_fifos_and_devices_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "a.jpg")
    os.symlink("/dev/zero", tmp_path / "z.jpg")
    for name, kind in (("a.jpg", "FIFO"), ("z.jpg", "device")):
        with pytest.raises(NotRegularFile, match=kind):
            read_regular(str(tmp_path / name))
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 100)
    with pytest.raises(NotRegularFile, match="larger than the 10-byte cap"):
        read_regular(str(tmp_path / "big.jpg"), 10)


def test_im2rec_lists_every_type_predict_reads_and_reports_the_rest(tmp_path):
    root = tmp_path / "img"
    image_folder(root, n=4, classes=2)
    img = cv2.imdecode(np.frombuffer(jpeg(1), np.uint8), cv2.IMREAD_COLOR)
    for ext in (".bmp", ".webp", ".tiff"):
        cv2.imwrite(str(root / "c0" / f"more{ext}"), img)
    (root / "c1" / "notes.txt").write_text("x")
    os.mkfifo(root / "c1" / "pipe.jpg")
    os.symlink("/dev/zero", root / "c1" / "zero.png")
    proc = subprocess.run(
        [sys.executable, IM2REC, "--list", "--recursive", str(tmp_path / "l"), str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert proc.returncode == 2, proc.stderr
    listed = (tmp_path / "l.lst").read_text()
    assert all(f"more{ext}" in listed for ext in (".bmp", ".webp", ".tiff")) and "pipe" not in listed
    assert "left out c1/pipe.jpg: a FIFO" in proc.stderr and "left out c1/zero.png: a device" in proc.stderr
    assert "not an image type" in proc.stderr and "1 .txt" in proc.stderr


def test_predict_survives_fifos_odd_names_and_a_full_disk(packed, tmp_path):  # noqa: F811
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(jpeg(3))
    (folder / "=HYPERLINK(1).jpg").write_bytes(jpeg(4))
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as f:  # Latin-1, not UTF-8
        f.write(jpeg(5))
    os.mkfifo(folder / "fifo.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    names = ["ok.jpg", "=HYPERLINK(1).jpg", b"caf\xe9.jpg", "fifo.jpg", "zero.jpg"]
    common = [*names, "--model", "resnest14", "--classes", "4", "--params", packed / "net.params"]
    common += ["--crop-size", "32", "--threads", "1", "--top-k", "2", "--quiet"]
    out = tmp_path / "p.csv"
    cmd = [
        sys.executable,
        PREDICT,
        *[n if isinstance(n, bytes) else str(n) for n in common],
        "--out",
        str(out),
    ]
    # a FIFO blocked it forever, a name that is not UTF-8 lost the whole CSV
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV, cwd=folder)
    assert proc.returncode == 2, proc.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "caf\\xe9.jpg,ok" in text and "'=HYPERLINK(1).jpg,ok" in text
    assert 'fifo.jpg,"cannot read: a FIFO' in text and 'zero.jpg,"cannot read: a device' in text
    json_out = tmp_path / "p.json"
    cmd[-1] = str(json_out)
    full = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=ENV, cwd=folder, preexec_fn=limited(300)
    )
    assert full.returncode == 1 and "cannot write" in one_line(full) and "MiB free" in full.stderr
    assert not json_out.exists() and not leftovers(tmp_path)


def test_the_demo_names_a_dead_rank_in_one_line():
    from resnest_gluon.cli.demo import worker_death

    line = "[1]<stderr>:Fatal Python error: Segmentation fault"
    assert worker_death(line) == "training rank 1 died of SIGSEGV (Segmentation fault)"
    assert worker_death("Process 1 exit with status code -11.") == "training rank 1 was killed by SIGSEGV"
    assert worker_death("Process 0 exit with status code 143.") is None


def test_predict_csv_cells_are_text_and_names_valid_unicode():
    rows = [dict(path="-2+3", status="ok", names=["@cat"], probs=[1.0])]
    assert predict.csv_cell("-2+3") == "'-2+3" and predict.csv_cell("a=b") == "a=b"
    assert predict.printable_path(os.fsdecode(b"x\xff.jpg")) == "x\\xff.jpg"
    assert rows[0]["path"] == "-2+3"


def test_predict_refuses_too_many_pixels_before_decoding():
    header = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    )
    assert predict.image_pixels(header + b"\0" * 16) == 40000 * 40000


def test_im2rec_color_unchanged_applies_exif_orientation():
    import io

    from PIL import Image

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = np.zeros((20, 30, 3), np.uint8)
    Image.fromarray(rgb).save(buf, "JPEG", exif=exif.tobytes())
    for color in (1, -1):
        out, _, _ = im2rec.encode_image(buf.getvalue(), im2rec.EncodeOptions(color=color, encoding=".png"))
        assert cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (30, 20), color


def test_rec_check_holds_a_bounded_number_of_image_bytes(packed, monkeypatch):  # noqa: F811
    from resnest_gluon.cli import rec_check

    read, groups, sizes = [0], {}, []
    real_iter, real_check = rec_check.iter_records, rec_check.check_image

    def counting_iter(f, size):  # records read so far
        for offset, payload in real_iter(f, size):
            read[0] += 1
            yield offset, payload

    def counting_check(image):  # the images decoded together were all read before the group began
        groups[read[0]] = groups.get(read[0], 0) + len(image)
        sizes.append(len(image))
        return real_check(image)

    monkeypatch.setattr(rec_check, "iter_records", counting_iter)
    monkeypatch.setattr(rec_check, "check_image", counting_check)
    monkeypatch.setattr(rec_check, "PENDING_BYTES", 4000)  # a few of these images; 64 MiB in use
    report = rec_check.check_rec(str(packed / "data.rec"), decode=True)
    assert report["records"] == 40 and len(sizes) == 40
    assert max(groups.values()) < 4000 + max(sizes)  # was all 40 at once (up to 256 records of any size)


def test_write_errors_of_json_files_are_one_line(tmp_path):
    from resnest_gluon.training import atomic_json

    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteFailed, match=r"cannot write .*file/r\.json: Not a directory"):
        atomic_json(str(tmp_path / "file" / "r.json"), {"a": 1})


# ------------------------------------------------------------------------------ averaging, quantizing
def test_average_checkpoints_names_a_truncated_file_or_another_class_count(tmp_path):
    a, b, c = (str(tmp_path / f"{n}.params") for n in "abc")
    mx.nd.save(a, {"fc.weight": mx.nd.ones((4, 8))})
    mx.nd.save(b, {"fc.weight": mx.nd.ones((5, 8))})
    mx.nd.save(c, {"fc.weight": mx.nd.ones((4, 8))})
    with open(c, "r+b") as f:
        f.truncate(60)
    with pytest.raises(TrainingError, match="another class count"):
        average_checkpoints.average_params([a, b])
    with pytest.raises(TrainingError, match="c.params is not a readable"):
        average_checkpoints.average_params([a, c])


def test_quantize_checks_calibration_labels_and_the_class_count(packed, tmp_path):  # noqa: F811
    from resnest_gluon.cli import quantize

    rec = str(packed / "data.rec")
    with pytest.raises(TrainingError, match="outside 0..1 for --classes 2"):
        quantize.quantize_checkpoint("resnest14", str(packed / "net.params"), 2, rec, rec, "x", 32)
    with pytest.raises(TrainingError, match="--params: .*does not fit"):
        quantize.quantize_checkpoint("resnest14", str(packed / "net.params"), 5, rec, rec, "x", 32)


# ---------------------------------------------------------------------------------------------- exports
def tiny_net(seed):
    mx.random.seed(seed)
    net = resnest_gluon.get_model("resnest14", classes=4)
    net.initialize(mx.init.Xavier())
    return net


def contents(folder):
    """Every entry of ``folder`` (a hidden temporary folder left behind is one) with its bytes."""
    return {
        name: open(os.path.join(folder, name), "rb").read()
        if os.path.isfile(os.path.join(folder, name))
        else None
        for name in os.listdir(folder)
    }


def cut_in_half(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def cutting(writer, path_of):
    """``writer``, then a cut of the file it wrote (``path_of(*args)``, None: no cut): a write that failed
    unnoticed."""

    def write(*args, **kwargs):
        out = writer(*args, **kwargs)
        if path_of(*args):
            cut_in_half(path_of(*args))
        return out

    return write


@pytest.mark.parametrize("cut", ["params", "json"])
def test_a_symbol_export_cut_short_never_replaces_the_earlier_one(tmp_path, monkeypatch, cut):
    prefix = str(tmp_path / "m")
    deploy.export(tiny_net(0), prefix, (1, 3, 32, 32))
    before = contents(tmp_path)
    assert sorted(before) == ["m-0000.params", "m-symbol.json", "m.meta.json"]
    if cut == "params":
        monkeypatch.setattr(mx.nd, "save", cutting(mx.nd.save, lambda fname, data: fname))
    else:
        monkeypatch.setattr(
            mx.sym.Symbol, "save", cutting(mx.sym.Symbol.save, lambda sym, fname, **kw: fname)
        )
    name = "m-0000.params" if cut == "params" else "m-symbol.json"
    with pytest.raises(
        WriteFailed, match=rf"cannot write .*/{name}: the written file does not read back .*MiB free"
    ):
        deploy.export(tiny_net(1), prefix, (1, 3, 32, 32))
    assert contents(tmp_path) == before  # was: the cut file in place of the good one


def test_an_int8_model_cut_short_never_replaces_the_earlier_one(tmp_path, monkeypatch):
    calib = [np.random.RandomState(0).uniform(-2, 2, (4, 3, 32, 32)).astype(np.float32)]
    prefix = str(tmp_path / "q")
    deploy.quantize(tiny_net(0), calib, 1, prefix)
    before = contents(tmp_path)
    # MXNet's quantization saves and reloads the model in the system's temporary folder: that file stays whole
    in_tmp_path = lambda fname, data: fname if fname.startswith(str(tmp_path)) else None  # noqa: E731
    monkeypatch.setattr(mx.nd, "save", cutting(mx.nd.save, in_tmp_path))
    with pytest.raises(
        WriteFailed, match=r"cannot write .*/q-0000\.params: the written file does not read back"
    ):
        deploy.quantize(tiny_net(1), calib, 1, prefix)
    assert contents(tmp_path) == before


def test_an_onnx_export_cut_short_never_replaces_the_earlier_one(tmp_path, monkeypatch):
    from resnest_gluon.deploy import onnx_export

    path = str(tmp_path / "m.onnx")
    deploy.export_onnx(tiny_net(0), path, (1, 3, 32, 32))
    before = contents(tmp_path)
    monkeypatch.setattr(onnx_export, "_fix_onnx", cutting(onnx_export._fix_onnx, lambda path: path))
    with pytest.raises(WriteFailed, match=r"cannot write .*/m\.onnx: the written file does not read back"):
        deploy.export_onnx(tiny_net(1), path, (1, 3, 32, 32))  # was: a DecodeError traceback
    assert contents(tmp_path) == before


def test_an_openvino_export_cut_short_never_replaces_the_earlier_pair(tmp_path, monkeypatch):
    from resnest_gluon.deploy.openvino_export import import_openvino

    openvino = import_openvino()
    prefix = str(tmp_path / "m")
    deploy.export_openvino(tiny_net(0), prefix, (1, 3, 32, 32), "f32")
    before = contents(tmp_path)
    real = openvino.save_model
    for cut in (".bin", ".xml"):
        save = cutting(real, lambda model, xml, cut=cut: xml[: -len(".xml")] + cut)
        monkeypatch.setattr(openvino, "save_model", save)
        with pytest.raises(
            WriteFailed, match=rf"cannot write .*/m\{cut}: the written file does not read back"
        ):
            deploy.export_openvino(tiny_net(1), prefix, (1, 3, 32, 32), "f32")
        assert contents(tmp_path) == before  # was: a cut .bin beside the new .xml


def test_an_export_under_a_file_names_the_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        WriteFailed, match=r"cannot write .*file/m-symbol\.json: (File exists|Not a directory)"
    ):
        deploy.export(tiny_net(0), str(tmp_path / "file" / "m"), (1, 3, 32, 32))  # was: FileExistsError
    assert os.listdir(tmp_path) == ["file"]


@pytest.mark.parametrize("fmt, name", [("symbol", "m-0000.params"), ("onnx", "m.onnx")])
def test_export_on_a_full_disk_is_one_line_and_keeps_the_earlier_export(packed, tmp_path, fmt, name):  # noqa: F811
    other = str(tmp_path / "other.params")
    tiny_net(1).save_parameters(other)
    out = tmp_path / "out"
    common = ["--model", "resnest14", "--classes", "4", "--input-size", "32", "--format", fmt]
    common += ["--out-prefix", out / "m"]
    proc = run(EXPORT, *common, "--params", packed / "net.params")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = contents(out)
    proc = run_limited(EXPORT, *common, "--params", other, max_file_bytes=1 << 20)  # the weights are larger
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: cannot write {out / name}: " in one_line(proc) and "MiB free" in proc.stderr
    assert contents(out) == before  # no cut file, no temporary file or folder left


# ------------------------------------------------------------------------------------------------ stops
def catches(pid, signum):
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux: ``SigCgt`` in its status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught >> (signum - 1) & 1)


def test_sigterm_during_start_up_is_one_line_and_143(tmp_path):
    """From the moment the command's handler is in place (the first thing the door does; before that the
    interpreter is still starting and SIGTERM's default action applies), at once and a little later."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc (Linux)")
    for delay in (0.0, 0.5):
        proc = subprocess.Popen(
            [sys.executable, TRAIN, "--ctx", "cpu", "--rec-train", str(tmp_path / "none.rec")],
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert wait_until(lambda p=proc: p.poll() is not None or catches(p.pid, signal.SIGTERM), 60)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "stopped by SIGTERM" in err and "Traceback" not in err, (delay, err)


# ------------------------------------------------------------------------------------------ Horovod
needs_horovod = pytest.mark.skipif(not os.path.exists(HOROVODRUN), reason="no horovodrun beside Python")


def horovod(code, *argv, timeout=180):
    return horovodrun([sys.executable, "-c", code, *argv], timeout=timeout, env=ENV)


@needs_horovod
def test_ranks_with_records_of_other_lengths_stop_with_the_counts(packed, tmp_path):  # noqa: F811
    short = str(tmp_path / "short")
    copy_pair(str(packed / "data"), short)
    lines = open(short + ".idx").read().splitlines()[:32]  # a stale, shorter copy
    open(short + ".idx", "w").write("\n".join(lines) + "\n")
    code = (
        "import os, sys\n"
        "from resnest_gluon.cli import run\n"
        "argv, short = sys.argv[1:-1], sys.argv[-1]\n"
        "if os.environ['HOROVOD_RANK'] == '1':\n"
        "    argv[argv.index('--rec-train') + 1] = short\n"
        "sys.exit(run('train', argv))\n"
    )
    argv = train_argv(str(packed / "data.rec"), str(tmp_path / "run"), "--batch-size", "4")
    proc = horovod(code, *argv, short + ".rec")  # was a hang until killed
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "the workers do not see the same data" in out, out[-3000:]
    assert "rank 0 40, rank 1 32" in out


@needs_horovod
def test_a_crashed_rank_prints_its_stacks_and_the_others_stop_in_one_line(packed, tmp_path):  # noqa: F811
    code = (
        "import ctypes, faulthandler, os, sys, threading, time\n"
        "from resnest_gluon.cli import run\n"
        "def crash():\n"  # a native crash in one worker, as in the demo, once training runs
        "    while not faulthandler.is_enabled(): time.sleep(0.1)\n"
        "    time.sleep(4); ctypes.string_at(0)\n"
        "if os.environ['HOROVOD_RANK'] == '1':\n"
        "    threading.Thread(target=crash, daemon=True).start()\n"
        "sys.exit(run('train', sys.argv[1:]))\n"
    )
    argv = train_argv(str(packed / "data.rec"), str(tmp_path / "run"), "--epochs", "200", "--batch-size", "4")
    proc = horovod(code, *argv)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "[1]<stderr>:Fatal Python error: Segmentation fault" in out, out[-3000:]
    assert "[1]<stderr>:Thread 0x" in out or "[1]<stderr>:Current thread 0x" in out  # every thread's stack
    rank0 = [line for line in out.splitlines() if line.startswith("[0]<stderr>:")]
    assert not any("Traceback" in line or "Exception ignored" in line for line in rank0), "\n".join(rank0)
