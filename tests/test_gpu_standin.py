"""The ``--ctx gpu`` paths on a stand-in GPU: ``mx.gpu(i)`` is the CPU context ``cpu(i + 1)``, and every
operator and CachedOp call is checked for inputs on different contexts.

MXNet's own imperative check compares only the device type (and a CPU kernel reads any CPU context's
memory), so without the checker an array left on ``cpu(0)`` next to the "GPU" would pass silently; on a
real GPU it fails ("all inputs must live on the same context"). ``_copyto`` (the one operator meant to
cross devices) is exempt. Run as a script, this file is a ``scripts/train.py`` worker with the stand-in
installed, for ``horovodrun``.
"""

import contextlib
import ctypes
import importlib
import os
import sys

import mxnet as mx
import mxnet.ndarray.register as nd_register
import numpy as np
import pytest
from mxnet import gluon
from mxnet._ctypes import ndarray as ctypes_ndarray
from mxnet.base import _LIB, check_call, py_str
from workers import horovodrun, report

from resnest_gluon.training import TrainingError, dist, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")

STANDIN_GPUS = 2  # what the patched num_gpus() answers


class MixedContexts(AssertionError):
    pass


class Checker:
    """Wraps MXNet's imperative invocation and CachedOp calls; records the contexts seen."""

    def __init__(self):
        self.calls = 0
        self.contexts = set()
        self.ops = set()

    def check(self, what, arrays):
        ctxs = {_device(a.context) for a in arrays if isinstance(a, mx.nd.NDArray)}
        self.calls += 1
        self.contexts |= ctxs
        if len(ctxs) > 1:
            raise MixedContexts(f"{what} called with inputs on {sorted(map(str, ctxs))}")

    def invoke(self, real):
        names = _op_names()
        copy = next(h for h, aliases in names.items() if "_copyto" in aliases)

        def checked(handle, ndargs, keys, vals, out, *rest):
            name = names.get(handle, [str(handle)])[0]
            self.ops.add(name)
            if handle != copy:
                outs = [] if out is None else [out] if isinstance(out, mx.nd.NDArray) else list(out)
                self.check(f"operator {name}", list(ndargs) + outs)
            return real(handle, ndargs, keys, vals, out, *rest)

        return checked

    def cached_op(self, real):
        def checked(op, *args, **kwargs):
            self.check("CachedOp", args)
            return real(op, *args, **kwargs)

        return checked


def _device(ctx: mx.Context) -> mx.Context:
    """The device an array is on: pinned and shared CPU memory are host memory like ``cpu(0)`` (MXNet's
    operators take them together on every build), ``cpu(i + 1)`` is the stand-in ``gpu(i)``."""
    return mx.cpu(0) if ctx.device_type in ("cpu_pinned", "cpu_shared") else ctx


def _op_names() -> dict:
    """Operator handle (the int the generated ``mx.nd`` functions pass) -> its names, shortest first
    (aliases such as ``_npi_copyto`` share ``_copyto``'s handle)."""
    size, names = ctypes.c_uint(), ctypes.POINTER(ctypes.c_char_p)()
    check_call(_LIB.MXListAllOpNames(ctypes.byref(size), ctypes.byref(names)))
    table = {}
    for i in range(size.value):
        handle = ctypes.c_void_p()
        check_call(_LIB.NNGetOpHandle(names[i], ctypes.byref(handle)))
        table.setdefault(handle.value, []).append(py_str(names[i]))
    return {h: sorted(aliases, key=len) for h, aliases in table.items()}


def standin_gpu(device_id=0):
    return mx.cpu(device_id + 1)


@contextlib.contextmanager
def standin(gpus=STANDIN_GPUS):
    """``mx.gpu`` -> ``cpu(i + 1)``, ``num_gpus()`` -> ``gpus``, and the context checker, for the block."""
    checker = Checker()
    saved = (mx.gpu, mx.context.gpu, mx.context.num_gpus, nd_register._imperative_invoke)
    saved_call = ctypes_ndarray.CachedOp.__call__
    mx.gpu = mx.context.gpu = standin_gpu
    mx.context.num_gpus = lambda: gpus
    nd_register._imperative_invoke = checker.invoke(saved[3])
    ctypes_ndarray.CachedOp.__call__ = checker.cached_op(saved_call)
    try:
        yield checker
    finally:
        mx.gpu, mx.context.gpu, mx.context.num_gpus, nd_register._imperative_invoke = saved
        ctypes_ndarray.CachedOp.__call__ = saved_call


def load_script(name):
    return importlib.import_module(f"resnest_gluon.cli.{name}")


