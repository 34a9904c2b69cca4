"""A model's card: published top-1 and how it was measured, crop, parameters, GMACs, and its weights file.

    python -m resnest_gluon info resnest50
    resnest-info resnest14 --json

Parameters are the learned values (BatchNorm statistics not counted); GMACs are multiply-adds per image at
the crop (convolutions and fully connected layers). Counting needs no weights; the card says whether the
file is on this machine.
"""

import argparse
import json
import os
from typing import Optional, Sequence

from . import common


def model_row(name: str) -> dict:
    """``name``'s size: ``crop``, ``params`` (learned values), ``gmacs`` at the crop, published ``top1``."""
    import numpy as np

    from ..models.flops import count_macs
    from ..models.zoo import get_model, model_info

    net = get_model(name)
    info = model_info(name)
    crop = info["crop_size"]
    macs = count_macs(net, (1, 3, crop, crop))  # infers every shape, so the parameters are known after it
    params = sum(
        int(np.prod(p.shape))
        for k, p in net._collect_params_with_prefix().items()
        if not k.endswith(("running_mean", "running_var"))
    )
    return dict(model=name, crop=crop, params=params, gmacs=macs / 1e9, top1=info["top1"])


def model_card(name: str, root: Optional[str] = None) -> dict:
    """:func:`model_row` plus the published file (``file``, ``sha1``, ``url``, ``publisher``, ``licence``,
    ``protocol`` of the top-1) and ``path`` / ``downloaded`` on this machine."""
    from ..models import pretrained

    card = model_row(name)
    try:
        card.update(pretrained.published(name))
    except ValueError:
        card.update(file=None, sha1=None, url=None, publisher=None, licence=None, protocol=None)
        return card
    path = pretrained.pretrained_path(name, root)
    card.update(path=path, downloaded=os.path.isfile(path))
    return card


def format_card(card: dict) -> str:
    name = card["model"]
    top1 = "-" if card["top1"] is None else f"{card['top1']:.2f} %"
    lines = [
        card["model"],
        f"  published top-1   {top1}",
    ]
    if card.get("protocol"):
        lines.append(f"  measured on       {card['protocol']}")
    lines += [
        f"  crop              {card['crop']} px",
        f"  parameters        {card['params'] / 1e6:.1f} M (learned; BatchNorm statistics not counted)",
        f"  GMACs             {card['gmacs']:.2f} (multiply-adds per image at the crop)",
    ]
    if card.get("file") is None:
        lines.append("  weights           none published: train it (resnest-train)")
        return "\n".join(lines)
    lines += [
        f"  file              {card['file']}",
        f"  SHA-1             {card['sha1']}",
        f"  source            {card['url']}",
        f"  published by      {card['publisher']}",
        f"  licence           {card['licence']}",
        f"  on this machine   {card['path'] if card['downloaded'] else 'no: resnest-download ' + name}",
    ]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from ..models.zoo import list_models

    p = common.parser(
        "A model's card: published top-1 and its protocol, crop, parameters, GMACs, weights file."
    )
    p.add_argument("name", metavar="NAME", help="a model name: " + ", ".join(list_models()))
    p.add_argument(
        "--dir", help="where the weights are looked for (default: $RESNEST_GLUON_HOME, else ~/.mxnet/models)"
    )
    p.add_argument("--json", action="store_true", help="the card as JSON")
    args = p.parse_args(argv)
    if args.name not in list_models():
        p.error(f"unknown model {args.name!r}; choose one of: {', '.join(list_models())}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    card = model_card(args.name, args.dir)
    print(json.dumps(card, indent=1) if args.json else format_card(card))
    return card
