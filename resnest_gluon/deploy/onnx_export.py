"""ONNX export (MXNet's exporter, then a clean-up pass), operator checks and onnxruntime helpers."""

import contextlib
import logging
import os
from typing import Iterable, Sequence, Set, Union

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

from ..files import Staged, WriteFailed, check_written, replace_together, write_failed
from .graph import export, temporary_folder
from .meta import build_meta, stage_meta

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


# What a DeepLab adds (the interpolation matrices of its upsampling, built from shapes, and the spread of
# its image pooling over the feature map); not checked against TensorRT's parser.
DEEPLAB_EXTRA_OPS = frozenset(
    {"Abs", "Expand", "GatherND", "Less", "Max", "Min", "Range", "ReduceMax", "ReduceProd", "ScatterND"}
)


def export_onnx(
    net: HybridBlock,
    path: str,
    input_shape: Sequence[int],
    dynamic_batch: bool = False,
    check_ops: bool = True,
    meta: Union[dict, bool, None] = None,
) -> str:
    """Exports ``net`` to an ONNX file with MXNet's exporter (``mx.onnx.export_model``, onnx < 1.16), and
    its metadata to ``{path without .onnx}.meta.json``.

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
    meta : dict, optional
        Fields of the ``.meta.json`` to set or override (see :func:`resnest_gluon.deploy.meta.build_meta`);
        False writes none.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    resnest_gluon.files.WriteFailed
        When the file does not load back with ``onnx.load`` and pass ``onnx.checker`` (disk full, say),
        naming it; an earlier file is left as it was. The ``.meta.json`` is renamed after the model.
    """
    info = None if meta is False else build_meta(net, input_shape, "onnx", [path], meta or None)
    # a DeepLab upsamples to its input's size: fixed for the export, so the graph sizes nothing from arrays
    deeplab = hasattr(net, "set_output_size")
    fixed = deeplab and net.output_size is None
    with temporary_folder(path) as tmp:
        if fixed:
            net.set_output_size(tuple(input_shape)[2:])
        try:
            sym_file, params_file = export(net, os.path.join(tmp, "net"), input_shape, meta=False)
        except WriteFailed as err:  # named after the file the user asked for, not the temporary one
            raise write_failed(path, err.reason) from None
        finally:
            if fixed:
                net.set_output_size(None)
        tmp_onnx = os.path.join(tmp, "net.onnx")
        kwargs = {}
        if dynamic_batch:
            kwargs = dict(dynamic=True, dynamic_input_shapes=[(None, *tuple(input_shape)[1:])])
        try:
            with _quiet_dot_warning():
                mx.onnx.export_model(
                    sym_file, params_file, [tuple(input_shape)], [np.float32], tmp_onnx, **kwargs
                )
            _fix_onnx(tmp_onnx)
        except OSError as err:
            raise write_failed(path, err) from None
        staged = [check_written(Staged(tmp_onnx, path, check_onnx_file))]  # before the operators are read
        if check_ops:
            check_onnx_ops(tmp_onnx, TENSORRT_ONNX_OPS | (DEEPLAB_EXTRA_OPS if deeplab else set()))
        if info is not None:
            staged.append(stage_meta(path, info, os.path.join(tmp, "meta.json")))
        replace_together(staged)  # the model, then its metadata, each checked before the first rename
    logger.info("exported %s", path)
    return path


class _DropDotWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Converting dot operator")


@contextlib.contextmanager
def _quiet_dot_warning():
    """MXNet's exporter warns at every ``dot`` that ONNX's ``MatMul`` differs from it beyond 2-D; a
    DeepLab's upsampling multiplies by 2-D matrices only, where the two agree (tested against
    onnxruntime), so the warning is dropped for the export."""
    root = logging.getLogger()
    quiet = _DropDotWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


# The highest opset MXNet 1.9.1's translations are written for; it stamps the model with onnx's newest
# opset instead, where e.g. Split needs ``num_outputs`` and onnxruntime then rejects the graph.
MXNET_ONNX_OPSET = 13


def _fix_onnx(path: str) -> None:
    """Stamps the opset the graph was translated for, keeps weights out of the graph inputs, and drops
    unused initializers.

    Weights listed as inputs are treated as overridable by onnxruntime and TensorRT (no constant
    folding, and TensorRT asks for them at run time), so only the real inputs are kept. MXNet's exporter
    also leaves the axis constants of the ops it translates into attributes (``..._split0_axis``,
    ``..._softmax0_axes``) as initializers no node reads; onnxruntime warns about each of them.
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
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def check_onnx_file(path: str) -> None:
    """Raises when ``path`` is not a complete, valid ONNX model (``onnx.load`` and ``onnx.checker``)."""
    import onnx

    onnx.checker.check_model(onnx.load(path))


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
