"""OpenVINO deployment: our ONNX export converted to OpenVINO IR, in float32, bfloat16 or INT8.

``export_openvino`` writes ``{prefix}.xml`` / ``{prefix}.bin`` and stores the chosen precision in the
model (``runtime_options``), so :func:`load_openvino` compiles it the way it was exported. float32 and
bfloat16 are OpenVINO execution precisions of the same float32 weights; INT8 is a QDQ graph made by
:func:`resnest_gluon.deploy.onnx_qdq.quantize_onnx` from calibration images.
"""

import logging
import os
import sys
import tempfile
from typing import Iterable, Optional, Sequence, Union
from xml.etree import ElementTree

import numpy as np
from mxnet.gluon import HybridBlock

from ..files import Staged, WriteFailed, replace_together, write_failed
from .graph import temporary_folder
from .int8 import calibration_batches
from .meta import build_meta, stage_meta
from .onnx_export import export_onnx
from .onnx_qdq import quantize_onnx

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "f32", "bf16", "int8")
_HINT = ["runtime_options", "INFERENCE_PRECISION_HINT"]


def import_openvino():
    """``import openvino``, with its usage telemetry off. Importing OpenVINO (and each ``convert_model``)
    posts a usage event from a process that it forks in a thread pool: in a process running MXNet's threads
    that fork can deadlock, and nobody running this toolkit asked for it. Without ``openvino_telemetry``
    OpenVINO uses its own stub, which sends nothing; an application that imported either first keeps its
    choice."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # "import openvino_telemetry" raises ImportError
    import openvino

    return openvino


def openvino_capabilities() -> set:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU (e.g. ``{"FP32", "BF16", "INT8"}``)."""
    ov = import_openvino()

    return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where the CPU has bfloat16 units (AVX512-BF16, AMX), else ``f32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if "BF16" in openvino_capabilities() else "f32"
    return precision


def export_openvino(
    net: HybridBlock,
    prefix: str,
    input_shape: Sequence[int],
    precision: str = "auto",
    calib_data: Union[str, Iterable, None] = None,
    num_calib_batches: int = 10,
    batch_size: int = 8,
    meta: Union[dict, bool, None] = None,
) -> str:
    """Exports ``net`` through ONNX to OpenVINO IR ``{prefix}.xml`` (+ ``.bin``, ``.meta.json``); returns the
    ``.xml`` path.

    Parameters
    ----------
    net : HybridBlock
        An initialised model (any context; DropBlock is switched off).
    prefix : str
        Output path without extension; its directory is created.
    input_shape : sequence of int
        ``(batch, 3, height, width)`` of the tracing input; the batch stays dynamic in the IR.
    precision : str
        ``f32`` (same outputs as MXNet within 1e-4), ``bf16`` (bfloat16 execution: needs AVX512-BF16 or
        AMX to be fast), ``int8`` (needs ``calib_data``) or ``auto`` (bf16 where the CPU has bf16, else f32).
    calib_data : str or iterable, optional
        For ``int8``: a ``.rec`` path or batches, as for :func:`resnest_gluon.deploy.quantize`.
    num_calib_batches, batch_size : int
        Calibration batches used, and the batch size when ``calib_data`` is a ``.rec``.
    meta : dict, optional
        Fields of ``{prefix}.meta.json`` to set or override; False writes none.

    The ``.bin`` must hold every weight the ``.xml`` names and the pair must read back with OpenVINO's
    ``Core().read_model`` before either replaces anything; they are renamed ``.bin``, ``.xml``, then
    ``.meta.json``. A failure raises :class:`resnest_gluon.files.WriteFailed` naming the file.
    """
    ov = import_openvino()

    precision = resolve_precision(precision)
    if precision == "int8" and calib_data is None:
        raise ValueError("precision='int8' needs calib_data (a .rec path or batches of images)")
    xml, bin_ = f"{prefix}.xml", f"{prefix}.bin"
    fields = dict(meta or {}, precision=precision)
    info = None if meta is False else build_meta(net, input_shape, "openvino", [xml, bin_], fields)
    with temporary_folder(xml) as tmp:
        try:
            onnx_path = export_onnx(
                net, os.path.join(tmp, "net.onnx"), input_shape, dynamic_batch=True, meta=False
            )
        except WriteFailed as err:  # named after the file the user asked for, not the temporary one
            raise write_failed(xml, err.reason) from None
        if precision == "int8":
            size = tuple(input_shape)[-1]
            batches = calibration_batches(calib_data, num_calib_batches, batch_size, size)
            try:
                onnx_path = quantize_onnx(onnx_path, os.path.join(tmp, "net-int8.onnx"), batches)
            except OSError as err:
                raise write_failed(xml, err) from None
        model = ov.convert_model(onnx_path)
        # int8: the quantized convolutions run in INT8, the rest in float32
        model.set_rt_info("bf16" if precision == "bf16" else "f32", _HINT)
        model.set_rt_info(precision, ["resnest_gluon", "precision"])
        tmp_xml, tmp_bin = os.path.join(tmp, "net.xml"), os.path.join(tmp, "net.bin")
        try:  # compress_to_fp16 would round the float32 weights to float16
            ov.save_model(model, tmp_xml, compress_to_fp16=False)
        except (OSError, RuntimeError) as err:
            raise write_failed(xml, err) from None
        # the weights first, so a crash between the renames never leaves a new .xml beside an old .bin; the
        # .bin is checked against the extent of the weights the .xml names, the pair by OpenVINO's reader
        staged = [
            Staged(tmp_bin, bin_, lambda path: _weights_fit(tmp_xml, path)),
            Staged(tmp_xml, xml, lambda path: ov.Core().read_model(path, tmp_bin)),
        ]
        if info is not None:
            staged.append(stage_meta(prefix, info, os.path.join(tmp, "meta.json")))
        replace_together(staged)
    logger.info("exported %s (%s)", xml, precision)
    return xml


