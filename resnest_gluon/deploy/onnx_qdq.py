"""Post-training INT8 quantization of an ONNX graph as QuantizeLinear/DequantizeLinear (QDQ) pairs.

The QDQ form is what OpenVINO (and TensorRT) turn into INT8 kernels: every convolution but the first gets
its weights as per-output-channel symmetric int8 and its input activation as per-tensor uint8, with ranges
(min/max) calibrated by running the float graph in onnxruntime on a few batches.

Why not a library: ``onnxruntime.quantization`` needs onnx >= 1.16 (int4 types) and MXNet 1.9.1's exporter
needs onnx < 1.16; OpenVINO's NNCF 3.x needs numpy >= 1.24 and this stack pins numpy 1.23.5.
"""

import os
from typing import Dict, Iterable, List, Tuple

import numpy as np


def activation_ranges(path: str, names: List[str], batches: Iterable[np.ndarray]) -> Dict[str, Tuple]:
    """Min and max of each tensor in ``names`` over ``batches``, from onnxruntime on the float graph."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in known
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    ranges = {}
    for batch in batches:
        outs = session.run(names, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        for name, out in zip(names, outs):
            low, high = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(low, float(out.min())), max(high, float(out.max())))
    return ranges


def _uint8_params(low: float, high: float) -> Tuple[np.ndarray, np.ndarray]:
    low, high = min(low, 0.0), max(high, 0.0)  # zero must be exact
    scale = max(high - low, 1e-8) / 255.0
    zero = int(np.clip(round(-low / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


def quantize_onnx(src: str, dst: str, batches: Iterable[np.ndarray], skip_first_conv: bool = True) -> str:
    """Writes ``dst``: ``src`` with its convolutions in QDQ INT8, calibrated on ``batches`` (NCHW float32).

    Returns ``dst``. The first convolution (which reads the unnormalised image) stays float32 unless
    ``skip_first_conv`` is False, as in :func:`resnest_gluon.deploy.quantize`.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(src)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in weights]
    if skip_first_conv:
        convs = convs[1:]
    if not convs:
        raise ValueError(f"{src} has no convolution to quantize")
    activations = sorted({n.input[0] for n in convs})
    ranges = activation_ranges(src, activations, batches)
    if not ranges:
        raise ValueError("no calibration batches")
    new_nodes, new_inits = {}, []
    for name in activations:  # one Q/DQ pair per tensor, shared by every convolution reading it
        scale, zero = _uint8_params(*ranges[name])
        s, z = f"{name}_qdq_scale", f"{name}_qdq_zero"
        new_inits += [numpy_helper.from_array(scale, s), numpy_helper.from_array(zero, z)]
        new_nodes[name] = [
            helper.make_node("QuantizeLinear", [name, s, z], [f"{name}_q"], name=f"{name}_quantize"),
            helper.make_node(
                "DequantizeLinear", [f"{name}_q", s, z], [f"{name}_dq"], name=f"{name}_dequantize"
            ),
        ]
    weight_nodes = []
    for conv in convs:
        w_name = conv.input[1]
        if not any(node.output[0] == f"{w_name}_dq" for node in weight_nodes):
            w = numpy_helper.to_array(weights[w_name]).astype(np.float32)
            scale = np.maximum(np.abs(w).reshape(len(w), -1).max(axis=1), 1e-12) / 127.0
            q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
            zero = np.zeros(len(w), np.int8)
            names = [f"{w_name}_int8", f"{w_name}_qdq_scale", f"{w_name}_qdq_zero"]
            new_inits += [
                numpy_helper.from_array(a, n) for a, n in zip((q, scale.astype(np.float32), zero), names)
            ]
            weight_nodes.append(
                helper.make_node(
                    "DequantizeLinear", names, [f"{w_name}_dq"], name=f"{w_name}_dequantize", axis=0
                )
            )
        conv.input[0], conv.input[1] = f"{conv.input[0]}_dq", f"{w_name}_dq"
    # QDQ nodes go right after the node that makes their input (the graph must stay topologically sorted)
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    after = {}
    for name, nodes in new_nodes.items():  # -1: a graph input
        after.setdefault(producers.get(name, -1), []).extend(nodes)
    rebuilt = weight_nodes + after.get(-1, [])
    for i, node in enumerate(graph.node):
        rebuilt += [node] + after.get(i, [])
    del graph.node[:]
    graph.node.extend(rebuilt)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    onnx.checker.check_model(model)
    tmp = dst + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, dst)
    return dst
