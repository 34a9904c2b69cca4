"""The ResNeSt family: ``layers`` (SplitAttentionConv, DropBlock), ``resnest`` (the network), ``zoo`` (the
registry: get_model, list_models, model_info), ``pretrained`` (published weights), ``convert`` (PyTorch
importer) and ``flops`` (parameter and multiply-add counts)."""

from . import deeplab  # noqa: F401  (registers deeplab_resnest*_ade with get_model)
from .layers import DropBlock, SplitAttentionConv, set_drop_prob, set_fused_sum
from .resnest import Bottleneck, ResNeSt
from .zoo import MODELS, get_model, list_models, model_info

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
    "set_fused_sum",
]
