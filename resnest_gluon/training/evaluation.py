"""Top-k counts on this worker's shard, and BatchNorm statistics averaged over workers."""

import mxnet as mx
import numpy as np


def topk_counts(output: mx.nd.NDArray, label: mx.nd.NDArray, valid: int, k: int = 5) -> np.ndarray:
    """``[top-1 correct, top-k correct, samples]`` over the first ``valid`` rows of a batch."""
    k = min(k, output.shape[1])
    pred = output.topk(axis=1, k=k).asnumpy()[:valid]
    truth = label.asnumpy()[:valid].astype(pred.dtype)
    hit = pred == truth[:, None]
    return np.array([hit[:, 0].sum(), hit.any(axis=1).sum(), valid], dtype=np.float64)


def evaluate(
    net, data_iter, ctx: mx.Context, dtype: str = "float32", k: int = 5, progress=None
) -> np.ndarray:
    """Counts ``[top-1 correct, top-k correct, samples]`` of ``net`` on this worker's part of ``data_iter``.

    Padded samples (``batch.pad``) are excluded, so summing the counts of all workers counts every image
    once. ``progress`` is an optional callable given the number of samples of each batch.
    """
    data_iter.reset()
    counts = np.zeros(3, dtype=np.float64)
    for batch in data_iter:
        data = batch.data[0].as_in_context(ctx).astype(dtype, copy=False)
        valid = batch.data[0].shape[0] - (batch.pad or 0)
        output = net(data)
        counts += topk_counts(output, batch.label[0], valid, k)
        if progress is not None:
            progress(valid)
    return counts


def average_aux_states(net, allreduce_sum, workers: int) -> None:
    """Averages the BN running statistics over workers (each worker saw different data), so that
    every worker evaluates, and rank 0 saves, the same model."""
    if workers <= 1:
        return
    for name, param in sorted(net.collect_params().items()):
        if param.grad_req == "null":
            value = param.data()
            summed = allreduce_sum(value.astype("float32"), name="aux." + name)
            value[:] = (summed / workers).astype(value.dtype)
