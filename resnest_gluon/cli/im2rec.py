#!/usr/bin/env python3
"""Pack image folders into MXNet RecordIO files (``.lst`` -> ``.rec`` + ``.idx``).

A drop-in replacement for the ``im2rec.py`` shipped with MXNet: same command line, same ``.lst`` format
(``index<TAB>label(s)<TAB>relative/path``) and byte-compatible records (``mx.recordio`` ``IRHeader`` +
encoded image, written with the dmlc RecordIO framing), so ``mx.recordio.MXIndexedRecordIO``,
``mx.io.ImageRecordIter`` and ``gluon.data.vision.ImageRecordDataset`` read its output exactly as they read
the reference's. Differences that matter in practice:

* one process per core with a bounded, ordered pipeline: records are always written in list order;
* JPEGs much larger than the target are decoded at 1/2, 1/4 or 1/8 size by libjpeg-turbo (only when the
  reduced image is still at least the target size), which saves most of the decode time;
* ``--no-upscale``: images whose shorter side is already <= ``--resize`` are kept as they are, and plain
  8-bit 3-channel JPEGs among them are copied byte for byte (no second JPEG loss);
* files that cannot be packed are skipped with their reason in ``PREFIX.skipped.tsv`` and a non-zero exit
  status (2); the ``.rec``/``.idx`` are written under temporary names and renamed at the end, so an
  interrupted run never leaves an index that points past its record file;
* MXNet itself is not imported (the RecordIO framing is written here), so the tool starts in a fraction of
  a second; ``--check PREFIX`` validates a finished pair (see ``tools/rec_check.py``).

Used to build the ImageNet records for ResNeSt (Zhang et al., "ResNeSt: Split-Attention Networks",
arXiv:2004.08955), whose training resizes the shorter side to 480 px before random-resized crops.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import multiprocessing
import os
import queue
import random
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from resnest_gluon.cli import common
from resnest_gluon.data.lst import ListItem, read_list, repeated_indices
from resnest_gluon.files import (
    IMAGE_EXTS,
    MAX_IMAGE_BYTES,
    NotRegularFile,
    file_problem,
    free_space,
    read_regular,
)
from resnest_gluon.interrupts import (
    ParentWatch,
    exit_status,
    held_signals,
    stop_message,
    stop_on_sigterm,
    worker_signals,
    worker_start_method,
)

logger = logging.getLogger(__name__)

#: dmlc RecordIO magic number, little endian on disk.
RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
#: ``mx.recordio.IRHeader`` layout: flag (uint32), label (float32), id (uint64), id2 (uint64).
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)
#: A RecordIO part length has 29 bits.
MAX_RECORD_BYTES = (1 << 29) - 1
#: OpenCV refuses to decode images with more pixels than this (``OPENCV_IO_MAX_IMAGE_PIXELS``).
OPENCV_MAX_PIXELS = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
#: the image types scripts/predict.py reads (MXNet's im2rec.py lists .jpeg, .jpg and .png only)
DEFAULT_EXTS = IMAGE_EXTS
SKIP_EXIT_STATUS = 2
#: A run that skips more than this share of its list lines replaces no earlier pair (wrong ROOT or list?).
MAX_SKIPPED = 0.5

_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_REDUCED_GRAY = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# SOF0 baseline, SOF1 extended sequential, SOF2 progressive (Huffman); every JPEG reader handles these.
_PLAIN_SOF = (0xC0, 0xC1, 0xC2)


class PackError(Exception):
    """Packing refused or given up: an earlier ``.rec``/``.idx`` is untouched, and no new one is left."""


CLASSES_SUFFIX = ".classes.txt"  # PREFIX.classes.txt: the class names in label order, one per line


class SkipImage(Exception):
    """Raised when one image cannot be packed; the message is the reason written to the report."""


# ----------------------------------------------------------------------------------------------- lists
class ListingError(OSError):
    """A folder cannot be listed completely; no list is written."""


def _folder_key(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _unreadable(err: OSError) -> None:
    raise ListingError(
        f"cannot read folder {err.filename}: {err.strerror}; its images would be left out (and, with "
        "--recursive, every later class would shift its label): fix its permissions or move it away"
    )


def _walk(root: str, problems: List[Tuple[str, str]]) -> Iterator[Tuple[str, List[str]]]:
    """``(folder, sorted file names)`` of every folder under ``root``, following symlinks but entering each
    real folder once (a symlink loop or a second link to a folder is reported in ``problems``)."""
    seen = {_folder_key(root): "."}
    for path, dirs, files in os.walk(root, followlinks=True, onerror=_unreadable):
        keep = []
        for name in sorted(dirs):
            full = os.path.join(path, name)
            key = _folder_key(full)
            if key in seen:
                problems.append((os.path.relpath(full, root), f"same folder as {seen[key]}: listed once"))
                continue
            seen[key] = os.path.relpath(full, root)
            keep.append(name)
        dirs[:] = keep
        yield path, sorted(files)


def _image_files(
    root: str,
    folder: str,
    names: Sequence[str],
    exts: set,
    problems: List[Tuple[str, str]],
    others: Optional[Dict[str, int]] = None,
) -> Iterator[str]:
    """Paths of the image files among ``names``; image names that are no regular file of at most
    ``MAX_IMAGE_BYTES`` (a FIFO, a device, a broken symlink) go to ``problems``, and the other names are
    counted by extension in ``others``."""
    for name in names:
        fpath = os.path.join(folder, name)
        ext = os.path.splitext(name)[1].lower()
        if ext not in exts:
            if others is not None and not os.path.isdir(fpath):
                others[ext or "(no extension)"] = others.get(ext or "(no extension)", 0) + 1
            continue
        problem = file_problem(fpath, MAX_IMAGE_BYTES)
        if problem is None:
            yield fpath
        elif problem != "a folder":
            problems.append((os.path.relpath(fpath, root), problem))


def list_images(
    root: str,
    recursive: bool = False,
    exts: Sequence[str] = DEFAULT_EXTS,
    others: Optional[Dict[str, int]] = None,
) -> Tuple[List[ListItem], List[Tuple[str, str]]]:
    """List the images under ``root`` the way MXNet's ``im2rec.py --list`` does.

    With ``recursive``, folders are walked in sorted order and every folder that holds an image gets the
    next label (0, 1, ...) the first time it is met, so for the usual ``root/<class>/<image>`` layout the
    labels are the sorted class names numbered from 0. Symlinks are followed, but every real folder is
    entered once (a symlink loop would otherwise repeat the tree until the path is too long). Without
    ``recursive``, only the files directly in ``root`` are listed, all with label 0.

    Parameters
    ----------
    root : str
        Folder to list.
    recursive : bool
        Walk sub-folders and label by folder.
    exts : sequence of str
        Accepted extensions (compared case-insensitively, with the dot).
    others : dict, optional
        Filled with the count of the other files by extension (``{".txt": 3}``).

    Returns
    -------
    items : list of ListItem
        In walk order, indices 0..N-1.
    problems : list of (path, reason)
        What was left out: broken or looping file symlinks, FIFOs, devices, sockets, files over the size
        cap, folders met a second time.

    Raises
    ------
    ListingError
        ``root`` does not exist, or a folder under it cannot be read.
    """
    exts = {e.lower() for e in exts}
    items: List[ListItem] = []
    problems: List[Tuple[str, str]] = []
    if not os.path.isdir(root):
        raise ListingError(f"image folder {root} does not exist")
    if recursive:
        labels: Dict[str, int] = {}
        for path, files in _walk(root, problems):
            for fpath in _image_files(root, path, files, exts, problems, others):
                label = labels.setdefault(path, len(labels))
                items.append(ListItem(len(items), os.path.relpath(fpath, root), (float(label),)))
        for path, label in labels.items():
            logger.info("%s %d", os.path.relpath(path, root), label)
    else:
        try:
            names = sorted(os.listdir(root))
        except OSError as err:
            _unreadable(err)
        for fpath in _image_files(root, root, names, exts, problems, others):
            items.append(ListItem(len(items), os.path.relpath(fpath, root), (0.0,)))
    return items, problems


def class_names(items: Iterable[ListItem], root: str) -> List[str]:
    """The class names in label order: each label's folder relative to ``root`` (``root``'s own name for
    the files directly in it), as ``scripts/train.py --class-names`` and ``scripts/predict.py`` read them.
    ``--list --recursive`` writes them to ``PREFIX.classes.txt``."""
    names: Dict[int, str] = {}
    for item in items:
        folder = os.path.dirname(item.path) or os.path.basename(os.path.normpath(root))
        names.setdefault(int(item.labels[0]), folder.replace(os.sep, "/"))
    return [names[label] for label in sorted(names)]


def _atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def format_list(items: Iterable[ListItem]) -> str:
    """Format items as ``.lst`` text: ``index\\tlabel(s) as %f\\tpath``, one per line."""
    lines = []
    for item in items:
        labels = "".join(f"{label:f}\t" for label in item.labels)
        lines.append(f"{item.index:d}\t{labels}{item.path}\n")
    return "".join(lines)


def write_list(path: str, items: Iterable[ListItem]) -> None:
    """Write a ``.lst`` file atomically (temporary name, then rename)."""
    _atomic_write_text(path, format_list(items))


def split_lists(
    items: List[ListItem],
    prefix: str,
    shuffle: bool = True,
    chunks: int = 1,
    train_ratio: float = 1.0,
    test_ratio: float = 0.0,
) -> List[str]:
    """Shuffle, chunk and split a listing into ``.lst`` files exactly as MXNet's ``im2rec.py`` does.

    The shuffle uses ``random.Random(100)`` (the reference seeds the global generator with 100), so both
    tools write identical lists from the same folder.

    Returns
    -------
    list of str
        The paths written.
    """
    if chunks < 1:
        raise ValueError(f"--chunks must be >= 1, got {chunks}")
    if not 0.0 <= train_ratio <= 1.0 or not 0.0 <= test_ratio <= 1.0:
        raise ValueError("--train-ratio and --test-ratio must be between 0 and 1")
    items = list(items)
    if shuffle:
        random.Random(100).shuffle(items)
    chunk_size = (len(items) + chunks - 1) // chunks
    written = []
    for i in range(chunks):
        chunk = items[i * chunk_size : (i + 1) * chunk_size]
        name = prefix + (f"_{i}" if chunks > 1 else "")
        sep = int(chunk_size * train_ratio)
        sep_test = int(chunk_size * test_ratio)
        outputs = []
        if train_ratio == 1.0:
            outputs.append((name + ".lst", chunk))
        else:
            if test_ratio:
                outputs.append((name + "_test.lst", chunk[:sep_test]))
            if train_ratio + test_ratio < 1.0:
                outputs.append((name + "_val.lst", chunk[sep_test + sep :]))
            outputs.append((name + "_train.lst", chunk[sep_test : sep_test + sep]))
        for path, part in outputs:
            write_list(path, part)
            written.append(path)
    return written


def find_lists(prefix: str) -> List[str]:
    """The ``.lst`` files the reference would pack for ``prefix``.

    Every ``.lst`` in the folder when ``prefix`` is a folder, otherwise every ``.lst`` whose path starts
    with ``prefix`` (so ``data/train`` packs ``data/train.lst`` and ``data/train_0.lst``...), sorted.
    """
    prefix = os.path.abspath(prefix)
    folder = prefix if os.path.isdir(prefix) else os.path.dirname(prefix)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if path.startswith(prefix) and name.endswith(".lst") and os.path.isfile(path):
            found.append(path)
    return found


# ------------------------------------------------------------------------------------- record framing
def pack_header(labels: Sequence[float], index: int, pack_label: bool = False) -> bytes:
    """Serialise an ``mx.recordio.IRHeader`` (plus the label vector when ``pack_label``)."""
    if pack_label and len(labels) > 1:
        vec = np.asarray(labels, dtype="<f4")
        return struct.pack(IR_FORMAT, vec.size, 0.0, index, 0) + vec.tobytes()
    return struct.pack(IR_FORMAT, 0, labels[0], index, 0)


def frame_record(payload: bytes) -> List[bytes]:
    """Frame one record the way dmlc-core's ``RecordIOWriter`` does.

    A payload that contains the magic number at a 4-byte aligned offset is split there into parts
    (continuation flags 1, 2, 3) with the magic dropped, so a reader that seeks to an arbitrary offset
    (``ImageRecordIter`` splitting a file between workers) can never mistake image bytes for a record
    start. The reader puts the magic back.
    """
    parts = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            cflag = 1 if start == 0 else 2
            parts.append(_MAGIC_BYTES + struct.pack("<I", (cflag << 29) | (pos - start)))
            parts.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    length = len(payload) - start
    cflag = 3 if start else 0
    parts.append(_MAGIC_BYTES + struct.pack("<I", (cflag << 29) | length))
    parts.append(payload[start:] if start else payload)
    if length % 4:
        parts.append(b"\0" * (4 - length % 4))
    return parts


class RecordWriter:
    """Write ``.rec`` and ``.idx`` under temporary names; :meth:`commit` renames both.

    Until :meth:`commit`, an existing ``.rec``/``.idx`` pair is left untouched; :meth:`abort` removes the
    temporary files. On commit the old ``.idx`` is removed before the renames, so no moment exists where an
    index sits next to a record file it does not describe.
    """

    def __init__(self, rec_path: str, idx_path: str):
        self.rec_path, self.idx_path = rec_path, idx_path
        self._rec = open(rec_path + ".tmp", "wb")
        try:
            self._idx = open(idx_path + ".tmp", "w")
        except BaseException:
            self._rec.close()
            os.remove(rec_path + ".tmp")
            raise
        self.pos = 0
        self.count = 0

    def _failed(self, path: str, err: OSError) -> PackError:
        return PackError(
            f"cannot write {path}: {err.strerror or err} ({free_space(path)}); the earlier "
            f"{os.path.basename(self.rec_path)} and its .idx are untouched"
        )

    def write(self, key: int, payload: bytes) -> None:
        """Append one record (``payload`` = packed header + image bytes) under ``key``."""
        if len(payload) > MAX_RECORD_BYTES:
            raise SkipImage(f"record of {len(payload)} bytes exceeds the RecordIO limit of 512 MiB")
        try:
            self._idx.write(f"{key:d}\t{self.pos:d}\n")
        except OSError as err:
            raise self._failed(self.idx_path + ".tmp", err) from None
        try:
            for part in frame_record(payload):
                self._rec.write(part)
                self.pos += len(part)
        except OSError as err:
            raise self._failed(self.rec_path + ".tmp", err) from None
        self.count += 1

    def commit(self) -> None:
        """Flush, close, check the size of the record file, and move the finished files into place."""
        # no fsync: the renames guard against an interrupted process; forcing hundreds of MB to disk
        # here would only slow the run down
        for f, path in ((self._rec, self.rec_path), (self._idx, self.idx_path)):
            try:
                f.close()  # the last buffered bytes are written here: a full disk shows now
            except OSError as err:
                raise self._failed(path + ".tmp", err) from None
        size = os.path.getsize(self.rec_path + ".tmp")
        if size != self.pos:
            raise PackError(
                f"{self.rec_path}.tmp holds {size} of the {self.pos} bytes written "
                f"({free_space(self.rec_path)}); the earlier pair is untouched"
            )
        # a Ctrl-C or SIGTERM between the renames would leave a .rec without its .idx: held until done
        with held_signals():
            if os.path.exists(self.idx_path):
                os.remove(self.idx_path)
            os.replace(self.rec_path + ".tmp", self.rec_path)
            os.replace(self.idx_path + ".tmp", self.idx_path)

    def abort(self) -> None:
        """Close and delete the temporary files (a close that fails again on a full disk is ignored)."""
        for f in (self._rec, self._idx):
            try:
                f.close()
            except OSError:
                pass
        for path in (self.rec_path + ".tmp", self.idx_path + ".tmp"):
            if os.path.exists(path):
                os.remove(path)


# -------------------------------------------------------------------------------------- image headers
@dataclass
class ImageInfo:
    """What the file header says about an image (no pixel decoding)."""

    kind: str  # 'jpeg', 'png' or 'other'
    width: int = 0
    height: int = 0
    channels: int = 0
    bits: int = 0
    sof: int = 0  # JPEG start-of-frame marker
    orientation: int = 1  # EXIF orientation (1 = as stored)
    truncated: bool = False
    corrupt: str = ""  # what is wrong with a file that is complete but damaged


def _exif_orientation(seg: bytes) -> int:
    """Orientation tag (0x0112) of an APP1 Exif segment, 1 when absent or unreadable."""
    tiff = seg[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(end + "I", tiff[4:8])
        (count,) = struct.unpack(end + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, typ = struct.unpack(end + "HH", entry[:4])
            if tag == 0x0112 and typ == 3:
                return struct.unpack(end + "H", entry[8:10])[0]
    except struct.error:
        return 1
    return 1


def jpeg_info(data: bytes) -> ImageInfo:
    """Parse the JPEG markers before the first scan: size, components, precision, coding, orientation.

    A file is flagged ``truncated`` when its last scan is not followed by an end-of-image marker (0xFFD9
    cannot occur inside entropy-coded data, so this is exact for files without trailing junk); OpenCV would
    otherwise decode such files with a grey bottom and only a warning. A file that has its end but whose
    header has a segment running past it is ``corrupt`` (garbage in the header), not truncated.
    """
    info = ImageInfo("jpeg")
    pos, n = 2, len(data)
    cut = False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            # extraneous bytes: libjpeg skips them with a warning, so do the same and let it judge
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker < 0xC0 or 0xD0 <= marker <= 0xD8:  # standalone or stray
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            break  # malformed: no header facts, the decoder decides
        if pos + 2 + length > n:
            cut = True
            break
        seg = data[pos + 4 : pos + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(seg) >= 6 and not info.sof:
            info.sof = marker
            info.bits = seg[0]
            info.height, info.width = struct.unpack(">HH", seg[1:5])
            info.channels = seg[5]
        elif marker == 0xE1 and seg[:6] == b"Exif\0\0":
            info.orientation = _exif_orientation(seg)
        pos += 2 + length
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    info.truncated = (cut and end < 0) or (last_scan >= 0 and end < last_scan)
    if cut and not info.truncated:  # the file has its end: a segment length is garbage, not the file short
        info.corrupt = "a marker segment runs past the end of the file"
    return info


def image_info(data: bytes) -> ImageInfo:
    """Sniff the format from the first bytes and read what the header tells."""
    if data[:3] == b"\xff\xd8\xff":
        return jpeg_info(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 29:
        width, height, bits, color_type = struct.unpack(">IIBB", data[16:26])
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type, 0)
        return ImageInfo("png", width, height, channels, bits, truncated=b"IEND" not in data[-16:])
    return ImageInfo("other")


# ----------------------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class EncodeOptions:
    """How images are turned into record payloads (mirrors the command-line flags)."""

    resize: int = 0
    center_crop: bool = False
    quality: int = 95
    color: int = 1
    encoding: str = ".jpg"
    pass_through: bool = False
    pack_label: bool = False
    no_upscale: bool = False
    skip_corrupt: bool = False


def target_size(height: int, width: int, resize: int) -> Tuple[int, int]:
    """``(width, height)`` with the shorter side set to ``resize``, rounded as the reference rounds."""
    if height > width:
        return resize, height * resize // width
    return width * resize // height, resize


def _center_crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    if h > w:
        margin = (h - w) // 2
        return img[margin : margin + w]
    margin = (w - h) // 2
    return img[:, margin : margin + h]


def _reduce_factor(info: ImageInfo, opts: EncodeOptions) -> int:
    """Largest n in (8, 4, 2) for which libjpeg's 1/n decode is still at least the target size."""
    if info.kind != "jpeg" or opts.color == -1 or opts.resize <= 0 or not info.width or not info.height:
        return 1
    short = min(info.width, info.height)
    for factor in (8, 4, 2):
        if short >= opts.resize * factor:
            return factor
    return 1


