"""Data-parallel helpers: Horovod when the process runs under ``horovodrun``, one worker otherwise.

Everything here is a function; nothing happens at import time. Call :func:`init` once, early, then
use :func:`rank`, :func:`size`, :func:`broadcast_parameters`, :func:`allreduce_sum` and
:func:`make_trainer` the same way with or without Horovod (no mpi4py is needed).
"""

import logging
import os
from typing import Optional

import mxnet as mx
from mxnet import gluon

from .checks import TrainingError

__all__ = [
    "init",
    "launched_by_horovod",
    "is_distributed",
    "rank",
    "size",
    "local_rank",
    "is_primary",
    "broadcast_parameters",
    "allreduce_sum",
    "barrier",
    "make_trainer",
    "worker_context",
    "agree_counts",
]

logger = logging.getLogger(__name__)

# horovodrun (Gloo) sets HOROVOD_RANK; mpirun-launched jobs set OMPI_COMM_WORLD_RANK / PMI_RANK.
_LAUNCH_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_hvd = None  # the horovod.mxnet module once init() found a distributed launch


def launched_by_horovod() -> bool:
    """True when the environment says this process is one worker of a ``horovodrun``/``mpirun`` job."""
    return any(var in os.environ for var in _LAUNCH_VARS)


def init() -> bool:
    """Initialises Horovod when launched by ``horovodrun``; otherwise sets up a single worker.

    Returns
    -------
    bool
        True when Horovod is active (possibly with only one worker).

    Raises
    ------
    RuntimeError
        When the process was launched by ``horovodrun`` but ``horovod.mxnet`` cannot be imported.
    """
    global _hvd
    if _hvd is not None or not launched_by_horovod():
        return _hvd is not None
    try:
        import horovod.mxnet as hvd
    except ImportError as err:
        raise RuntimeError(
            "this process was started by horovodrun/mpirun but horovod.mxnet cannot be imported "
            f"({err}); install Horovod with HOROVOD_WITH_MXNET=1 (see the Makefile) or run without horovodrun"
        ) from err
    hvd.init()
    _hvd = hvd
    logger.debug("horovod initialised: rank %d of %d", hvd.rank(), hvd.size())
    return True


def is_distributed() -> bool:
    """True when Horovod is active and there is more than one worker."""
    return _hvd is not None and _hvd.size() > 1


def rank() -> int:
    """This worker's global rank (0 without Horovod)."""
    return _hvd.rank() if _hvd is not None else 0


def size() -> int:
    """Number of workers (1 without Horovod)."""
    return _hvd.size() if _hvd is not None else 1


def local_rank() -> int:
    """This worker's rank on its machine, the GPU index to use (0 without Horovod)."""
    return _hvd.local_rank() if _hvd is not None else 0


def is_primary() -> bool:
    """True on rank 0, the only worker that writes logs, checkpoints and plots."""
    return rank() == 0


def broadcast_parameters(params, root_rank: int = 0) -> None:
    """Copies every parameter of ``params`` (a Gluon ``ParameterDict`` or dict) from ``root_rank``.

    Parameters still waiting for their shape (deferred initialisation) are copied right after they are
    initialised, at the first forward pass. Nothing happens with one worker.

    Not with Horovod's ``broadcast``: in Horovod 0.28.1 its enqueueing function logs the tensor's name
    after handing the tensor to the background thread, and for MXNet that name lives in the operation's
    parameters, which the completion callback frees; when the broadcast completes first (a worker
    descheduled at that moment, as under load), the log reads freed memory and the worker dies of
    SIGSEGV at start-up or at the first step. A sum over workers in which every worker but ``root_rank``
    contributes zeros gives the same values (``x + 0`` is exact) through the allreduce path, which logs
    before enqueueing.
    """
    if not is_distributed():
        return
    for name, param in sorted(params.items()):
        try:
            data = param.data() if isinstance(param, gluon.Parameter) else param
        except gluon.parameter.DeferredInitializationError:
            _broadcast_after_init(param, root_rank, name)
        else:
            _broadcast_(data, root_rank, name)


def _broadcast_(array: mx.nd.NDArray, root_rank: int, name: str) -> None:
    """``array`` := ``root_rank``'s ``array``, in place, by a sum-allreduce (:func:`broadcast_parameters`)."""
    if rank() != root_rank:
        array[:] = 0
    _hvd.allreduce_(array, name=f"broadcast.{name}", op=_hvd.Sum)


def _broadcast_after_init(param: gluon.Parameter, root_rank: int, name: str) -> None:
    init_impl = param._init_impl

    def init_then_broadcast(*args, **kwargs):
        init_impl(*args, **kwargs)
        _broadcast_(param.data(), root_rank, name)

    param._init_impl = init_then_broadcast


def allreduce_sum(array: mx.nd.NDArray, name: Optional[str] = None) -> mx.nd.NDArray:
    """The element-wise sum of ``array`` over all workers (``array`` itself with one worker).

    Every worker must call this the same number of times in the same order with the same ``name``.
    """
    if not is_distributed():
        return array
    return _hvd.allreduce(array, average=False, name=name)


