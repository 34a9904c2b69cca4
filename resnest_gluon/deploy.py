"""Deployment helpers: symbol export, ONNX export and INT8 quantization of ResNeSt models.

Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955.

Every function takes an ordinary Gluon model (e.g. from :func:`resnest_gluon.get_model`) and first puts it
in inference shape with :func:`prepare_for_inference`: DropBlock is an exact identity at inference, but its
graph still computes a random mask (and a ``random_uniform_like``/``shape_array`` that ONNX and TensorRT do
not handle), so the layers are switched off before tracing. Outputs are unchanged.

Files are written under a temporary name and renamed, so an interrupted export never leaves a half-written
model where a good one was.
"""

import logging
import os
import tempfile
from typing import Iterable, Optional, Sequence, Set, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, SymbolBlock

from .layers import set_drop_prob

__all__ = [
    "TENSORRT_ONNX_OPS",
    "check_onnx_ops",
    "export",
    "export_onnx",
    "load_exported",
    "load_onnx",
    "onnx_ops",
    "prepare_for_inference",
    "quantize",
    "rec_calibration_iter",
    "run_onnx",
]

logger = logging.getLogger(__name__)

# ONNX operators the ResNeSt graph may contain, all of which TensorRT's ONNX parser (onnx-tensorrt 8.x,
# docs/operators.md) supports with float inputs. Deliberately narrow: anything else (ScatterND from a
# swapaxes, random ops from DropBlock, Loop, NonZero, ...) fails the check, so a new op is a conscious choice.
TENSORRT_ONNX_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Concat",
        "Constant",
        "Conv",
        "Div",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Identity",
        "MatMul",
        "MaxPool",
        "Mul",
        "Pad",
        "ReduceMean",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Shape",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "Squeeze",
        "Sub",
        "Sum",
        "Transpose",
        "Unsqueeze",
    }
)


def prepare_for_inference(net: HybridBlock) -> HybridBlock:
    """Switches off the training-only DropBlock layers of ``net`` (in place) and returns it.

    DropBlock is an identity at inference, so outputs do not change; the graph just loses the ops that
    build the unused random mask (they cost more than half of ResNeSt-50's CPU time at batch 1). Models from
    ``get_model`` start with DropBlock off; this matters for a model that was trained with it on.
    """
    set_drop_prob(net, 0.0)
    return net


def _replace_all(pairs: Sequence[Tuple[str, str]]) -> None:
    for src, dst in pairs:
        os.replace(src, dst)


def export(
    net: HybridBlock,
    prefix: str,
    input_shape: Sequence[int],
    epoch: int = 0,
    ctx: Optional[mx.Context] = None,
) -> Tuple[str, str]:
    """Exports ``net`` to ``{prefix}-symbol.json`` and ``{prefix}-{epoch:04d}.params``.

    Parameters
    ----------
    net : HybridBlock
        An initialised model; DropBlock layers are switched off (see :func:`prepare_for_inference`).
    prefix : str
        Output path prefix; its directory is created.
    input_shape : sequence of int
        ``(batch, 3, height, width)`` of the tracing input (the graph itself accepts other sizes).
    epoch : int
        Number in the params file name.
    ctx : Context, optional
        Where to run the tracing forward pass (default CPU).

    Returns
    -------
    (str, str)
        Paths of the symbol file and the params file; reload them with :func:`load_exported`.
    """
    ctx = ctx or mx.cpu()
    prepare_for_inference(net)
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.zeros(tuple(input_shape), ctx=ctx)).wait_to_read()
    out_dir = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(out_dir, exist_ok=True)
    sym_file, params_file = f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_prefix = os.path.join(tmp, "net")
        net.export(tmp_prefix, epoch=epoch)
        _replace_all(
            [
                (f"{tmp_prefix}-symbol.json", sym_file),
                (f"{tmp_prefix}-{epoch:04d}.params", params_file),
            ]
        )
    logger.info("exported %s and %s", sym_file, params_file)
    return sym_file, params_file


def load_exported(prefix: str, epoch: int = 0, ctx: Optional[mx.Context] = None) -> SymbolBlock:
    """Loads a model written by :func:`export` (or :func:`quantize`) as a :class:`SymbolBlock`."""
    sym_file, params_file = f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"
    for path in (sym_file, params_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} does not exist: export the model first (resnest_gluon.deploy.export)"
            )
    return SymbolBlock.imports(sym_file, ["data"], params_file, ctx=ctx or mx.cpu())


