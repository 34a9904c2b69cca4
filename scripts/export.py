#!/usr/bin/env python
"""Exports a run or checkpoint as symbol, ONNX, OpenVINO or INT8 files, with PREFIX.meta.json.

The code is ``resnest_gluon/cli/export.py``; this file, ``resnest-export`` and
``python -m resnest_gluon export`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("export"))
