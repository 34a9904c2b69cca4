"""The ``.lst`` image list (``index<TAB>label(s)<TAB>relative/path``): the one parser of its lines.

``tools/im2rec.py`` (packing), ``tools/rec_check.py`` and :func:`resnest_gluon.training.check_labels` all
read lists through :func:`read_list`, so a line one of them skips (a header, a line without tabs, a
negative index) is skipped by all of them, and a list with a repeated index is refused by all of them.
"""

import collections
import math
from typing import Dict, List, NamedTuple, Sequence, Tuple

__all__ = ["ListItem", "parse_line", "read_list", "repeated_indices"]


class ListItem(NamedTuple):
    """One line of a ``.lst`` file."""

    index: int
    path: str
    labels: Tuple[float, ...]


def parse_line(line: str) -> ListItem:
    """Parse one non-blank ``.lst`` line.

    Raises
    ------
    ValueError
        With the reason (the same the reference ``im2rec.py`` would skip the line for).
    """
    parts = [p.strip() for p in line.strip().split("\t")]
    if len(parts) < 3:
        raise ValueError("needs index, label(s) and path separated by tabs")
    try:
        index = int(parts[0])
        labels = tuple(float(p) for p in parts[1:-1])
    except ValueError as e:
        raise ValueError(f"cannot parse numbers: {e}") from None
    if index < 0:
        raise ValueError("index must be >= 0")
    if not all(math.isfinite(label) for label in labels):
        raise ValueError("a label is not a finite number (nan or inf)")
    return ListItem(index, parts[-1], labels)


def read_list(path: str) -> Tuple[List[ListItem], List[Tuple[int, str, str]]]:
    """Read a ``.lst`` file.

    Returns
    -------
    items : list of ListItem
        The well-formed lines, in file order.
    bad : list of (line_number, line, reason)
        Lines that could not be parsed (blank lines are neither).
    """
    items, bad = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(parse_line(line))
            except ValueError as e:
                bad.append((number, line.rstrip("\n"), str(e)))
    return items, bad


def repeated_indices(items: Sequence[ListItem]) -> Dict[int, int]:
    """``{index: count}`` of the indices that occur more than once (a record key must be unique)."""
    counts = collections.Counter(item.index for item in items)
    return {index: n for index, n in counts.items() if n > 1}