def encode_image(data: bytes, opts: EncodeOptions) -> Tuple[bytes, bool, str]:
    """Turn the bytes of one image file into the image bytes of its record.

    Returns
    -------
    image : bytes
        Encoded image (or the input itself when copied).
    copied : bool
        True when ``data`` was passed through unchanged (not decoded, so not checked for corrupt data).
    warning : str
        libjpeg's complaint about corrupt data in a JPEG it could still decode ('' when none).

    Raises
    ------
    SkipImage
        With the reason, when the file is empty, not an image, truncated, corrupt or too large.
    """
    if not data:
        raise SkipImage("empty file")
    if opts.pass_through:
        return data, True, ""
    info = image_info(data)
    if info.truncated:
        raise SkipImage(f"truncated {info.kind.upper()} file (no end-of-image marker)")
    if info.corrupt:
        raise SkipImage(f"corrupt {info.kind.upper()} file ({info.corrupt})")
    if info.width * info.height > OPENCV_MAX_PIXELS:
        raise SkipImage(
            f"image too large: {info.width}x{info.height} pixels exceeds OpenCV's limit of "
            f"{OPENCV_MAX_PIXELS} (raise it with the OPENCV_IO_MAX_IMAGE_PIXELS environment variable)"
        )
    short = min(info.width, info.height)
    small = bool(info.width) and (opts.resize <= 0 or short <= opts.resize)
    if opts.no_upscale and small and _copyable(info, opts):
        return data, True, ""

    factor = _reduce_factor(info, opts)
    if factor > 1:
        flag = (_REDUCED_COLOR if opts.color == 1 else _REDUCED_GRAY)[factor]
    else:
        flag = {1: cv2.IMREAD_COLOR, 0: cv2.IMREAD_GRAYSCALE, -1: cv2.IMREAD_UNCHANGED}[opts.color]
    img, warning = imdecode_noting(np.frombuffer(data, np.uint8), flag)
    if img is not None and warning and opts.skip_corrupt:
        raise SkipImage(f"corrupt JPEG data (libjpeg: {warning})")
    if img is not None and img.size and opts.color == -1 and factor == 1 and info.orientation != 1:
        img = _orient(img, info.orientation)  # IMREAD_UNCHANGED ignores EXIF, unlike the other flags
    if img is None or img.size == 0:
        if info.kind == "other":
            raise SkipImage("not an image OpenCV can decode (unknown format)")
        raise SkipImage(f"OpenCV cannot decode this {info.kind.upper()} file (corrupt or unsupported)")
    if img.dtype != np.uint8 and opts.encoding == ".jpg":
        # JPEG holds 8 bits; OpenCV would saturate rather than scale a 16-bit image
        img = (img / (np.iinfo(img.dtype).max / 255.0) if img.dtype.kind in "ui" else img * 255.0).clip(
            0, 255
        )
        img = img.astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4 and opts.encoding == ".jpg":
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)

    if opts.center_crop:
        img = _center_crop(img)
    if opts.resize > 0 and not (opts.no_upscale and min(img.shape[:2]) * factor <= opts.resize):
        img = _resize(img, info, factor, opts.resize, opts.center_crop)
    params = (
        [cv2.IMWRITE_JPEG_QUALITY, opts.quality]
        if opts.encoding == ".jpg"
        else [cv2.IMWRITE_PNG_COMPRESSION, opts.quality]
    )
    ok, buf = cv2.imencode(opts.encoding, img, params)
    if not ok:
        raise SkipImage(f"OpenCV cannot encode the image as {opts.encoding}")
    return buf.tobytes(), False, warning


