"""Top-k counts on this worker's shard, and BatchNorm statistics averaged over workers."""

import mxnet as mx
import numpy as np


def topk_counts(output: mx.nd.NDArray, label: mx.nd.NDArray, valid: int, k: int = 5) -> mx.nd.NDArray:
    """``[top-1 correct, top-k correct]`` over the first ``valid`` rows of a batch, as a float64 array on
    ``output``'s device: nothing is read back, so a loop over batches does not wait for each one."""
    k = min(k, output.shape[1])
    pred = output[:valid].topk(axis=1, k=k)  # float32 class indices, distinct within a row
    truth = label[:valid].as_in_context(output.context).astype("float32", copy=False).reshape((-1, 1))
    hit = mx.nd.broadcast_equal(pred, truth)
    return mx.nd.stack(hit[:, 0].sum(), hit.sum()).reshape((2,)).astype("float64")


def evaluate(
    net, data_iter, ctx: mx.Context, dtype: str = "float32", k: int = 5, progress=None
) -> np.ndarray:
    """Counts ``[top-1 correct, top-k correct, samples]`` of ``net`` on this worker's part of ``data_iter``.

    Padded samples (``batch.pad``) are excluded, so summing the counts of all workers counts every image
    once. The hits are summed on ``ctx`` and read once, at the end. ``progress`` is an optional callable
    given the number of samples of each batch.
    """
    data_iter.reset()
    hits, samples = mx.nd.zeros((2,), ctx=ctx, dtype="float64"), 0
    for batch in data_iter:
        data = batch.data[0].as_in_context(ctx).astype(dtype, copy=False)
        valid = batch.data[0].shape[0] - (batch.pad or 0)
        hits += topk_counts(net(data), batch.label[0], valid, k)
        samples += valid
        if progress is not None:
            progress(valid)
    return np.append(hits.asnumpy(), samples)


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
