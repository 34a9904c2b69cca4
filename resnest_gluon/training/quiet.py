"""Lines that MXNet's C++ core writes to standard error and that say nothing to a user, held back.

MXNet 1.9.1 logs ``MKLDNN Pooling: training with prop_kind is forward_scoring`` (``LOG(INFO)`` in
``mkldnn_pooling.cc``, no switch turns it off) each time it builds a oneDNN average pooling that excludes
the padding, in training mode: the ResNet-D shortcut's ``AvgPool2D(count_include_pad=False)``, once per
stage, in the first training forward. :func:`held_native_stderr` runs that first forward with the process's
standard error (file descriptor 2) sent to a temporary file, then writes everything back but those lines.
"""

import contextlib
import os
import sys
import tempfile
from typing import Iterator, Sequence

__all__ = ["NOISE", "held_native_stderr"]

NOISE = ("MKLDNN Pooling: training with prop_kind is forward_scoring",)


@contextlib.contextmanager
def held_native_stderr(drop: Sequence[str] = NOISE) -> Iterator[None]:
    """Runs the block with file descriptor 2 in a temporary file, then writes its lines back to standard
    error, leaving out those that contain one of ``drop``. The block must wait for the work it queues
    (``wait_to_read``), or the lines come after it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no real descriptor (pythonw, embedded): change nothing
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (AttributeError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [
                line
                for line in held.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not any(text in line for text in drop)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
