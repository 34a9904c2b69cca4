"""The ``.idx`` beside a ``.rec``: reading it, counting records, and sharding them across workers.

Shards follow MXNet's indexed RecordIO splitter: records sorted by file offset, part ``k`` of ``n`` gets
the ``k``-th run of ``ceil(N / n)`` records, so the parts are disjoint and together cover the file once.
"""

import os
from typing import List, Tuple

__all__ = ["num_records", "read_index", "shard_bounds"]


def idx_path(rec_path: str) -> str:
    return os.path.splitext(rec_path)[0] + ".idx"


def _missing(what: str, path: str, why: str = "not found") -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} {path!r} {why}; pack it with tools/im2rec.py (which writes the .rec and its .idx "
        "side by side)"
    )


def read_index(rec_path: str) -> List[Tuple[int, int]]:
    """Read the ``.idx`` next to ``rec_path`` and return ``(key, offset)`` pairs sorted by offset.

    Parameters
    ----------
    rec_path : str
        Path of the ``.rec`` file; the index is the file with the same stem and suffix ``.idx``.

    Returns
    -------
    list of (int, int)
        One pair per record, in file order (the order the sharding uses).

    Raises
    ------
    FileNotFoundError
        The ``.rec`` or ``.idx`` is missing, unreadable, empty, or the index does not fit the file.
    """
    index_file = idx_path(rec_path)
    if not os.path.isfile(rec_path):
        raise _missing("record file", rec_path)
    if not os.path.isfile(index_file):
        raise _missing("index file", index_file, f"(for {rec_path!r}) not found")
    try:
        with open(rec_path, "rb"):
            pass
        with open(index_file) as f:
            lines = f.read().split("\n")
    except OSError as err:
        raise _missing("record/index pair", rec_path, f"is unreadable ({err})") from err
    pairs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            pairs.append((int(fields[0]), int(fields[1])))
        except (IndexError, ValueError):
            raise _missing(
                "index file", index_file, f"is unreadable (line {lineno}: {line[:60]!r} is not 'key offset')"
            ) from None
    if not pairs:
        raise _missing("index file", index_file, "is empty")
    pairs.sort(key=lambda p: p[1])
    size = os.path.getsize(rec_path)
    if pairs[-1][1] >= size:
        raise _missing(
            "index file",
            index_file,
            f"does not match {rec_path!r} (offset {pairs[-1][1]} beyond its {size} bytes)",
        )
    return pairs


def num_records(rec_path: str) -> int:
    """Number of records in ``rec_path``, counted from its ``.idx``.

    Raises
    ------
    FileNotFoundError
        The ``.rec`` or ``.idx`` is missing or unreadable.
    """
    return len(read_index(rec_path))


def shard_bounds(total: int, num_parts: int = 1, part_index: int = 0) -> Tuple[int, int]:
    """Record range ``[begin, end)`` (in file order) of part ``part_index`` of ``num_parts``.

    The same split as MXNet's indexed RecordIO splitter: runs of ``ceil(total / num_parts)`` records.
    """
    if num_parts < 1 or not 0 <= part_index < num_parts:
        raise ValueError(f"need num_parts >= 1 and 0 <= part_index < num_parts, got {part_index}/{num_parts}")
    step = -(-total // num_parts)
    begin = min(part_index * step, total)
    return begin, min(begin + step, total)


def read_shard(rec_path: str, batch_size: int, num_parts: int, part_index: int) -> List[Tuple[int, int]]:
    """The ``(key, offset)`` pairs of part ``part_index`` of ``num_parts``, checked against ``batch_size``."""
    pairs = read_index(rec_path)
    total = len(pairs)
    begin, end = shard_bounds(total, num_parts, part_index)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if end - begin == 0:
        raise ValueError(
            f"{rec_path!r} has {total} records, too few for {num_parts} workers: part {part_index} gets none "
            f"(records are split in runs of {-(-total // num_parts)}); use fewer workers"
        )
    if batch_size > end - begin:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {end - begin} records of shard {part_index} of "
            f"{num_parts} of {rec_path!r} ({total} records); use a batch size <= {end - begin} "
            "(or fewer workers)"
        )
    return pairs[begin:end]
