"""Fine-tuning: a backbone from any ``.params`` of the same architecture, lower rates, frozen stages.

ResNeSt's headline is transfer (Zhang et al., arXiv:2004.08955, sections 6-7: the ImageNet backbone lifts
detection and segmentation). :func:`load_backbone` loads every parameter of a file into a model built for
another number of classes, checked exactly as ``get_model(..., pretrained=...)`` checks a file, and keeps
the model's fresh classifier when the file's does not fit. :func:`set_backbone_lr_mult` and
:func:`freeze_stages` then decide how much of the backbone still learns.
"""

import logging
import os
from typing import List, Optional, Union

import mxnet as mx
from mxnet.gluon import nn

from ..data.class_names import imagenet_class_names, read_class_names
from ..models.pretrained import load_params_checked, load_pretrained
from ..models.zoo import get_model

__all__ = [
    "CLASSIFIER",
    "file_class_names",
    "file_classes",
    "freeze_stages",
    "load_backbone",
    "num_stages",
    "set_backbone_lr_mult",
]

logger = logging.getLogger(__name__)

CLASSIFIER = "fc."  # parameter-name prefix of the classifier head (``fc.weight``, ``fc.bias``)


def _read(path: str) -> dict:
    """The named arrays of a ``.params`` file, with an error that says what is wrong with a bad file."""
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} is not a readable MXNet .params file (truncated, damaged or another format: {first}); "
            "copy it again, or convert a PyTorch file with scripts/convert_weights.py"
        ) from err
    if not isinstance(loaded, dict) or not loaded:
        raise ValueError(f"{path} holds no named parameters (not a Gluon .params file)")
    return {k.split(":", 1)[-1]: v for k, v in loaded.items()}  # 'arg:'/'aux:' from export()


def file_classes(path: str) -> int:
    """The number of classes of the classifier stored in ``path`` (rows of ``fc.weight``)."""
    arrays = _read(path)
    weight = arrays.get(CLASSIFIER + "weight")
    if weight is None:
        raise ValueError(f"{path} has no {CLASSIFIER}weight: it is not a classification model's file")
    return int(weight.shape[0])


def file_class_names(pretrained: Union[bool, str]) -> Optional[List[str]]:
    """The class names of the run that wrote ``pretrained``: ImageNet's for the published weights
    (``True``), the ``classes.txt`` of the file's run directory, or None when there is none."""
    if pretrained is True:
        return imagenet_class_names()
    path = os.path.join(os.path.dirname(os.path.abspath(str(pretrained))), "classes.txt")
    if not os.path.isfile(path):
        return None
    try:
        return read_class_names(path)
    except (OSError, ValueError):
        return None


def load_backbone(
    net,
    model: str,
    pretrained: Union[bool, str],
    ctx: Optional[mx.Context] = None,
    reset_classifier: bool = False,
) -> dict:
    """Loads the published weights of ``model`` (``pretrained=True``) or the file ``pretrained`` into ``net``.

    The file is checked against ``model`` built with the file's own number of classes, the same check as
    ``get_model(model, pretrained=...)``: every key and shape, the first mismatch named. Every backbone
    parameter is then copied into ``net``; the classifier too when its shape fits ``net``'s and
    ``reset_classifier`` is false, otherwise ``net`` keeps its freshly initialised one. ``net`` must be
    initialised.

    Returns
    -------
    dict
        ``path``, ``file_classes``, ``classifier`` (``"loaded"`` or ``"replaced"``) and ``loaded`` (the
        parameter names copied).

    Raises
    ------
    FileNotFoundError
        The published file is not on disk (the message says where to put it and where it is published), or
        ``pretrained`` names no file.
    ValueError
        A file for another architecture, an unreadable file, or a model without published weights.
    """
    if pretrained is True:
        classes, path = 1000, None
    else:
        path = str(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained file {path} does not exist")
        classes = file_classes(path)
    source = get_model(model, classes=classes)
    if path is None:
        path = load_pretrained(source, model)  # checks that it is on disk and its SHA-1
    else:
        load_params_checked(source, path)
    target = net._collect_params_with_prefix()
    fits = (
        all(
            tuple(p.shape) == tuple(target[k].shape)
            for k, p in source._collect_params_with_prefix().items()
            if k.startswith(CLASSIFIER)
        )
        and not reset_classifier
    )
    loaded = []
    for key, param in source._collect_params_with_prefix().items():
        if key.startswith(CLASSIFIER) and not fits:
            continue
        dest = target[key]
        dest.set_data(param.data().astype(dest.dtype, copy=False))
        loaded.append(key)
    net_classes = int(target[CLASSIFIER + "weight"].shape[0])
    if fits:
        logger.info(
            "loaded %s: all %d parameters, classifier included (%d classes)", path, len(loaded), classes
        )
    else:
        logger.info(
            "loaded %s: %d backbone parameters; its classifier (%d classes) replaced by a fresh one for %d%s",
            path,
            len(loaded),
            classes,
            net_classes,
            " (reset_classifier)" if reset_classifier else "",
        )
    return dict(path=path, file_classes=classes, classifier="loaded" if fits else "replaced", loaded=loaded)


def set_backbone_lr_mult(net, mult: float) -> int:
    """Every parameter outside the classifier learns at ``mult`` times the rate (0: not at all, which
    also spares its gradient). BatchNorm statistics keep following the data unless frozen by
    :func:`freeze_stages`. Returns the number of parameters changed."""
    if mult < 0:
        raise ValueError(f"the backbone learning-rate multiplier must not be negative, got {mult}")
    changed = 0
    for key, param in net._collect_params_with_prefix().items():
        if key.startswith(CLASSIFIER) or param.grad_req == "null":
            continue
        param.lr_mult = mult
        if mult == 0:
            param.grad_req = "null"
        changed += 1
    return changed


def num_stages(net) -> int:
    """The number of residual stages (``layer1``, ``layer2``, ...) of a ResNeSt."""
    count = 0
    while hasattr(net, f"layer{count + 1}"):
        count += 1
    return count


def freeze_stages(net, stages: int) -> int:
    """Freezes the stem (``conv1``, ``bn1``) and the first ``stages`` stages: no gradients, and their
    BatchNorm layers normalise with, and no longer update, their running statistics.

    Call before hybridizing (the BatchNorm mode is part of the traced graph). Returns the number of
    parameters frozen.

    Raises
    ------
    ValueError
        When ``stages`` is not in ``0..num_stages(net)``.
    """
    total = num_stages(net)
    if not 0 <= stages <= total:
        raise ValueError(
            f"--freeze-stages must be between 0 (the stem only) and {total} (the whole backbone), "
            f"got {stages}"
        )
    blocks = [net.conv1, net.bn1] + [getattr(net, f"layer{i + 1}") for i in range(stages)]
    frozen = 0
    for block in blocks:
        for param in block.collect_params().values():
            if param.grad_req != "null":
                frozen += 1
            param.grad_req = "null"
        block.apply(_use_global_stats)
    return frozen


def _use_global_stats(block) -> None:
    if isinstance(block, nn.BatchNorm):
        block._kwargs["use_global_stats"] = True
