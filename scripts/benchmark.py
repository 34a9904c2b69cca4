#!/usr/bin/env python
"""Inference speed of ResNeSt models: images/s and latency, beside the paper's published figures.

The code is ``resnest_gluon/cli/benchmark.py``; this file, ``resnest-benchmark`` and
``python -m resnest_gluon benchmark`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("benchmark"))
