"""Deployment helpers: symbol export, ONNX export and INT8 quantization of ResNeSt models.

Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955.

Every function takes an ordinary Gluon model (e.g. from :func:`resnest_gluon.get_model`) and first puts it
in inference shape with :func:`prepare_for_inference`: DropBlock is an exact identity at inference, but its
graph still computes a random mask (and a ``random_uniform_like``/``shape_array`` that ONNX and TensorRT do
not handle), so the layers are switched off before tracing; on a CPU the graph is then fused by oneDNN
(exports write the plain, portable graph). Outputs are unchanged.

Every export writes ``PREFIX.meta.json`` beside its files (:mod:`.meta`): classes, class names, the input
size and preprocessing, the model and the source checkpoint's SHA-1.

The files of an export are written to a temporary folder, each loaded back there (weights against the graph,
``onnx.checker``, OpenVINO's reader, the metadata's JSON), and only then renamed into place, weights first:
a failed or interrupted export never leaves a half-written model, or a new graph beside old weights, where a
good one was (:func:`resnest_gluon.files.replace_together`).
"""

from .graph import export, fusion_available, is_fused, load_exported, net_context, prepare_for_inference
from .int8 import calibration_batches, quantize, rec_calibration_iter
from .meta import build_meta, meta_path, read_meta, write_meta
from .onnx_export import TENSORRT_ONNX_OPS, check_onnx_ops, export_onnx, load_onnx, onnx_ops, run_onnx
from .openvino_export import (
    compile_openvino,
    export_openvino,
    load_openvino,
    openvino_capabilities,
    resolve_precision,
    run_openvino,
)

__all__ = [
    "build_meta",
    "meta_path",
    "read_meta",
    "write_meta",
    "run_openvino",
    "resolve_precision",
    "openvino_capabilities",
    "load_openvino",
    "export_openvino",
    "compile_openvino",
    "TENSORRT_ONNX_OPS",
    "calibration_batches",
    "check_onnx_ops",
    "export",
    "export_onnx",
    "fusion_available",
    "is_fused",
    "load_exported",
    "load_onnx",
    "net_context",
    "onnx_ops",
    "prepare_for_inference",
    "quantize",
    "rec_calibration_iter",
    "run_onnx",
]
