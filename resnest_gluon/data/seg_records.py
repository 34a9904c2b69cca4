"""Image-mask pairs in RecordIO: one record per pair, the image as JPEG and its label map as lossless PNG.

A record is MXNet's ``IRHeader`` followed by the two files back to back. The header's label vector holds
their sizes in bytes, ``[image_bytes, mask_bytes]`` (``flag = 2``), so a reader splits the payload without
parsing either file; the ``id`` is the pair's position in the list it was packed from. A mask is stored as
an 8-bit PNG when its values fit (ADE20K: 0-150), else a 16-bit one; PNG is lossless, so every label comes
back exactly, and the image is the JPEG it was (files that are already JPEG are stored unchanged).

    write_pair_records("train", [(img_rgb, mask), ...])          # arrays
    write_pair_records("train", [(jpeg_bytes, png_bytes), ...])  # already encoded (checked on the way)
    reader = PairRecords("train.rec")
    img, mask = reader.read(0)                                   # RGB uint8 HxWx3, mask HxW as stored

MXNet is imported inside the functions that need it, so packing tools start without it.
"""

import os
import struct
import threading
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

__all__ = [
    "PairRecords",
    "check_pair_records",
    "decode_pair",
    "encode_pair",
    "is_pair_record",
    "pack_pair",
    "unpack_pair",
    "write_pair_records",
]

_IR_FORMAT = "IfQQ"  # MXNet's IRHeader: flag, label, id, id2
_IR_SIZE = struct.calcsize(_IR_FORMAT)
_MAX_PART = 1 << 24  # sizes travel as float32 in the header: exact up to 2**24 bytes

Pair = Tuple[Union[np.ndarray, bytes], Union[np.ndarray, bytes]]


def encode_pair(img: np.ndarray, mask: np.ndarray, quality: int = 95) -> Tuple[bytes, bytes]:
    """An RGB uint8 image and its HxW integer label map as ``(JPEG bytes, PNG bytes)``; the PNG is 8-bit
    when every label fits in 0..255, else 16-bit."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    if mask.ndim != 2 or mask.shape != img.shape[:2]:
        raise ValueError(f"the mask {mask.shape} must be HxW of the image's size {img.shape[:2]}")
    if mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise ValueError("mask labels must lie in 0..65535 to be stored as PNG")
    dtype = np.uint8 if not mask.size or mask.max() < 256 else np.uint16
    ok_img, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    ok_mask, png = cv2.imencode(".png", np.ascontiguousarray(mask.astype(dtype)))
    if not (ok_img and ok_mask):
        raise ValueError("OpenCV could not encode the pair")
    return jpeg.tobytes(), png.tobytes()


def decode_pair(image: bytes, mask: bytes, where: str = "pair") -> Tuple[np.ndarray, np.ndarray]:
    """``(RGB uint8 image, HxW mask as stored)`` from the two encoded files; ``ValueError`` names ``where``
    when either does not decode, the mask has more than one channel, or the sizes differ."""
    if not len(image) or not len(mask):
        raise ValueError(f"{where}: the {'image' if not len(image) else 'mask'} is empty")
    img = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{where}: the image does not decode")
    labels = cv2.imdecode(np.frombuffer(mask, np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ValueError(f"{where}: the mask does not decode")
    if labels.ndim != 2:
        raise ValueError(f"{where}: the mask has {labels.shape[2]} channels, a label map has one")
    if labels.shape != img.shape[:2]:
        raise ValueError(f"{where}: image {img.shape[:2]} and mask {labels.shape} differ in size")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), labels


def pack_pair(key: int, image: bytes, mask: bytes) -> bytes:
    """One record's payload: the header (sizes in its label vector), the image, the mask."""
    if len(image) >= _MAX_PART or len(mask) >= _MAX_PART:
        raise ValueError("an image or mask of 16 MB or more does not fit a pair record")
    head = struct.pack(_IR_FORMAT, 2, 0.0, key, 0) + struct.pack("<2f", len(image), len(mask))
    return head + bytes(image) + bytes(mask)


def is_pair_record(payload: bytes) -> bool:
    """Whether a record's payload is laid out as :func:`pack_pair` writes it."""
    if len(payload) < _IR_SIZE + 8:
        return False
    flag = struct.unpack_from(_IR_FORMAT, payload)[0]
    if flag != 2:
        return False
    n_img, n_mask = struct.unpack_from("<2f", payload, _IR_SIZE)
    return n_img > 0 and n_mask > 0 and _IR_SIZE + 8 + int(n_img) + int(n_mask) == len(payload)


def unpack_pair(payload: bytes) -> Tuple[int, memoryview, memoryview]:
    """``(key, image bytes, mask bytes)`` of a record written by :func:`pack_pair`."""
    if not is_pair_record(payload):
        raise ValueError("not an image-mask pair record (its header does not give two sizes that add up)")
    key = struct.unpack_from(_IR_FORMAT, payload)[2]
    n_img = int(struct.unpack_from("<f", payload, _IR_SIZE)[0])
    view = memoryview(payload)[_IR_SIZE + 8 :]
    return key, view[:n_img], view[n_img:]


def _encoded(pair: Pair, where: str, check: bool) -> Tuple[bytes, bytes]:
    image, mask = pair
    if isinstance(image, np.ndarray):
        return encode_pair(image, mask)
    if check:
        decode_pair(image, mask, where)
    return bytes(image), bytes(mask)


