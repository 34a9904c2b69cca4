"""``PREFIX.meta.json``: what an exported model needs beside its weights to be used without guessing.

Every export (:func:`~resnest_gluon.deploy.export`, :func:`~resnest_gluon.deploy.export_onnx`,
:func:`~resnest_gluon.deploy.export_openvino`, :func:`~resnest_gluon.deploy.quantize`) writes one beside
its files: the classes and their names, the input size and the resize/crop rule, mean, std and channel
order, the model name, and the source checkpoint with its SHA-1. ``scripts/predict.py`` reads it, so
``predict.py photos/ --onnx model.onnx`` needs no other flag.

``PREFIX`` is the export's own prefix: ``out/m`` for ``out/m-symbol.json``, ``out/m.onnx`` and ``out/m.xml``.
"""

import json
import math
import os
from typing import List, Optional, Sequence

from ..files import Staged, replace_together, stage_bytes

__all__ = ["META_VERSION", "build_meta", "meta_path", "read_meta", "stage_meta", "write_meta"]

META_VERSION = 1
_SUFFIXES = (".onnx", ".xml", ".bin", "-symbol.json")


def meta_path(path_or_prefix: str) -> str:
    """``PREFIX.meta.json`` for an export prefix or for one of its files (``.onnx``, ``.xml``,
    ``-symbol.json``)."""
    for suffix in _SUFFIXES:
        if path_or_prefix.endswith(suffix):
            return path_or_prefix[: -len(suffix)] + ".meta.json"
    return path_or_prefix + ".meta.json"


def _classes_of(net) -> Optional[int]:
    fc = getattr(net, "fc", None)
    units = getattr(fc, "_units", None)
    return int(units) if units else None


def build_meta(
    net,
    input_shape: Sequence[int],
    fmt: str,
    files: Sequence[str],
    meta: Optional[dict] = None,
) -> dict:
    """The metadata of an export of ``net`` traced at ``input_shape``; ``meta`` overrides any field (e.g.
    ``class_names``, ``source``, ``source_sha1``, ``precision``)."""
    from ..data.transforms import CENTRE_MARGIN, LARGE_CROP, MEAN, STD, interp_name
    from ..models.pretrained import SHA1, file_sha1

    meta = dict(meta or {})
    size = int(tuple(input_shape)[-1])
    source = meta.get("source") or getattr(net, "source_params", None)
    sha1 = meta.get("source_sha1")
    if sha1 is None and source and os.path.isfile(source):
        sha1 = file_sha1(source)
    model = getattr(net, "model_name", None)
    names: Optional[List[str]] = meta.get("class_names")
    classes = meta.get("classes") or _classes_of(net) or (len(names) if names else None)
    if names is None and model and sha1 is not None and SHA1.get(model) == sha1:
        from ..data.class_names import imagenet_class_names  # the published ImageNet weights

        names = imagenet_class_names()
    if meta.get("resize") is None and size >= LARGE_CROP:  # the reference's evaluation of large crops
        resize, interpolation = None, "bicubic (PIL, antialiased)"
        preprocess = (
            f"centre square of side {size}/({size}+{CENTRE_MARGIN}) x the shorter side, resized to {size} x "
            f"{size} with PIL's bicubic filter, (pixel - mean) / std"
        )
    else:
        resize, interpolation = int(meta.get("resize") or math.ceil(size / 0.875)), interp_name("auto", size)
        preprocess = f"shorter side resized to {resize} px, centre crop {size} x {size}, (pixel - mean) / std"
    out = dict(
        meta_version=META_VERSION,
        format=fmt,
        files=[os.path.basename(f) for f in files],
        model=model,
        classes=classes,
        class_names=names,
        input_size=size,
        resize=resize,
        interpolation=interpolation,
        preprocess=preprocess,
        mean=list(MEAN),
        std=list(STD),
        pixel_scale="0-255",
        channel_order="RGB",
        layout="NCHW",
        source=source,
        source_sha1=sha1,
    )
    out.update(
        {k: v for k, v in meta.items() if k not in ("class_names", "classes", "source", "source_sha1")}
    )
    if names is not None and classes is not None and len(names) != classes:
        raise ValueError(f"{len(names)} class names for a model with {classes} classes")
    return out


def stage_meta(prefix: str, meta: dict, tmp: Optional[str] = None) -> Staged:
    """Writes ``meta`` to ``tmp`` (default ``PREFIX.meta.json.tmp``), staged to replace ``PREFIX.meta.json``
    once it parses (:func:`resnest_gluon.files.replace_together`)."""
    data = (json.dumps(meta, indent=1) + "\n").encode("utf-8")
    return stage_bytes(meta_path(prefix), data, _parses, tmp)


def write_meta(prefix: str, meta: dict) -> str:
    """Writes ``meta`` to ``PREFIX.meta.json`` (through a temporary name, checked before the rename);
    returns the path."""
    staged = stage_meta(prefix, meta)
    replace_together([staged])
    return staged.path


def _parses(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        json.load(f)


def read_meta(path_or_prefix: str) -> Optional[dict]:
    """The ``.meta.json`` beside an export (prefix or file), or None when there is none."""
    path = meta_path(path_or_prefix)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err}): export the model again") from None
