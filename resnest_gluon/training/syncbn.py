"""Batch normalisation synchronised across Horovod workers (cross-rank SyncBN).

Segmentation trains with 2-4 images per GPU, too few for batch statistics; gluoncv trains its ResNeSt
DeepLab models with synchronised BatchNorm (Zhang et al., "Context Encoding for Semantic Segmentation",
arXiv:1803.08904, section 3.3). MXNet's ``gluon.contrib.nn.SyncBatchNorm`` only synchronises the devices of
one process; :class:`SyncBatchNorm` synchronises Horovod ranks:

- forward: every worker takes the per-channel mean of its own batch and the sum of squares around it; one
  allgather brings every worker's row (mean, centred sum of squares, element count), and they combine into
  the joined batch's mean and (biased) variance as MXNet's BatchNorm computes them, without subtracting two
  large numbers (Chan, Golub and LeVeque's pairwise update);
- backward: the gradients of that mean and variance are summed over the workers (one allreduce), and each
  worker passes its share back to its own statistics; MXNet's autograd does the rest, through the same
  operators as the forward pass. Each worker's input gradient is its slice of the joined batch's; gamma
  and beta get the local sums, which Horovod's trainer then reduces like every other gradient.

Only 2C + 1 numbers per layer cross into Python (a custom operator); the feature maps stay in MXNet's
operators, imperative or hybridized.

So N workers compute what one process would on the joined batch (tested to 1e-5 with 2 workers). It is a
drop-in ``norm_layer``: the parameters are BatchNorm's (gamma, beta, running_mean, running_var), so
checkpoints load in either. Outside training (``autograd.record`` off) it is a plain BatchNorm on the
running statistics; without Horovod, or with one worker, it is a BatchNorm on the local batch.

Each layer's collectives are named after the layer (``key``, default the block's prefix), so the workers
must build their models the same way (they do: same code, same order). Each layer waits for one allgather
in forward and one allreduce in backward, so the cost grows with the number of layers and the network's
latency (not measured on a real cluster).
"""

import sys
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

__all__ = ["SyncBatchNorm"]

_OP = "resnest_sync_batch_norm"


def _horovod():
    """The initialised ``horovod.mxnet`` module when more than one worker runs, else None."""
    from . import dist

    if dist.is_distributed():
        return dist._hvd
    hvd = sys.modules.get("horovod.mxnet")
    if hvd is not None and hvd.is_initialized() and hvd.size() > 1:
        return hvd
    return None


def _allreduce_sum(array: mx.nd.NDArray, name: str) -> mx.nd.NDArray:
    hvd = _horovod()
    return array if hvd is None else hvd.allreduce(array, op=hvd.Sum, name=name)


def _allgather(array: mx.nd.NDArray, name: str) -> mx.nd.NDArray:
    hvd = _horovod()
    return array if hvd is None else hvd.allgather(array, name=name)


class _GlobalStats(mx.operator.CustomOp):
    """Each worker's per-channel mean and centred sum of squares in; the joined batch's mean and variance
    out (the running statistics outside training).

    The workers' rows are gathered and combined as Chan et al. combine variances: the sum of the workers'
    centred sums plus n_r (mean_r - mean)^2 for each worker, so nothing subtracts two large numbers (E[x^2] -
    mean^2 in float32 lost up to 11 % of some gradients of ResNeSt-14). The backward pass sums the gradients
    of mean and variance over the workers and hands each worker its share."""

    def __init__(self, momentum: float, use_global_stats: bool, key: str):
        super().__init__()
        self.momentum, self.use_global_stats, self.key = momentum, use_global_stats, key
        self.batch_stats = True  # what the last forward used, for its backward

    @staticmethod
    def _count(shape, dtype):
        """Elements per channel of the local batch, from ``shape_array(x)`` (as float32), shape (1,)."""
        return (mx.nd.prod(shape, keepdims=True) / shape[1:2]).astype(dtype, copy=False)

    def forward(self, is_train, req, in_data, out_data, aux):
        local, shape = in_data  # [mean_r, m2_r]
        running_mean, running_var = aux
        channels = local.shape[0] // 2
        self.batch_stats = is_train and not self.use_global_stats
        if self.batch_stats:
            row = mx.nd.concat(local, self._count(shape, local.dtype), dim=0).reshape((1, -1))
            rows = _allgather(row, self.key + ".fwd")  # (workers, 2C + 1)
            means, m2s, counts = rows[:, :channels], rows[:, channels : 2 * channels], rows[:, 2 * channels :]
            total = counts.sum()
            mean = mx.nd.broadcast_div(mx.nd.broadcast_mul(means, counts).sum(axis=0), total)
            spread = mx.nd.broadcast_mul(
                mx.nd.square(mx.nd.broadcast_sub(means, mean.reshape((1, -1)))), counts
            )
            var = mx.nd.broadcast_div((m2s + spread).sum(axis=0), total)
            running_mean[:] = running_mean * self.momentum + mean * (1 - self.momentum)
            running_var[:] = running_var * self.momentum + var * (1 - self.momentum)
        else:
            mean, var = running_mean, running_var
        self.assign(out_data[0], req[0], mean)
        self.assign(out_data[1], req[1], var)

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        local, shape = in_data
        if not self.batch_stats:  # the running statistics are constants
            self.assign(in_grad[0], req[0], mx.nd.zeros_like(local))
        else:
            # mean = sum_r n_r mean_r / N, var = (sum_r m2_r + n_r (mean_r - mean)^2) / N, and the loss is the
            # sum of every worker's: dL/dmean_r = n_r (G_mean + 2 (mean_r - mean) G_var) / N and
            # dL/dm2_r = G_var / N, with G the gradients summed over workers
            channels = local.shape[0] // 2
            n_r = self._count(shape, local.dtype)
            total = _allreduce_sum(mx.nd.concat(out_grad[0], out_grad[1], n_r, dim=0), self.key + ".bwd")
            g_mean, g_var, n = total[:channels], total[channels : 2 * channels], total[2 * channels :]
            share = mx.nd.broadcast_div(n_r, n)
            d_mean = mx.nd.broadcast_mul(g_mean + 2 * (local[:channels] - out_data[0]) * g_var, share)
            d_m2 = mx.nd.broadcast_div(g_var, n)
            self.assign(in_grad[0], req[0], mx.nd.concat(d_mean, d_m2, dim=0))
        self.assign(in_grad[1], req[1], mx.nd.zeros_like(shape))


