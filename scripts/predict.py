#!/usr/bin/env python
"""Labels new images with a ResNeSt: the top-k class names and probabilities of every image.

The code is ``resnest_gluon/cli/predict.py``; this file, ``resnest-predict`` and
``python -m resnest_gluon predict`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("predict"))
