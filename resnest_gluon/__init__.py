"""ResNeSt (Split-Attention Networks, Zhang et al. 2020, arXiv:2004.08955) for MXNet Gluon.

The models are imported on first use, so that ``resnest_gluon.threads.configure()`` can set MXNet's thread
count before libmxnet loads.
"""

import importlib

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
    "set_fused_sum",
]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
