"""Stopping cleanly: SIGTERM handled like Ctrl-C, one line instead of a traceback, workers that die with
their parent.

``timeout``, Slurm, docker and horovodrun stop a job with SIGTERM, whose default action kills a Python
process without running any ``finally``: temporary files stay behind. :func:`stop_on_sigterm` makes it
raise :class:`Stopped` (a ``KeyboardInterrupt``) instead, so the clean-up that runs on Ctrl-C runs on
SIGTERM too. Nothing here runs at import.
"""

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Optional

__all__ = [
    "Stopped",
    "end_process",
    "report_crashes",
    "exit_status",
    "ParentWatch",
    "held_signals",
    "stop_message",
    "stop_on_sigterm",
    "worker_signals",
    "worker_start_method",
]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Stopped(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (after :func:`stop_on_sigterm`)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Stopped` in the main thread, as SIGINT raises KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, _raise_stopped)


@contextlib.contextmanager
def held_signals():
    """Hold SIGINT and SIGTERM back during a few steps that must not be cut apart (renames of a pair of
    files, a checkpoint); a signal that arrived meanwhile is delivered when the block ends.

    Handlers, not a signal mask: CPython runs every handler in the main thread, but any thread of the
    process (MXNet's, a thread pool's) may receive the signal, so masking the main thread holds nothing.
    Main thread only (elsewhere the steps run unprotected).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


def _signum(err: KeyboardInterrupt) -> int:
    return getattr(err, "signum", signal.SIGINT)


def exit_status(err: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + _signum(err)


def stop_message(tool: str, err: KeyboardInterrupt, what: str) -> str:
    """``"<tool>: stopped by SIGTERM; <what>"``: the one line printed instead of a traceback."""
    return f"{tool}: stopped by {signal.Signals(_signum(err)).name}; {what}"


_FATAL_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT")


def report_crashes() -> None:
    """A native crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) prints the Python stack of every thread
    (``faulthandler``), then ends the process by that signal: a core file where ``ulimit -c`` allows one,
    and a status that names the signal. Call it after ``import mxnet``: libmxnet installs a SIGSEGV
    handler of its own that prints ``Segmentation fault: 11`` and exits with status 255 (no core, no
    signal); it is replaced here. Idempotent."""
    import faulthandler

    if faulthandler.is_enabled():
        return
    for name in _FATAL_SIGNALS:
        try:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        except (OSError, ValueError, AttributeError):  # not in the main thread, or no such signal
            pass
    faulthandler.enable(file=sys.__stderr__ or sys.stderr, all_threads=True)


def end_process(status: int) -> None:
    """Ends the process now with ``status``, once its stop line is out: output is flushed and logs are
    closed, but no exit handler runs and no thread is joined. After a stop, MXNet's exit hook waits for its
    engine, which may wait on a peer that is gone (Horovod), and a native thread still in a call when
    static destructors run aborts the process (``terminate called without an active exception``)."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def worker_signals() -> None:
    """In a forked worker: Ctrl-C (sent to the whole process group) is the parent's business, and SIGTERM
    (how the parent stops its workers) ends the worker at once, without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def worker_start_method() -> Optional[str]:
    """How to start worker processes: ``fork``, unless this process runs other Python threads or has loaded
    MXNet (whose engine and OpenMP threads run beside this one): then ``spawn``. A fork copies only the
    calling thread, so a lock another thread held stays locked in the child, and state another thread was
    changing stays half-changed: a child forked from a process running MXNet has died in its first Python
    step (``threading``'s after-fork hook). None where fork does not exist (the platform's default)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return "spawn" if threading.active_count() > 1 or "mxnet" in sys.modules else "fork"


_prctl = None


def _load_prctl():
    """libc's ``prctl``, looked up once, in the parent: ``dlopen`` in a child forked from a threaded
    process can deadlock on a loader lock another thread held at the fork."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl


class ParentWatch:
    """Built in the parent, called first thing in each worker: the worker then ends when the parent dies,
    even by SIGKILL, instead of waiting forever on its task queue, re-parented to PID 1.

    On Linux the kernel sends the worker SIGKILL when the parent goes (``prctl(PR_SET_PDEATHSIG)``);
    elsewhere a daemon thread polls ``os.getppid()``.
    """

    def __init__(self, poll_seconds: float = 1.0):
        self.parent_pid, self.poll_seconds = os.getpid(), poll_seconds
        _load_prctl()

    def __call__(self) -> None:
        prctl = _load_prctl()
        armed = bool(prctl) and prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        if os.getppid() != self.parent_pid:  # the parent died before the request was armed
            os._exit(1)
        if not armed:
            threading.Thread(target=self._watch, name="parent-watch", daemon=True).start()

    def _watch(self) -> None:
        while os.getppid() == self.parent_pid:
            time.sleep(self.poll_seconds)
        os._exit(1)
