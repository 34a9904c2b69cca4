"""ResNeSt (Split-Attention Networks, Zhang et al. 2020, arXiv:2004.08955) for MXNet Gluon."""

from .models import (
    MODELS,
    Bottleneck,
    DropBlock,
    ResNeSt,
    SplitAttentionConv,
    get_model,
    list_models,
    model_info,
    set_drop_prob,
)

__version__ = "0.1.0"
__all__ = [
    "Bottleneck",
    "DropBlock",
    "MODELS",
    "ResNeSt",
    "SplitAttentionConv",
    "get_model",
    "list_models",
    "model_info",
    "set_drop_prob",
]
