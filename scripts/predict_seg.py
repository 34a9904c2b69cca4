#!/usr/bin/env python
"""Segments images with a DeepLab ResNeSt: a label PNG, a colour overlay and the class shares of each.

The code is ``resnest_gluon/cli/predict_seg.py``; this file, ``resnest-predict-seg`` and
``python -m resnest_gluon predict-seg`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("predict-seg"))