@mx.operator.register(_OP)
class _GlobalStatsProp(mx.operator.CustomOpProp):
    def __init__(self, momentum="0.9", use_global_stats="False", key=""):
        super().__init__(need_top_grad=True)
        self._args = (float(momentum), use_global_stats == "True", key)

    def list_arguments(self):
        return ["local", "shape"]

    def list_auxiliary_states(self):
        return ["moving_mean", "moving_var"]

    def list_outputs(self):
        return ["mean", "var"]

    def infer_shape(self, in_shape):
        channels = (in_shape[0][0] // 2,)
        return in_shape, [channels, channels], [channels, channels]

    def infer_type(self, in_type):
        dtype = in_type[0]  # the shape comes as float32 whatever the data's type
        return [dtype, np.float32], [dtype, dtype], [dtype, dtype]

    def declare_backward_dependency(self, out_grad, in_data, out_data):
        return [out_grad[0], out_grad[1], in_data[0], in_data[1], out_data[0]]

    def create_operator(self, ctx, shapes, dtypes):
        return _GlobalStats(*self._args)


class SyncBatchNorm(nn.BatchNorm):
    """BatchNorm whose batch statistics and gradients are those of the batch joined over Horovod workers.

    Takes :class:`mxnet.gluon.nn.BatchNorm`'s arguments (NCHW input, channel axis 1 only, no ``fuse_relu``)
    and has its parameters, so ``norm_layer=SyncBatchNorm`` in any model keeps the published parameter names.
    A layer must not run twice in one forward pass (its collectives would share a name).

    Parameters
    ----------
    key : str, optional
        Name of this layer's collectives (default: the block's prefix); the same on every worker.
    """

    def __init__(self, axis: int = 1, *, key: Optional[str] = None, **kwargs):
        if axis != 1:
            raise ValueError(f"SyncBatchNorm normalises over axis 1 (channels), got axis={axis}")
        super().__init__(axis=1, **kwargs)
        self._key = key or self.prefix

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        # only 2C numbers (and x's shape) enter the custom operator: the rest is MXNet's own operators, so
        # autograd derives the backward pass, and no feature map crosses into Python
        local_mean = F.mean(x, axis=1, exclude=True)
        centred = F.broadcast_sub(x, local_mean.reshape((1, -1, 1, 1)))
        local = F.concat(local_mean, F.sum(F.square(centred), axis=1, exclude=True), dim=0)
        shape = F.cast(F.shape_array(x), "float32")
        mean, var = F.Custom(
            local,
            shape,
            running_mean,
            running_var,
            op_type=_OP,
            momentum=self._kwargs["momentum"],
            use_global_stats=self._kwargs["use_global_stats"],
            key=self._key,
        )
        if self._kwargs["fix_gamma"]:  # as MXNet's BatchNorm: gamma stays in the graph, as ones
            gamma = F.ones_like(gamma)
        scale = F.rsqrt(var + self._kwargs["eps"]) * gamma
        out = F.broadcast_mul(F.broadcast_sub(x, mean.reshape((1, -1, 1, 1))), scale.reshape((1, -1, 1, 1)))
        return F.broadcast_add(out, beta.reshape((1, -1, 1, 1)))

    def __repr__(self):
        return f"SyncBatchNorm(key={self._key!r}, in_channels={self.gamma.shape[0]})"
