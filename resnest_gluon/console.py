"""The console commands that ``pip install .`` writes: ``resnest-train`` calls :func:`train`, and so on.

Each is :func:`resnest_gluon.cli.run` for one command (kept apart from :mod:`resnest_gluon.cli`, whose
submodules carry the commands' names).
"""

from typing import Optional, Sequence

from .cli import COMMANDS, run


def _door(name: str):
    def main(argv: Optional[Sequence[str]] = None) -> int:
        return run(name, argv)

    main.__name__ = main.__qualname__ = name.replace("-", "_")
    main.__doc__ = f"``resnest-{name}``: {COMMANDS[name].summary}."
    return main


for _name in COMMANDS:
    globals()[_name.replace("-", "_")] = _door(_name)
