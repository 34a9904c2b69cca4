"""ImageNet input pipelines over RecordIO files (``.rec`` + ``.idx``), sharded across workers.

Two back ends give the same :class:`mxnet.io.DataIter` interface (:func:`train_iter`, :func:`val_iter`):

* ``python_iter``: OpenCV decoding and transforms in a pool of threads, the default, and the only one for
  AutoAugment and for the reference's evaluation crop from 320 px; it needs about 40 % of the CPU time per
  image of the C++ iterator, because the JPEG decoder bundled in MXNet's pip wheel is about 3x slower than
  opencv-python's;
* ``cpp_iter``: MXNet's C++ ``ImageRecordIter``, an option.

The modules: ``index`` (the ``.idx``, sharding), ``recordio`` (memory-mapped record reader), ``iterator``
(what both back ends share), ``transforms`` (crops, colour, normalisation), ``jpeg`` (header parsing),
``jpeg_kernel`` and ``colour_kernel`` (the compiled region decoder and colour step, optional),
``targets`` (label smoothing, mixup), ``autoaugment``.
"""

import importlib

from .index import num_records, read_index, shard_bounds

# The iterators and transforms (MXNet, OpenCV) are imported on first use, so that the pure-Python pieces
# (``index``, ``lst``) load in milliseconds for tools/im2rec.py and tools/rec_check.py.
_LAZY = {
    "train_iter": "pipeline",
    "val_iter": "pipeline",
    "mixup": "targets",
    "smooth_one_hot": "targets",
    "MEAN": "transforms",
    "STD": "transforms",
}

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


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
