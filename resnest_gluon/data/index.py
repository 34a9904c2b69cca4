"""The ``.idx`` beside a ``.rec``: reading it, counting records, and sharding them across workers.

Shards follow MXNet's indexed RecordIO splitter: records sorted by file offset, part ``k`` of ``n`` gets
the ``k``-th run of ``ceil(N / n)`` records, so the parts are disjoint and together cover the file once.
"""

import collections
import os
import struct
from typing import List, Optional, Tuple

__all__ = ["num_records", "read_index", "shard_bounds", "check_pairs", "record_head_problem"]

RECORDIO_MAGIC = 0xCED7230A
#: Record starts verified by :func:`check_pairs` (all of them in files with no more records).
CHECKED_STARTS = 10_000


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
        The ``.rec`` or ``.idx`` is missing, unreadable, empty, or has an offset past the file's end.
    ValueError
        The index cannot describe the file (see :func:`check_pairs`).
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
    check_pairs(rec_path, pairs)
    return pairs


def _mismatch(rec_path: str, why: str) -> ValueError:
    stem = os.path.splitext(rec_path)[0]
    return ValueError(
        f"{idx_path(rec_path)!r} does not describe {rec_path!r}: {why}. Is it the index of another (or an "
        f"older) .rec? `python tools/rec_check.py {stem}` checks the pair; tools/im2rec.py writes both"
    )


def record_head_problem(head: bytes) -> Optional[str]:
    """Why the 8 bytes at an indexed offset are no record start (None when they are one)."""
    if len(head) < 8:
        return "the file ends there"
    magic, lrec = struct.unpack("<II", head[:8])
    if magic != RECORDIO_MAGIC:
        return "no RecordIO magic number there"
    if lrec >> 29 not in (0, 1):  # 2 and 3 continue a record that started before
        return "a record continues there instead of starting"
    return None


def check_pairs(rec_path: str, pairs: List[Tuple[int, int]], sample: int = CHECKED_STARTS) -> None:
    """Checks that ``(key, offset)`` pairs (sorted by offset) can be an index of ``rec_path``.

    Every key and offset must be unique and every offset 4-byte aligned (dmlc RecordIO pads records to 4
    bytes); the record start (magic number, first part) is verified at every offset for up to ``sample``
    records and at ``sample`` evenly spread ones beyond, so the check stays a fraction of a second cold.

    Raises
    ------
    ValueError
        Naming the first problem, the files and what to do.
    """
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted(key for key, n in collections.Counter(keys).items() if n > 1)
        raise _mismatch(
            rec_path,
            f"{len(repeated)} keys occur more than once (e.g. {', '.join(map(str, repeated[:5]))}), and a "
            "reader would keep only one record of each; was the list two lists joined together?",
        )
    offsets = [offset for _, offset in pairs]
    if len(set(offsets)) != len(offsets):
        same = next(after for before, after in zip(offsets, offsets[1:]) if before == after)
        raise _mismatch(rec_path, f"two keys point to the same offset {same}")
    if any(offset & 3 for offset in offsets):
        odd = next(offset for offset in offsets if offset & 3)
        raise _mismatch(rec_path, f"offset {odd} is not a multiple of 4, so not a record start")
    step = max(1, -(-len(offsets) // sample))
    with open(rec_path, "rb") as f:
        for offset in offsets[::step] + offsets[-1:]:
            f.seek(offset)
            problem = record_head_problem(f.read(8))
            if problem:
                raise _mismatch(rec_path, f"offset {offset} is not a record start ({problem})")


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