_STDERR_SINK = None
# libjpeg's warnings that mean damaged data (jerror.h: JWRN_EXTRANEOUS_DATA, JWRN_HIT_MARKER, ...)
_CORRUPT_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file")


def imdecode_noting(buf: np.ndarray, flags: int) -> Tuple[Optional[np.ndarray], str]:
    """``cv2.imdecode`` plus libjpeg's "Corrupt JPEG data: ..." warning, when it printed one.

    Such a JPEG (valid markers, damaged entropy-coded data) decodes with garbage blocks and no error:
    the warning libjpeg prints on the C stderr is OpenCV's only sign of it (Pillow's decoder prints
    nothing at all), so file descriptor 2 is caught for the duration of the call; any other output is
    passed on. File descriptors are process-wide: call this from one thread only (the main thread, or a
    worker process).
    """
    global _STDERR_SINK
    if _STDERR_SINK is None or _STDERR_SINK[0] != os.getpid():  # one per process, never shared by a fork
        _STDERR_SINK = os.getpid(), tempfile.TemporaryFile(buffering=0)
    sink = _STDERR_SINK[1].fileno()
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink, 2)
    try:
        img = cv2.imdecode(buf, flags)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    size = os.lseek(sink, 0, os.SEEK_CUR)
    if not size:
        return img, ""
    text = os.pread(sink, size, 0).decode("utf-8", "replace")
    os.ftruncate(sink, 0)
    os.lseek(sink, 0, os.SEEK_SET)
    lines = text.splitlines()
    warnings = [line.strip() for line in lines if line.startswith(_CORRUPT_WARNINGS)]
    others = "".join(line + "\n" for line in lines if not line.startswith(_CORRUPT_WARNINGS))
    if others:
        os.write(2, others.encode())
    return img, warnings[0] if warnings else ""


