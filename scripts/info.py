#!/usr/bin/env python
"""Prints a model's card: published top-1 and its protocol, size, the weights file.

The code is ``resnest_gluon/cli/info.py``; this file, ``resnest-info`` and
``python -m resnest_gluon info`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("info"))
