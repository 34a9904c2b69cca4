#!/usr/bin/env python
"""Turns the official ADEChallengeData2016.zip into image-mask pair records (training.rec, validation.rec).

The code is ``resnest_gluon/cli/prepare_ade20k.py``; this file, ``resnest-prepare-ade20k`` and
``python -m resnest_gluon prepare-ade20k`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("prepare-ade20k"))
