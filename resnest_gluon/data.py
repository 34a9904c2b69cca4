"""ImageNet input pipelines over RecordIO files (``.rec`` + ``.idx``), sharded across workers.

The training recipe is that of ResNeSt (Zhang et al., arXiv:2004.08955, section 5.1): random resized crop
(area 8-100 %, aspect ratio 3/4-4/3), horizontal flip, colour jitter 0.4 (brightness, contrast,
saturation), AlexNet-style PCA lighting noise 0.1, mean/std normalisation; optionally AutoAugment
(Cubuk et al. 2019), label smoothing and mixup. Validation resizes the shorter side to ``crop / 0.875``
and takes the centre crop (bicubic for the 320/416 px models).

Two back ends give the same :class:`mxnet.io.DataIter` interface:

* ``mx.io.ImageRecordIter`` (C++ decoding threads): the default for validation, an option for training;
* a Python path (OpenCV decoding and transforms in a pool of threads): the default for training, and the
  only one for what the C++ iterator cannot do (AutoAugment). It needs about 40 % of the CPU time per
  image, because the JPEG decoder bundled in MXNet's pip wheel is about 3x slower than opencv-python's
  (``scripts/bench_pipeline.py`` measures both). Per image it does little besides the decode: crop
  chosen from the JPEG header (decoded at 1/2-1/8 size when the crop allows), one ``cv2.resize`` of the
  crop, and one fused colour/normalisation pass into a reused batch buffer; the random numbers of a
  batch are drawn in a few vectorised calls. With ``ctx=`` the colour pass runs instead as one batched
  step on that context (a GPU).

Both shard a file the way MXNet's indexed RecordIO splitter does: records sorted by file offset, part
``k`` of ``n`` gets the ``k``-th run of ``ceil(N / n)`` records, so the parts are disjoint and together
cover the file exactly once. Every batch has ``.pad`` set: the last ``pad`` samples of the last batch of
an epoch are repeats of real ones, to be ignored by metrics (the training loop may keep them).
"""

import logging
import math
import mmap
import os
import struct
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import cv2
import mxnet as mx
import numpy as np

from .autoaugment import ImageNetPolicy

__all__ = [
    "MEAN",
    "STD",
    "num_records",
    "read_index",
    "shard_bounds",
    "train_iter",
    "val_iter",
    "smooth_one_hot",
    "mixup",
]

logger = logging.getLogger(__name__)

MEAN = (123.68, 116.779, 103.939)  # RGB, 0-255 scale
STD = (58.393, 57.12, 57.375)

# AlexNet's PCA of ImageNet RGB pixels (0-255 scale), used for lighting noise.
_EIGVAL = np.array([55.46, 4.794, 1.148], np.float32)
_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)

_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
# ImageRecordIter's inter_method codes.
_CPP_INTERP = {"bilinear": 1, "bicubic": 2}


