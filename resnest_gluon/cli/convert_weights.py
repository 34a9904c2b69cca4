"""Convert official PyTorch ResNeSt weights (or timm's resnest*d/e) into a Gluon .params file.

python scripts/convert_weights.py --model resnest50 --input resnest50.safetensors --output resnest50.params
"""

import argparse
import os

from resnest_gluon import get_model, list_models
from resnest_gluon.models.convert import load_torch_weights


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, choices=list_models(), metavar="NAME", help="model name")
    parser.add_argument(
        "--input", required=True, help=".safetensors (no torch needed) or .pth/.pt (needs torch)"
    )
    parser.add_argument("--output", required=True, help="the .params file to write")
    parser.add_argument("--classes", type=int, default=1000, help="classifier size of the source weights")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    net = get_model(args.model, classes=args.classes)
    load_torch_weights(net, args.input)
    tmp = args.output + ".tmp"
    net.save_parameters(tmp)
    os.replace(tmp, args.output)  # never a half-written file under the final name
    print(f"wrote {args.output} ({len(net._collect_params_with_prefix())} arrays)")
