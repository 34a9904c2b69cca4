"""MXNet symbol export: DropBlock off, the graph traced, the files written atomically."""

import logging
import os
import tempfile
from typing import Optional, Sequence, Tuple

import mxnet as mx
from mxnet.gluon import HybridBlock, SymbolBlock

from ..models.layers import set_drop_prob

logger = logging.getLogger(__name__)


def prepare_for_inference(net: HybridBlock) -> HybridBlock:
    """Switches off the training-only DropBlock layers of ``net`` (in place) and returns it.

    DropBlock is an identity at inference, so outputs do not change; the graph just loses the ops that
    build the unused random mask (they cost more than half of ResNeSt-50's CPU time at batch 1). Models from
    ``get_model`` start with DropBlock off; this matters for a model that was trained with it on.
    """
    set_drop_prob(net, 0.0)
    return net


def _replace_all(pairs: Sequence[Tuple[str, str]]) -> None:
    for src, dst in pairs:
        os.replace(src, dst)


def export(
    net: HybridBlock,
    prefix: str,
    input_shape: Sequence[int],
    epoch: int = 0,
    ctx: Optional[mx.Context] = None,
) -> Tuple[str, str]:
    """Exports ``net`` to ``{prefix}-symbol.json`` and ``{prefix}-{epoch:04d}.params``.

    Parameters
    ----------
    net : HybridBlock
        An initialised model; DropBlock layers are switched off (see :func:`prepare_for_inference`).
    prefix : str
        Output path prefix; its directory is created.
    input_shape : sequence of int
        ``(batch, 3, height, width)`` of the tracing input (the graph itself accepts other sizes).
    epoch : int
        Number in the params file name.
    ctx : Context, optional
        Where to run the tracing forward pass (default CPU).

    Returns
    -------
    (str, str)
        Paths of the symbol file and the params file; reload them with :func:`load_exported`.
    """
    ctx = ctx or mx.cpu()
    prepare_for_inference(net)
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.zeros(tuple(input_shape), ctx=ctx)).wait_to_read()
    out_dir = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(out_dir, exist_ok=True)
    sym_file, params_file = f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_prefix = os.path.join(tmp, "net")
        net.export(tmp_prefix, epoch=epoch)
        _replace_all(
            [
                (f"{tmp_prefix}-symbol.json", sym_file),
                (f"{tmp_prefix}-{epoch:04d}.params", params_file),
            ]
        )
    logger.info("exported %s and %s", sym_file, params_file)
    return sym_file, params_file


def load_exported(prefix: str, epoch: int = 0, ctx: Optional[mx.Context] = None) -> SymbolBlock:
    """Loads a model written by :func:`export` (or :func:`quantize`) as a :class:`SymbolBlock`."""
    sym_file, params_file = f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"
    for path in (sym_file, params_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} does not exist: export the model first (resnest_gluon.deploy.export)"
            )
    return SymbolBlock.imports(sym_file, ["data"], params_file, ctx=ctx or mx.cpu())
