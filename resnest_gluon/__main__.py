"""``python -m resnest_gluon``: the model table (crop, parameters, GMACs, published top-1);
``python -m resnest_gluon COMMAND ...`` runs a command (``info NAME``: one model's card)."""

import sys

from .cli import COMMANDS, run


def model_table() -> list:
    """One row per registered model: name, crop, parameters (learned values), GMACs at the crop, published
    top-1."""
    from .cli.info import model_row
    from .models.zoo import list_models

    return [model_row(name) for name in list_models()]


def print_model_table() -> None:
    print(f"| {'model':<23}| crop | params (M) | GMACs | published top-1 |")
    print(f"|{'-' * 24}|-----:|-----------:|------:|----------------:|")
    for row in model_table():
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        print(
            f"| {row['model']:<23}| {row['crop']:>4} | {row['params'] / 1e6:>10.1f} | {row['gmacs']:>5.2f} "
            f"| {top1:>15} |"
        )


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: python -m resnest_gluon [COMMAND [ARGS ...]]",
        "",
        "With no command: the model table (crop, parameters, GMACs, published top-1).",
        "python -m resnest_gluon info NAME: one model's card.",
        "",
    ]
    lines += ["commands (also installed as resnest-COMMAND):"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        from . import threads

        threads.configure()  # before libmxnet loads, as every command does
        print_model_table()
        return 0
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    sys.argv[0] = f"python -m resnest_gluon {argv[0]}"  # argparse's usage line names the program so
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
