"""MXNet's OpenMP thread count: set before libmxnet loads, from the cores this process may use."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from resnest_gluon import threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code, env_update=(), unset=("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS", "HOROVOD_LOCAL_SIZE")):
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(env_update)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


CONFIGURE = (
    "import json, os, sys; from resnest_gluon import threads; plan = threads.configure({reserve});"
    "assert 'mxnet' not in sys.modules;"
    "print(json.dumps(dict(plan, env=os.environ.get('OMP_NUM_THREADS'))))"
)


def configure_in_child(reserve=0, **env):
    return json.loads(run(CONFIGURE.format(reserve=reserve), env).stdout.strip().splitlines()[-1])


def test_every_usable_core_by_default():
    plan = configure_in_child()
    assert plan["source"] == "auto"
    assert plan["threads"] == threads.usable_cores() == int(plan["env"])


def test_the_affinity_counts_not_the_machine():
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});" + CONFIGURE.format(reserve=0)
    plan = json.loads(run(code).stdout.strip().splitlines()[-1])
    assert (plan["cores"], plan["threads"], plan["env"]) == (1, 1, "1")


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS"])
def test_a_users_setting_wins(var):
    plan = configure_in_child(**{var: "7"})
    assert (plan["threads"], plan["source"]) == (7, var)
    assert plan["env"] == ("7" if var == "OMP_NUM_THREADS" else None)


def test_local_workers_and_reserved_threads_share_the_cores():
    cores = threads.usable_cores()
    assert configure_in_child(HOROVOD_LOCAL_SIZE="2")["threads"] == max(1, cores // 2)
    assert configure_in_child(reserve=1)["threads"] == max(1, cores - 1)
    assert configure_in_child(reserve=64)["threads"] == 1


def test_hyperthread_siblings_count_once(tmp_path):
    # cpus 0-3, where 0/2 and 1/3 are two hyperthreads of one core each
    for cpu, siblings in enumerate(["0,2", "1,3", "0,2", "1,3"]):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(siblings + "\n")
    assert threads.usable_cores(range(4), sysfs=str(tmp_path)) == 2
    assert threads.usable_cores([0, 1], sysfs=str(tmp_path)) == 2
    assert threads.usable_cores([0, 2], sysfs=str(tmp_path)) == 1
    assert threads.usable_cores(range(3), sysfs=str(tmp_path / "none")) == 3  # no topology: CPUs


def test_argv_int_reads_both_spellings():
    assert threads.argv_int("--data-threads", 4, ["--data-threads", "3", "--x"]) == 3
    assert threads.argv_int("--data-threads", 4, ["--data-threads=2"]) == 2
    assert threads.argv_int("--data-threads", 4, []) == 4


def test_one_warning_when_mxnet_loaded_with_idle_cores():
    if threads.usable_cores() < 2:
        pytest.skip("needs 2 cores: with one, MXNet's default uses it")
    code = (
        "import logging; logging.basicConfig(); import mxnet; import resnest_gluon as rg;"
        "rg.get_model('resnest14'); rg.get_model('resnest14')"
    )
    stderr = run(code).stderr
    assert stderr.count("set OMP_NUM_THREADS=") == 1, stderr
    assert "set OMP_NUM_THREADS=" not in run(code, {"OMP_NUM_THREADS": "1"}).stderr


def test_importing_the_package_sets_nothing():
    code = "import os, resnest_gluon, resnest_gluon.threads; print(os.environ.get('OMP_NUM_THREADS'))"
    assert run(code).stdout.strip() == "None"


@pytest.mark.skipif(
    shutil.which("horovodrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "horovodrun")),
    reason="horovodrun not installed",
)
def test_horovodrun_workers_divide_the_cores():
    horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    code = "from resnest_gluon import threads; print('PLAN', threads.configure()['threads'])"
    proc = subprocess.run(
        [horovodrun, "-np", "2", "-H", "localhost:2", sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = [line.rsplit("PLAN", 1)[1].strip() for line in proc.stdout.splitlines() if "PLAN" in line]
    assert counts == [str(max(1, threads.usable_cores() // 2))] * 2, proc.stdout
