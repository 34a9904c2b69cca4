#!/usr/bin/env python
"""Check an MXNet RecordIO image file (``.rec``, with or without its ``.idx``).

The code is ``resnest_gluon/cli/rec_check.py``; this file, ``resnest-rec-check`` and
``python -m resnest_gluon rec-check`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("rec-check"))
