#!/usr/bin/env python
"""Turn the official ILSVRC2012 archives into class folders and MXNet RecordIO files.

The code is ``resnest_gluon/cli/prepare_imagenet.py``; this file, ``resnest-prepare-imagenet`` and
``python -m resnest_gluon prepare-imagenet`` are its doors. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's package

from resnest_gluon.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("prepare-imagenet"))