def _weights_fit(xml: str, bin_: str) -> None:
    """Raises when ``bin_`` is shorter than the weights the IR ``xml`` reads from it (offset + size of each
    constant). An ``xml`` that does not parse passes: its own check names it."""
    try:
        root = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError:
        return
    need = max(
        (
            int(d.get("offset")) + int(d.get("size"))
            for d in root.iter("data")
            if d.get("offset") and d.get("size")
        ),
        default=0,
    )
    size = os.path.getsize(bin_)
    if size < need:
        raise ValueError(f"it holds {size} bytes, the .xml reads {need}")


def load_openvino(path: str, threads: int = 0, precision: Optional[str] = None):
    """An OpenVINO CPU ``CompiledModel`` for ``path`` (``.xml`` from :func:`export_openvino`, or ``.onnx``).

    ``precision`` (``f32``/``bf16``) overrides the execution precision stored at export; ``threads`` = 0
    lets OpenVINO use every core it may.
    """
    ov = import_openvino()

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: export it with resnest_gluon.deploy.export_openvino")
    core = ov.Core()
    model = core.read_model(path)
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = "bf16" if resolve_precision(precision) == "bf16" else "f32"
    elif model.has_rt_info(_HINT):
        config["INFERENCE_PRECISION_HINT"] = model.get_rt_info(_HINT).astype(str)
    else:  # a plain ONNX file: float32, not OpenVINO's default (bf16 on CPUs that have it)
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


def compile_openvino(
    net: HybridBlock,
    input_shape: Sequence[int],
    precision: str = "auto",
    calib_data=None,
    num_calib_batches: int = 10,
    threads: int = 0,
):
    """:func:`export_openvino` into a temporary folder, then :func:`load_openvino`: a compiled model in
    memory, no files left behind (for benchmarks and accuracy checks)."""
    with tempfile.TemporaryDirectory(prefix="resnest-openvino-") as tmp:
        xml = export_openvino(
            net, os.path.join(tmp, "model"), input_shape, precision, calib_data, num_calib_batches, meta=False
        )
        return load_openvino(xml, threads=threads)


def run_openvino(model_or_path, x: np.ndarray) -> np.ndarray:
    """Runs a compiled model (or an ``.xml``/``.onnx`` path) on ``x`` (NCHW float32); the first output."""
    compiled = load_openvino(model_or_path) if isinstance(model_or_path, str) else model_or_path
    return compiled(np.ascontiguousarray(x, dtype=np.float32))[0]
