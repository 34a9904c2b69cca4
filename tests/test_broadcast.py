"""Starting every worker from rank 0's parameters without Horovod's broadcast.

Horovod 0.28.1's broadcast logs the tensor's name after enqueueing it; for MXNet that name is freed by the
completion callback, so a worker descheduled at that moment read freed memory and died of SIGSEGV at
start-up or at its first step (about one two-worker run in twenty under load, the first training step
being where deferred parameters are broadcast). ``dist.broadcast_parameters`` sums instead, every worker
but the root contributing zeros. The race test widens that window to 20 ms with a preloaded shim: Horovod's
own broadcast then fails every time (checked when the shim was written), ours must not.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from workers import horovodrun, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent(
    """
    import sys
    import mxnet as mx
    from mxnet import gluon
    import horovod.mxnet as hvd
    from resnest_gluon.training import dist

    def refuse(*args, **kwargs):
        raise AssertionError("Horovod's broadcast was called")

    hvd.broadcast_ = hvd.broadcast = hvd.broadcast_parameters = refuse
    dist.init()
    for trial in range(int(sys.argv[1])):
        mx.random.seed(dist.rank() * 100 + trial)  # different starting values on each worker
        net = gluon.nn.HybridSequential(prefix=f"t{trial}_")
        with net.name_scope():
            net.add(gluon.nn.Dense(8, in_units=4), gluon.nn.BatchNorm(), gluon.nn.Dense(3))  # deferred
        net.initialize(mx.init.Uniform(), ctx=mx.cpu())
        deferred = [p.name for p in net.collect_params().values() if p._deferred_init]
        assert deferred, "the test needs parameters waiting for their shape"
        dist.broadcast_parameters(net.collect_params())
        net(mx.nd.ones((2, 4)))  # deferred parameters initialised, then broadcast
        for name, p in net.collect_params().items():
            mine = p.data().asnumpy()
            total = dist.allreduce_sum(p.data().copy(), name=f"check.{trial}.{name}").asnumpy()
            assert (total == dist.size() * mine).all(), f"{name} differs between workers"
    print(f"rank {dist.rank()}: the same parameters on every worker")
    """
)

# Sleeps 20 ms whenever a stream receives exactly "Enqueued ", which Horovod logs right after handing a
# broadcast to its background thread: enough for the broadcast to complete and its name to be freed.
SHIM = textwrap.dedent(
    """
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <string.h>
    #include <unistd.h>
    #define INSERT _ZSt16__ostream_insertIcSt11char_traitsIcEERSt13basic_ostreamIT_T0_ES6_PKS3_l
    #define NAME(x) #x
    #define STR(x) NAME(x)
    typedef void* (*insert_fn)(void*, const char*, long);
    void* INSERT(void* out, const char* s, long n) {
      static insert_fn real;
      if (!real) real = (insert_fn)dlsym(dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_NOLOAD), STR(INSERT));
      if (n == 9 && memcmp(s, "Enqueued ", 9) == 0) usleep(20000);
      return real(out, s, n);
    }
    """
)


def run_workers(tmp_path, trials, env=None):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", **(env or {}))
    return horovodrun([sys.executable, script, trials], env=env, timeout=300)


def test_every_worker_gets_rank_0s_parameters_deferred_ones_too(tmp_path):
    proc = run_workers(tmp_path, 2)
    assert proc.returncode == 0, report(proc)
    assert proc.stdout.count("the same parameters on every worker") == 2


@pytest.mark.skipif(not shutil.which("gcc"), reason="no C compiler on this machine: the shim cannot be built")
def test_no_crash_when_a_broadcast_completes_before_horovod_logs_it(tmp_path):
    shim = tmp_path / "widen.so"
    (tmp_path / "widen.c").write_text(SHIM)
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", str(tmp_path / "widen.c"), "-o", str(shim), "-ldl"], check=True
    )
    # Freed memory filled with a pattern: reading a freed name then fails at once instead of by chance.
    env = {"LD_PRELOAD": str(shim), "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "MALLOC_PERTURB_": "165"}
    proc = run_workers(tmp_path, 3, env)
    assert proc.returncode == 0, report(proc)
    assert proc.stdout.count("the same parameters on every worker") == 2
