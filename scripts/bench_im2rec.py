#!/usr/bin/env python
"""Benchmark ``tools/im2rec.py`` against the ``im2rec.py`` shipped in the MXNet wheel, side by side.

The code is ``resnest_gluon/cli/bench_im2rec.py``; this file, ``resnest-bench-im2rec`` and
``python -m resnest_gluon bench-im2rec`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("bench-im2rec"))
