"""OpenMP threads for MXNet: every core this process may use, decided before libmxnet loads.

MXNet reads ``OMP_NUM_THREADS`` (or ``MXNET_OMP_MAX_THREADS``) once, when libmxnet loads. Without either it
uses half of the processors on x86, assuming two hyperthreads per core (``omp_thread_max_ >>= 1`` in
``src/engine/openmp.cc``); on a machine without SMT that leaves half the cores idle. Setting the thread
count after ``import mxnet`` has no effect.

The rule of :func:`configure`: the CPUs this process may run on (its affinity, not the machine's total),
counted as physical cores where hyperthread siblings are visible, divided by the workers that share the
node under ``horovodrun``/``mpirun``, minus the threads the caller reserves (e.g. its data threads), at
least 1. A user's ``OMP_NUM_THREADS`` or ``MXNET_OMP_MAX_THREADS`` always wins.

This module imports nothing heavy and changes nothing at import: scripts call :func:`configure` first.
"""

import argparse
import logging
import os
import platform
import sys
from typing import Iterable, Optional

__all__ = [
    "argv_int",
    "configure",
    "configured",
    "local_workers",
    "mxnet_threads",
    "plan",
    "usable_cores",
    "warn_if_idle",
]

logger = logging.getLogger(__name__)

USER_VARS = ("MXNET_OMP_MAX_THREADS", "OMP_NUM_THREADS")  # in MXNet's order of precedence
_LOCAL_SIZE_VARS = (
    "HOROVOD_LOCAL_SIZE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "MV2_COMM_WORLD_LOCAL_SIZE",
)
_SYSFS_CPU = "/sys/devices/system/cpu"
_warned = False
_chosen = None  # what configure() decided in this process


def _affinity() -> Iterable[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return range(os.cpu_count() or 1)


def usable_cores(cpus: Optional[Iterable[int]] = None, sysfs: str = _SYSFS_CPU) -> int:
    """Physical cores among ``cpus`` (default: this process's affinity): hyperthread siblings count once."""
    cores = set()
    for cpu in _affinity() if cpus is None else cpus:
        try:
            with open(os.path.join(sysfs, f"cpu{cpu}", "topology", "thread_siblings_list")) as f:
                cores.add(f.read().strip())
        except OSError:  # no topology (containers, other systems): a CPU is a core
            cores.add(f"cpu{cpu}")
    return max(1, len(cores))


def local_workers() -> int:
    """Processes of this job on this node, as the launcher (horovodrun, mpirun) says; 1 otherwise."""
    for var in _LOCAL_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _user_setting() -> Optional[tuple]:
    """``(variable, threads)`` of the user's setting, the count as an int when it is one
    (``OMP_NUM_THREADS`` may list counts per nesting level: the first is MXNet's), or None."""
    for var in USER_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            first = value.split(",")[0]
            return var, int(first) if first.isdigit() else value
    return None


def plan(reserve: int = 0) -> dict:
    """What :func:`configure` would choose, and why: ``{"threads", "source", "cores", "workers"}``."""
    cores, workers = usable_cores(), local_workers()
    user = _user_setting()
    if user is not None:
        var, threads = user
        return {"threads": threads, "source": var, "cores": cores, "workers": workers}
    threads = max(1, cores // workers - max(0, reserve))
    return {"threads": threads, "source": "auto", "cores": cores, "workers": workers}


def configure(reserve: int = 0) -> dict:
    """Sets ``OMP_NUM_THREADS`` by the rule above unless the user set a thread count; returns :func:`plan`.

    Call it before anything imports mxnet: once libmxnet is loaded the setting has no effect (then it
    logs a warning and changes nothing).
    """
    chosen = plan(reserve)
    if chosen["source"] == "auto":
        if "mxnet" in sys.modules:
            logger.warning(
                "resnest_gluon.threads.configure() was called after mxnet was imported: MXNet keeps the "
                "thread count it started with; call it before `import mxnet`"
            )
            chosen = dict(chosen, threads=mxnet_threads(), source="mxnet default")
        else:
            os.environ["OMP_NUM_THREADS"] = str(chosen["threads"])
    global _chosen
    _chosen = chosen
    return chosen


def configured() -> dict:
    """What :func:`configure` chose in this process (:func:`plan` if it was not called)."""
    return _chosen if _chosen is not None else plan()


def argv_int(flag: str, default: int, argv=None) -> int:
    """The value of an integer ``flag`` on the command line (thread counts are needed before argparse)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(flag, type=int, default=default)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return getattr(known, flag.lstrip("-").replace("-", "_"))


def mxnet_threads() -> int:
    """OpenMP threads a libmxnet loaded now (with this environment) uses, by MXNet 1.x's own rule."""
    user = _user_setting()
    if user is not None and isinstance(user[1], int):
        return user[1]
    procs = len(list(_affinity()))
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        procs >>= 1
    return max(1, procs)


def warn_if_idle() -> None:
    """Logs one warning per process when MXNet was loaded with fewer threads than the cores it may use."""
    global _warned
    if _warned or _user_setting() is not None:
        return
    cores = usable_cores() // local_workers()
    threads = mxnet_threads()
    if threads < cores:
        _warned = True
        logger.warning(
            "MXNet runs %d OpenMP thread(s) but this process may use %d cores: set OMP_NUM_THREADS=%d "
            "before importing mxnet (or call resnest_gluon.threads.configure() first)",
            threads,
            cores,
            cores,
        )
