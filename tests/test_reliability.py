"""Hostile input and hard stops (issue 12), each the way a user meets it: the tools and scripts run as
subprocesses on tiny data made here (resnest14 at 32 px, tens of images)."""

import csv
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time

import cv2
import mxnet as mx
import numpy as np
import pytest

import resnest_gluon
from resnest_gluon.models.pretrained import UnreadableParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IM2REC = os.path.join(REPO, "tools", "im2rec.py")
REC_CHECK = os.path.join(REPO, "tools", "rec_check.py")
TRAIN = os.path.join(REPO, "scripts", "train.py")
VERIFY = os.path.join(REPO, "scripts", "verify.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=REPO)


def run(script, *args, timeout=300, prefix=()):
    cmd = [*prefix, sys.executable, script, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def one_line(proc):
    """The error a user sees: no traceback, a short message."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def photo(seed, h=40, w=48):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [127 + 100 * np.sin(x / (5 + c + rng.random()) + y / (9 + c)) for c in range(3)]
    return np.clip(np.dstack(chans) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def jpeg(seed, h=40, w=48):
    return cv2.imencode(".jpg", photo(seed, h, w), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def image_folder(root, n=40, classes=4, seed=0):
    for i in range(n):
        path = os.path.join(root, f"c{i % classes}", f"{i:03d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(jpeg(seed + i))
    return str(root)


def pack(prefix, root, *extra):
    assert run(IM2REC, "--list", "--recursive", prefix, root).returncode == 0
    proc = run(IM2REC, prefix, root, "--no-progress", *extra)
    assert proc.returncode == 0, proc.stderr
    return prefix


def contents(prefix, exts=(".rec", ".idx")):
    return {ext: open(prefix + ext, "rb").read() for ext in exts}


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A 40-image JPEG .lst/.rec/.idx of 4 classes, packed by im2rec, and a random resnest14 for it."""
    root = tmp_path_factory.mktemp("packed")
    pack(str(root / "data"), image_folder(root / "img"))
    net = resnest_gluon.get_model("resnest14", classes=4)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.save_parameters(str(root / "net.params"))
    return root


def copy_pair(src_prefix, dst_prefix, exts=(".rec", ".idx")):
    for ext in exts:
        shutil.copyfile(src_prefix + ext, dst_prefix + ext)
    return dst_prefix


def train_argv(rec, save_dir, *extra, val=None):
    argv = [
        "--model", "resnest14", "--classes", "4", "--rec-train", rec, "--input-size", "32",
        "--crop-size", "32", "--epochs", "1", "--batch-size", "8", "--warmup-epochs", "0", "--jitter", "0",
        "--lighting", "0", "--data-threads", "1", "--ctx", "cpu", "--save-dir", save_dir,
    ]  # fmt: skip
    return argv + (["--rec-val", val] if val else []) + list(extra)


def verify_argv(rec, params, *extra):
    return ["--model", "resnest14", "--classes", "4", "--rec-val", rec, "--params", params,
            "--crop-size", "32", "--batch-size", "8", "--threads", "1", *extra]  # fmt: skip


def without_dac():
    """A command prefix under which file permissions apply to this process too: root ignores them, so as
    root the children run without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (util-linux setpriv)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, "--bounding-set", caps, "--inh-caps", caps)


def corrupt_record(src_prefix, dst_prefix, key, rng):
    """A copy of the pair whose record ``key`` has its image bytes replaced by random bytes of the same
    length (the index still fits the file)."""
    copy_pair(src_prefix, dst_prefix)
    offsets = dict(tuple(map(int, line.split())) for line in open(dst_prefix + ".idx"))
    data = bytearray(open(dst_prefix + ".rec", "rb").read())
    offset = offsets[key]
    length = struct.unpack_from("<I", data, offset + 4)[0] & ((1 << 29) - 1)
    start, end = offset + 8 + 24, offset + 8 + length  # after the RecordIO head and the IRHeader
    data[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    with open(dst_prefix + ".rec", "wb") as f:
        f.write(data)
    return dst_prefix


# ------------------------------------------------------------------------------- 1. losing good files
def test_mistyped_or_wrong_image_folder_keeps_the_good_pair(packed, tmp_path):
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "data"), (".lst", ".rec", ".idx"))
    good = contents(prefix)
    proc = run(IM2REC, prefix, "/no/such/folder", "--no-progress")
    assert proc.returncode == 1 and "/no/such/folder does not exist" in one_line(proc)
    assert contents(prefix) == good and not leftovers(tmp_path)
    # a folder that exists but is not the list's: refused before any work
    (tmp_path / "empty").mkdir()
    proc = run(IM2REC, prefix, tmp_path / "empty", "--no-progress")
    assert proc.returncode == 1 and "none of the first 40 files" in one_line(proc)
    assert contents(prefix) == good
    # a folder that holds only a few of the list's files: nearly everything skipped, the old pair kept
    few = tmp_path / "few"
    shutil.copytree(packed / "img" / "c0", few / "c0")
    proc = run(IM2REC, prefix, few, "--no-progress")
    assert proc.returncode == 1 and "30 of its 40 lines were skipped" in one_line(proc)
    assert contents(prefix) == good and not leftovers(tmp_path)
    assert run(REC_CHECK, prefix).returncode == 0
    # the same with a share the user accepts: written, exit status 2
    assert run(IM2REC, prefix, few, "--no-progress", "--max-skipped", "0.8").returncode == 2
    assert len(open(prefix + ".idx").read().splitlines()) == 10


def test_list_of_only_bad_lines_writes_nothing(packed, tmp_path):
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "data"))
    good = contents(prefix)
    (tmp_path / "data.lst").write_text("index\tlabel\tpath\nnot a list\n")
    proc = run(IM2REC, prefix, packed / "img", "--no-progress")
    assert proc.returncode == 1 and "no usable line" in one_line(proc)
    assert contents(prefix) == good


@pytest.fixture(scope="module")
def finished_run(packed, tmp_path_factory):
    """A resnest14 run directory of 2 epochs."""
    save_dir = str(tmp_path_factory.mktemp("run") / "run")
    proc = run(TRAIN, *train_argv(str(packed / "data.rec"), save_dir, "--epochs", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save_dir


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "resnest26"], "holds a run with --model resnest14, not --model resnest26"),
        (["--classes", "5"], "holds a run with --classes 4, not --classes 5"),
    ],
)
def test_resume_into_another_run_is_refused_before_anything_is_written(
    packed, finished_run, tmp_path, change, message
):
    save_dir = str(tmp_path / "run")
    shutil.copytree(finished_run, save_dir)
    before = {name: open(os.path.join(save_dir, name), "rb").read() for name in os.listdir(save_dir)}
    argv = train_argv(str(packed / "data.rec"), save_dir, "--epochs", "3", "--resume")
    argv[argv.index(change[0]) + 1] = change[1]
    proc = run(TRAIN, *argv)
    assert proc.returncode == 1 and message in one_line(proc)
    after = {name: open(os.path.join(save_dir, name), "rb").read() for name in os.listdir(save_dir)}
    assert after == before  # metrics.jsonl (2 rows), args.json, curves.png, train.log untouched


def test_resume_next_to_checkpoints_of_another_model_is_refused(packed, finished_run, tmp_path):
    save_dir = str(tmp_path / "run")
    shutil.copytree(finished_run, save_dir)
    os.remove(os.path.join(save_dir, "args.json"))  # an older run directory, or one copied by hand
    argv = train_argv(str(packed / "data.rec"), save_dir, "--epochs", "3", "--resume")
    argv[argv.index("--model") + 1] = "resnest26"
    proc = run(TRAIN, *argv)
    assert proc.returncode == 1 and "holds checkpoints of resnest14, not of --model resnest26" in one_line(
        proc
    )
    assert len(open(os.path.join(save_dir, "metrics.jsonl")).read().splitlines()) == 2


# --------------------------------------------------------------------------------- 3. hard stops
def children(pid):
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(name))
    return found


def alive(pid):
    """Running and not a zombie (a PID 1 that reaps nothing keeps dead workers as zombies)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, seconds=60.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def stalled_pack(packed, tmp_path):
    """A good pair, and an im2rec re-pack of it (2 workers) that is busy for many seconds: its list names
    the 40 images 500 times each, upscaled (as they are, a fast machine packs all 20,000 in a second). (A FIFO
    under an image's name no longer stalls it: it is refused.)"""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc (Linux)")
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "data"), (".lst", ".rec", ".idx"))
    root = tmp_path / "img"
    shutil.copytree(packed / "img", root)
    lines = open(prefix + ".lst").read().splitlines()
    with open(prefix + ".lst", "w") as f:
        for i in range(500 * len(lines)):
            index, label, path = lines[i % len(lines)].split("\t")
            f.write(f"{i}\t{label}\t{path}\n")

    def start():
        # SIGINT as an interactive shell leaves it: a runner started in the background (`make test &`)
        # ignores SIGINT, and Python keeps an inherited "ignore", so im2rec would never see the Ctrl-C
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(
                # upscaled to 480 px, every image costs milliseconds: the pack lasts long enough to be stopped
                [
                    sys.executable,
                    IM2REC,
                    prefix,
                    str(root),
                    "--num-thread",
                    "2",
                    "--no-progress",
                    "--resize=480",
                ],
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        assert wait_until(lambda: os.path.exists(prefix + ".rec.tmp") and len(children(proc.pid)) >= 2)
        time.sleep(0.5)  # some images are written
        return proc, children(proc.pid)

    return prefix, contents(prefix), start


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_im2rec_stopped_cleans_up_like_ctrl_c(stalled_pack, signum, status):
    prefix, good, start = stalled_pack
    proc, workers = start()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"im2rec: stopped by {signal.Signals(signum).name}")
    assert "Traceback" not in err
    assert contents(prefix) == good and not leftovers(os.path.dirname(prefix))
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 10)