def write_pair_records(
    prefix: str, pairs: Iterable[Pair], check: bool = True, names: Optional[List[str]] = None
) -> Tuple[int, List[str]]:
    """Writes ``prefix.rec`` and ``prefix.idx`` from ``pairs`` (arrays, or encoded files: checked to
    decode and to match in size unless ``check`` is off). A pair that fails is left out and its name
    (from ``names``, else its position) is returned. The files appear under their names only when
    complete: a stopped run leaves no half-written ``.rec`` behind.

    Returns
    -------
    (int, list of str)
        Records written, and the pairs left out with the reason.
    """
    import mxnet as mx

    rec, idx = prefix + ".rec", prefix + ".idx"
    tmp_rec, tmp_idx = rec + ".tmp", idx + ".tmp"
    writer = mx.recordio.MXIndexedRecordIO(tmp_idx, tmp_rec, "w")
    written, skipped = 0, []
    try:
        for i, pair in enumerate(pairs):
            where = names[i] if names else f"pair {i}"
            try:
                image, mask = _encoded(pair, where, check)
            except ValueError as err:
                skipped.append(str(err) if where in str(err) else f"{where}: {err}")
                continue
            writer.write_idx(written, pack_pair(i, image, mask))
            written += 1
    except BaseException:
        writer.close()
        for path in (tmp_rec, tmp_idx):
            if os.path.exists(path):
                os.remove(path)
        raise
    writer.close()
    os.replace(tmp_rec, rec)
    os.replace(tmp_idx, idx)
    return written, skipped


class PairRecords:
    """Random access to the pairs of a ``.rec`` written by :func:`write_pair_records` (its ``.idx`` beside
    it). Safe from several threads: the file is read under a lock, the decoding runs outside it."""

    def __init__(self, rec_path: str):
        import mxnet as mx

        idx = os.path.splitext(rec_path)[0] + ".idx"
        for path in (rec_path, idx):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found")
        self.rec_path = rec_path
        self._record = mx.recordio.MXIndexedRecordIO(idx, rec_path, "r")
        self.keys = sorted(self._record.keys)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def read_raw(self, key: int) -> bytes:
        with self._lock:
            return self._record.read_idx(key)

    def read(self, key: int) -> Tuple[np.ndarray, np.ndarray]:
        """The pair stored under ``key`` as ``(RGB uint8 image, HxW mask as stored)``."""
        try:
            _, image, mask = unpack_pair(self.read_raw(key))
        except ValueError as err:
            raise ValueError(f"record {key} of {self.rec_path}: {err}") from err
        return decode_pair(image, mask, f"record {key} of {self.rec_path}")

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        return (self.read(k) for k in self.keys)

    def close(self) -> None:
        self._record.close()


def check_pair_records(rec_path: str) -> dict:
    """Reads and decodes every pair of ``rec_path``: ``{"records": n, "ok": n, "bad": [message, ...],
    "mask_values": sorted labels seen}``."""
    reader = PairRecords(rec_path)
    bad, values = [], set()
    try:
        for key in reader.keys:
            try:
                _, mask = reader.read(key)
            except ValueError as err:
                bad.append(str(err))
                continue
            values.update(np.unique(mask).tolist())
    finally:
        reader.close()
    return dict(records=len(reader.keys), ok=len(reader.keys) - len(bad), bad=bad, mask_values=sorted(values))


def pair_parts(label, data: bytes) -> Optional[Tuple[bytes, bytes]]:
    """``(image, mask)`` bytes of a record whose header label vector is ``label`` and whose data follows it,
    when it is laid out as :func:`pack_pair` writes it; None for any other record (a classification one)."""
    sizes = np.asarray(label, np.float64).ravel()
    if sizes.size != 2 or sizes.min() <= 0 or int(sizes[0]) + int(sizes[1]) != len(data):
        return None
    return data[: int(sizes[0])], data[int(sizes[0]) :]


def pair_problem(image: bytes, mask: bytes) -> Optional[str]:
    """What is wrong with a pair (image or mask not decoding, a mask with channels, sizes differing), or
    None."""
    try:
        decode_pair(image, mask, "pair")
    except ValueError as err:
        return str(err).replace("pair: ", "", 1)
    return None


def pack_mask_list(
    lst_path: str, root: str, mask_root: str, prefix: Optional[str] = None, quality: int = 95
) -> Tuple[int, List[str]]:
    """Packs the images of an im2rec ``.lst`` (paths relative to ``root``) with their masks: the PNG of the
    same relative name under ``mask_root``. JPEG images are stored unchanged, others re-encoded as JPEG.
    Writes ``prefix`` (default: the list's) ``.rec``/``.idx``; returns records written and pairs left out."""
    from .lst import read_list

    items, _ = read_list(lst_path)

    def mask_of(item):
        return os.path.join(mask_root, os.path.splitext(item.path)[0] + ".png")

    missing = [f"{item.path}: no mask {mask_of(item)}" for item in items if not os.path.isfile(mask_of(item))]
    items = [item for item in items if os.path.isfile(mask_of(item))]
    names = [item.path for item in items]

    def pairs():
        for item in items:
            try:
                with open(os.path.join(root, item.path), "rb") as f:
                    image = f.read()
                with open(mask_of(item), "rb") as f:
                    mask = f.read()
            except OSError:
                image, mask = b"", b""
            if not image.startswith(b"\xff\xd8"):  # not a JPEG: re-encode it
                img = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
                if img is not None:
                    image = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
            yield image, mask

    written, skipped = write_pair_records(prefix or os.path.splitext(lst_path)[0], pairs(), names=names)
    return written, missing + skipped