# ----------------------------------------------------------------------------------------- the checker
def test_checker_catches_what_mxnet_lets_through():
    """Without the checker MXNet adds a cpu(0) and a cpu(1) array; with it, that is an error, for plain
    operators, optimizer updates and hybridized blocks alike, while a copy across is allowed."""
    a, b = mx.nd.ones((2,), ctx=mx.cpu(0)), mx.nd.ones((2,), ctx=mx.cpu(1))
    assert (a + b).asnumpy().tolist() == [2, 2]  # MXNet itself does not mind
    with standin() as checker:
        assert mx.gpu(0) == mx.cpu(1) and mx.context.num_gpus() == STANDIN_GPUS
        mixed = r"operator broadcast_add called with inputs on \['cpu\(0\)', 'cpu\(1\)'\]"
        with pytest.raises(MixedContexts, match=mixed):
            a + b
        with pytest.raises(MixedContexts, match="sgd_update"):
            mx.nd.sgd_update(b, a, lr=0.1, out=b)
        with pytest.raises(MixedContexts, match="operator"):
            a.copyto(mx.nd.zeros((2,), ctx=mx.cpu(1))) + a
        assert a.copyto(mx.gpu(0)).context == mx.cpu(1)  # _copyto crosses devices by design
        net = gluon.nn.Dense(3, in_units=2)
        net.initialize(ctx=mx.gpu(0))
        net.hybridize()
        net(b.reshape((1, 2)))
        with pytest.raises(MixedContexts, match="CachedOp"):
            net(a.reshape((1, 2)))
    assert checker.calls > 5 and mx.gpu(0).device_type == "gpu"  # restored


# ----------------------------------------------------------------------------------------- train.py
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_train import make_rec

    root = tmp_path_factory.mktemp("standin")
    make_rec(str(root / "train"), 32)
    make_rec(str(root / "val"), 12)
    return root


def train_args(data, run, **kw):
    from test_train import base_args

    kw = dict(dict(ctx="gpu", epochs=2, batch_size=8, jitter=0.4, lighting=0.1, save_dir=run), **kw)
    return base_args(data, **kw)


@pytest.mark.parametrize(
    "options",
    [
        dict(mixup=True, dropblock_prob=0.1, last_gamma=True),  # the colour step on the device
        dict(no_hybridize=True, dropblock_prob=0.1),
        dict(data_backend="cpp"),
    ],
    ids=["python-path+mixup+dropblock", "no-hybridize", "cpp-iterator"],
)
def test_train_one_worker_on_the_standin_gpu(data, tmp_path, options, capsys):
    train = load_script("train")
    run = tmp_path / "run"
    with standin() as checker:
        result = train.main(train_args(data, run, **options))
        # off a terminal the progress bar writes a line when it starts, not one per step (4 steps here)
        assert capsys.readouterr().err.count("epoch 1/2:") == 1
        assert mx.cpu(1) in checker.contexts and checker.calls > 1000
        # the training arrays lived on the stand-in GPU: the saved parameters load back onto it
        params = mx.nd.load(str(run / "resnest14-0002.params"))
        assert all(np.isfinite(v.asnumpy()).all() for v in params.values())
        if options.get("mixup"):  # resume on the device (master weights and trainer states loaded there)
            assert train.main(train_args(data, run, epochs=3, resume=True, **options))["epoch"] == 3
    epochs = 3 if options.get("mixup") else 2
    assert result["epoch"] == 2
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    if options.get("dropblock_prob"):
        assert rows[-1]["dropblock_prob"] > 0
    if "data_backend" not in options:  # the colour step ran on the device: a uint8 upload to cpu(1)
        assert "_copyto" in checker.ops and "batch_dot" in checker.ops


def test_nonfinite_loss_on_the_standin_gpu_saves_nothing_bad(data, tmp_path):
    """The loss is read one step late; a non-finite one still stops the run before anything is saved."""
    train = load_script("train")
    run = tmp_path / "run"
    with standin():
        train.main(train_args(data, run, epochs=1))
        good = mx.nd.load(str(run / "resnest14-0001.params"))
        with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch 2, step \d of 4"):
            train.main(train_args(data, run, epochs=2, lr=1e36, resume=True))
    kept = mx.nd.load(str(run / "resnest14-0001.params"))
    assert not (run / "resnest14-0002.params").exists()
    assert all(np.array_equal(good[k].asnumpy(), kept[k].asnumpy()) for k in good)
    assert len(read_metrics(str(run / "metrics.jsonl"))) == 1


