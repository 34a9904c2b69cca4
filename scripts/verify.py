#!/usr/bin/env python
"""Evaluates a ResNeSt on a validation ``.rec``: top-1 / top-5 and images per second.

The code is ``resnest_gluon/cli/verify.py``; this file, ``resnest-verify`` and
``python -m resnest_gluon verify`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("verify"))
