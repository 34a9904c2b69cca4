"""Model complexity: parameter count and multiply-adds of a Gluon model, read off its symbolic graph.

Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955 (ResNeSt-50: 27.5M parameters and
5.4 GFLOPs, i.e. multiply-adds, at 224 px).
"""

import json
from typing import Dict, Sequence

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

__all__ = ["count_macs", "count_params"]


def count_params(net: HybridBlock, trainable_only: bool = True) -> int:
    """Number of parameter values; BatchNorm running statistics count only if ``trainable_only`` is False."""
    total = 0
    for param in net.collect_params().values():
        if trainable_only and param.grad_req == "null":
            continue
        if param.shape is None or any(d <= 0 for d in param.shape):
            raise ValueError(f"parameter {param.name} has an unknown shape: run one forward pass first")
        total += int(np.prod(param.shape))
    return total


def count_macs(net: HybridBlock, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``net`` on one image of ``input_shape[1:]``.

    Counts convolutions (grouped and dilated included) and fully connected layers, which are all but a
    fraction of a percent of a ResNet's work; elementwise ops, pooling and normalisation are not counted.

    Parameters
    ----------
    net : HybridBlock
        The model (its parameters need not be initialised).
    input_shape : sequence of int
        ``(batch, channels, height, width)``; the batch is replaced by 1.
    """
    shape = (1, *tuple(input_shape)[1:])
    sym = net(mx.sym.var("data"))
    if isinstance(sym, (list, tuple)):
        sym = mx.sym.Group(list(sym))
    internals = sym.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape_partial(data=shape)
    shapes: Dict[str, tuple] = dict(zip(internals.list_arguments(), arg_shapes))
    shapes.update(zip(internals.list_outputs(), out_shapes))
    nodes = json.loads(sym.tojson())["nodes"]
    total = 0
    for node in nodes:
        if node["op"] not in ("Convolution", "FullyConnected"):
            continue
        out = shapes.get(node["name"] + "_output")
        weight = shapes.get(nodes[node["inputs"][1][0]]["name"])
        if not out or not weight:
            raise ValueError(f"cannot infer the shapes of {node['name']} for input {shape}")
        # output elements x (input channels per group x kernel area), or x input features
        total += int(np.prod(out)) * int(np.prod(weight[1:]))
    return total
