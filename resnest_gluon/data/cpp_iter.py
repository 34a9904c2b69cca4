"""Back end 1: MXNet's C++ ``ImageRecordIter`` (decoding threads in C++), an option for both iterators."""

import mxnet as mx
import numpy as np

from .index import idx_path
from .iterator import ShardIter
from .transforms import MEAN, STD

# ImageRecordIter's inter_method codes.
CPP_INTERP = {"bilinear": 1, "bicubic": 2}
INT31 = 2**31 - 1  # ImageRecordIter's seeds are C ints


class RecordIter(ShardIter):
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


def cpp_iter(rec_path, num_samples, size, batch_size, num_parts, part_index, threads, dtype, **options):
    """A :class:`RecordIter` over a shard of ``num_samples`` records: normalised ``size`` px crops."""
    return RecordIter(
        num_samples,
        dtype,
        path_imgrec=rec_path,
        path_imgidx=idx_path(rec_path),
        data_shape=(3, size, size),
        batch_size=batch_size,
        num_parts=num_parts,
        part_index=part_index,
        preprocess_threads=max(1, threads),
        **options,
        **norm_kwargs(),
    )


def norm_kwargs() -> dict:
    return dict(mean_r=MEAN[0], mean_g=MEAN[1], mean_b=MEAN[2], std_r=STD[0], std_g=STD[1], std_b=STD[2])
