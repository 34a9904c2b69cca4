#!/usr/bin/env python
"""Pack image folders into MXNet RecordIO files (``.lst`` -> ``.rec`` + ``.idx``).

The code is ``resnest_gluon/cli/im2rec.py``; this file, ``resnest-im2rec`` and
``python -m resnest_gluon im2rec`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("im2rec"))
