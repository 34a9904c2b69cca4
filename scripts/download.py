#!/usr/bin/env python
"""Downloads the published ResNeSt weights, SHA-1 checked.

The code is ``resnest_gluon/cli/download.py``; this file, ``resnest-download`` and
``python -m resnest_gluon download`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("download"))
