#!/usr/bin/env python
"""Trains a ResNeSt on ImageNet-style RecordIO files, on one worker or many with Horovod.

The code is ``resnest_gluon/cli/train.py``; this file, ``resnest-train`` and
``python -m resnest_gluon train`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("train"))
