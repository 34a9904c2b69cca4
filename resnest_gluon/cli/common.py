"""What the commands' command lines share: one spelling for each option, help in groups with each default
shown once, and the old spellings kept as hidden aliases.

    p = common.parser("Label images with a ResNeSt.")
    common.add_ctx(p)                      # --ctx auto|cpu|gpu (auto: a GPU when MXNet sees one)
    common.add_data_threads(p, 4)          # --data-threads N (old: --threads)
    common.add_progress(p)                 # --progress / --no-progress (default: on at a terminal)
    common.alias(p, "--threads", dest="data_threads", type=int)
    args = p.parse_args(argv)
    ctx = common.resolve_ctx(args)         # "cpu" or "gpu", logged when it was chosen for the user

Nothing here imports MXNet at import time: im2rec and rec_check start without it.
"""

import argparse
import logging
import sys
from typing import Optional

__all__ = [
    "HelpFormatter",
    "add_ctx",
    "add_data_threads",
    "add_debug",
    "add_progress",
    "alias",
    "debug_requested",
    "parser",
    "progress_enabled",
    "resolve_ctx",
]

logger = logging.getLogger("resnest_gluon")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each default shown once (``(default: X)``, unless the help text already speaks of its default or there
    is none to show), required options marked ``(required)``, and the description kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text == argparse.SUPPRESS:
            return text
        if action.required and "(required)" not in text:
            text += " (required)"
        default = action.default
        shown = (
            not (default is None or default is False or default == argparse.SUPPRESS)
            and action.option_strings
        )
        if shown and "default" not in text and not isinstance(action, argparse._StoreConstAction):
            text += " (default: %(default)s)"
        return text


def parser(description: str, epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with :class:`HelpFormatter` and ``--debug``."""
    p = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)
    add_debug(p)
    return p


def add_debug(p: argparse.ArgumentParser) -> None:
    """``--debug``: an error shows its traceback (as ``RESNEST_GLUON_DEBUG=1`` does)."""
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (or RESNEST_GLUON_DEBUG=1)"
    )


def alias(p, *flags: str, dest: str, **kw) -> None:
    """Old spellings of an option that still work and are not listed in ``--help``."""
    p.add_argument(*flags, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


def add_ctx(p, help_gpu: str = "mx.gpu(local_rank), or gpu(0) when a worker sees exactly one GPU") -> None:
    """``--ctx auto|cpu|gpu`` (default auto: the GPU when MXNet sees one, else the CPU); ``--no-cuda``
    is ``--ctx cpu``."""
    p.add_argument(
        "--ctx",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help=f"device: auto (the default) takes a GPU when MXNet sees one, else the CPU; gpu uses {help_gpu}",
    )
    alias(p, "--no-cuda", dest="ctx", action="store_const", const="cpu")


def resolve_ctx(args: argparse.Namespace) -> str:
    """Turns ``args.ctx == "auto"`` into ``"gpu"`` or ``"cpu"`` (logged) and returns it."""
    if args.ctx == "auto":
        import mxnet as mx

        args.ctx = "gpu" if mx.context.num_gpus() > 0 else "cpu"
        logger.info(
            "--ctx auto: %s", "a GPU is visible, using it" if args.ctx == "gpu" else "no GPU, on the CPU"
        )
    return args.ctx


def add_data_threads(p, default: int, help: str = "image decoding threads per worker") -> None:
    """``--data-threads N`` (``--threads`` kept as a hidden alias)."""
    p.add_argument("--data-threads", type=int, default=default, help=help)
    alias(p, "--threads", dest="data_threads", type=int)


def add_seg_model(p, params_help: str) -> None:
    """``--model`` (a DeepLab of the registry), ``--backbone``, and its weights: ``--params FILE`` or
    ``--pretrained`` (gluoncv's published file), one of the two required."""
    from resnest_gluon.models.deeplab import SEG_MODELS

    p.add_argument("--model", default="deeplab_resnest50_ade", help=f"one of {', '.join(SEG_MODELS)}")
    p.add_argument(
        "--backbone", default=None, help="the backbone the model was trained with, if not the row's"
    )
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--params", help=params_help)
    weights.add_argument("--pretrained", action="store_true", help="gluoncv's published weights")


def add_progress(p) -> None:
    """``--progress`` / ``--no-progress``: progress bars (default: on at a terminal, one line per 30 s in a
    log)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show progress bars (default: on at a terminal, a line per 30 s in a log)",
    )
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def progress_enabled(args: argparse.Namespace) -> bool:
    """Whether ``args.progress`` (None: decide by the terminal) asks for bars at all."""
    return True if args.progress is None else bool(args.progress)


def debug_requested(argv) -> bool:
    """``--debug`` on a command line, before it is parsed."""
    return "--debug" in (sys.argv[1:] if argv is None else argv)
