"""Back end 2: OpenCV decoding and transforms in a pool of threads, the default for training and validation.

Threads rather than DataLoader worker processes: OpenCV and numpy release the GIL for the heavy work, and
a batch then needs no trip through shared memory. With ``ctx=`` the colour pass runs as one batched step
on that context (a GPU) instead of in the threads.
"""

import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import List, Tuple

import mxnet as mx
import numpy as np

from .iterator import ShardIter
from .recordio import RecordReader


class BufferPool:
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


class ThreadIter(ShardIter):
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
        self._reader = RecordReader(rec_path, dict(shard))
        self._keys, self._transform, self._shape = [k for k, _ in shard], transform, tuple(data_shape)
        self._shuffle, self._seed, self._threads, self._dtype = shuffle, seed, threads, dtype
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="resnest-data") if threads > 0 else None
        # Batches in flight (threads + 1), the one the caller holds, and one being freed by MXNet.
        shape, keep = (batch_size,) + self._shape, threads + 3
        if ctx is None:
            self._buffers = BufferPool(shape, np.float32, keep)
            self._out_buffers = None if np.dtype(dtype) == np.float32 else BufferPool(shape, dtype, keep)
        else:  # uint8 NHWC crops; the colour step runs on ``ctx``
            self._buffers = BufferPool((batch_size,) + self._shape[1:] + self._shape[:1], np.uint8, keep)
            self._out_buffers = None
        self._epoch, self._closed = -1, False
        self._pending: deque = deque()
        self._plan: deque = deque()
        self._reset()

    def _reset_pending(self):
        """Drops the batches in flight (a batch being assembled finishes in its thread, unused)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()

    def _reset(self):
        self._reset_pending()
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
            if self._ctx is None:
                # The colour steps and normalisation together (one compiled pass where it is built).
                self._transform.write(payload, draws[j], rng, data[j], scratch, (self._reader.rec_path, key))
            else:
                data[j], affines[j] = self._transform(payload, draws[j], rng, (self._reader.rec_path, key))
        if self._ctx is not None:
            return (data, affines), label
        if self._out_buffers is not None:
            out = self._out_buffers.get()
            np.copyto(out, data, casting="unsafe")
            data = out
        return data, label

    def _next(self):
        if self._closed:
            raise RuntimeError("this iterator was closed; make a new one")
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
            return colour_on_device(*data, self._ctx, self._dtype), mx.nd.array(label, dtype="float32")
        # The batch buffer is handed over to MXNet, not copied (the copy alone costs ~0.1 ms per image).
        return mx.nd.from_numpy(data, zero_copy=True), mx.nd.array(label, dtype="float32")

    def close(self, wait: bool = True) -> None:
        """Stops the worker threads: batches not started are dropped, and with ``wait`` the ones being
        assembled are finished first, so that no work of this iterator is left running (a benchmark, or
        a next iterator, then has the cores to itself). The iterator cannot be used afterwards."""
        self._closed = True
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            self._reset_pending()
            try:
                pool.shutdown(wait=wait, cancel_futures=True)
            except TypeError:  # Python < 3.9
                pool.shutdown(wait=wait)

    def __del__(self):
        self.close(wait=False)


def colour_on_device(crops: np.ndarray, affines: np.ndarray, ctx: mx.Context, dtype: str) -> mx.nd.NDArray:
    """``(B, H, W, 3)`` uint8 crops and their ``(B, 3, 4)`` colour maps -> ``(B, 3, H, W)`` on ``ctx``.

    One batched step: a quarter of the float bytes cross to the device, asynchronously, and the per-pixel
    work (colour jitter, lighting, normalisation, HWC -> CHW, the cast to ``dtype``) is a few batched
    operators there. (No pinned staging copy: the upload already runs off the calling thread.)
    """
    b, h, w, _ = crops.shape
    # Engine copies, not ``mx.nd.array(..., ctx=)`` (a numpy copy, then a synchronous upload): the calling
    # thread returns at once. The buffers stay referenced until the copies have run (see BufferPool).
    x = mx.nd.from_numpy(crops, zero_copy=True).copyto(ctx).astype("float32").reshape((b, h * w, 3))
    a = mx.nd.from_numpy(affines, zero_copy=True).copyto(ctx)
    y = mx.nd.batch_dot(x, mx.nd.slice_axis(a, axis=2, begin=0, end=3), transpose_b=True)
    y = mx.nd.broadcast_add(y, mx.nd.slice_axis(a, axis=2, begin=3, end=4).reshape((b, 1, 3)))
    y = mx.nd.transpose(y.reshape((b, h, w, 3)), axes=(0, 3, 1, 2))
    return y if np.dtype(dtype) == np.float32 else y.astype(dtype)
