"""float16 dynamic loss scaling and Horovod's gradient_predivide_factor, each with a forced overflow.

MXNet's CPU convolutions and dense layers have no float16 kernels, so the float16 "model" here is an
element-wise one (float16 element-wise operators run on the CPU): the gradients really are float16 and
really overflow at 65504.
"""

import json
import os
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from workers import horovodrun, report

from resnest_gluon.training import LossScaler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.array([2.0, 0.5, -1.0, 0.25], np.float32)  # the loss is sum(w * X): dloss/dw = X


def float16_model(optimizer="nag"):
    params = gluon.ParameterDict()
    w = params.get("w", shape=(4,), dtype="float16", init=mx.init.One())
    params.initialize()
    opts = dict(learning_rate=0.1, momentum=0.9, multi_precision=True)
    return w, gluon.Trainer(params, optimizer, opts, kvstore=None)


def scaled_step(w, trainer, scaler, x=X):
    with autograd.record():
        loss = (w.data() * mx.nd.array(x, dtype="float16")).astype("float32").sum() * scaler.scale
    loss.backward()
    return scaler.step(trainer, 1)


def test_float16_overflow_skips_the_step_and_lowers_the_scale():
    w, trainer = float16_model()
    scaler = LossScaler(scale=2.0**16, window=1000)
    # 2 * 2**16 and 2 * 2**15 are past float16's 65504: two steps skipped, the weights untouched
    assert not scaled_step(w, trainer, scaler)
    assert not np.isfinite(w.grad().asnumpy()).all()  # the overflow is real
    assert not scaled_step(w, trainer, scaler)
    assert scaler.scale == 2.0**14 and scaler.skipped == 2
    np.testing.assert_array_equal(w.data().asnumpy(), np.ones(4, np.float16))
    # at 2**14 the gradients fit: the update is the unscaled one, as a float32 model without scaling makes
    assert scaled_step(w, trainer, scaler) and scaler.scale == 2.0**14
    ref = gluon.ParameterDict()
    ref_w = ref.get("w", shape=(4,), init=mx.init.One())
    ref.initialize()
    ref_trainer = gluon.Trainer(ref, "nag", dict(learning_rate=0.1, momentum=0.9), kvstore=None)
    with autograd.record():
        loss = (ref_w.data() * mx.nd.array(X)).sum()
    loss.backward()
    ref_trainer.step(1)
    np.testing.assert_allclose(w.data().asnumpy(), ref_w.data().asnumpy(), rtol=1e-3)
    assert not np.allclose(w.data().asnumpy(), 1)


def test_scale_grows_after_a_window_of_good_steps():
    w, trainer = float16_model("sgd")
    scaler = LossScaler(scale=4.0, window=3, max_scale=16.0)
    for _ in range(9):
        assert scaled_step(w, trainer, scaler)
    assert scaler.scale == 16.0 and scaler.skipped == 0  # 4 -> 8 -> 16, then capped
    scaler.update_scale(False)
    assert scaler.scale == 8.0 and scaler.good_steps == 0
    with pytest.raises(ValueError, match="factor > 1"):
        LossScaler(factor=1.0)


def test_float32_nan_gradient_is_caught_too():
    params = gluon.ParameterDict()
    w = params.get("w", shape=(2,), init=mx.init.One())
    params.initialize()
    assert LossScaler.grads_finite(params)
    w.grad()[:] = np.array([1.0, np.nan], np.float32)
    assert not LossScaler.grads_finite(params)


WORKER = """
import mxnet as mx
from mxnet import autograd, gluon
from resnest_gluon.training import LossScaler, dist

dist.init()
for factor in (1.0, 2.0):
    params = gluon.ParameterDict(prefix=f"f{factor}_")
    w = params.get("w", shape=(3,), init=mx.init.Zero())
    params.initialize()
    trainer = dist.make_trainer(params, "sgd", dict(learning_rate=1e-38), gradient_predivide_factor=factor)
    with autograd.record():  # dloss/dw = 3e38, near float32's largest: two of them overflow when summed
        loss = (w.data() * 3e38).sum()
    loss.backward()
    scaler = LossScaler(scale=1.0)
    updated = scaler.step(trainer, 1)
    w = w.data().asnumpy().tolist()
    print(f"rank {dist.rank()} factor={factor} updated={updated} w={w} scale={scaler.scale}")
"""


def test_gradient_predivide_factor_keeps_a_large_sum_in_range(tmp_path):
    """Two workers' gradients of 3e38: summed as they are, they overflow and the step is skipped on both;
    divided by 2 before the sum (and by 2 / 2 after), the mean 3e38 survives and the update is made."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = horovodrun([sys.executable, script], env=env, timeout=120)
    assert proc.returncode == 0, report(proc)
    lines = sorted(line for line in proc.stdout.splitlines() if "updated=" in line)
    assert len(lines) == 4
    for line in lines:
        w = json.loads(line.split(" w=")[1].split(" scale=")[0])
        if "factor=2.0" in line:  # w = 0 - 1e-38 * mean(3e38, 3e38), and the scale stays
            assert "updated=True" in line and line.endswith("scale=1.0"), line
            assert w == pytest.approx([-3.0] * 3, rel=1e-6)
        else:  # the sum overflowed on both workers: both skipped the step and halved the scale
            assert "updated=False" in line and line.endswith("scale=0.5") and w == [0.0] * 3, line