def test_verify_on_the_standin_gpu(data, tmp_path, monkeypatch):
    train, verify = load_script("train"), load_script("verify")
    run = tmp_path / "run"
    with standin() as checker:
        train.main(train_args(data, run, epochs=1))
        params = str(run / "resnest14-0001.params")
        args = ["--model", "resnest14", "--classes", "4", "--rec-val", str(data / "val.rec"),
                "--params", params, "--crop-size", "32", "--batch-size", "5"]  # fmt: skip
        on_gpu = verify.main(args + ["--ctx", "gpu"])
    on_cpu = verify.main(args)
    assert mx.cpu(1) in checker.contexts
    assert on_gpu["images"] == on_cpu["images"] == 12
    assert on_gpu["top1"] == pytest.approx(on_cpu["top1"]) and on_gpu["top5"] == pytest.approx(on_cpu["top5"])

    # --pretrained builds the model once, straight onto the device (published weights stood in for)
    built, real = [], verify.resnest_gluon.get_model

    def get_model(name, pretrained=False, ctx=None, **kw):
        built.append((pretrained, ctx))
        net = real(name, **kw)
        net.load_parameters(params, ctx=ctx)
        return net

    monkeypatch.setattr(verify.resnest_gluon, "get_model", get_model)
    with standin():
        pretrained = verify.main(args[:6] + ["--pretrained"] + args[8:] + ["--ctx", "gpu"])
    assert built == [(True, mx.cpu(1))] and pretrained["top1"] == pytest.approx(on_cpu["top1"])


# ----------------------------------------------------------------------------------------- GPU choice
def test_worker_context_one_visible_gpu_or_one_per_local_rank(monkeypatch):
    assert dist.worker_context("cpu") == mx.cpu()
    with standin(gpus=1):
        monkeypatch.setattr(dist, "local_rank", lambda: 3)  # CUDA_VISIBLE_DEVICES gave this worker one GPU
        assert dist.worker_context("gpu") == mx.gpu(0)
    with standin(gpus=4):
        assert dist.worker_context("gpu") == mx.gpu(3)
    with standin(gpus=2):  # four local workers on a machine with two GPUs
        with pytest.raises(TrainingError, match=r"rank\(s\) 0 have no GPU.*rank 0 \(local 3\): 2"):
            dist.worker_context("gpu")
    with standin(gpus=0):
        with pytest.raises(TrainingError, match=r"rank\(s\) 0 have no GPU.*rank 0 \(local 3\): 0"):
            dist.worker_context("gpu")


def test_train_without_gpu_stops_before_writing(tmp_path):
    """--ctx gpu on a machine without one: the error comes before the run directory. (--ctx auto, the
    default, takes the GPU when MXNet sees one and the CPU otherwise.)"""
    train = load_script("train")
    with standin(gpus=0):
        with pytest.raises(TrainingError, match="have no GPU of their own.*pass --ctx cpu"):
            train.main(
                ["--rec-train", str(tmp_path / "t.rec"), "--save-dir", str(tmp_path / "run"), "--ctx", "gpu"]
            )
    assert not (tmp_path / "run").exists()
    from resnest_gluon.cli import common

    for gpus, chosen in ((0, "cpu"), (2, "gpu")):
        with standin(gpus=gpus):
            args = train.parse_args(["--rec-train", "t.rec"])
            assert args.ctx == "auto" and common.resolve_ctx(args) == chosen


WORKER = "standin-worker"


def horovod(argv, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
    return horovodrun([sys.executable, os.path.abspath(__file__), WORKER, *argv], env=env, timeout=timeout)


def test_two_horovod_workers_on_standin_gpus(data, tmp_path):
    """Two local workers on gpu(0) and gpu(1) (cpu(1), cpu(2)), colour step and DropBlock there."""
    run = tmp_path / "run"
    proc = horovod(["2,2"] + train_args(data, run, dropblock_prob=0.1, mixup=True))
    assert proc.returncode == 0, report(proc)
    seen = sorted(line for line in proc.stdout.splitlines() if "contexts seen" in line)
    assert len(seen) == 2 and "cpu(1)" in seen[0] + seen[1] and "cpu(2)" in seen[0] + seen[1], proc.stdout
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["workers"] for r in rows] == [2, 2] and all(np.isfinite(r["train_loss"]) for r in rows)


def test_a_worker_without_gpu_stops_every_rank(data, tmp_path):
    """Rank 0 has its GPU, rank 1 sees none: both stop at once with every rank's count (before, rank 0
    went on into the parameter broadcast and blocked there until horovodrun killed it)."""
    proc = horovod(["2,0"] + train_args(data, tmp_path / "run"), timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count("rank(s) 1 have no GPU of their own") == 2, out[-3000:]
    assert "rank 0 (local 0): 2, rank 1 (local 1): 0" in out


def _worker(gpus_per_rank, argv) -> None:
    """A train.py worker whose num_gpus() answers ``gpus_per_rank[rank]``."""
    train = load_script("train")
    rank = int(os.environ.get("HOROVOD_RANK", 0))
    with standin(gpus=gpus_per_rank[rank]) as checker:
        try:
            train.main(argv)
        except TrainingError as err:
            print(f"error (rank {dist.rank()}): {err}", file=sys.stderr)
            sys.exit(1)
    print(f"rank {dist.rank()}: contexts seen {sorted(map(str, checker.contexts))}", flush=True)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == WORKER:
    _worker([int(n) for n in sys.argv[2].split(",")], sys.argv[3:])
