"""Convert official PyTorch ResNeSt weights (or timm's resnest*d/e) into a Gluon .params file.

    python scripts/convert_weights.py --model resnest50 --input resnest50.safetensors --out resnest50.params

The result loads with ``get_model("resnest50", pretrained="resnest50.params")`` or ``--params`` in every
command. A missing, unreadable or misfitting input is one ``error:`` line; nothing is written then.
"""

import os

from resnest_gluon import get_model, list_models
from resnest_gluon.errors import UserError
from resnest_gluon.models.convert import load_torch_weights

from . import common


def parse_args(argv=None):
    parser = common.parser(__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--model", required=True, choices=list_models(), metavar="NAME", help="model name")
    parser.add_argument(
        "--input", required=True, help=".safetensors (no torch needed) or .pth/.pt (needs torch)"
    )
    # not required=True: argparse would then refuse the old spelling --output
    parser.add_argument("--out", help="the .params file to write (required)")
    common.alias(parser, "--output", dest="out")
    parser.add_argument("--classes", type=int, default=1000, help="classifier size of the source weights")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("the following arguments are required: --out")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.input):
        raise UserError(f"--input {args.input} does not exist")
    net = get_model(args.model, classes=args.classes)
    try:
        load_torch_weights(net, args.input)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"{args.input}: {err}") from None
    tmp = args.out + ".tmp"
    net.save_parameters(tmp)
    os.replace(tmp, args.out)  # never a half-written file under the final name
    print(f"wrote {args.out} ({len(net._collect_params_with_prefix())} arrays)")
