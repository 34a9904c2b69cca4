"""``python -m resnest_gluon``: the model table; ``python -m resnest_gluon COMMAND ...`` runs a command."""

import sys

import numpy as np

from .cli import COMMANDS, run


def model_table() -> list:
    """One row per registered model: name, crop size, parameter count (learned values), published top-1."""
    from .models.zoo import get_model, list_models, model_info

    rows = []
    for name in list_models():
        params = get_model(name)._collect_params_with_prefix()
        count = sum(
            int(np.prod(p.shape))
            for k, p in params.items()
            if not k.endswith(("running_mean", "running_var"))
        )
        info = model_info(name)
        rows.append((name, info["crop_size"], count, info["top1"]))
    return rows


def print_model_table() -> None:
    print(f"| {'model':<24}| crop | params (M) | published top-1 |")
    print(f"|{'-' * 25}|------|-----------|-----------------|")
    for name, crop, count, top1 in model_table():
        print(
            f"| {name:<24}| {crop:>4} | {count / 1e6:>9.1f} | {'-' if top1 is None else f'{top1:.2f}':>15} |"
        )


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: python -m resnest_gluon [COMMAND [ARGS ...]]",
        "",
        "With no command: the model table.",
        "",
    ]
    lines += ["commands (also installed as resnest-COMMAND):"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print_model_table()
        return 0
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
