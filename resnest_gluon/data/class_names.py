"""Class names in label order, one per line: the ``PREFIX.classes.txt`` that ``tools/im2rec.py --list
--recursive`` writes beside its lists.

The published ImageNet models use :func:`imagenet_class_names`: the 1,000 leaf synsets as ``WNID words``
in sorted-WNID order, the labels ``scripts/prepare_imagenet.py`` gives (taken from gluoncv's
``ImageNet1kAttr``).
"""

import os
import re
from typing import List, Optional

__all__ = ["CLASSES_SUFFIX", "class_names_beside", "imagenet_class_names", "read_class_names"]

CLASSES_SUFFIX = ".classes.txt"
_IMAGENET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")


def read_class_names(path: str) -> List[str]:
    """The names of ``path``, one per line (trailing blanks stripped, blank lines not allowed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class-names file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\r\n").rstrip() for line in f]
    while names and not names[-1]:
        names.pop()
    empty = [i + 1 for i, name in enumerate(names) if not name]
    if not names or empty:
        raise ValueError(f"{path}: " + (f"line {empty[0]} is empty" if empty else "it holds no names"))
    return names


def class_names_beside(rec_path: str) -> Optional[str]:
    """The ``.classes.txt`` that ``tools/im2rec.py --list --recursive`` wrote for ``rec_path``, or None.

    ``PREFIX.rec`` has ``PREFIX.classes.txt``; the lists of ``--train-ratio``/``--test-ratio``/``--chunks``
    (``PREFIX_train``, ``PREFIX_val``, ``PREFIX_test``, ``PREFIX_0`` ...) share that of ``PREFIX``.
    """
    stem = os.path.splitext(rec_path)[0]
    for candidate in (stem, re.sub(r"(_\d+)?(_train|_val|_test)?$", "", stem)):
        if os.path.isfile(candidate + CLASSES_SUFFIX):
            return candidate + CLASSES_SUFFIX
    return None


def imagenet_class_names() -> List[str]:
    """The 1,000 ImageNet classes as ``WNID words`` (e.g. ``n01440764 tench``), in label order."""
    return read_class_names(_IMAGENET)
