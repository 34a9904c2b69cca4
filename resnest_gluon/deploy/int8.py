"""INT8 post-training quantization with MXNet's oneDNN (MKLDNN) backend, calibrated on a ``.rec``."""

import logging
import os
from typing import Iterable, List, Optional, Sequence, Union

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, SymbolBlock

from ..files import replace_together
from .graph import net_context, prepare_for_inference, stage_symbol, temporary_folder
from .meta import build_meta, stage_meta

logger = logging.getLogger(__name__)


def rec_calibration_iter(
    rec: str,
    batch_size: int,
    input_size: int,
    mean: Sequence[float] = (123.68, 116.779, 103.939),
    std: Sequence[float] = (58.393, 57.12, 57.375),
    resize: Optional[int] = None,
) -> mx.io.DataIter:
    """A centre-crop ``ImageRecordIter`` over ``rec`` (the validation transform), for calibration or scoring.

    ``resize`` is the shorter side before the crop (default ``input_size / 0.875``).
    """
    if not os.path.isfile(rec):
        raise FileNotFoundError(f"{rec} does not exist: pass a .rec file made by tools/im2rec.py")
    idx = os.path.splitext(rec)[0] + ".idx"
    return mx.io.ImageRecordIter(
        path_imgrec=rec,
        path_imgidx=idx if os.path.isfile(idx) else "",
        data_shape=(3, input_size, input_size),
        batch_size=batch_size,
        resize=resize or int(round(input_size / 0.875)),
        mean_r=mean[0],
        mean_g=mean[1],
        mean_b=mean[2],
        std_r=std[0],
        std_g=std[1],
        std_b=std[2],
        shuffle=False,
        round_batch=False,
        preprocess_threads=2,
    )


def calibration_batches(
    calib_data: Union[str, mx.io.DataIter, Iterable],
    num_batches: int,
    batch_size: int = 8,
    input_size: int = 224,
) -> List[np.ndarray]:
    """Up to ``num_batches`` float32 NCHW batches (numpy) from a ``.rec`` path, a DataIter or an iterable.

    A ``.rec`` is read with :func:`rec_calibration_iter` (``batch_size`` and ``input_size`` apply to it);
    an iterable may give ``(data, label)`` pairs or bare batches, as NDArrays or numpy arrays. Padding
    rows of a DataIter's last batch are dropped.
    """
    if num_batches < 1:
        raise ValueError(f"num_calib_batches must be >= 1, got {num_batches}")
    if isinstance(calib_data, str):
        calib_data = rec_calibration_iter(calib_data, batch_size, input_size)
    batches = []
    for batch in calib_data:
        if len(batches) >= num_batches:
            break
        if isinstance(batch, mx.io.DataBatch):
            data = batch.data[0][: batch.data[0].shape[0] - (batch.pad or 0)]
        else:
            data = batch[0] if isinstance(batch, (tuple, list)) else batch
        data = data.asnumpy() if isinstance(data, mx.nd.NDArray) else np.asarray(data)
        if len(data):
            batches.append(data.astype(np.float32, copy=False))
    if not batches:
        raise ValueError("calib_data gave no batches")
    return batches


def quantize(
    net: HybridBlock,
    calib_data: Union[str, mx.io.DataIter, Iterable],
    num_calib_batches: int = 10,
    out_prefix: Optional[str] = None,
    *,
    batch_size: int = 8,
    input_size: Optional[int] = None,
    calib_mode: str = "naive",
    quantized_dtype: str = "auto",
    exclude_first_conv: bool = True,
    meta: Optional[dict] = None,
) -> SymbolBlock:
    """INT8 model of ``net`` with MXNet's quantization (MKLDNN backend on the CPU), calibrated on data.

    Parameters
    ----------
    net : HybridBlock
        An initialised float32 model; DropBlock layers are switched off first.
    calib_data : str, DataIter or iterable
        A ``.rec`` path (read with :func:`rec_calibration_iter`), an ``mx.io.DataIter`` whose data is
        named ``data``, or a Gluon ``DataLoader`` / iterable of ``(data, label)`` batches.
    num_calib_batches : int
        Batches used to collect the layer output ranges.
    out_prefix : str, optional
        If given, the quantized model is saved as ``{out_prefix}-symbol.json`` / ``-0000.params``
        (reload with :func:`load_exported`), each file loaded back before it replaces anything (see
        :func:`resnest_gluon.deploy.export`).
    batch_size, input_size : int
        Batch and crop size when ``calib_data`` is a ``.rec`` path (``input_size`` defaults to the
        model's ``crop_size``).
    calib_mode : str
        ``naive`` (min/max), ``entropy`` (KL-optimal thresholds) or ``none`` (ranges at run time).
    quantized_dtype : str
        ``auto``, ``int8`` or ``uint8``.
    exclude_first_conv : bool
        Keep the first convolution in float32 (its input is the signed, unnormalised image; quantizing it
        costs the most accuracy for the least time).
    meta : dict, optional
        With ``out_prefix``: fields of ``{out_prefix}.meta.json`` to set or override.

    Returns
    -------
    SymbolBlock
        The quantized model, callable like the original on float32 input.
    """
    if net_context(net).device_type != "cpu":
        raise ValueError(
            f"INT8 quantization runs on the CPU, but the model is on {net_context(net)}: quantize a CPU copy "
            "(net.reset_ctx(mx.cpu()) or load the parameters with ctx=mx.cpu())"
        )
    prepare_for_inference(net, fuse=False)  # quantize_net_v2 partitions the plain graph itself
    batches = calibration_batches(
        calib_data, num_calib_batches, batch_size, input_size or getattr(net, "crop_size", 224)
    )
    data = np.concatenate(batches)
    calib_data = mx.io.NDArrayIter(data=data, batch_size=len(batches[0]))
    exclude = []
    if exclude_first_conv:
        net.hybridize()
        net(mx.nd.zeros(calib_data.provide_data[0].shape))
        convs = [s.name for s in net._cached_graph[1].get_internals() if s.name.endswith("_fwd")]
        convs = [n for n in convs if "conv" in n]
        exclude = convs[:1]
    quiet = logging.getLogger("resnest_gluon.quantization")
    quiet.setLevel(logging.WARNING)
    qnet = mx.contrib.quantization.quantize_net_v2(
        net,
        quantized_dtype=quantized_dtype,
        exclude_layers=exclude,
        calib_data=calib_data,
        calib_mode=calib_mode,
        num_calib_examples=len(data),
        ctx=mx.cpu(),
        logger=quiet,
    )
    qnet.hybridize(static_alloc=True, static_shape=True)
    if out_prefix:
        shape = calib_data.provide_data[0].shape
        files = [f"{out_prefix}-symbol.json", f"{out_prefix}-0000.params"]
        fields = dict(meta or {}, calib_mode=calib_mode, precision="int8")
        info = build_meta(net, shape, "int8", files, fields)
        qnet(mx.nd.zeros(shape)).wait_to_read()
        with temporary_folder(files[0]) as tmp:
            staged = stage_symbol(qnet, os.path.join(tmp, "net"), out_prefix)
            staged.append(stage_meta(out_prefix, info, os.path.join(tmp, "meta.json")))
            replace_together(staged)  # each file loaded back before the first rename, as export() does
        logger.info("saved the INT8 model as %s-symbol.json / -0000.params", out_prefix)
    return qnet
