"""The toolkit's commands, one module each, every one with ``parse_args(argv)`` and ``main(argv)``.

:func:`run` is the door they share: ``resnest-<command>`` (installed by ``pip install .``),
``python -m resnest_gluon <command>`` and ``scripts/<command>.py`` / ``tools/<command>.py`` all call it.
It sets MXNet's OpenMP threads before libmxnet loads (:mod:`resnest_gluon.threads`), imports the command,
and turns a mistake the user can fix (:class:`~resnest_gluon.errors.UserError`) into one ``error:`` line
and exit status 1, and a stop (Ctrl-C, SIGTERM) into one line and 130 / 143. ``--debug`` (or
``RESNEST_GLUON_DEBUG=1``) shows the traceback instead. :mod:`.common` holds the options every command
spells the same way.
"""

import importlib
import os
import sys
from typing import NamedTuple, Optional, Sequence

__all__ = ["COMMANDS", "Command", "child_env", "command_line", "console_scripts", "run"]


class Command(NamedTuple):
    summary: str
    #: the command sets MXNet's threads before importing it (the others do not load MXNet, or start
    #: processes that choose their own)
    mxnet: bool = False
    #: (flag, default): cores the command's data threads take from MXNet's share
    reserve: Optional[tuple] = None
    #: SIGTERM stops it as Ctrl-C does, and this says what a stop leaves behind
    on_stop: Optional[str] = None
    #: name the Horovod rank in its error line
    ranked: bool = False


COMMANDS = {
    "train": Command(
        "train a ResNeSt from RecordIO (one process, or many under horovodrun)",
        mxnet=True,
        reserve=("--data-threads", 4),
        on_stop="every checkpoint saved is complete: --resume continues",
        ranked=True,
    ),
    "verify": Command(
        "top-1/top-5 of a checkpoint on a validation .rec", mxnet=True, on_stop="no result was written"
    ),
    "predict": Command("label images with a trained or published model", mxnet=True),
    "download": Command("fetch published ImageNet weights, SHA-1 checked", mxnet=True),
    "info": Command(
        "a model's card: published top-1 and how it was measured, size, its weights file", mxnet=True
    ),
    "export": Command(
        "a run or checkpoint as symbol, ONNX, OpenVINO or INT8 files, with .meta.json", mxnet=True
    ),
    "im2rec": Command("pack image folders into RecordIO (.lst/.rec/.idx), MXNet's format"),
    "rec-check": Command("check a .rec/.idx pair record by record"),
    "benchmark": Command("inference speed of every CPU path, reported as the paper reports it", mxnet=True),
    "quantize": Command("INT8 model from a checkpoint, calibrated on records", mxnet=True),
    "average-checkpoints": Command("average the weights of a run's best checkpoints", mxnet=True),
    "convert-weights": Command("convert a safetensors file into a .params file", mxnet=True),
    "prepare-imagenet": Command("turn the official ImageNet archives into records"),
    "demo": Command("the built-in demo: pack, train with two workers, verify, fine-tune, predict"),
    "bench-im2rec": Command("im2rec against MXNet's own im2rec.py"),
    "bench-pipeline": Command("input pipeline throughput against the decode limit", mxnet=True),
    "bench-train-step": Command("one training step against gluoncv's", mxnet=True),
    "train-seg": Command(
        "train a DeepLab ResNeSt for segmentation (one process, or many under horovodrun)",
        mxnet=True,
        reserve=("--data-threads", 4),
        on_stop="every checkpoint saved is complete: --resume continues",
        ranked=True,
    ),
    "verify-seg": Command(
        "pixel accuracy and mIoU of a segmentation model", True, on_stop="no result was written"
    ),
    "predict-seg": Command(
        "label maps, colour overlays and class shares of images with a segmentation model", mxnet=True
    ),
    "prepare-ade20k": Command(
        "turn ADEChallengeData2016.zip into image-mask pair records",
        on_stop="finished parts are kept: run it again to go on",
    ),
}


def console_scripts() -> list:
    """``setup.py``'s entry points: ``resnest-<command> = resnest_gluon.console:<command>``."""
    return [f"resnest-{name} = resnest_gluon.console:{name.replace('-', '_')}" for name in COMMANDS]


def command_line(name: str) -> list:
    """``[python, "-m", "resnest_gluon", name]``: command ``name`` in a process of its own (with
    :func:`child_env`, the same package as this process, installed or not)."""
    return [sys.executable, "-m", "resnest_gluon", name]


def child_env(env: Optional[dict] = None) -> dict:
    """``env`` (default: this process's environment) with this package's folder first on ``PYTHONPATH``."""
    env = dict(os.environ if env is None else env)
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([top] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def run(name: str, argv: Optional[Sequence[str]] = None) -> int:
    """Runs command ``name`` on ``argv`` (default: ``sys.argv[1:]``) as its console door; returns the exit
    status."""
    from .. import threads
    from ..errors import UserError
    from ..interrupts import (
        end_process,
        exit_status,
        held_signals,
        report_crashes,
        stop_message,
        stop_on_sigterm,
    )

    command = COMMANDS[name]
    if command.on_stop is not None:  # first: a SIGTERM during start-up (the imports) is a stop too
        stop_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    if command.mxnet:  # before libmxnet loads: it reads its thread count once
        flag, default = command.reserve or (None, 0)
        threads.configure(reserve=threads.argv_int(flag, default, argv) if flag else 0)
    debug = os.environ.get("RESNEST_GLUON_DEBUG", "") not in ("", "0") or "--debug" in argv
    try:
        with held_signals():  # libraries catch a KeyboardInterrupt mid-import and are left half-imported
            module = _module(name)
        if command.mxnet:
            report_crashes()  # after mxnet's import: its handler adds the native stack
        status = module.main(argv)
    except UserError as err:
        if debug:
            raise
        print(f"error{_rank(command)}: {err}", file=sys.stderr)
        if command.ranked and _distributed():
            end_process(1)  # MXNet's exit hook would wait on workers that may be gone
        return 1
    except KeyboardInterrupt as err:
        if debug or command.on_stop is None:
            raise
        print(stop_message(f"resnest-{name}{_rank(command)}", err, command.on_stop), file=sys.stderr)
        if command.mxnet and "mxnet" in sys.modules:
            end_process(exit_status(err))  # nothing after the stop line (see interrupts.end_process)
        return exit_status(err)
    return status if isinstance(status, int) else 0


def _distributed() -> bool:
    if "mxnet" not in sys.modules:
        return False
    from ..training import dist

    return dist.is_distributed()


def _rank(command: Command) -> str:
    if not command.ranked:
        return ""
    from ..training import dist

    return f" (rank {dist.rank()})"
