"""ImageNet input pipelines over RecordIO files (``.rec`` + ``.idx``), sharded across workers.

Two back ends give the same :class:`mxnet.io.DataIter` interface (:func:`train_iter`, :func:`val_iter`):

* ``python_iter``: OpenCV decoding and transforms in a pool of threads, the default for training and the
  only one for AutoAugment; it needs about 40 % of the CPU time per image of the C++ iterator, because
  the JPEG decoder bundled in MXNet's pip wheel is about 3x slower than opencv-python's;
* ``cpp_iter``: MXNet's C++ ``ImageRecordIter``, the default for validation, an option for training.

The modules: ``index`` (the ``.idx``, sharding), ``recordio`` (memory-mapped record reader), ``iterator``
(what both back ends share), ``transforms`` (crops, colour, normalisation), ``jpeg`` (header parsing),
``targets`` (label smoothing, mixup), ``autoaugment``.
"""

from .index import num_records, read_index, shard_bounds
from .pipeline import train_iter, val_iter
from .targets import mixup, smooth_one_hot
from .transforms import MEAN, STD

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
