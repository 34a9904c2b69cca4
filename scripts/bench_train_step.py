#!/usr/bin/env python
"""Training-step speed: our ResNeSt against gluoncv's, side by side in one process.

The code is ``resnest_gluon/cli/bench_train_step.py``; this file, ``resnest-bench-train-step`` and
``python -m resnest_gluon bench-train-step`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("bench-train-step"))
