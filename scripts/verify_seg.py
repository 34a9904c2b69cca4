#!/usr/bin/env python
"""Scores a segmentation model on image and mask folders: pixel accuracy and mIoU.

The code is ``resnest_gluon/cli/verify_seg.py``; this file, ``resnest-verify-seg`` and
``python -m resnest_gluon verify-seg`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("verify-seg"))
