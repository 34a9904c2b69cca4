"""Averages the weights of a run's K best epoch checkpoints (by validation top-1 in metrics.jsonl).

    python scripts/train.py ... --keep-best 5 --save-dir runs/flowers
    python scripts/average_checkpoints.py runs/flowers --best 5 --out runs/flowers/resnest50-avg5.params
    python scripts/verify.py --model resnest50 --classes 5 --rec-val val.rec \\
        --params runs/flowers/resnest50-avg5.params

Every array of the files is averaged, BatchNorm statistics included, so the result is an ordinary
``.params`` that every script loads. Only epochs whose checkpoint is still on disk are candidates: train
with ``--keep-best K`` so that the K best stay.
"""

import argparse
import json
import os
from typing import List

from resnest_gluon.training import TrainingError, best_epochs, checkpoint_paths, read_metrics, saved_epochs
from resnest_gluon.training.checkpoints import check_params_file, save_arrays


def parse_args(argv=None) -> argparse.Namespace:
    from . import common

    p = common.parser("Average the weights of the K best checkpoints of a scripts/train.py run.")
    p.add_argument("run_dir", help="the run directory (args.json, metrics.jsonl, <model>-NNNN.params)")
    p.add_argument("--best", type=int, default=3, help="number of best checkpoints to average")
    p.add_argument("--out", required=True, help="the .params file to write")
    return p.parse_args(argv)


def average_params(paths: List[str]) -> dict:
    """The element-wise mean of the named arrays of ``paths`` (same keys and shapes in every file).

    Raises
    ------
    TrainingError
        Naming the file that does not load (cut short, not a parameter file) or whose names or shapes
        differ from the first file's (another model, another class count).
    """
    total = None
    for path in paths:
        try:
            arrays = check_params_file(path)
        except ValueError as err:
            raise TrainingError(f"{err}: copy it again, or leave it out") from None
        if total is None:
            total = {k: v.astype("float64") for k, v in arrays.items()}
            continue
        if set(arrays) != set(total):
            raise TrainingError(f"{path} has other parameters than {paths[0]}: not checkpoints of one run")
        for key, value in arrays.items():
            if value.shape != total[key].shape:
                raise TrainingError(
                    f"{path} has {key} of shape {value.shape}, {paths[0]} of shape {total[key].shape} "
                    "(another class count?): average checkpoints of one run only"
                )
            total[key] += value.astype("float64")
    return {k: (v / len(paths)).astype("float32") for k, v in total.items()}


def main(argv=None) -> dict:
    """Writes the average; returns ``{out, epochs, val_top1}`` (the chosen epochs and their top-1)."""
    args = parse_args(argv)
    args_path = os.path.join(args.run_dir, "args.json")
    if not os.path.isfile(args_path):
        raise TrainingError(f"{args.run_dir} is not a training run directory (no args.json)")
    if args.best < 1:
        raise TrainingError(f"--best must be at least 1, got {args.best}")
    with open(args_path) as f:
        model = json.load(f)["model"]
    rows = read_metrics(os.path.join(args.run_dir, "metrics.jsonl"))
    on_disk = saved_epochs(args.run_dir, model)
    epochs = best_epochs(rows, args.best, saved=on_disk)
    if len(epochs) < args.best:
        raise TrainingError(
            f"{args.run_dir} has {len(epochs)} validated checkpoint(s) on disk (epochs {on_disk}), "
            f"fewer than --best {args.best}: lower --best, or train with --keep-best {args.best}"
        )
    averaged = average_params([checkpoint_paths(args.run_dir, model, e)[0] for e in epochs])
    save_arrays(averaged, args.out)  # read back before it replaces anything; a write error is one line
    top1 = {r["epoch"]: r["val_top1"] for r in rows}
    print(
        f"averaged epochs {', '.join(map(str, epochs))} (val top-1 "
        f"{', '.join(f'{top1[e]:.2f}%' for e in epochs)}) into {args.out}"
    )
    return dict(out=args.out, epochs=epochs, val_top1=[top1[e] for e in epochs])
