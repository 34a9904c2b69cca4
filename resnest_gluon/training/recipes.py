"""The published training runs of ResNeSt, as data: ``scripts/train.py --recipe MODEL``.

Zhang et al., "ResNeSt: Split-Attention Networks" (arXiv:2004.08955), trained with the authors' Gluon
script under Horovod on 64 GPUs; the per-model commands were published with the Gluon weights (GluonCV's
training logs). Every run: 270 epochs, 5 warm-up epochs, learning rate 0.1 per 256 images (0.05 per GPU of
128 images, and so on), Nesterov momentum 0.9, weight decay 1e-4 with none on BatchNorm and biases, the last
BatchNorm of each block zero-initialised, label smoothing 0.1, mixup with alpha 0.2, AutoAugment (the
reference's flavour, on the whole image), float32. What differs per model is the batch per GPU, the training
and evaluation sizes, and the final dropout; DropBlock 0.1 is the models' own.

The table keys are ``scripts/train.py``'s option names with underscores; :func:`apply` fills in every one
the command line did not give.
"""

import argparse
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = ["RECIPES", "REFERENCE_WORKERS", "apply", "explicit_options", "names", "recipe"]

# Options every published run shares.
COMMON: Dict[str, object] = dict(
    lr=0.1,  # per 256 images
    epochs=270,
    warmup_epochs=5,
    momentum=0.9,
    wd=1e-4,
    no_wd=True,
    last_gamma=True,
    label_smoothing=0.1,
    mixup=True,
    mixup_alpha=0.2,
    mixup_off_epoch=0,
    auto_aug="resnest",
    dropblock_prob=0.1,
    dtype="float32",
)

# Per model: images per GPU (of 64), the training crop, the evaluation crop, final dropout.
_PER_MODEL = {
    "resnest50": (128, 224, 224, 0.0),
    "resnest101": (64, 224, 256, 0.0),
    "resnest200": (32, 256, 320, 0.2),
    "resnest269": (32, 320, 416, 0.2),
}
REFERENCE_WORKERS = 64  # GPUs of the published runs: total batches 8192, 4096, 2048, 2048

RECIPES: Dict[str, Dict[str, object]] = {
    name: dict(model=name, **COMMON, batch_size=batch, input_size=train, crop_size=evaluate, final_drop=drop)
    for name, (batch, train, evaluate, drop) in _PER_MODEL.items()
}


def names() -> List[str]:
    return sorted(RECIPES)


def recipe(name: str) -> Dict[str, object]:
    """The published options of ``name`` (a copy); ``ValueError`` listing the recipes otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(names())}")
    return dict(RECIPES[name])


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def explicit_options(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set:
    """The destinations ``argv`` gives explicitly (argparse leaves a value already on the namespace in
    place of a default, so whatever is still unset afterwards was not on the command line)."""
    dests = {a.dest for a in parser._actions if a.dest != argparse.SUPPRESS}
    probe = argparse.Namespace(**{d: _UNSET for d in dests})
    parser.parse_known_args(argv, namespace=probe)
    return {d for d in dests if getattr(probe, d) is not _UNSET}


def apply(args: argparse.Namespace, explicit: Iterable[str]) -> Dict[str, object]:
    """Sets every option of ``args.recipe`` that is not in ``explicit``; returns the resolved options.

    Returns ``{"recipe": name, option: value, ...}`` with the values ``args`` now holds (an explicit flag
    wins over the recipe), and records the options the command line overrode as ``args.recipe_overrides``.
    """
    table = recipe(args.recipe)
    explicit = set(explicit)
    for key, value in table.items():
        if key not in explicit:
            setattr(args, key, value)
    args.recipe_overrides = sorted(k for k in table if k in explicit and getattr(args, k) != table[k])
    return {"recipe": args.recipe, **{key: getattr(args, key) for key in table}}
