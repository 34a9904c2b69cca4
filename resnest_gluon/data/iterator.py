"""The part both iterator back ends share: epoch length, ``.pad`` on the last batch, padding repeats.

Every batch has ``.pad`` set: the last ``pad`` samples of the last batch of an epoch are repeats of real
ones, to be ignored by metrics (the training loop may keep them).
"""

import mxnet as mx
import numpy as np


class ShardIter(mx.io.DataIter):
    """Common part: a fixed number of samples per epoch, ``.pad`` on the last batch, padding repeats."""

    # Whether ``_next`` already fills the padded slots of the last batch with repeats of its samples.
    _fills_pad = False
    #: set by the builder for back ends whose errors name no record (the C++ iterator): a callable
    #: returning the message of the first bad record of the shard (see recordio.find_bad_record)
    locate_bad_record = None

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
        try:
            data, label = self._next()
        except mx.base.MXNetError as err:  # the C++ iterator (OpenCV, a short read) names no record
            raise ValueError(self._explain(err)) from None
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

    def _explain(self, err: Exception) -> str:
        return explain_iter_error(err, self.locate_bad_record, f"in batch {self._batch + 1}")

    def _reset(self):
        raise NotImplementedError

    def _next(self):
        raise NotImplementedError


def explain_iter_error(err: Exception, locate=None, where: str = "") -> str:
    """The message for an error of MXNet's C++ iterator (an OpenCV assertion, a short read), which names no
    record: ``locate()`` (e.g. :func:`~resnest_gluon.data.recordio.find_bad_record` on the shard) finds it
    when given."""
    # an MXNetError starts with "Traceback (most recent call last):"; its last line is the reason
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Traceback", "[bt]", "File ", "Stack trace"))]
    cause = lines[-1][:300] if lines else type(err).__name__
    found = locate() if locate is not None else ""
    if found:
        return f"{found} (MXNet's C++ iterator: {cause})"
    return (
        f"MXNet's C++ iterator failed{' ' + where if where else ''} ({cause}); it names no record: "
        "`python tools/rec_check.py PREFIX` lists the bad ones, and --data-backend python names them"
    )