def export_onnx(
    net: HybridBlock,
    path: str,
    input_shape: Sequence[int],
    dynamic_batch: bool = False,
    check_ops: bool = True,
) -> str:
    """Exports ``net`` to an ONNX file with MXNet's exporter (``mx.onnx.export_model``, onnx < 1.16).

    Parameters
    ----------
    net : HybridBlock
        An initialised model; DropBlock layers are switched off first.
    path : str
        Output ``.onnx`` file.
    input_shape : sequence of int
        ``(batch, 3, height, width)``.
    dynamic_batch : bool
        Leave the batch dimension symbolic.
    check_ops : bool
        Raise if the graph has operators outside :data:`TENSORRT_ONNX_OPS` (see :func:`check_onnx_ops`).

    Returns
    -------
    str
        ``path``.
    """
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-") as tmp:
        sym_file, params_file = export(net, os.path.join(tmp, "net"), input_shape)
        tmp_onnx = os.path.join(tmp, "net.onnx")
        kwargs = {}
        if dynamic_batch:
            kwargs = dict(dynamic=True, dynamic_input_shapes=[(None, *tuple(input_shape)[1:])])
        mx.onnx.export_model(sym_file, params_file, [tuple(input_shape)], [np.float32], tmp_onnx, **kwargs)
        _fix_onnx(tmp_onnx)
        if check_ops:
            check_onnx_ops(tmp_onnx)
        os.replace(tmp_onnx, path)
    logger.info("exported %s", path)
    return path


# The highest opset MXNet 1.9.1's translations are written for; it stamps the model with onnx's newest
# opset instead, where e.g. Split needs ``num_outputs`` and onnxruntime then rejects the graph.
MXNET_ONNX_OPSET = 13


def _fix_onnx(path: str) -> None:
    """Stamps the opset the graph was translated for and keeps weights out of the graph inputs.

    Weights listed as inputs are treated as overridable by onnxruntime and TensorRT (no constant
    folding, and TensorRT asks for them at run time), so only the real inputs are kept.
    """
    import onnx

    model = onnx.load(path)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = MXNET_ONNX_OPSET
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def onnx_ops(path: str) -> Set[str]:
    """The set of operator types in the ONNX graph at ``path``."""
    import onnx

    return {node.op_type for node in onnx.load(path).graph.node}


def check_onnx_ops(path: str, allowed: Iterable[str] = TENSORRT_ONNX_OPS) -> Set[str]:
    """Returns the operator set of ``path``; raises ``ValueError`` naming any operator not in ``allowed``."""
    ops = onnx_ops(path)
    bad = ops - set(allowed)
    if bad:
        raise ValueError(
            f"{path} contains ONNX operators outside the TensorRT-parsable set: {sorted(bad)}; "
            "rewrite the layer that produces them (e.g. swapaxes -> ScatterND) or extend TENSORRT_ONNX_OPS "
            "after checking onnx-tensorrt supports them"
        )
    return ops


def load_onnx(path: str, threads: int = 0):
    """An onnxruntime CPU session for ``path`` (``threads`` = 0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(session_or_path, x: np.ndarray) -> np.ndarray:
    """Runs an onnxruntime session (or an ``.onnx`` path) on ``x`` and returns the first output."""
    session = load_onnx(session_or_path) if isinstance(session_or_path, str) else session_or_path
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


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
        (reload with :func:`load_exported`).
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

    Returns
    -------
    SymbolBlock
        The quantized model, callable like the original on float32 input.
    """
    if num_calib_batches < 1:
        raise ValueError(f"num_calib_batches must be >= 1, got {num_calib_batches}")
    prepare_for_inference(net)
    if isinstance(calib_data, str):
        size = input_size or getattr(net, "crop_size", 224)
        calib_data = rec_calibration_iter(calib_data, batch_size, size)
    elif not isinstance(calib_data, mx.io.DataIter):
        batches = []
        for i, batch in enumerate(calib_data):
            if i >= num_calib_batches:
                break
            batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if not batches:
            raise ValueError("calib_data gave no batches")
        data = mx.nd.concat(*batches, dim=0)
        calib_data = mx.io.NDArrayIter(data=data, batch_size=batches[0].shape[0])
    calib_batch = calib_data.provide_data[0].shape[0]
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
        num_calib_examples=num_calib_batches * calib_batch,
        ctx=mx.cpu(),
        logger=quiet,
    )
    qnet.hybridize(static_alloc=True, static_shape=True)
    if out_prefix:
        out_dir = os.path.dirname(os.path.abspath(out_prefix))
        os.makedirs(out_dir, exist_ok=True)
        shape = calib_data.provide_data[0].shape
        qnet(mx.nd.zeros(shape)).wait_to_read()
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".quantize-") as tmp:
            tmp_prefix = os.path.join(tmp, "net")
            qnet.export(tmp_prefix, epoch=0)
            _replace_all(
                [
                    (f"{tmp_prefix}-symbol.json", f"{out_prefix}-symbol.json"),
                    (f"{tmp_prefix}-0000.params", f"{out_prefix}-0000.params"),
                ]
            )
        logger.info("saved the INT8 model as %s-symbol.json / -0000.params", out_prefix)
    return qnet
