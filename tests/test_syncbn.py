"""Cross-rank SyncBatchNorm: N Horovod workers compute what one process computes on the joined batch.

Run as a script (``python tests/test_syncbn.py --worker DIR``) it is the Horovod worker the test starts.
"""

import os
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from workers import HOROVODRUN, horovodrun, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPLIT = (3, 1)  # images per worker: uneven on purpose, the counts are reduced too


def conv_net(norm):
    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(4, 3, padding=1, use_bias=False, in_channels=3),  # a bias before BN gets no gradient
        norm(in_channels=4),
        gluon.nn.Activation("relu"),
        gluon.nn.Conv2D(5, 1, use_bias=False, in_channels=4),
        norm(in_channels=5, momentum=0.8, scale=False),  # fix_gamma, another momentum
    )
    return net


def resnest_net(norm):
    from resnest_gluon import get_model

    return get_model("resnest14", classes=3, norm_layer=norm)


# name: (builder, hybridize, image shape, dtype, compared keys). In float32, one rounding of difference can
# flip a ReLU or a max-pool choice in ResNeSt-14 and move a few gradients by far more than 1e-5 (seen: 11 % of
# one weight's gradient), so that network is compared in float64, where the algorithm alone shows, and in
# float32 on its outputs and statistics; the small network without max-pool is compared in float32.
NETS = {
    "conv": (conv_net, False, (3, 8, 7), "float32", None),
    "resnest14": (resnest_net, True, (3, 32, 32), "float64", None),
    "resnest14_f32": (resnest_net, True, (3, 32, 32), "float32", ("out", "inference", "stat:")),
}


def joined_batch(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, (sum(SPLIT),) + shape).astype("float32")
    return x, rng


def run(net, x, w, ctx=None):
    """Forward and backward of sum(out * w): a sum over images, so each image's gradient is its own."""
    x = mx.nd.array(x, dtype=w.dtype, ctx=ctx)
    x.attach_grad()
    with autograd.record():
        out = net(x)
        loss = (out * mx.nd.array(w, dtype=w.dtype, ctx=ctx)).sum()
    loss.backward()
    params = net._collect_params_with_prefix()
    got = {"out": out.asnumpy(), "dx": x.grad.asnumpy()}
    got.update({"grad:" + k: p.grad().asnumpy() for k, p in params.items() if p.grad_req != "null"})
    got.update({"stat:" + k: p.data().asnumpy() for k, p in params.items() if "running" in k})
    return got


def worker(out_dir, standin_gpu: bool):
    """One Horovod worker; with ``standin_gpu`` on the tests' stand-in GPU (``mx.gpu(i)`` is ``cpu(i + 1)``,
    and any operator with inputs on two contexts fails), as ``train_seg.py --ctx gpu`` would run it."""
    from resnest_gluon.training import dist

    assert dist.init() and dist.size() == len(SPLIT)
    if not standin_gpu:
        return _worker(out_dir, mx.cpu())
    from test_gpu_standin import standin

    with standin() as checker:
        _worker(out_dir, mx.gpu(dist.local_rank()))
    assert "Custom" in checker.ops and mx.cpu(dist.local_rank() + 1) in checker.contexts


def _worker(out_dir, ctx):
    from resnest_gluon.training import dist
    from resnest_gluon.training.syncbn import SyncBatchNorm

    rank = dist.rank()
    lo = sum(SPLIT[:rank])
    results = {}
    for name, (build, hybridize, shape, dtype, _) in NETS.items():
        x, rng = joined_batch(shape, seed=len(name))
        net = build(SyncBatchNorm)
        net.initialize(mx.init.Xavier(), ctx=ctx)  # every shape is known: no forward before the broadcast
        for k, p in net._collect_params_with_prefix().items():
            if k.endswith(("gamma", "beta")):
                p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape), ctx=ctx))
        net.cast(dtype)
        dist.broadcast_parameters(net.collect_params())
        if rank == 0:
            net.save_parameters(os.path.join(out_dir, f"{name}.params"))
        if hybridize:
            net.hybridize(static_alloc=True)
        out = net(mx.nd.array(x, dtype=dtype, ctx=ctx))
        w = rng.normal(size=out.shape).astype(dtype)
        mine = slice(lo, lo + SPLIT[rank])
        got = run(net, x[mine], w[mine], ctx)
        got["inference"] = net(mx.nd.array(x[mine], dtype=dtype, ctx=ctx)).asnumpy()  # running statistics
        results.update({f"{name}/{k}": v for k, v in got.items()})
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)


