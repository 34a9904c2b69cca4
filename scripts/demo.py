#!/usr/bin/env python
"""The main job end to end on data that ships with scikit-learn (what ``make demo`` runs).

The code is ``resnest_gluon/cli/demo.py``; this file, ``resnest-demo`` and
``python -m resnest_gluon demo`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("demo"))
