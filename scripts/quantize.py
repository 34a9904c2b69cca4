#!/usr/bin/env python
"""INT8 quantization of a trained ResNeSt checkpoint, and its top-1 against float32 on validation records.

The code is ``resnest_gluon/cli/quantize.py``; this file, ``resnest-quantize`` and
``python -m resnest_gluon quantize`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("quantize"))
