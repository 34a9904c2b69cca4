#!/usr/bin/env python3
"""Check an MXNet RecordIO image file (``.rec``, with or without its ``.idx``).

Reports the number of records, the label range and per-class counts, records whose image does not decode
(or is a truncated JPEG/PNG), and an ``.idx`` that does not describe its ``.rec``: a ``.rec`` cut short,
offsets past the end or not at a record start, records missing from the index, duplicate keys. Exits with
status 1 when anything is wrong, so it can guard a data pipeline (``tools/rec_check.py data/train && ...``).

The records are read with a small reader of the dmlc RecordIO framing (the one ``tools/im2rec.py`` writes),
so MXNet is not needed. Used for the ImageNet records of ResNeSt (arXiv:2004.08955).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import struct
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from resnest_gluon.cli import common
from resnest_gluon.data.lst import read_list
from resnest_gluon.data.seg_records import pair_parts, pair_problem
from resnest_gluon.interrupts import (
    ParentWatch,
    exit_status,
    stop_message,
    stop_on_sigterm,
    worker_signals,
    worker_start_method,
)

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)
MAX_EXAMPLES = 10
#: images held for decoding at once, in bytes (each worker also holds its share while it decodes)
PENDING_BYTES = 64 << 20


class RecordError(Exception):
    """The ``.rec`` is damaged at ``offset``."""

    def __init__(self, offset: int, message: str):
        super().__init__(f"{message} at byte {offset}")
        self.offset = offset


def iter_records(f, size: int) -> Iterator[Tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for each logical record of an open ``.rec`` file of ``size`` bytes.

    Multi-part records (continuation flags 1-3, written when the payload contains the magic number) are
    joined with the magic put back, as dmlc-core's reader does.

    Raises
    ------
    RecordError
        At the first bad magic number, impossible flag or record cut short.
    """
    pos = f.tell()
    while pos < size:
        start = pos
        parts: List[bytes] = []
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise RecordError(pos, "truncated record header")
            magic, lrec = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise RecordError(pos, "bad magic number (not a record start: corrupt file or wrong offset)")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            padded = (length + 3) & ~3
            body = f.read(padded)
            if len(body) < padded:
                raise RecordError(pos, f"record cut short: needs {padded} bytes, file has {len(body)}")
            pos += 8 + padded
            if cflag not in (0, 1, 2, 3) or (not parts and cflag in (2, 3)) or (parts and cflag in (0, 1)):
                raise RecordError(pos - 8 - padded, f"impossible continuation flag {cflag}")
            parts.append(body[:length])
            if cflag in (0, 3):
                break
        yield start, _MAGIC_BYTES.join(parts)


def unpack_payload(payload: bytes) -> Tuple[int, object, int, bytes]:
    """Split a record payload into ``(flag, label, id, image_bytes)`` (label: float or float32 array)."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"record of {len(payload)} bytes is shorter than the {IR_SIZE}-byte header")
    flag, label, rec_id, _ = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    image = payload[IR_SIZE:]
    if flag > 0:
        if len(image) < 4 * flag:
            raise ValueError(f"header announces {flag} labels but the record is too short")
        label = np.frombuffer(image[: 4 * flag], "<f4")
        image = image[4 * flag :]
    return flag, label, rec_id, image


def read_idx(path: str) -> Tuple[List[Tuple[str, int]], List[str]]:
    """Read an ``.idx`` file: ``(key, offset)`` pairs and a list of malformed lines."""
    entries, bad = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split("\t")
            try:
                entries.append((parts[0], int(parts[1])))
            except (IndexError, ValueError):
                bad.append(f"line {number}: {line.strip()[:80]!r}")
    return entries, bad


def _load_im2rec():
    from . import im2rec

    return im2rec


Checked = Tuple[Optional[str], Optional[Tuple[int, int]], str]


def check_image(image: bytes) -> Checked:
    """Decode one record's image; returns ``(problem or None, (height, width) or None, warning)``, the
    warning being libjpeg's complaint about a JPEG it decoded despite corrupt data ('' when none)."""
    im2rec = _load_im2rec()
    if not image:
        return "empty image", None, ""
    try:
        info = im2rec.image_info(image)
    except im2rec.SkipImage as e:
        return str(e), None, ""
    if info.truncated:
        return f"truncated {info.kind.upper()} image", None, ""
    if info.corrupt:
        return f"corrupt {info.kind.upper()} image ({info.corrupt})", None, ""
    # an 1/8-size decode still runs the whole entropy decoder, at a fraction of the cost
    flag = cv2.IMREAD_REDUCED_COLOR_8 if info.kind == "jpeg" else cv2.IMREAD_UNCHANGED
    img, warning = im2rec.imdecode_noting(np.frombuffer(image, np.uint8), flag)
    if img is None:
        return "OpenCV cannot decode the image", None, ""
    if info.width and info.height:
        return None, (info.height, info.width), warning
    return None, img.shape[:2], warning


