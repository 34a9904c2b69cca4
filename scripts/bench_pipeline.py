#!/usr/bin/env python
"""Throughput of the ImageNet input pipelines of ``resnest_gluon.data``, against OpenCV's decode limit.

The code is ``resnest_gluon/cli/bench_pipeline.py``; this file, ``resnest-bench-pipeline`` and
``python -m resnest_gluon bench-pipeline`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("bench-pipeline"))