# ----------------------------------------------------------------------------------------------- files
def _idx_path(rec_path: str) -> str:
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
    idx_path = _idx_path(rec_path)
    if not os.path.isfile(rec_path):
        raise _missing("record file", rec_path)
    if not os.path.isfile(idx_path):
        raise _missing("index file", idx_path, f"(for {rec_path!r}) not found")
    try:
        with open(rec_path, "rb"):
            pass
        with open(idx_path) as f:
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
                "index file", idx_path, f"is unreadable (line {lineno}: {line[:60]!r} is not 'key offset')"
            ) from None
    if not pairs:
        raise _missing("index file", idx_path, "is empty")
    pairs.sort(key=lambda p: p[1])
    size = os.path.getsize(rec_path)
    if pairs[-1][1] >= size:
        raise _missing(
            "index file",
            idx_path,
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


def _shard(rec_path: str, batch_size: int, num_parts: int, part_index: int) -> List[Tuple[int, int]]:
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


# ------------------------------------------------------------------------------------------ iterators
class _ShardIter(mx.io.DataIter):
    """Common part: a fixed number of samples per epoch, ``.pad`` on the last batch, padding repeats."""

    # Whether ``_next`` already fills the padded slots of the last batch with repeats of its samples.
    _fills_pad = False

    def __init__(self, batch_size: int, num_samples: int, data_shape, dtype: str):
        super().__init__(batch_size)
        self.num_samples = num_samples
        self.num_batches = -(-num_samples // batch_size)
        self._provide_data = [mx.io.DataDesc("data", (batch_size,) + tuple(data_shape), np.dtype(dtype).type)]
        self._provide_label = [mx.io.DataDesc("softmax_label", (batch_size,), np.float32)]
        self._batch = 0

    @property
    def provide_data(self):
        return self._provide_data

    @property
    def provide_label(self):
        return self._provide_label

    def __len__(self) -> int:
        return self.num_batches

    def reset(self):
        self._batch = 0
        self._reset()

    def _pad(self) -> int:
        if self._batch == self.num_batches - 1:
            return self.num_batches * self.batch_size - self.num_samples
        return 0

    def next(self) -> mx.io.DataBatch:
        if self._batch >= self.num_batches:
            raise StopIteration
        pad = self._pad()
        data, label = self._next()
        if pad and not self._fills_pad:
            # Padded slots may hold garbage (ImageRecordIter leaves stale or uninitialised memory there):
            # overwrite them with copies of the real samples so that nothing downstream sees NaN or
            # out-of-range labels, e.g. BatchNorm statistics when a loop does not slice.
            real = self.batch_size - pad
            take = mx.nd.array(np.r_[np.arange(real), np.arange(pad) % real], dtype="int32")
            data, label = mx.nd.take(data, take), mx.nd.take(label, take)
        self._batch += 1
        return mx.io.DataBatch(
            data=[data],
            label=[label],
            pad=pad,
            provide_data=self._provide_data,
            provide_label=self._provide_label,
        )

    def _reset(self):
        raise NotImplementedError

    def _next(self):
        raise NotImplementedError


class _RecordIter(_ShardIter):
    """``mx.io.ImageRecordIter`` with the epoch length and ``.pad`` computed from the index.

    ``round_batch=False`` keeps every epoch to exactly the shard, but in MXNet 1.9.1 the C++ iterator then
    reports ``pad=0`` and leaves the tail of the last batch undefined; this wrapper fixes both.
    """

    def __init__(self, num_samples: int, dtype: str, **kwargs):
        # ImageRecordIter2 only makes float32, int32 and (u)int8 data; other types are cast here.
        self._dtype = dtype
        self._it = mx.io.ImageRecordIter(round_batch=False, verbose=False, dtype="float32", **kwargs)
        super().__init__(kwargs["batch_size"], num_samples, kwargs["data_shape"], dtype)

    def _reset(self):
        self._it.reset()

    def _next(self):
        try:
            batch = self._it.next()
        except StopIteration:
            raise RuntimeError(
                f"ImageRecordIter ended after {self._batch} of {self.num_batches} batches; "
                "is the .idx out of date with the .rec?"
            ) from None
        data, label = batch.data[0], batch.label[0]
        if data.dtype != np.dtype(self._dtype):
            data = data.astype(self._dtype)
        if label.dtype != np.float32:
            label = label.astype("float32")
        return data, label


_RECORDIO_MAGIC = 0xCED7230A


class _RecordReader:
    """Reads records by key from a memory map of the ``.rec`` and decodes them with OpenCV.

    The map makes reads free of system calls and safe from any number of threads; a record that
    RecordIO had to split into parts (its payload contained the magic word) is read the ordinary way.
    """

    def __init__(self, rec_path: str, offsets: dict):
        self.rec_path, self._offsets = rec_path, offsets
        with open(rec_path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._local = threading.local()

    def _raw(self, key: int) -> memoryview:
        offset = self._offsets[key]
        magic, lrec = struct.unpack_from("<II", self._map, offset)
        if magic != _RECORDIO_MAGIC:
            raise ValueError(
                f"{self.rec_path!r}: no record at offset {offset} (key {key}); is the .idx stale?"
            )
        if lrec >> 29 == 0:
            return memoryview(self._map)[offset + 8 : offset + 8 + (lrec & ((1 << 29) - 1))]
        record = getattr(self._local, "record", None)
        if record is None:
            record = self._local.record = mx.recordio.MXIndexedRecordIO(
                _idx_path(self.rec_path), self.rec_path, "r"
            )
        return memoryview(record.read_idx(key))

    def read_raw(self, key: int) -> Tuple[float, np.ndarray]:
        """The label and the encoded image (a uint8 view into the map, not a copy)."""
        raw = self._raw(key)
        flag, label, _, _ = struct.unpack_from(mx.recordio._IR_FORMAT, raw)
        start = mx.recordio._IR_SIZE
        if flag > 0:  # a label vector precedes the image; the first entry is the class
            label = float(np.frombuffer(raw, np.float32, 1, start)[0])
            start += 4 * flag
        return float(label), np.frombuffer(raw, np.uint8, offset=start)

    def read(self, key: int) -> Tuple[float, np.ndarray]:
        label, payload = self.read_raw(key)
        return label, _decode(payload, cv2.IMREAD_COLOR, self.rec_path, key)


def _decode(payload: np.ndarray, flags: int, rec_path: str, key: int) -> np.ndarray:
    img = cv2.imdecode(payload, flags)
    if img is None:
        raise ValueError(
            f"record {key} of {rec_path!r} is not a decodable image; `python tools/rec_check.py "
            f"{os.path.splitext(rec_path)[0]}` lists every such record, and tools/im2rec.py repacks the "
            "images, skipping undecodable files"
        )
    return img


class _BufferPool:
    """Batch buffers reused once nothing but the pool references them.

    A fresh 38 MB batch buffer is a fresh memory map whose page faults cost ~0.07 ms per 224 px image;
    the batches are handed to MXNet without a copy (``from_numpy`` holds a reference to the buffer until
    MXNet frees the array), so the reference count says when a buffer is free again.
    """

    def __init__(self, shape: Tuple[int, ...], dtype, keep: int):
        self._shape, self._dtype, self._keep = shape, dtype, keep
        self._buffers: List[np.ndarray] = []
        self._lock = threading.Lock()

    def get(self) -> np.ndarray:
        with self._lock:
            for buf in self._buffers:
                # References: the list, ``buf`` and getrefcount's argument; any more is a user.
                if sys.getrefcount(buf) <= 3:
                    buf.flags.writeable = True  # from_numpy marked it read-only while MXNet held it
                    return buf
            buf = np.empty(self._shape, self._dtype)
            if len(self._buffers) < self._keep:
                self._buffers.append(buf)
            return buf


class _ThreadIter(_ShardIter):
    """The Python path: OpenCV transforms of a shard, batches assembled by a pool of threads.

    Threads rather than DataLoader worker processes: OpenCV and numpy release the GIL for the heavy
    work, and a batch then needs no trip through shared memory (MXNet's DataLoader spends about as
    long on that as on the JPEG decode). Each batch has its own generator seeded by
    ``(seed, epoch, batch)``, so batches do not depend on the number of threads or their timing.
    The last batch of an epoch is planned with repeats of its first samples in the padded slots.
    """

    _fills_pad = True

    def __init__(
        self, rec_path, shard, transform, batch_size, data_shape, *, shuffle, seed, threads, dtype, ctx=None
    ):
        super().__init__(batch_size, len(shard), data_shape, dtype)
        self._ctx = ctx
        self._reader = _RecordReader(rec_path, dict(shard))
        self._keys, self._transform, self._shape = [k for k, _ in shard], transform, tuple(data_shape)
        self._shuffle, self._seed, self._threads, self._dtype = shuffle, seed, threads, dtype
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="resnest-data") if threads > 0 else None
        # Batches in flight (threads + 1), the one the caller holds, and one being freed by MXNet.
        shape, keep = (batch_size,) + self._shape, threads + 3
        if ctx is None:
            self._buffers = _BufferPool(shape, np.float32, keep)
            self._out_buffers = None if np.dtype(dtype) == np.float32 else _BufferPool(shape, dtype, keep)
        else:  # uint8 NHWC crops; the colour step runs on ``ctx``
            self._buffers = _BufferPool((batch_size,) + self._shape[1:] + self._shape[:1], np.uint8, keep)
            self._out_buffers = None
        self._epoch = -1
        self._pending: deque = deque()
        self._plan: deque = deque()
        self._reset()

    def _reset(self):
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._epoch += 1
        order = np.arange(self.num_samples)
        if self._shuffle:
            order = np.random.default_rng([self._seed, self._epoch]).permutation(self.num_samples)
        # The last batch is completed with repeats of its first samples (reported through ``pad``).
        order = np.resize(order, self.num_batches * self.batch_size).reshape(self.num_batches, -1)
        tail = self.num_samples - (self.num_batches - 1) * self.batch_size
        order[-1, tail:] = order[-1, np.arange(self.batch_size - tail) % tail]
        self._plan = deque((positions, batch) for batch, positions in enumerate(order))

    def _load(self, positions: np.ndarray, epoch: int, batch: int) -> Tuple[np.ndarray, np.ndarray]:
        data = self._buffers.get()
        label = np.empty(len(positions), np.float32)
        if self._ctx is None:
            scratch = np.empty(self._shape[1:] + self._shape[:1], np.float32)
        else:
            affines = np.empty((len(positions), 3, 4), np.float32)
        # One generator per batch (seeding one costs as much as a 224 px colour transform), and every
        # random number of the batch drawn in a few vectorised calls: the augmentations depend on
        # (seed, epoch, batch), never on the threads or their timing.
        rng = np.random.default_rng([self._seed, epoch, batch])
        draws = self._transform.draw(rng, len(positions))
        for j, position in enumerate(positions):
            key = self._keys[position]
            label[j], payload = self._reader.read_raw(key)
            crop, affine = self._transform(payload, draws[j], rng, (self._reader.rec_path, key))
            if self._ctx is None:
                _write_chw(crop, affine, data[j], scratch)
            else:
                data[j] = crop
                affines[j] = affine
        if self._ctx is not None:
            return (data, affines), label
        if self._out_buffers is not None:
            out = self._out_buffers.get()
            np.copyto(out, data, casting="unsafe")
            data = out
        return data, label

    def _next(self):
        if self._pool is None:
            positions, batch = self._plan.popleft()
            data, label = self._load(positions, self._epoch, batch)
        else:
            # Keep one batch per thread (plus one) in flight.
            while self._plan and len(self._pending) <= self._threads:
                positions, batch = self._plan.popleft()
                self._pending.append(self._pool.submit(self._load, positions, self._epoch, batch))
            data, label = self._pending.popleft().result()
        if self._ctx is not None:
            return _colour_on_device(*data, self._ctx, self._dtype), mx.nd.array(label, dtype="float32")
        # The batch buffer is handed over to MXNet, not copied (the copy alone costs ~0.1 ms per image).
        return mx.nd.from_numpy(data, zero_copy=True), mx.nd.array(label, dtype="float32")

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            try:
                pool.shutdown(wait=False, cancel_futures=True)
            except TypeError:  # Python < 3.9
                pool.shutdown(wait=False)


def _colour_on_device(crops: np.ndarray, affines: np.ndarray, ctx: mx.Context, dtype: str) -> mx.nd.NDArray:
    """``(B, H, W, 3)`` uint8 crops and their ``(B, 3, 4)`` colour maps -> ``(B, 3, H, W)`` on ``ctx``.

    One batched step: a quarter of the float bytes cross to the device, and the per-pixel work
    (colour jitter, lighting, normalisation, HWC -> CHW) is a few batched operators there.
    """
    b, h, w, _ = crops.shape
    x = mx.nd.array(crops, ctx=ctx, dtype=np.uint8).astype("float32").reshape((b, h * w, 3))
    a = mx.nd.array(affines, ctx=ctx)
    y = mx.nd.batch_dot(x, mx.nd.slice_axis(a, axis=2, begin=0, end=3), transpose_b=True)
    y = mx.nd.broadcast_add(y, mx.nd.slice_axis(a, axis=2, begin=3, end=4).reshape((b, 1, 3)))
    y = mx.nd.transpose(y.reshape((b, h, w, 3)), axes=(0, 3, 1, 2))
    return y if np.dtype(dtype) == np.float32 else y.astype(dtype)


# ------------------------------------------------------------------------------- Python transforms
def _resize_short(img: np.ndarray, size: int, interp: int) -> np.ndarray:
    h, w = img.shape[:2]
    # Same integer arithmetic as ImageRecordIter's ``resize``, so both paths crop the same pixels.
    nh, nw = (size * h // w, size) if h > w else (size, size * w // h)
    return cv2.resize(img, (nw, nh), interpolation=interp)


def _write_chw(img: np.ndarray, affine: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """``out[c] = affine[c, :3] . img[..., :] + affine[c, 3]``: uint8 HWC in, float32 CHW written in place.

    ``scratch`` is a float32 array of the image's shape. cv2.transform rather than a numpy matmul
    (numpy's BLAS threads fight OpenCV's for the cores), and cv2.split into the output planes rather
    than a transposed copy (0.09 instead of 0.12 ms for a 224 px image).
    """
    cv2.transform(img.astype(np.float32), affine, dst=scratch)
    cv2.split(scratch, list(out))


def _random_resized_crop(img, size, rng, interp, area=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """Reference random resized crop (one draw at a time); the benchmark's decode limit uses it."""
    h, w = img.shape[:2]
    for _ in range(10):
        target = rng.uniform(*area) * h * w
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return cv2.resize(img[y : y + ch, x : x + cw], (size, size), interpolation=interp)
    # Fall back to the largest centred square.
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(img[y : y + s, x : x + s], (size, size), interpolation=interp)


_CROP_TRIES = 10


def _crop_box(h: int, w: int, areas: Sequence[float], log_ratios: Sequence[float], py: float, px: float):
    """``(y, x, ch, cw)`` of a random resized crop of an ``h x w`` image from pre-drawn numbers.

    ``areas`` and ``log_ratios`` are the candidate area fractions and log aspect ratios (the first that
    fits wins), ``py, px`` in ``[0, 1)`` place the crop; the largest centred square if none fits.
    """
    for area, log_ratio in zip(areas, log_ratios):
        target, aspect = area * h * w, math.exp(log_ratio)
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(py * (h - ch + 1)), int(px * (w - cw + 1)), ch, cw
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(payload: np.ndarray) -> Optional[Tuple[int, int]]:
    """``(height, width)`` from a JPEG's frame header, without decoding; None if not a (readable) JPEG."""
    buf = payload.data
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    i = 2
    while i + 9 < n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF_MARKERS:
            h, w = struct.unpack_from(">HH", buf, i + 5)
            return (h, w) if h and w else None
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        i += 2 + struct.unpack_from(">H", buf, i + 2)[0]
    return None


# Decoding at 1/2, 1/4, 1/8 of the size in libjpeg's DCT (2-3x faster than a full decode then resize).
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


_GRAY = (0.299, 0.587, 0.114)
_EIGVAL_LIST = _EIGVAL.tolist()
_EIGVEC_LIST = _EIGVEC.tolist()


def _colour_affine(
    mean_pixel: Sequence[float],
    jitter: float,
    lighting: float,
    rng: Optional[np.random.Generator],
    bgr: bool = False,
) -> np.ndarray:
    """One ``(3, 4)`` per-pixel affine map: colour jitter, lighting and normalisation together.

    Brightness (``a x``), contrast (``a x + (1 - a) mean(grey)``) and saturation (``a x + (1 - a) grey(x)``),
    each with ``a ~ U(1 - jitter, 1 + jitter)``, in random order and unclipped as in MXNet's iterators, the
    AlexNet PCA lighting shift and ``(x - MEAN) / STD`` are all affine in the pixel, and contrast's image
    mean follows the same map; so the whole chain is one matrix, applied in a single pass.
    ``mean_pixel`` is the image's mean RGB; with ``bgr`` the map takes BGR pixels (as OpenCV decodes them)
    and still gives normalised RGB. Draws from ``rng`` and builds the map step by step, one image at a
    time: the reference for :func:`_affine_parts`, which does a whole batch at once.
    """
    m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    t = [0.0, 0.0, 0.0]
    g0, g1, g2 = _GRAY
    if jitter > 0:
        order, alphas = rng.permutation(3).tolist(), rng.uniform(1.0 - jitter, 1.0 + jitter, 3).tolist()
        for op, a in zip(order, alphas):
            if op == 0:  # brightness
                m, t = [[a * v for v in row] for row in m], [a * v for v in t]
            elif op == 1:  # contrast: blend with the mean grey of the image as it is now
                now = [sum(row[k] * mean_pixel[k] for k in range(3)) + t[i] for i, row in enumerate(m)]
                shift = (1.0 - a) * (g0 * now[0] + g1 * now[1] + g2 * now[2])
                m, t = [[a * v for v in row] for row in m], [a * v + shift for v in t]
            else:  # saturation: blend each pixel with its grey
                grey_row = [(1.0 - a) * (g0 * m[0][k] + g1 * m[1][k] + g2 * m[2][k]) for k in range(3)]
                shift = (1.0 - a) * (g0 * t[0] + g1 * t[1] + g2 * t[2])
                m = [[a * row[k] + grey_row[k] for k in range(3)] for row in m]
                t = [a * v + shift for v in t]
    if lighting > 0:
        noise = rng.standard_normal(3).tolist()
        w = [lighting * z * e for z, e in zip(noise, _EIGVAL_LIST)]
        t = [v + sum(_EIGVEC_LIST[i][k] * w[k] for k in range(3)) for i, v in enumerate(t)]
    rows = [[v / s for v in row] + [(ti - mu) / s] for row, ti, mu, s in zip(m, t, MEAN, STD)]
    if bgr:
        rows = [row[2::-1] + row[3:] for row in rows]
    return np.array(rows, np.float32)


def _affine_parts(
    jitter: float,
    lighting: float,
    order: np.ndarray,
    alphas: np.ndarray,
    noise: np.ndarray,
    bgr: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`_colour_affine` for ``n`` images at once, before their mean colours are known.

    Every jitter operation maps a pixel to ``a x + 1 (c g . x) + t`` (``g`` the grey weights), and only
    contrast's shift depends on the image, linearly in its mean colour ``mu``; so image ``i``'s map is
    ``base[i]`` with ``k[i] @ mu`` (``mu`` in RGB) added to its last column. ``order``, ``alphas``,
    ``noise`` are ``(n, 3)``. Returns float32 ``base`` ``(n, 3, 4)`` and ``k`` ``(n, 3, 3)``.
    """
    n = len(order)
    g = np.array(_GRAY)
    m = np.tile(np.eye(3), (n, 1, 1))
    t, k = np.zeros((n, 3)), np.zeros((n, 3, 3))
    if jitter > 0:
        for step in range(3):
            op, a = order[:, step], alphas[:, step]
            a1, a3, b3 = a[:, None], a[:, None, None], (1.0 - a)[:, None, None]
            grey_t = ((1.0 - a) * (t @ g))[:, None]  # contrast and saturation shift t alike
            new_k = np.where(
                (op == 1)[:, None, None],
                a3 * k + b3 * (g @ (m + k))[:, None, :],  # contrast: the grey mean of the image as it is
                np.where((op == 2)[:, None, None], a3 * k + b3 * (g @ k)[:, None, :], a3 * k),
            )
            new_m = np.where((op == 2)[:, None, None], a3 * m + b3 * (g @ m)[:, None, :], a3 * m)
            t = np.where((op == 0)[:, None], a1 * t, a1 * t + grey_t)
            m, k = new_m, new_k
    if lighting > 0:
        t = t + (lighting * noise * _EIGVAL) @ _EIGVEC.T
    std, mean = np.array(STD)[:, None], np.array(MEAN)
    m, k, t = m / std, k / std, (t - mean) / std[:, 0]
    if bgr:
        m = m[:, :, ::-1]
    return np.concatenate([m, t[:, :, None]], axis=2).astype(np.float32), k.astype(np.float32)


class _TrainTransform:
    """Encoded image -> (augmented uint8 BGR crop, its ``(3, 4)`` colour + normalisation map).

    The crop is chosen from the JPEG header's size before decoding, so that a crop which would still be
    at least ``size`` pixels after a 2/4/8-fold reduction is decoded at that reduced size
    (``reduced_decode``); the crop ROI then goes through one ``cv2.resize`` straight to ``size``.
    """

    def __init__(
        self,
        size: int,
        jitter: float,
        lighting: float,
        auto_aug: bool,
        interpolation: str,
        reduced_decode: bool = True,
        mirror: bool = True,
        min_area: float = 0.08,
    ):
        self.size, self.jitter, self.lighting = size, jitter, lighting
        self.mirror, self.min_area = mirror, min_area
        self.policy = ImageNetPolicy() if auto_aug else None
        self.interp = _INTERP[interpolation]
        self.reduced_decode = reduced_decode

    def draw(self, rng: np.random.Generator, n: int) -> List[tuple]:
        """Every random number of ``n`` images in a few vectorised calls, and their colour maps but for
        the image mean (:func:`_affine_parts`); per image ``(areas, log_ratios, (y, x, flip), base, k)``."""
        areas = rng.uniform(self.min_area, 1.0, (n, _CROP_TRIES)).tolist()
        log_ratios = rng.uniform(math.log(3.0 / 4.0), math.log(4.0 / 3.0), (n, _CROP_TRIES)).tolist()
        place = rng.random((n, 3)).tolist()  # y, x, flip
        order = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)
        alphas = rng.uniform(1.0 - self.jitter, 1.0 + self.jitter, (n, 3))
        noise = rng.standard_normal((n, 3))
        # OpenCV decodes BGR; AutoAugment works on (and hands back) RGB.
        base, k = _affine_parts(self.jitter, self.lighting, order, alphas, noise, bgr=self.policy is None)
        return list(zip(areas, log_ratios, place, base, k))

    def __call__(self, payload: np.ndarray, draw: tuple, rng: np.random.Generator, where=("", 0)):
        areas, log_ratios, (py, px, flip), base, k = draw
        size, factor, img = self.size, 1, None
        hw = _jpeg_size(payload) if self.reduced_decode else None
        if hw is not None:
            y, x, ch, cw = _crop_box(*hw, areas, log_ratios, py, px)
            for factor, flags in _REDUCED:
                if ch // factor >= size and cw // factor >= size:
                    img = _decode(payload, flags, *where)
                    # An EXIF rotation would change the shape: then decode in full below.
                    if img.shape[:2] == (-(-hw[0] // factor), -(-hw[1] // factor)):
                        y, x, ch, cw = y // factor, x // factor, ch // factor, cw // factor
                    else:
                        img = None
                    break
        if img is None:
            img = _decode(payload, cv2.IMREAD_COLOR, *where)
            if img.shape[:2] != hw:
                y, x, ch, cw = _crop_box(*img.shape[:2], areas, log_ratios, py, px)
        img = cv2.resize(img[y : y + ch, x : x + cw], (size, size), interpolation=self.interp)
        if self.mirror and flip < 0.5:
            img = cv2.flip(img, 1)
        if self.policy is not None:
            # AutoAugment's colour operations are defined on RGB.
            img = self.policy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), rng)
            mean_rgb = _mean_pixel(img)
        else:
            mean_rgb = _mean_pixel(img)[::-1]
        affine = base.copy()
        affine[:, 3] += k.dot(mean_rgb)
        return img, affine


def _mean_pixel(img: np.ndarray) -> List[float]:
    """Mean colour (in the image's channel order) of every 8th row: plenty for contrast, and half the
    cost of every 4th (0.008 ms for a 224 px crop)."""
    return list(cv2.mean(img[::8])[:3])


class _ValTransform:
    """Encoded image -> (shorter side resized and centre-cropped, the normalisation map)."""

    def __init__(self, crop: int, resize: int, interpolation: str):
        self.crop, self.resize, self.interp = crop, resize, _INTERP[interpolation]
        self.affine = _colour_affine((0.0, 0.0, 0.0), 0.0, 0.0, None, bgr=True)

    def draw(self, rng: np.random.Generator, n: int) -> list:
        return [None] * n

    def __call__(self, payload: np.ndarray, draw, rng: np.random.Generator, where=("", 0)):
        img = _resize_short(_decode(payload, cv2.IMREAD_COLOR, *where), self.resize, self.interp)
        h, w = img.shape[:2]
        y, x = (h - self.crop) // 2, (w - self.crop) // 2
        return img[y : y + self.crop, x : x + self.crop], self.affine


# ----------------------------------------------------------------------------------------- public API
def _interp_name(interpolation: str, size: int) -> str:
    if interpolation == "auto":
        # The paper's 320 and 416 px models are evaluated with bicubic resizing.
        return "bicubic" if size >= 320 else "bilinear"
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be 'auto', 'bilinear' or 'bicubic', got {interpolation!r}")
    return interpolation


_INT31 = 2**31 - 1  # ImageRecordIter's seeds are C ints


def _cpp_iter(rec_path, num_samples, size, batch_size, num_parts, part_index, threads, dtype, **options):
    """A :class:`_RecordIter` over a shard of ``num_samples`` records: normalised ``size`` px crops."""
    return _RecordIter(
        num_samples,
        dtype,
        path_imgrec=rec_path,
        path_imgidx=_idx_path(rec_path),
        data_shape=(3, size, size),
        batch_size=batch_size,
        num_parts=num_parts,
        part_index=part_index,
        preprocess_threads=max(1, threads),
        **options,
        **_norm_kwargs(),
    )


def _worker_seed(seed: int, part_index: int) -> int:
    """A non-negative 31-bit seed for this worker's augmentations, different for every worker."""
    return (seed * 7919 + part_index) % _INT31


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "cpp", "python"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'python', got {backend!r}")


def _norm_kwargs() -> dict:
    return dict(mean_r=MEAN[0], mean_g=MEAN[1], mean_b=MEAN[2], std_r=STD[0], std_g=STD[1], std_b=STD[2])


def train_iter(
    rec_path: str,
    batch_size: int,
    input_size: int = 224,
    *,
    num_parts: int = 1,
    part_index: int = 0,
    threads: int = 4,
    seed: int = 0,
    auto_aug: bool = False,
    jitter: float = 0.4,
    lighting: float = 0.1,
    mirror: bool = True,
    min_area: float = 0.08,
    dtype: str = "float32",
    backend: str = "auto",
    ctx: Optional[mx.Context] = None,
    reduced_decode: bool = True,
    opencv_threads: Optional[int] = 1,
) -> mx.io.DataIter:
    """Shuffled, augmented training batches of this worker's shard of ``rec_path``.

    Parameters
    ----------
    rec_path : str
        ``.rec`` file with its ``.idx`` beside it.
    batch_size : int
        Samples per batch on this worker.
    input_size : int
        Side of the square crops.
    num_parts, part_index : int
        Number of workers and this worker's rank; the shards are disjoint and cover the file.
    threads : int
        Decoding threads (C++ iterator) or worker threads (Python path; 0 = in the calling thread).
    seed : int
        Seed of the shuffling and augmentations (offset by ``part_index`` for augmentations).
    auto_aug : bool
        Add AutoAugment's ImageNet policy (uses the Python path).
    jitter : float
        Brightness, contrast and saturation jitter (0 for none).
    lighting : float
        Standard deviation of the PCA lighting noise (0 for none).
    mirror : bool
        Random horizontal flips (the recipe's; off for data such as digits or text).
    min_area : float
        Smallest fraction of the image a random resized crop may cover (the recipe's 0.08).
    dtype : str
        Data type of the images (``float32`` or ``float16``); labels are always ``float32``.
    backend : {'auto', 'cpp', 'python'}
        ``auto`` (= ``python``) is the Python path: with the pip wheel of MXNet, whose bundled JPEG
        decoder is about 3x slower than OpenCV's, it needs 40 % of the CPU time per image of ``cpp``,
        the C++ ``ImageRecordIter`` (``scripts/bench_pipeline.py`` measures both).
    ctx : mxnet.Context, optional
        Python path only: the worker threads produce uint8 crops and the colour
        jitter, lighting, normalisation and HWC -> CHW run as one batched step on ``ctx`` (e.g. the
        training GPU, where it is nearly free), and ``data[0]`` lives there. ``None`` (default): all of
        it on the CPU in the worker threads, which is faster than batched MXNet operators on a CPU.
    reduced_decode : bool
        Python path: decode a JPEG at 1/2, 1/4 or 1/8 of its size (in libjpeg's DCT) when the random
        crop would still be at least ``input_size`` pixels at that scale.
    opencv_threads : int, optional
        Python path: calls ``cv2.setNumThreads(opencv_threads)`` (process-wide) when the iterator is
        built. The worker threads are the parallelism; OpenCV's own pool inside each call only adds
        synchronisation (about 4 % more CPU per image measured here). ``None`` leaves OpenCV alone.

    Returns
    -------
    mxnet.io.DataIter
        Yields ``DataBatch`` with ``data[0]`` ``(B, 3, S, S)``, ``label[0]`` ``(B,)`` and ``pad``;
        ``reset()`` starts a new, reshuffled epoch; ``len()`` is the number of batches per epoch and
        ``num_samples`` the shard size.
    """
    _check_backend(backend)
    shard = _shard(rec_path, batch_size, num_parts, part_index)
    if ctx is not None and backend == "cpp":
        raise ValueError("ctx= needs the Python path: use backend='auto' or 'python'")
    if backend != "cpp":
        if opencv_threads is not None:
            cv2.setNumThreads(opencv_threads)
        interp = _interp_name("auto", input_size)
        transform = _TrainTransform(
            input_size, jitter, lighting, auto_aug, interp, reduced_decode, mirror, min_area
        )
        return _ThreadIter(
            rec_path,
            shard,
            transform,
            batch_size,
            (3, input_size, input_size),
            shuffle=True,
            seed=_worker_seed(seed, part_index),
            threads=threads,
            dtype=dtype,
            ctx=ctx,
        )
    if auto_aug:
        raise ValueError("AutoAugment needs the Python path: use backend='auto' or 'python'")
    return _cpp_iter(
        rec_path,
        len(shard),
        input_size,
        batch_size,
        num_parts,
        part_index,
        threads,
        dtype,
        shuffle=True,
        seed=seed % _INT31,
        seed_aug=_worker_seed(seed, part_index),
        rand_mirror=mirror,
        random_resized_crop=True,
        min_random_area=min_area,
        max_random_area=1.0,
        min_aspect_ratio=3.0 / 4.0,
        max_aspect_ratio=4.0 / 3.0,
        brightness=jitter,
        contrast=jitter,
        saturation=jitter,
        pca_noise=lighting,
        inter_method=_CPP_INTERP[_interp_name("auto", input_size)],
    )


def val_iter(
    rec_path: str,
    batch_size: int,
    crop_size: int = 224,
    *,
    num_parts: int = 1,
    part_index: int = 0,
    threads: int = 4,
    resize: Optional[int] = None,
    interpolation: str = "auto",
    dtype: str = "float32",
    backend: str = "auto",
    opencv_threads: Optional[int] = 1,
) -> mx.io.DataIter:
    """Centre-crop validation batches of this worker's shard of ``rec_path``, in file order.

    Every record of the file appears in exactly one worker's shard, once; the last batch of a shard is
    completed with repeats whose number is ``batch.pad``, so
    ``batch.label[0][: batch_size - batch.pad]`` are the samples to count.

    Parameters
    ----------
    rec_path : str
        ``.rec`` file with its ``.idx`` beside it.
    batch_size : int
        Samples per batch on this worker.
    crop_size : int
        Side of the centre crop.
    num_parts, part_index : int
        Number of workers and this worker's rank.
    threads : int
        Decoding threads (C++) or worker threads (Python path; 0 = in the calling thread).
    resize : int, optional
        Shorter side before cropping; ``ceil(crop_size / 0.875)`` by default.
    interpolation : {'auto', 'bilinear', 'bicubic'}
        ``auto`` is bicubic for crops of 320 px and more (the paper's large models), else bilinear.
    dtype : str
        Data type of the images.
    backend : {'auto', 'cpp', 'python'}
        ``auto`` is the C++ ``ImageRecordIter`` (which resizes bicubically too).
    opencv_threads : int, optional
        Python path: as in :func:`train_iter`.

    Returns
    -------
    mxnet.io.DataIter
        As :func:`train_iter`, unshuffled.
    """
    _check_backend(backend)
    shard = _shard(rec_path, batch_size, num_parts, part_index)
    resize = int(math.ceil(crop_size / 0.875)) if resize is None else int(resize)
    if resize < crop_size:
        raise ValueError(f"resize ({resize}) must be >= crop_size ({crop_size})")
    interp = _interp_name(interpolation, crop_size)
    if backend == "python":
        if opencv_threads is not None:
            cv2.setNumThreads(opencv_threads)
        return _ThreadIter(
            rec_path,
            shard,
            _ValTransform(crop_size, resize, interp),
            batch_size,
            (3, crop_size, crop_size),
            shuffle=False,
            seed=0,
            threads=threads,
            dtype=dtype,
        )
    return _cpp_iter(
        rec_path,
        len(shard),
        crop_size,
        batch_size,
        num_parts,
        part_index,
        threads,
        dtype,
        shuffle=False,
        resize=resize,
        inter_method=_CPP_INTERP[interp],
    )


# ------------------------------------------------------------------------------- label mixing
def smooth_one_hot(label: mx.nd.NDArray, classes: int, eps: float = 0.1) -> mx.nd.NDArray:
    """Label-smoothed one-hot targets: ``1 - eps + eps / classes`` on the label, ``eps / classes`` elsewhere.

    Parameters
    ----------
    label : mxnet.nd.NDArray
        ``(B,)`` class indices (float or int).
    classes : int
        Number of classes.
    eps : float
        Smoothing (0 gives plain one-hot).

    Returns
    -------
    mxnet.nd.NDArray
        ``(B, classes)``; each row sums to 1.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing eps must be in [0, 1), got {eps}")
    off = eps / classes
    return mx.nd.one_hot(label, classes, on_value=1.0 - eps + off, off_value=off)


def mixup(
    data: mx.nd.NDArray, soft_label: mx.nd.NDArray, alpha: float, rng: np.random.Generator
) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Mixup (Zhang et al. 2018) of a batch with itself reversed, one ``lambda ~ Beta(alpha, alpha)``.

    Parameters
    ----------
    data : mxnet.nd.NDArray
        ``(B, ...)`` images.
    soft_label : mxnet.nd.NDArray
        ``(B, classes)`` targets, e.g. from :func:`smooth_one_hot`.
    alpha : float
        Beta parameter; ``alpha <= 0`` returns the inputs unchanged.
    rng : numpy.random.Generator
        Source of lambda.

    Returns
    -------
    (mxnet.nd.NDArray, mxnet.nd.NDArray)
        ``lam * x + (1 - lam) * x[::-1]`` for both.
    """
    if alpha <= 0:
        return data, soft_label
    lam = float(rng.beta(alpha, alpha))
    mixed = lam * data + (1.0 - lam) * mx.nd.flip(data, axis=0)
    return mixed, lam * soft_label + (1.0 - lam) * mx.nd.flip(soft_label, axis=0)