def reference(name, params):
    build, hybridize, shape, dtype, _ = NETS[name]
    x, rng = joined_batch(shape, seed=len(name))
    net = build(gluon.nn.BatchNorm)
    net.cast(dtype)
    net.load_parameters(params)
    for k, p in net._collect_params_with_prefix().items():  # the same draws as the workers'
        if k.endswith(("gamma", "beta")):
            rng.uniform(0.5, 1.5, p.shape)
    if hybridize:
        net.hybridize(static_alloc=True)
    out = net(mx.nd.array(x, dtype=dtype))
    w = rng.normal(size=out.shape).astype(dtype)
    got = run(net, x, w)
    got["inference"] = net(mx.nd.array(x, dtype=dtype)).asnumpy()
    return got


def close(a, b):
    """Largest difference relative to the array's scale (max |b|, at least 1)."""
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


@pytest.mark.skipif(not os.path.exists(HOROVODRUN), reason="horovodrun is not installed")
def test_two_workers_equal_one_process_on_the_joined_batch(tmp_path):
    """Outputs, input gradients (each worker's slice), parameter gradients (summed over workers), running
    statistics and inference outputs, against MXNet's BatchNorm in one process: all within 1e-5. The
    workers run on the stand-in GPU (tests/test_gpu_standin.py), so nothing crosses devices; the plain CPU
    path runs in test_train_seg_with_sync_bn_on_two_workers."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    proc = horovodrun([sys.executable, __file__, "--worker", tmp_path, "--standin-gpu"], env=env, timeout=300)
    assert proc.returncode == 0, report(proc)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(len(SPLIT))]
    worst = {}
    for name, (*_, compared) in NETS.items():
        expected = reference(name, str(tmp_path / f"{name}.params"))
        for key, want in expected.items():
            if compared and not key.startswith(compared):
                continue
            parts = [r[f"{name}/{key}"] for r in ranks]
            if key.startswith("grad:"):
                got = sum(parts)  # what Horovod's trainer reduces
            elif key.startswith("stat:"):
                for part in parts[1:]:
                    np.testing.assert_array_equal(part, parts[0])
                got = parts[0]
            else:
                got = np.concatenate(parts)
            assert got.shape == want.shape, key
            worst[f"{name}/{key}"] = close(got, want)
    bad = {k: v for k, v in worst.items() if v > 1e-5}
    assert not bad, bad
    assert len(worst) > 150  # every parameter and BatchNorm of ResNeSt-14 was compared
    print(
        "largest relative differences:",
        {n: max(v for k, v in worst.items() if k.startswith(n + "/")) for n in NETS},
    )


@pytest.mark.skipif(not os.path.exists(HOROVODRUN), reason="horovodrun is not installed")
def test_train_seg_with_sync_bn_on_two_workers(tmp_path):
    """The segmentation command trains with SyncBatchNorm in the shared loop (hybridized) on 2 workers."""
    import json

    from test_segmentation import make_seg_folder

    make_seg_folder(tmp_path / "data")
    cmd = [sys.executable, os.path.join(REPO, "scripts", "train_seg.py")]
    cmd += ["--backbone", "resnest14", "--data-root", str(tmp_path / "data"), "--classes", "3"]
    cmd += ["--mask-offset", "0", "--ctx", "cpu", "--crop-size", "32", "--base-size", "40", "--epochs", "1"]
    cmd += ["--batch-size", "2", "--data-threads", "1", "--sync-bn", "--save-dir", str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    proc = horovodrun(cmd, env=env, timeout=300)
    assert proc.returncode == 0, report(proc)
    row = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert row["workers"] == 2 and np.isfinite(row["train_loss"]) and row["val_miou"] is not None
    assert json.load(open(tmp_path / "run" / "args.json"))["sync_bn"] is True


def test_one_process_equals_batchnorm_imperative_and_hybridized():
    from resnest_gluon.training.syncbn import SyncBatchNorm

    x, rng = joined_batch((3, 8, 7), seed=0)
    w = rng.normal(size=(len(x), 5, 8, 7)).astype("float32")
    x = x.astype("float32")
    results = []
    for norm in (gluon.nn.BatchNorm, SyncBatchNorm):
        for hybridize in (False, True):
            mx.random.seed(1)
            net = conv_net(norm)
            net.initialize(mx.init.Xavier())
            if hybridize:
                net.hybridize()
            got = run(net, x, w)
            got["inference"] = net(mx.nd.array(x)).asnumpy()
            results.append(got)
    for got in results[1:]:
        for key, want in results[0].items():
            assert close(got[key], want) < 1e-5, key


def test_keeps_batchnorm_parameter_names():
    from resnest_gluon import get_model
    from resnest_gluon.training.syncbn import SyncBatchNorm

    plain, synced = get_model("resnest14"), get_model("resnest14", norm_layer=SyncBatchNorm)
    assert sorted(plain._collect_params_with_prefix()) == sorted(synced._collect_params_with_prefix())
    with pytest.raises(ValueError, match="axis"):
        SyncBatchNorm(axis=3)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2], "--standin-gpu" in sys.argv[3:])
