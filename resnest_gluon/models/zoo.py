"""The model registry: every variant is one row of data, built by one constructor.

Published configurations and ImageNet top-1 (Gluon weights) from Zhang et al., arXiv:2004.08955; ResNeSt-14
and -26 from gluoncv's model zoo.
"""

from typing import Callable, Dict, List, Optional, Tuple, Union

import mxnet as mx

from ..threads import warn_if_idle
from .resnest import ResNeSt

__all__ = ["MODELS", "get_model", "list_models", "model_info", "register_model"]

_RESNEST = dict(deep_stem=True, avg_down=True, avd=True, radix=2, cardinality=1, bottleneck_width=64)


def _fast(radix: int, cardinality: int, width: int, top1: float) -> dict:
    """A ResNeSt-50 "fast" ablation variant: avd before the 3x3, stem width 32."""
    return dict(
        _RESNEST,
        layers=(3, 4, 6, 3),
        radix=radix,
        cardinality=cardinality,
        bottleneck_width=width,
        stem_width=32,
        avd_first=True,
        dropblock_prob=0.1,
        crop_size=224,
        top1=top1,
    )


# name -> constructor kwargs, plus `crop_size` (the paper's evaluation crop) and `top1` (published).
MODELS: Dict[str, dict] = {
    "resnest14": dict(
        _RESNEST, layers=(1, 1, 1, 1), stem_width=32, dropblock_prob=0.0, crop_size=224, top1=75.75
    ),
    "resnest26": dict(
        _RESNEST, layers=(2, 2, 2, 2), stem_width=32, dropblock_prob=0.1, crop_size=224, top1=78.68
    ),
    "resnest50": dict(
        _RESNEST, layers=(3, 4, 6, 3), stem_width=32, dropblock_prob=0.1, crop_size=224, top1=81.04
    ),
    "resnest101": dict(
        _RESNEST, layers=(3, 4, 23, 3), stem_width=64, dropblock_prob=0.1, crop_size=256, top1=82.81
    ),
    "resnest200": dict(
        _RESNEST,
        layers=(3, 24, 36, 3),
        stem_width=64,
        dropblock_prob=0.1,
        final_drop=0.2,
        crop_size=320,
        top1=83.88,
    ),
    "resnest269": dict(
        _RESNEST,
        layers=(3, 30, 48, 8),
        stem_width=64,
        dropblock_prob=0.1,
        final_drop=0.2,
        crop_size=416,
        top1=84.53,
    ),
    "resnest50_fast_1s1x64d": _fast(1, 1, 64, 80.35),
    "resnest50_fast_2s1x64d": _fast(2, 1, 64, 80.65),
    "resnest50_fast_4s1x64d": _fast(4, 1, 64, 80.90),
    "resnest50_fast_1s2x40d": _fast(1, 2, 40, 80.72),
    "resnest50_fast_2s2x40d": _fast(2, 2, 40, 80.84),
    "resnest50_fast_4s2x40d": _fast(4, 2, 40, 81.17),
    "resnest50_fast_1s4x24d": _fast(1, 4, 24, 80.97),
    # The ablation's baseline (0s1x64d): ResNet-D-50, a plain 3x3 that strides itself.
    "resnetd50": dict(
        layers=(3, 4, 6, 3),
        radix=0,
        deep_stem=True,
        stem_width=32,
        avg_down=True,
        avd=False,
        crop_size=224,
        top1=None,
    ),
}

# Not constructor defaults: `dropblock_prob` is the paper's training value, which scripts/train.py ramps up
# to. A built model starts with DropBlock at 0, because even as an exact identity it would cost inference
# time in a static graph (more than 2x for ResNeSt-50 on a CPU).
_META = ("crop_size", "top1", "dropblock_prob")


# Other tasks' models (segmentation: deeplab.py) register a builder and a row; MODELS and list_models()
# stay the ImageNet classifiers, which the classification commands take.
TASK_MODELS: Dict[str, Tuple[Callable, dict]] = {}


def register_model(name: str, builder: Callable, info: dict) -> None:
    """Makes ``get_model(name, ...)`` call ``builder(name, pretrained, root, ctx, **kwargs)``."""
    TASK_MODELS[name] = (builder, info)


def list_models() -> List[str]:
    """Names accepted by :func:`get_model`."""
    return list(MODELS)


def model_info(name: str) -> dict:
    """The registry row of ``name``: constructor kwargs plus ``crop_size`` and published ``top1``."""
    if name in TASK_MODELS:
        return dict(TASK_MODELS[name][1])
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join([*MODELS, *TASK_MODELS])}")
    return dict(MODELS[name])


def get_model(
    name: str,
    pretrained: Union[bool, str] = False,
    root: Optional[str] = None,
    ctx: Optional[mx.Context] = None,
    **kwargs,
) -> ResNeSt:
    """Builds a registered model; caller kwargs override the registry row.

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    pretrained : bool or str
        True loads the published weights from ``root`` (see :mod:`resnest_gluon.models.pretrained`);
        a path loads that ``.params`` file. Either way the parameters are checked against the model.
    root : str, optional
        Folder of pretrained files (default ``$RESNEST_GLUON_HOME`` or ``~/.mxnet/models``).
    ctx : mx.Context, optional
        Where to put loaded parameters (default CPU).
    **kwargs
        Any :class:`~resnest_gluon.models.resnest.ResNeSt` argument, e.g. ``classes``, ``dropblock_prob``,
        ``final_drop``, ``norm_layer``, ``norm_kwargs``, ``output_stride``, ``features_only``.
        DropBlock starts at 0 unless ``dropblock_prob`` is given (the row's value is the training recipe's;
        ``resnest_gluon.set_drop_prob`` changes it at any time).

    Returns
    -------
    ResNeSt
        With the attributes ``crop_size`` (the paper's evaluation crop) and ``model_name``.
    """
    if name in TASK_MODELS:
        return TASK_MODELS[name][0](name, pretrained, root, ctx, **kwargs)
    cfg = {k: v for k, v in model_info(name).items() if k not in _META}
    cfg.update(kwargs)
    warn_if_idle()
    net = ResNeSt(**cfg)
    net.model_name, net.crop_size = name, MODELS[name]["crop_size"]
    if pretrained:
        from .pretrained import load_pretrained

        load_pretrained(net, name, pretrained if isinstance(pretrained, str) else None, root=root, ctx=ctx)
    return net