def _start_worker(watch) -> None:
    worker_signals()
    watch()
    cv2.setNumThreads(1)


def _check_images(images: List[bytes]) -> List[Checked]:
    return [check_image(image) for image in images]


def _label_key(label: float) -> str:
    return str(int(label)) if float(label).is_integer() else repr(float(label))


def resolve_paths(prefix: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``PREFIX`` or ``PREFIX.rec`` -> (rec path, idx path, lst path), None for a file that is absent."""
    stem = prefix[:-4] if prefix.endswith((".rec", ".idx", ".lst")) else prefix
    rec = stem + ".rec"
    if not os.path.isfile(rec):
        raise FileNotFoundError(f"{rec} does not exist (give PREFIX or PREFIX.rec of a RecordIO file)")
    idx, lst = stem + ".idx", stem + ".lst"
    return rec, idx if os.path.isfile(idx) else None, lst if os.path.isfile(lst) else None


def check_rec(
    rec_path: str,
    idx_path: Optional[str] = None,
    decode: bool = True,
    progress: bool = False,
    num_workers: int = 1,
    lst_path: Optional[str] = None,
) -> Dict[str, object]:
    """Check a ``.rec`` (and its ``.idx`` when given).

    Parameters
    ----------
    rec_path : str
        RecordIO file.
    idx_path : str, optional
        Its index; without it the file is scanned sequentially only.
    decode : bool
        Decode every image (slower) to find undecodable records.
    progress : bool
        Show a tqdm bar.
    num_workers : int
        Decoding processes.
    lst_path : str, optional
        The ``.lst`` the file was packed from: every record must be one of its lines, with its label.

    Returns
    -------
    dict
        ``ok``, ``records``, ``bytes``, ``labels`` (``min``, ``max``, ``classes``, ``counts``,
        ``width``), ``shorter_side`` (min/max, when decoded), ``undecodable`` (count and examples),
        ``corrupt_data`` (JPEGs that decode with libjpeg's "Corrupt JPEG data" warning),
        ``errors`` (everything that makes the pair unusable), ``warnings``.
    """
    from resnest_gluon.progress import progress_bar

    size = os.path.getsize(rec_path)
    errors: List[str] = []
    warnings: List[str] = []
    offsets: List[int] = []
    counts: collections.Counter = collections.Counter()
    widths = set()
    ids: Dict[int, int] = {}
    undecodable: List[Dict[str, object]] = []
    n_undecodable = 0
    shorter = []
    bad_payload = 0
    pending: List[Tuple[int, int, bytes]] = []
    pending_bytes = [0]
    corrupt: List[Dict[str, object]] = []
    labels: Dict[int, float] = {}

    def flush() -> None:
        nonlocal n_undecodable
        if pool is None:
            checked = [check_image(image) for _, _, image in pending]
        else:  # split the batch between the workers, keep the order
            step = -(-len(pending) // num_workers)
            parts = [[image for _, _, image in pending[i : i + step]] for i in range(0, len(pending), step)]
            checked = [r for part in pool.map(_check_images, parts) for r in part]
        for (offset, rec_id, _), (problem, shape, warning) in zip(pending, checked):
            if problem:
                n_undecodable += 1
                if len(undecodable) < MAX_EXAMPLES:
                    undecodable.append({"offset": offset, "id": rec_id, "reason": problem})
            elif shape:
                shorter.append(min(shape))
            if warning:
                corrupt.append({"offset": offset, "id": rec_id, "reason": warning})
        pending.clear()
        pending_bytes[0] = 0

    pool = None
    if decode and num_workers > 1:
        ctx = multiprocessing.get_context(worker_start_method())
        pool = ctx.Pool(num_workers, _start_worker, (ParentWatch(),))
    try:
        with open(rec_path, "rb") as f, progress_bar(
            total=size, unit="B", unit_scale=True, disable=not progress, desc=os.path.basename(rec_path)
        ) as bar:
            try:
                for offset, payload in iter_records(f, size):
                    offsets.append(offset)
                    bar.update(f.tell() - bar.n)
                    try:
                        flag, label, rec_id, image = unpack_payload(payload)
                    except ValueError as e:
                        bad_payload += 1
                        undecodable.append({"offset": offset, "reason": str(e)})
                        continue
                    ids[offset] = rec_id
                    parts = pair_parts(label, image) if flag == 2 else None
                    if parts is not None:  # an image-mask pair: the mask is checked here, the image below
                        problem = pair_problem(*parts) if decode else None
                        flag, label, image = 0, 0.0, parts[0]
                        if problem:
                            bad_payload += 1
                            undecodable.append({"offset": offset, "id": rec_id, "reason": problem})
                            continue
                    widths.add(max(flag, 1))
                    labels[rec_id] = float(label if flag == 0 else label[0])
                    counts[_label_key(labels[rec_id])] += 1
                    if decode:
                        pending.append((offset, rec_id, image))
                        pending_bytes[0] += len(image)
                        # bounded by count and by bytes: 256 records of 512 MiB would be 128 GiB
                        if len(pending) >= 256 * max(1, num_workers) or pending_bytes[0] >= PENDING_BYTES:
                            flush()
            except RecordError as e:
                errors.append(
                    f".rec damaged: {e} (file has {size} bytes, {len(offsets)} good records before it)"
                )
            flush()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    n_undecodable += bad_payload
    if not offsets and not errors:
        errors.append(f"{rec_path} holds no records ({size} bytes)")
    if n_undecodable:
        errors.append(f"{n_undecodable} records have an image that does not decode")
    if corrupt:
        warnings.append(
            f"{len(corrupt)} JPEGs decode despite corrupt data (garbage blocks), e.g. record "
            f"{corrupt[0]['id']} at byte {corrupt[0]['offset']}: {corrupt[0]['reason']}"
        )
    if lst_path is not None:
        _compare_lst(lst_path, labels, errors, warnings)

    if idx_path is not None:
        errors += _compare_idx(idx_path, offsets, ids, size, warnings)
    else:
        warnings.append("no .idx file: checked by a sequential scan only")

    numeric = sorted(float(k) for k in counts)
    report: Dict[str, object] = {
        "rec": rec_path,
        "idx": idx_path,
        "bytes": size,
        "records": len(offsets),
        "labels": {
            "min": numeric[0] if numeric else None,
            "max": numeric[-1] if numeric else None,
            "classes": len(counts),
            "width": max(widths) if widths else 0,
            "counts": dict(sorted(counts.items(), key=lambda kv: float(kv[0]))),
        },
        "shorter_side": {"min": min(shorter), "max": max(shorter)} if shorter else None,
        "undecodable": {"count": n_undecodable, "examples": undecodable[:MAX_EXAMPLES]},
        "corrupt_data": {"count": len(corrupt), "examples": corrupt[:MAX_EXAMPLES]},
        "errors": errors,
        "warnings": warnings,
    }
    report["ok"] = not errors
    return report


def _examples(values) -> str:
    values = sorted(values)
    shown = ", ".join(str(v) for v in values[:MAX_EXAMPLES])
    return shown + (", ..." if len(values) > MAX_EXAMPLES else "")


def _compare_idx(
    idx_path: str, offsets: List[int], ids: Dict[int, int], size: int, warnings: List[str]
) -> List[str]:
    errors = []
    entries, bad = read_idx(idx_path)
    if bad:
        errors.append(f".idx has {len(bad)} malformed lines, e.g. {bad[0]}")
    starts = set(offsets)
    keys = collections.Counter(key for key, _ in entries)
    duplicated = [k for k, n in keys.items() if n > 1]
    if duplicated:
        errors.append(f".idx repeats {len(duplicated)} keys: {_examples(duplicated)}")
    past_end = [off for _, off in entries if off >= size]
    if past_end:
        errors.append(
            f".idx has {len(past_end)} offsets past the end of the .rec ({size} bytes): .rec truncated?"
        )
    wrong = [off for _, off in entries if off < size and off not in starts]
    if wrong:
        errors.append(f".idx has {len(wrong)} offsets that are not record starts: {_examples(wrong)}")
    indexed = {off for _, off in entries}
    missing = starts - indexed
    if missing:
        errors.append(
            f"{len(missing)} records of the .rec are not in the .idx (offsets {_examples(missing)})"
        )
    if len(entries) != len(offsets) and not errors:
        errors.append(f".idx has {len(entries)} entries but the .rec has {len(offsets)} records")
    mismatched = sum(1 for key, off in entries if off in ids and key.isdigit() and int(key) != ids[off])
    if mismatched:
        warnings.append(f"{mismatched} records have a header id different from their .idx key")
    return errors


def _compare_lst(lst_path: str, labels: Dict[int, float], errors: List[str], warnings: List[str]) -> None:
    """Records whose id is no line of the list, or whose label differs from it (read with im2rec's parser:
    a line it skipped is skipped here too)."""
    items, bad = read_list(lst_path)
    listed = {item.index: float(np.float32(item.labels[0])) for item in items if item.labels}
    unknown = [rec_id for rec_id in labels if rec_id not in listed]
    if unknown:
        errors.append(f"{len(unknown)} records are not in {lst_path}, e.g. ids {_examples(unknown)}")
    differ = [rec_id for rec_id, label in labels.items() if rec_id in listed and listed[rec_id] != label]
    if differ:
        errors.append(f"{len(differ)} records have another label than in {lst_path}: {_examples(differ)}")
    missing = len(set(listed) - set(labels))
    if missing:
        warnings.append(f"{missing} lines of {lst_path} have no record (skipped when packing?)")
    if bad:
        warnings.append(f"{len(bad)} lines of {lst_path} are not list lines (line {bad[0][0]}: {bad[0][2]})")


def format_report(report: Dict[str, object]) -> str:
    """Human-readable summary of :func:`check_rec`'s result."""
    labels = report["labels"]
    lines = [
        f"{report['rec']}: {report['records']} records, {report['bytes']} bytes"
        + (f", index {report['idx']}" if report["idx"] else ", no index"),
        f"labels {labels['min']} .. {labels['max']} in {labels['classes']} classes"
        + (f" ({labels['width']} labels per record)" if labels["width"] > 1 else ""),
    ]
    counts = labels["counts"]
    if counts:
        per_class = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:20])
        lines.append("per class: " + per_class + (", ..." if len(counts) > 20 else ""))
    if report["shorter_side"]:
        lines.append("shorter side {min} .. {max} px".format(**report["shorter_side"]))
    for example in report["undecodable"]["examples"]:
        lines.append(f"undecodable record at byte {example['offset']}: {example['reason']}")
    for example in report["corrupt_data"]["examples"]:
        where = f"record {example['id']} at byte {example['offset']}"
        lines.append(f"corrupt JPEG data in {where}: {example['reason']}")
    lines += ["warning: " + w for w in report["warnings"]]
    lines += ["ERROR: " + e for e in report["errors"]]
    lines.append("OK" if report["ok"] else "FAILED")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check a RecordIO image file and its index.")
    parser.add_argument("prefix", help="PREFIX of PREFIX.rec (+ PREFIX.idx when present), or the .rec path")
    parser.add_argument("--idx", help="index file to check against (default: PREFIX.idx when it exists)")
    parser.add_argument(
        "--lst", help="list the file was packed from, to compare ids and labels (default: PREFIX.lst if any)"
    )
    parser.add_argument("--no-decode", action="store_true", help="skip decoding the images (much faster)")
    parser.add_argument("--num-thread", type=int, default=1, help="decoding processes")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    common.add_progress(parser)
    args = parser.parse_args(argv)
    args.progress = bool(args.progress)  # off unless asked: the report is what a script reads
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Check and print; returns 0 when the file is good, 1 otherwise."""
    args = parse_args(argv)
    try:
        rec, idx, lst = resolve_paths(args.prefix)
        for flag, path in (("--idx", args.idx), ("--lst", args.lst)):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"{flag} {path} does not exist")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stop_on_sigterm()
    try:
        report = check_rec(
            rec,
            args.idx or idx,
            decode=not args.no_decode,
            progress=args.progress,
            num_workers=args.num_thread,
            lst_path=args.lst or lst,
        )
    except KeyboardInterrupt as err:
        print(stop_message("rec_check", err, "nothing checked to the end"), file=sys.stderr)
        return exit_status(err)
    except OSError as err:  # an unreadable file
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["ok"] else 1