def test_im2rec_workers_exit_when_their_parent_is_killed(stalled_pack):
    prefix, good, start = stalled_pack
    proc, workers = start()
    proc.kill()
    proc.wait()
    # both workers, busy encoding or waiting on their task queue, go with the parent
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 10)
    assert contents(prefix) == good


def test_train_sigterm_is_one_line_and_keeps_complete_checkpoints(packed, tmp_path):
    save_dir = tmp_path / "run"
    argv = train_argv(str(packed / "data.rec"), str(save_dir), "--epochs", "50", "--batch-size", "4")
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *argv], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert wait_until(lambda: (save_dir / "resnest14-0001.params").exists() or proc.poll() is not None, 240)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "train (rank 0): stopped by SIGTERM" in err
    assert not leftovers(save_dir)
    saved = [n for n in os.listdir(save_dir) if n.endswith(".params")]
    for name in saved:  # every checkpoint left is complete and loads
        mx.nd.load(str(save_dir / name))
        assert os.path.exists(str(save_dir / name).replace(".params", ".states")) or "best" in name


# ------------------------------------------------------------------------------ 4. crashes, silent
def test_undecodable_validation_record_is_named_and_the_epoch_kept(packed, tmp_path):
    bad = corrupt_record(str(packed / "data"), str(tmp_path / "val"), 5, np.random.default_rng(0))
    proc = run(VERIFY, *verify_argv(bad + ".rec", packed / "net.params"))
    assert proc.returncode == 1, proc.returncode  # was 136: SIGFPE in ImageRecordIter, nothing printed
    assert "record 5 of" in one_line(proc) and "tools/rec_check.py" in proc.stderr
    save_dir = tmp_path / "run"
    proc = run(TRAIN, *train_argv(str(packed / "data.rec"), str(save_dir), val=bad + ".rec"))
    assert proc.returncode == 1 and "record 5 of" in one_line(proc) and "tools/rec_check.py" in proc.stderr
    assert "Epoch 1 is saved" in proc.stderr
    assert (save_dir / "resnest14-0001.params").exists() and (save_dir / "resnest14-0001.states").exists()
    rows = [json.loads(line) for line in open(save_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["val_top1"] is None


def test_python_validation_matches_the_cpp_iterator(packed):
    """verify.py and train.py validate on the Python path now: its batches equal ImageRecordIter's."""
    from resnest_gluon.data import val_iter

    def batches(backend, **kw):
        out = []
        for batch in val_iter(str(packed / "data.rec"), 8, 32, threads=1, backend=backend, **kw):
            valid = 8 - batch.pad
            out.append((batch.data[0].asnumpy()[:valid], batch.label[0].asnumpy()[:valid]))
        return out

    for kw, tol in ((dict(), 1e-5), (dict(interpolation="bicubic"), 0.02)):
        cpp, python = batches("cpp", **kw), batches("python", **kw)
        assert len(cpp) == len(python) == 5
        for (a, la), (b, lb) in zip(cpp, python):
            assert np.array_equal(la, lb) and np.abs(a - b).max() < tol  # bicubic: one grey level at most


def test_header_line_in_the_list_is_skipped_by_every_reader(packed, tmp_path):
    prefix = str(tmp_path / "data")
    lines = open(packed / "data.lst").read()
    (tmp_path / "data.lst").write_text("index\tlabel\tpath\n" + lines)
    proc = run(IM2REC, prefix, packed / "img", "--no-progress")
    assert proc.returncode == 2 and "line 1" in open(prefix + ".skipped.tsv").read()
    proc = run(VERIFY, *verify_argv(prefix + ".rec", packed / "net.params"))
    assert proc.returncode == 0, proc.stderr[-3000:]  # was: could not convert string to float: 'label'
    assert "on 40 images" in proc.stdout


def test_foreign_index_is_named_not_read_for_labels(packed, tmp_path):
    other = tmp_path / "other"
    pack(str(tmp_path / "b"), image_folder(other, n=30, classes=3, seed=1000))  # its offsets fit a.rec
    prefix = copy_pair(str(packed / "data"), str(tmp_path / "a"), (".rec",))
    shutil.copyfile(tmp_path / "b.idx", prefix + ".idx")
    proc = run(TRAIN, *train_argv(prefix + ".rec", str(tmp_path / "run")))
    assert (
        proc.returncode == 1 and "does not describe" in one_line(proc) and "not a record start" in proc.stderr
    )
    assert (
        "--classes" not in proc.stderr
    )  # was: label -7.5e+20, pass --classes 2509117221200523903453946309509121
    proc = run(VERIFY, *verify_argv(prefix + ".rec", packed / "net.params"))
    assert proc.returncode == 1 and "does not describe" in one_line(proc)


def test_truncated_or_garbage_params_are_named(packed, tmp_path):
    data = open(packed / "net.params", "rb").read()
    for name, content in (("cut.params", data[: len(data) // 2]), ("junk.params", os.urandom(1000))):
        path = tmp_path / name
        path.write_bytes(content)
        proc = run(VERIFY, *verify_argv(packed / "data.rec", path))
        assert proc.returncode == 1 and str(path) in one_line(proc) and "cut short" in proc.stderr
        with pytest.raises(UnreadableParams, match=str(path)):
            resnest_gluon.get_model("resnest14", classes=4, pretrained=str(path))


def test_save_dir_under_a_file_or_read_only_folder(packed, tmp_path):
    (tmp_path / "file").write_text("x")
    for save_dir, message in (
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "run", "Not a directory"),
    ):
        proc = run(TRAIN, *train_argv(str(packed / "data.rec"), str(save_dir)))
        assert proc.returncode == 1 and message in one_line(proc) and "--save-dir" in proc.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        proc = run(TRAIN, *train_argv(str(packed / "data.rec"), str(ro / "run")), prefix=without_dac())
        assert proc.returncode == 1 and "Permission denied" in one_line(proc) and "--save-dir" in proc.stderr
        proc = run(
            VERIFY, *verify_argv(packed / "data.rec", packed / "net.params", "--json", ro / "out.json"),
            prefix=without_dac(),
        )  # fmt: skip
        assert proc.returncode == 1 and "Permission denied" in one_line(proc) and "--json" in proc.stderr
    finally:
        ro.chmod(0o755)


def test_repeated_indices_are_refused_by_im2rec_and_the_readers(packed, tmp_path):
    prefix = str(tmp_path / "data")
    twice = open(packed / "data.lst").read() * 2  # two lists joined
    (tmp_path / "data.lst").write_text(twice)
    proc = run(IM2REC, prefix, packed / "img", "--no-progress")
    assert proc.returncode == 1 and "repeats 40 indices" in one_line(proc)
    assert not os.path.exists(prefix + ".rec") and not leftovers(tmp_path)
    # a .rec whose index repeats keys (MXNet's writer allows it): every reader refuses it
    writer = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    for i in range(40):
        img = photo(i, 32, 32)
        writer.write_idx(i % 20, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(i % 4), i % 20, 0), img))
    writer.close()
    proc = run(TRAIN, *train_argv(prefix + ".rec", str(tmp_path / "run")))
    assert proc.returncode == 1 and "20 keys occur more than once" in one_line(proc)
    proc = run(VERIFY, *verify_argv(prefix + ".rec", packed / "net.params"))
    assert proc.returncode == 1 and "more than once" in one_line(proc)
    assert run(REC_CHECK, prefix).returncode == 1


# ----------------------------------------------------------------------------- 9. folder listings
def test_directory_symlink_loop_is_listed_once(packed, tmp_path):
    root = tmp_path / "img"
    shutil.copytree(packed / "img" / "c0", root / "a")
    shutil.copytree(packed / "img" / "c1", root / "b")
    os.symlink("..", root / "a" / "loop")  # a/loop -> img
    proc = run(IM2REC, "--list", "--recursive", "--no-shuffle", tmp_path / "data", root)
    assert proc.returncode == 2 and "left out a/loop: same folder as ." in one_line(proc)
    lines = [line.split("\t") for line in open(tmp_path / "data.lst").read().splitlines()]
    assert len(lines) == 20 and {line[1] for line in lines} == {"0.000000", "1.000000"}


def test_file_symlink_loop_is_reported(packed, tmp_path):
    root = tmp_path / "img"
    shutil.copytree(packed / "img" / "c0", root)
    os.symlink("y.jpg", root / "x.jpg")
    os.symlink("x.jpg", root / "y.jpg")
    proc = run(IM2REC, "--list", tmp_path / "data", root)
    assert proc.returncode == 2 and "left out x.jpg: broken or looping symlink" in one_line(proc)
    assert len(open(tmp_path / "data.lst").read().splitlines()) == 10


def test_unreadable_class_folder_is_an_error(packed, tmp_path):
    root = tmp_path / "img"
    shutil.copytree(packed / "img", root)
    (root / "c1").chmod(0)
    try:
        proc = run(IM2REC, "--list", "--recursive", tmp_path / "data", root, prefix=without_dac())
    finally:
        (root / "c1").chmod(0o755)
    assert proc.returncode == 1 and "cannot read folder" in one_line(proc) and "c1" in proc.stderr
    assert not (tmp_path / "data.lst").exists()  # was: c1 dropped, c2 and c3 labelled 1 and 2


# ---------------------------------------------------------------------------------- 10. rec_check
def test_rec_check_empty_rec_and_missing_idx(packed, tmp_path):
    (tmp_path / "empty.rec").write_bytes(b"")
    proc = run(REC_CHECK, tmp_path / "empty")
    assert proc.returncode == 1 and "holds no records" in proc.stdout
    proc = run(REC_CHECK, packed / "data", "--idx", tmp_path / "missing.idx")
    assert proc.returncode == 1 and "--idx" in one_line(proc) and "missing.idx does not exist" in proc.stderr


def test_skipped_report_quotes_lines_with_tabs(packed, tmp_path):
    prefix = str(tmp_path / "data")
    lines = open(packed / "data.lst").read()
    (tmp_path / "data.lst").write_text(lines + "x\ty\tz\tw\n")
    assert run(IM2REC, prefix, packed / "img", "--no-progress").returncode == 2
    with open(prefix + ".skipped.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["index", "path", "reason"] and all(len(row) == 3 for row in rows)
    assert rows[1][1] == "x\ty\tz\tw"


def test_damaged_jpegs_are_told_apart(packed, tmp_path):
    good = jpeg(7, 64, 64)
    sos = good.rfind(b"\xff\xda")
    # garbage in the header: a segment length now runs past the end (the file itself is complete)
    header = bytearray(good)
    header[good.find(b"\xff\xdb") + 2 : good.find(b"\xff\xdb") + 4] = b"\xff\xf0"
    # markers intact, entropy-coded data damaged (no 0xFF bytes, so no new marker)
    data = bytearray(good)
    data[(sos + len(good)) // 2 : (sos + len(good)) // 2 + 40] = bytes(range(100, 140))
    root = tmp_path / "img"
    root.mkdir()
    for name, content in (("good.jpg", good), ("header.jpg", header), ("data.jpg", data)):
        (root / name).write_bytes(bytes(content))
    prefix = str(tmp_path / "d")
    (tmp_path / "d.lst").write_text("0\t0\tgood.jpg\n1\t0\theader.jpg\n2\t0\tdata.jpg\n")
    proc = run(IM2REC, prefix, root, "--no-progress")
    assert proc.returncode == 2
    report = open(prefix + ".skipped.tsv").read()
    assert "corrupt JPEG file (a marker segment runs past the end" in report and "truncated" not in report
    assert "packed data.jpg (2) despite corrupt JPEG data: Corrupt JPEG data" in proc.stderr
    assert run(IM2REC, prefix, root, "--no-progress", "--skip-corrupt", "--max-skipped", "1").returncode == 2
    assert "corrupt JPEG data (libjpeg: Corrupt JPEG data" in open(prefix + ".skipped.tsv").read()
    # rec_check tells the same apart inside a record file (the files stored as they are)
    (tmp_path / "raw.lst").write_text("0\t0\tgood.jpg\n1\t0\theader.jpg\n2\t0\tdata.jpg\n")
    assert run(IM2REC, tmp_path / "raw", root, "--pass-through", "--no-progress").returncode == 0
    proc = run(REC_CHECK, tmp_path / "raw", "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1 and result["undecodable"]["count"] == 1
    assert result["undecodable"]["examples"][0]["reason"].startswith("corrupt JPEG image (a marker segment")
    assert result["corrupt_data"]["count"] == 1 and result["corrupt_data"]["examples"][0]["id"] == 2


def test_unwritable_output_folder_and_unreadable_rec_are_one_line_errors(packed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    prefix = copy_pair(str(packed / "data"), str(out / "data"), (".lst", ".rec", ".idx"))
    good = contents(prefix)
    out.chmod(0o555)
    try:
        proc = run(IM2REC, prefix, packed / "img", "--no-progress", prefix=without_dac())
        assert proc.returncode == 1 and "Permission denied" in one_line(proc)
        assert contents(prefix) == good and not leftovers(out)
    finally:
        out.chmod(0o755)
    os.chmod(prefix + ".rec", 0)
    try:
        proc = run(REC_CHECK, prefix, prefix=without_dac())
        assert proc.returncode == 1 and "Permission denied" in one_line(proc)
    finally:
        os.chmod(prefix + ".rec", 0o644)
