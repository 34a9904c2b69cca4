"""Two-worker Horovod jobs run from the tests, and what a failed one shows.

A worker that dies of a native crash prints faulthandler's report (the Python stack of every thread, then
the list of extension modules) and horovodrun then prints its own traceback: the tail of the output holds
only the module list and that traceback. :func:`report` keeps every crash report whole.
"""

import os
import re
import subprocess
import sys

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")

_PREFIX = re.compile(r"^\[(\d+)\]<std(?:err|out)>:")


def horovodrun(argv, workers=2, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``argv`` (a program and its arguments) as ``workers`` Horovod workers on this machine."""
    cmd = [HOROVODRUN, "-np", str(workers), "-H", f"localhost:{workers}", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def crash_reports(output: str) -> list:
    """Each worker's native crash report in ``output``, from ``Fatal Python error`` to the module list."""
    reports, open_ = [], {}
    for line in output.splitlines():
        match = _PREFIX.match(line)
        rank, text = (match.group(1), line[match.end() :]) if match else ("", line)
        if "Fatal Python error" in text:
            open_[rank] = [line]
        elif rank in open_:
            if text.startswith("Extension modules"):
                reports.append("\n".join(open_.pop(rank)))
            else:
                open_[rank].append(line)
    return reports + ["\n".join(lines) for lines in open_.values()]


def report(proc: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """The assertion message for a failed job: its exit status, every crash report whole, then the tails."""
    crashes = crash_reports(proc.stdout + "\n" + proc.stderr)
    return "\n".join([f"exit status {proc.returncode}", *crashes, proc.stdout[-tail:], proc.stderr[-tail:]])
