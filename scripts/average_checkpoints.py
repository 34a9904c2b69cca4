#!/usr/bin/env python
"""Averages the weights of a run's K best epoch checkpoints (by validation top-1 in metrics.jsonl).

The code is ``resnest_gluon/cli/average_checkpoints.py``; this file, ``resnest-average-checkpoints`` and
``python -m resnest_gluon average-checkpoints`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("average-checkpoints"))
