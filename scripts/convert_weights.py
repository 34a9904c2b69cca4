#!/usr/bin/env python
"""Convert official PyTorch ResNeSt weights (or timm's resnest*d/e) into a Gluon .params file.

The code is ``resnest_gluon/cli/convert_weights.py``; this file, ``resnest-convert-weights`` and
``python -m resnest_gluon convert-weights`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("convert-weights"))
