"""Fetches published weights into the folder ``get_model(name, pretrained=True)`` reads.

    resnest-download resnest50                 # into $RESNEST_GLUON_HOME, else ~/.mxnet/models
    resnest-download deeplab_resnest50_ade     # gluoncv's ADE20K DeepLab (also 101, 200, 269)
    resnest-download all --dir ~/weights       # every ImageNet classifier's file
    python -m resnest_gluon download resnest14 --base-url file:///mirror/   # a mirror (or RESNEST_GLUON_URL)

Each file's SHA-1 is checked before it is moved into place; a file already there with the right SHA-1 is
kept. Without a network: one ``error:`` line naming the URL, and nothing left behind.
"""

import argparse
import logging
from typing import List, Optional, Sequence

from . import common


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from ..models.pretrained import SHA1

    p = common.parser("Download published ResNeSt weights, SHA-1 checked.", epilog=__doc__.split("\n\n")[1])
    p.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help=f"'all' (the ImageNet classifiers), or any of: {', '.join(SHA1)}",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--dir", help="folder for the files (default: $RESNEST_GLUON_HOME, else ~/.mxnet/models)"
    )
    out.add_argument(
        "--base-url", help="fetch from this mirror instead (default: $RESNEST_GLUON_URL or the publisher)"
    )
    common.add_progress(out)
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n != "all" and n not in SHA1]
    if unknown:
        p.error(f"no published weights for {', '.join(unknown)}; choose 'all' or any of: {', '.join(SHA1)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Downloads every named file; returns their paths."""
    from ..models.pretrained import CLASSIFIERS, default_root, download

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = list(CLASSIFIERS) if "all" in args.names else list(dict.fromkeys(args.names))
    paths = []
    for name in names:
        path = download(name, args.dir or default_root(), args.base_url, common.progress_enabled(args))
        print(path)
        paths.append(path)
    return paths
