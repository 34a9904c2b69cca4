#!/usr/bin/env python
"""Trains a DeepLabV3 ResNeSt for semantic segmentation (one process, or many under horovodrun).

The code is ``resnest_gluon/cli/train_seg.py``; this file, ``resnest-train-seg`` and
``python -m resnest_gluon train-seg`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("train-seg"))