def barrier(name: str = "barrier") -> None:
    """Returns once every worker got here and this worker's pending operations are done.

    Without it a worker that finishes first shuts Horovod down while another is still using it
    (e.g. rank 0 writing the last checkpoint), which fails that worker.
    """
    mx.nd.waitall()
    if is_distributed():
        _hvd.allreduce(mx.nd.zeros((1,)), average=False, name=name).asnumpy()


def worker_context(ctx: str) -> mx.Context:
    """This worker's device for ``--ctx cpu|gpu``: ``mx.cpu()``, or the GPU of its local rank.

    With exactly one GPU visible (a cluster that gives each process its own GPU through
    ``CUDA_VISIBLE_DEVICES``, as Slurm and Kubernetes do) that GPU is ``gpu(0)`` whatever the local rank.
    Otherwise local rank ``r`` takes ``gpu(r)``, which must exist. Call it on every worker after
    :func:`init`: the workers compare what they see (one small allreduce), so that all of them stop
    together rather than some blocking in their first broadcast while the others fail.

    Raises
    ------
    TrainingError
        On every worker, naming the GPUs each one sees, when any worker has no GPU of its own.
    """
    if ctx == "cpu":
        return mx.cpu()
    if ctx != "gpu":
        raise ValueError(f"ctx must be 'cpu' or 'gpu', got {ctx!r}")
    gpus = mx.context.num_gpus()
    seen = [(gpus, local_rank())]
    if is_distributed():
        mine = mx.nd.zeros((2, size()))
        mine[:, rank()] = mx.nd.array([gpus, local_rank()])
        seen = [tuple(col) for col in allreduce_sum(mine, name="gpus").asnumpy().astype(int).T.tolist()]
    bad = [r for r, (n, local) in enumerate(seen) if n == 0 or (n > 1 and local >= n)]
    if bad:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        per_rank = ", ".join(f"rank {r} (local {local}): {n}" for r, (n, local) in enumerate(seen))
        raise TrainingError(
            f"--ctx gpu: rank(s) {', '.join(map(str, bad))} have no GPU of their own. GPUs each rank sees: "
            f"{per_rank} (here CUDA_VISIBLE_DEVICES={visible}). A worker takes gpu(local rank), or gpu(0) "
            "when it sees exactly one: start at most as many workers per machine as it has GPUs "
            "(horovodrun -H host:N), install mxnet-cu112 if MXNet sees none, or pass --ctx cpu"
        )
    return mx.gpu(0) if gpus == 1 else mx.gpu(local_rank())


def make_trainer(
    params, optimizer: str, optimizer_params: dict, gradient_predivide_factor: float = 1.0
) -> gluon.Trainer:
    """A ``hvd.DistributedTrainer`` (gradients averaged over workers) or a local ``gluon.Trainer``.

    Parameters
    ----------
    params : ParameterDict or dict
        The parameters to update.
    optimizer : str
        An MXNet optimizer name, e.g. ``"nag"`` (SGD with Nesterov momentum).
    optimizer_params : dict
        Its arguments, e.g. ``learning_rate``, ``momentum``, ``wd``, ``multi_precision``.
    gradient_predivide_factor : float
        Horovod's: gradients are divided by it before the sum over workers and by
        ``size / gradient_predivide_factor`` after, so that a sum of many float16 gradients stays in range
        (``size()`` divides before the sum entirely). Ignored with one worker.
    """
    if gradient_predivide_factor <= 0:
        raise ValueError(f"gradient_predivide_factor must be positive, got {gradient_predivide_factor}")
    if _hvd is not None:
        return _hvd.DistributedTrainer(
            params, optimizer, optimizer_params, gradient_predivide_factor=gradient_predivide_factor
        )
    return gluon.Trainer(params, optimizer, optimizer_params, kvstore=None)


def agree_counts(counts: dict) -> None:
    """Checks that every worker sees the same ``counts`` (name -> int, e.g. the records of each input
    file), with one allreduce of a (names x workers) matrix; nothing happens with one worker.

    Each worker counts its own steps per epoch from these sizes, so a stale copy of a file on one machine
    would otherwise leave the workers waiting for each other forever.

    Raises
    ------
    TrainingError
        On every worker, naming each rank's counts, when they differ.
    """
    if not is_distributed() or not counts:
        return
    names = list(counts)
    mine = mx.nd.zeros((len(names), size()), dtype="float64")
    mine[:, rank()] = mx.nd.array([counts[n] for n in names], dtype="float64")
    seen = allreduce_sum(mine, name="counts").asnumpy().astype("int64")
    differ = [i for i in range(len(names)) if len(set(seen[i].tolist())) > 1]
    if differ:
        text = "; ".join(
            f"{names[i]}: " + ", ".join(f"rank {r} {int(n)}" for r, n in enumerate(seen[i])) for i in differ
        )
        raise TrainingError(
            f"the workers do not see the same data ({text}): a stale copy of a file on one machine? Give "
            "every worker the same files"
        )