def _copyable(info: ImageInfo, opts: EncodeOptions) -> bool:
    """A JPEG whose bytes decode to what re-encoding would produce, minus the second JPEG loss."""
    return (
        info.kind == "jpeg"
        and info.sof in _PLAIN_SOF
        and info.bits == 8
        and info.channels == 3
        and info.orientation == 1
        and opts.color == 1
        and opts.encoding == ".jpg"
        and not opts.center_crop
    )


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` turned upright by its EXIF ``orientation`` (2-8), as OpenCV's IMREAD_COLOR does."""
    ops = {
        2: lambda a: cv2.flip(a, 1),
        3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
        4: lambda a: cv2.flip(a, 0),
        5: lambda a: cv2.transpose(a),
        6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
        7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
        8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    return ops[orientation](img) if orientation in ops else img


def _resize(img: np.ndarray, info: ImageInfo, factor: int, resize: int, cropped: bool) -> np.ndarray:
    h, w = img.shape[:2]
    if factor > 1 and not cropped:
        # size from the full-resolution header so the result matches a full decode to the pixel count
        full_h, full_w = info.height, info.width
        if info.orientation in (5, 6, 7, 8):
            full_h, full_w = full_w, full_h
        if (math.ceil(full_h / factor), math.ceil(full_w / factor)) == (h, w):
            h, w = full_h, full_w
    size = target_size(h, w, resize)
    if size == (img.shape[1], img.shape[0]):
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def make_record(item: ListItem, root: str, opts: EncodeOptions) -> Tuple[Optional[bytes], str, str]:
    """Read, encode and pack one list item.

    Returns
    -------
    payload : bytes or None
        Packed header + image, or None when skipped.
    note : str
        ``'copied'``, ``'encoded'`` or the reason for skipping.
    warning : str
        What libjpeg said about a JPEG it decoded despite corrupt data ('' for none).
    """
    path = os.path.join(root, item.path)
    try:
        if not item.labels:
            raise SkipImage("the list line has no label")
        header = pack_header(item.labels, item.index, opts.pack_label)
        try:
            data = read_regular(path, MAX_IMAGE_BYTES)  # a FIFO or /dev/zero under an image's name is refused
        except NotRegularFile as e:
            raise SkipImage(str(e)) from None
        except OSError as e:
            raise SkipImage(f"cannot read file: {e.strerror or e}") from None
        image, copied, warning = encode_image(data, opts)
        return header + image, "copied" if copied else "encoded", warning
    except SkipImage as e:
        return None, str(e), ""
    except (cv2.error, struct.error, ValueError, MemoryError) as e:
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}", ""


# --------------------------------------------------------------------------------------------- packing
def _worker_loop(root: str, opts: EncodeOptions, tasks, results, watch: ParentWatch) -> None:
    """Encode chunks from ``tasks`` until a None arrives; results go out as ``(chunk number, records)``."""
    worker_signals()
    watch()
    # one OpenCV thread per process: the workers already fill every core
    cv2.setNumThreads(1)
    while True:
        task = tasks.get()
        if task is None:
            return
        number, chunk = task
        # Queue.put hands the data to a feeder thread, so encoding goes on while the parent reads the pipe
        results.put((number, [make_record(item, root, opts) for item in chunk]))


class EncoderPool:
    """``num_workers`` encoding processes fed chunk by chunk; :meth:`imap` gives results in list order."""

    def __init__(self, root: str, opts: EncodeOptions, num_workers: int):
        ctx = multiprocessing.get_context(worker_start_method())
        self.num_workers = num_workers
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        parent = ParentWatch()
        self.procs = [
            ctx.Process(target=_worker_loop, args=(root, opts, self.tasks, self.results, parent), daemon=True)
            for _ in range(num_workers)
        ]
        for proc in self.procs:
            proc.start()

    def _get(self):
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                # a worker never ends on its own while results are awaited, not even with status 0
                dead = [p.exitcode for p in self.procs if p.exitcode is not None]
                if dead:
                    raise RuntimeError(
                        f"an encoding worker died (exit code {dead[0]}); out of memory? "
                        "Try fewer --num-thread."
                    ) from None

    def imap(self, chunks: List[List[ListItem]]) -> Iterator[List[Tuple[Optional[bytes], str, str]]]:
        """Results of each chunk, in order, keeping at most 4 chunks per worker in flight."""
        window = 4 * self.num_workers
        submitted, buffered = 0, {}
        for number in range(len(chunks)):
            while submitted < len(chunks) and submitted < number + window:
                self.tasks.put((submitted, chunks[submitted]))
                submitted += 1
            while number not in buffered:
                done, records = self._get()
                buffered[done] = records
            yield buffered.pop(number)

    def close(self) -> None:
        """Stop the workers (at once; any work in flight is dropped)."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():  # SIGTERM blocked or held in the worker: SIGKILL cannot be
                proc.kill()
                proc.join()
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()


def _start_pool(root: str, opts: EncodeOptions, num_workers: int) -> Optional[EncoderPool]:
    """Encoding processes, or None for in-process encoding."""
    return EncoderPool(root, opts, num_workers) if num_workers > 1 else None


def _ordered_results(
    items: List[ListItem], root: str, opts: EncodeOptions, pool: Optional[EncoderPool], chunk_size: int
) -> Iterator[Tuple[ListItem, Tuple[Optional[bytes], str, str]]]:
    """Encode items (on ``pool`` when given), yielding results in list order with bounded memory."""
    if pool is None:
        for item in items:
            yield item, make_record(item, root, opts)
        return
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    for chunk, records in zip(chunks, pool.imap(chunks)):
        yield from zip(chunk, records)


@dataclass
class PackStats:
    """Outcome of packing one ``.lst`` file."""

    lst: str
    rec: str
    written: int = 0
    copied: int = 0
    skipped: int = 0
    seconds: float = 0.0
    report: Optional[str] = None
    #: (index, path, libjpeg's warning) of JPEGs packed despite corrupt data
    corrupt: List[Tuple[str, str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return (self.written + self.skipped) / self.seconds if self.seconds else 0.0


def pack_list(
    lst_path: str,
    root: str,
    opts: EncodeOptions,
    num_workers: int = 1,
    progress: bool = True,
    chunk_size: int = 16,
    max_skipped: float = MAX_SKIPPED,
) -> PackStats:
    """Pack the images of one ``.lst`` file into ``<stem>.rec`` and ``<stem>.idx`` next to it.

    Records are written in list order. Images that cannot be packed are left out and listed with their
    reason in ``<stem>.skipped.tsv`` (removed when nothing was skipped). The new pair replaces the old one
    only at the end, and only when at least one record was written and at most ``max_skipped`` of the
    list's lines were skipped.

    Parameters
    ----------
    lst_path : str
        The list file.
    root : str
        Folder the list's paths are relative to.
    opts : EncodeOptions
        Encoding options.
    num_workers : int
        Encoding processes (1 = in this process).
    progress : bool
        Show a tqdm bar with images/s.
    chunk_size : int
        Images per task sent to a worker.
    max_skipped : float
        Largest share of skipped lines that still replaces the old pair.

    Returns
    -------
    PackStats

    Raises
    ------
    PackError
        When the list or root is unusable (see :func:`check_inputs`) or too much was skipped; the old pair
        is then untouched.
    """
    from resnest_gluon.progress import progress_bar

    stem = os.path.splitext(lst_path)[0]
    stats = PackStats(lst_path, stem + ".rec", report=stem + ".skipped.tsv")
    items, bad = read_list(lst_path)
    check_inputs(lst_path, root, items, bad)
    skipped: List[Tuple[str, str, str]] = [(f"line {n}", line, reason) for n, line, reason in bad]
    start = time.perf_counter()
    # fork the workers before tqdm starts its monitor thread
    pool = _start_pool(root, opts, num_workers)
    writer = RecordWriter(stem + ".rec", stem + ".idx")
    try:
        results = _ordered_results(items, root, opts, pool, chunk_size)
        with progress_bar(
            total=len(items), unit="img", disable=not progress, desc=os.path.basename(stem)
        ) as bar:
            for item, (payload, note, warning) in results:
                if payload is not None and warning:
                    stats.corrupt.append((str(item.index), item.path, warning))
                if payload is not None:
                    try:
                        writer.write(item.index, payload)
                    except SkipImage as e:
                        payload, note = None, str(e)
                if payload is None:
                    skipped.append((str(item.index), item.path, note))
                elif note == "copied":
                    stats.copied += 1
                bar.update(1)
        lines = len(items) + len(bad)
        if skipped:
            _write_report(stats.report, skipped)
        if writer.count == 0 or len(skipped) > max_skipped * lines:
            raise PackError(
                f"{lst_path}: {len(skipped)} of its {lines} lines were skipped (reasons in {stats.report}), "
                f"so {stats.rec} and its .idx were not replaced. Is {root} the folder the list was made "
                f"from? (--max-skipped {max_skipped:g} is the share of skipped lines accepted)"
            )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.close()
    stats.written = writer.count
    stats.skipped = len(skipped)
    stats.seconds = time.perf_counter() - start
    if not skipped:
        if os.path.exists(stats.report):
            os.remove(stats.report)
        stats.report = None
    return stats


def check_inputs(lst_path: str, root: str, items: List[ListItem], bad: list) -> None:
    """Refuse, before anything is written, a list that cannot give a usable record file.

    Raises
    ------
    PackError
        ``root`` is no folder, the list has no usable line or repeats an index (readers would keep one
        record per key and silently drop the others), or none of its first files exists under ``root``.
    """
    if not os.path.isdir(root):
        raise PackError(f"image folder {root} does not exist")
    if not items:
        raise PackError(f"{lst_path} has no usable line ({len(bad)} malformed): nothing to pack")
    repeated = repeated_indices(items)
    if repeated:
        shown = ", ".join(f"{index} ({n} times)" for index, n in sorted(repeated.items())[:5])
        raise PackError(
            f"{lst_path} repeats {len(repeated)} indices, e.g. {shown}: every record needs its own key (two "
            "lists joined together?). Make one list with --list, or renumber the first column"
        )
    probe = items[:64]
    if not any(os.path.exists(os.path.join(root, item.path)) for item in probe):
        raise PackError(
            f"none of the first {len(probe)} files of {lst_path} exists under {root} (e.g. "
            f"{os.path.join(root, probe[0].path)}): is ROOT the folder the list was made from?"
        )


def _write_report(path: str, rows: List[Tuple[str, str, str]]) -> None:
    """``index, path, reason`` as tab-separated values; a field holding a tab or a quote is quoted."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(("index", "path", "reason"))
    writer.writerows(rows)
    _atomic_write_text(path, buf.getvalue())
    for index, where, reason in rows[:10]:
        logger.warning("skipped %s (%s): %s", where, index, reason)


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of MXNet's ``im2rec.py`` plus ``--no-upscale``, ``--check`` and ``--no-progress``."""
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Create an image list (--list) or pack the images of PREFIX*.lst into .rec/.idx files.",
    )
    parser.add_argument("prefix", help="prefix of input/output lst and rec files (or a folder of .lst files)")
    parser.add_argument("root", nargs="?", help="folder containing the images (not needed with --check)")
    parser.add_argument(
        "--check", action="store_true", help="only check PREFIX.rec/.idx (same as tools/rec_check.py PREFIX)"
    )
    cgroup = parser.add_argument_group("Options for creating image lists")
    cgroup.add_argument("--list", action="store_true", help="create PREFIX.lst by walking ROOT")
    cgroup.add_argument("--exts", nargs="+", default=list(DEFAULT_EXTS), help="accepted image extensions")
    cgroup.add_argument("--chunks", type=int, default=1, help="number of chunks")
    cgroup.add_argument("--train-ratio", type=float, default=1.0, help="ratio of images to use for training")
    cgroup.add_argument("--test-ratio", type=float, default=0, help="ratio of images to use for testing")
    cgroup.add_argument(
        "--recursive", action="store_true", help="walk sub-folders, one label per folder (sorted, from 0)"
    )
    cgroup.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="keep the walk order")
    rgroup = parser.add_argument_group("Options for creating database")
    rgroup.add_argument("--pass-through", action="store_true", help="store the file bytes as they are")
    rgroup.add_argument("--resize", type=int, default=0, help="set the shorter side to this size (0: keep)")
    rgroup.add_argument(
        "--no-upscale",
        action="store_true",
        help="leave images whose shorter side is <= --resize as they are (plain JPEGs: bytes copied)",
    )
    rgroup.add_argument("--center-crop", action="store_true", help="crop the central square first")
    rgroup.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100, or PNG compression 1-9")
    rgroup.add_argument(
        "--num-thread", type=int, default=1, help="encoding processes (records stay in list order)"
    )
    rgroup.add_argument(
        "--color",
        type=int,
        default=1,
        choices=[-1, 0, 1],
        help="1: 3-channel 8-bit colour (alpha dropped), 0: grayscale, -1: as stored",
    )
    rgroup.add_argument(
        "--encoding", type=str, default=".jpg", choices=[".jpg", ".png"], help="record format"
    )
    rgroup.add_argument("--pack-label", action="store_true", help="store every label of multi-label lines")
    rgroup.add_argument(
        "--mask-root",
        default=None,
        help="segmentation: pack each image with the PNG label map of the same relative name under this "
        "folder, image (JPEG) and mask (lossless PNG) in one record",
    )
    rgroup.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip JPEGs whose data libjpeg calls corrupt (packed with a warning by default)",
    )
    rgroup.add_argument(
        "--max-skipped",
        type=float,
        default=MAX_SKIPPED,
        help="largest share of list lines that may be skipped; above it (or with no record at all) the "
        "earlier .rec/.idx are kept and the exit status is 1",
    )
    common.add_progress(rgroup)
    args = parser.parse_args(argv)
    if not args.check and args.root is None:
        parser.error("ROOT (the image folder) is required unless --check is given")
    if args.resize < 0 or args.num_thread < 1:
        parser.error("--resize must be >= 0 and --num-thread >= 1")
    if not 0.0 <= args.max_skipped <= 1.0:
        parser.error("--max-skipped must be between 0 and 1")
    if args.encoding == ".jpg" and not 1 <= args.quality <= 100:
        parser.error("--quality must be 1-100 for JPEG")
    if args.encoding == ".png" and not 0 <= args.quality <= 9:
        parser.error("--quality must be 0-9 (compression level) for --encoding .png")
    args.prefix = os.path.abspath(args.prefix)
    if args.root is not None:
        args.root = os.path.abspath(args.root)
    return args


def _load_rec_check():
    from . import rec_check

    return rec_check


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 error, 2 some images skipped or left out of a list,
    130 / 143 stopped by SIGINT / SIGTERM). On 1, 130 and 143 no earlier file was replaced."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.check:
        return _load_rec_check().main([args.prefix])
    stop_on_sigterm()
    try:
        return _make_lists(args) if args.list else _pack(args)
    except (ListingError, PackError, OSError) as err:  # OSError: an unwritable output folder, a full disk
        logger.error("error: %s", err)
        return 1
    except KeyboardInterrupt as err:
        logger.error(stop_message("im2rec", err, "earlier files are untouched, no temporary file is left"))
        return exit_status(err)


def _make_lists(args: argparse.Namespace) -> int:
    others: Dict[str, int] = {}
    items, problems = list_images(args.root, args.recursive, args.exts, others)
    for path, reason in problems:
        logger.warning("left out %s: %s", path, reason)
    if others:
        counts = ", ".join(f"{n} {ext}" for ext, n in sorted(others.items(), key=lambda kv: (-kv[1], kv[0])))
        logger.info("not listed, not an image type (%s): %s", " ".join(args.exts), counts)
    if not items:
        logger.error("error: no files with extensions %s under %s", " ".join(args.exts), args.root)
        return 1
    written = split_lists(items, args.prefix, args.shuffle, args.chunks, args.train_ratio, args.test_ratio)
    logger.info("listed %d images in %s", len(items), ", ".join(written))
    if args.recursive:  # labels are folders: one names file for all the lists (splits, chunks) of PREFIX
        names_path = args.prefix + CLASSES_SUFFIX
        _atomic_write_text(names_path, "".join(name + "\n" for name in class_names(items, args.root)))
        logger.info("class names in label order in %s", names_path)
    if problems:
        logger.warning("left out %d entries of %s (listed above)", len(problems), args.root)
        return SKIP_EXIT_STATUS
    return 0


def _note_multi_label(lst: str, pack_label: bool) -> None:
    """Says which label is packed when lines of ``lst`` have several: the first one, without --pack-label
    (and the trainer uses one class per image either way)."""
    items, _ = read_list(lst)
    multi = [item for item in items if len(item.labels) > 1]
    if multi:
        logger.warning(
            "%d lines of %s have several labels (e.g. index %d: %s): %s",
            len(multi),
            lst,
            multi[0].index,
            " ".join(f"{label:g}" for label in multi[0].labels),
            "all are packed (--pack-label); scripts/train.py refuses such records"
            if pack_label
            else "only the FIRST label of each is packed (--pack-label stores them all)",
        )


def _pack(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.root):
        raise PackError(f"image folder {args.root} does not exist")
    lists = find_lists(args.prefix)
    if not lists:
        raise PackError(f"no .lst file starts with {args.prefix}: create one with --list first")
    if args.mask_root:  # image-mask pairs: resnest_gluon.data.seg_records
        from resnest_gluon.data.seg_records import pack_mask_list

        status = 0
        for lst in lists:
            written, skipped = pack_mask_list(lst, args.root, args.mask_root, quality=args.quality)
            logger.info("wrote %d image-mask pairs to %s", written, os.path.splitext(lst)[0] + ".rec")
            for line in skipped:
                logger.warning("left out %s", line)
            status = SKIP_EXIT_STATUS if skipped else status
        return status
    opts = EncodeOptions(
        resize=args.resize,
        center_crop=args.center_crop,
        quality=args.quality,
        color=args.color,
        encoding=args.encoding,
        pass_through=args.pass_through,
        pack_label=args.pack_label,
        no_upscale=args.no_upscale,
        skip_corrupt=args.skip_corrupt,
    )
    status = 0
    for lst in lists:
        logger.info("creating %s from %s (images in %s)", os.path.splitext(lst)[0] + ".rec", lst, args.root)
        _note_multi_label(lst, args.pack_label)
        stats = pack_list(
            lst,
            args.root,
            opts,
            args.num_thread,
            progress=common.progress_enabled(args),
            max_skipped=args.max_skipped,
        )
        logger.info(
            "wrote %d records (%d copied unchanged) to %s in %.1f s (%.0f images/s)",
            stats.written,
            stats.copied,
            stats.rec,
            stats.seconds,
            stats.images_per_second,
        )
        for index, path, warning in stats.corrupt[:10]:
            logger.warning("packed %s (%s) despite corrupt JPEG data: %s", path, index, warning)
        if stats.corrupt:
            logger.warning(
                "%d JPEGs have corrupt data (garbage blocks in the image); --skip-corrupt leaves them out",
                len(stats.corrupt),
            )
        if stats.skipped:
            logger.warning("skipped %d images; paths and reasons in %s", stats.skipped, stats.report)
            status = SKIP_EXIT_STATUS
    return status
