"""One training loop for every task: classification (``resnest-train``) and any other that brings a
:class:`Task` (segmentation, say).

The loop owns what every task shares: the steps per epoch from the shards, the learning rate (linear
warm-up, then cosine, per update), the run directory (args.json, metrics.jsonl, curves.png, checkpoints,
``--resume``), the optimizer (NAG, with the float16 loss scaler), the moving average of the weights, the
workers (Horovod: broadcast, BatchNorm statistics averaged, barriers) and the best checkpoint. The task
says what a batch is, what the loss is, and how to validate.

:func:`fit` runs it, in steps that each do one thing: :func:`plan_steps`, :func:`start_epoch`,
:func:`make_trainer`, :func:`restore`, then per epoch :func:`train_epoch`, :func:`save_epoch`,
``task.validate`` and :func:`finish_epoch`.
"""

import argparse
import logging
import os
import time
from typing import Dict, Iterable, NamedTuple, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd

from ..interrupts import held_signals
from ..progress import progress_bar
from . import dist
from .amp import LossScaler
from .checkpoints import (
    best_epochs,
    checkpoint_paths,
    ema_checkpoint_path,
    latest_checkpoint,
    latest_good_checkpoint,
    non_finite_arrays,
    param_arrays,
    prune_checkpoints,
    save_checkpoint,
    save_params,
)
from .checks import TrainingError
from .ema import EMA
from .evaluation import average_aux_states
from .rundir import (
    append_metrics,
    atomic_json,
    copy_atomic,
    plot_curves,
    read_metrics,
    truncate_metrics,
    write_metrics,
)
from .schedule import lr_at, no_weight_decay
from .tensorboard import open_board

__all__ = ["BASE_BATCH", "Plan", "Task", "fit", "plan_steps", "train_epoch"]

logger = logging.getLogger("resnest_gluon.train")

BASE_BATCH = 256  # --lr is the rate for this many images; it scales linearly with the total batch


class Task:
    """What a task brings to :func:`fit`. ``args`` is the command's namespace; the loop reads the options
    every task shares from it (epochs, batch_size, accumulate, lr, warmup_epochs, momentum, wd, no_wd,
    dtype, loss_scale, gradient_predivide_factor, ctx, save_dir, model, resume, keep, keep_best, ema,
    eval_frequency, no_hybridize, seed)."""

    #: validation figures, row key -> label; the first picks ``<model>-best.params``
    metrics: Dict[str, str] = {"val_top1": "top-1", "val_top5": "top-5"}
    #: the y axis of curves.png
    metric_axis = "validation accuracy (%)"

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def build_net(self, ctx: mx.Context):
        """The initialised network on ``ctx``."""
        raise NotImplementedError

    def prepare(self, net, ctx: mx.Context, load: bool) -> None:
        """After :meth:`build_net`: load starting weights when ``load`` (rank 0 of a fresh run), set
        learning-rate multipliers, freeze layers."""

    def train_data(self, epoch: int, ctx: mx.Context) -> Iterable:
        """This worker's batches of ``epoch``."""
        raise NotImplementedError

    def begin_epoch(self, net, epoch: int) -> dict:
        """Called before each epoch; returns fields for its metrics row (e.g. a DropBlock probability)."""
        return {}

    def inputs(self, batch, ctx: mx.Context, epoch: int, rng: np.random.RandomState) -> Tuple:
        """``(data, target)`` of a batch on ``ctx``."""
        raise NotImplementedError

    def loss(self, net, data, target):
        """The per-sample loss (float32), inside ``autograd.record()``."""
        raise NotImplementedError

    def validate(self, net, ctx: mx.Context, epoch: int, name: str = "val") -> Optional[Dict[str, float]]:
        """The :attr:`metrics` over all workers, or None when there is no validation set."""
        return None

    def run_info(self) -> dict:
        """Extra fields for args.json."""
        return {}

    def lr_at(self, step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
        """The learning rate of update ``step``: warm-up then cosine (segmentation: poly)."""
        return lr_at(step, peak_lr, warmup_steps, total_steps)


class Plan(NamedTuple):
    steps: int  # batches per epoch and worker (whole updates only)
    updates: int  # updates per epoch
    total_batch: int  # images per step over all workers
    peak_lr: float
    warmup_steps: int


def plan_steps(args: argparse.Namespace, n_train: int, workers: int) -> Plan:
    """Steps per epoch from the smallest shard (the same on every worker: unequal counts would hang), and
    the learning rate scaled to the batch of an update."""
    from ..data import shard_bounds

    shard = min(end - begin for begin, end in (shard_bounds(n_train, workers, r) for r in range(workers)))
    if shard < args.batch_size:
        raise TrainingError(
            f"--batch-size {args.batch_size} is larger than a worker's shard ({shard} of {n_train} training "
            f"images over {workers} workers): lower --batch-size or use fewer workers"
        )
    steps = shard // args.batch_size // args.accumulate * args.accumulate
    if steps < 1:
        raise TrainingError(
            f"--accumulate {args.accumulate} x --batch-size {args.batch_size} is more than a worker's shard "
            f"({shard} images): lower one of them"
        )
    total_batch = args.batch_size * workers
    updates = steps // args.accumulate
    peak_lr = args.lr * total_batch * args.accumulate / BASE_BATCH
    return Plan(steps, updates, total_batch, peak_lr, int(round(args.warmup_epochs * updates)))


def start_epoch(args: argparse.Namespace, primary: bool, run_info: dict) -> int:
    """The epoch to start from: rank 0 finds the newest complete checkpoint (with ``--resume``) or refuses
    a used run directory, writes args.json, and tells the other workers."""
    first = 0
    if primary:
        found = latest_checkpoint(args.save_dir, args.model)
        if args.resume and found:  # a newest checkpoint that does not load is named and passed over
            found = latest_good_checkpoint(args.save_dir, args.model)
            if not found:
                raise TrainingError(
                    f"no checkpoint in {args.save_dir} loads (each is named above): restore one from a "
                    "backup, or choose another --save-dir"
                )
        if args.resume:
            first = found[0] if found else 0
            if not found:
                logger.info("--resume: no complete checkpoint in %s, starting from scratch", args.save_dir)
        elif found or read_metrics(os.path.join(args.save_dir, "metrics.jsonl")):
            raise TrainingError(
                f"{args.save_dir} already holds a run: pass --resume to continue it, or choose another "
                "--save-dir"
            )
        if first >= args.epochs:
            raise TrainingError(f"{args.save_dir} is already at epoch {first} of --epochs {args.epochs}")
        atomic_json(os.path.join(args.save_dir, "args.json"), dict(vars(args), **run_info))
    # the others learn it from a sum in which they add zero
    return int(dist.allreduce_sum(mx.nd.array([first if primary else 0]), name="start").asscalar())


def make_trainer(net, args: argparse.Namespace, plan: Plan):
    """Nesterov SGD over all workers (no weight decay on BN and biases with ``--no-wd``), and the float16
    loss scaler (None in float32)."""
    optimizer_params = dict(
        learning_rate=plan.peak_lr,
        momentum=args.momentum,
        wd=args.wd,
        multi_precision=args.dtype == "float16",
    )
    if args.no_wd:
        no_weight_decay(net.collect_params())
    trainer = dist.make_trainer(net.collect_params(), "nag", optimizer_params, args.gradient_predivide_factor)
    scaler = LossScaler(args.loss_scale) if args.dtype == "float16" else None
    return trainer, scaler


def restore(net, trainer, args: argparse.Namespace, task: Task, first: int, ctx, plan: Plan, primary: bool):
    """Loads the checkpoint of epoch ``first`` (when resuming), gives every worker rank 0's weights, and
    sets up the moving average. Returns ``(rows, best, ema, best_ema)``: the metrics rows kept, the best
    validation figure so far and the EMA's."""
    key = next(iter(task.metrics))
    rows, best = [], -1.0
    if first > 0:
        params_path, states_path = checkpoint_paths(args.save_dir, args.model, first)
        if not (os.path.exists(params_path) and os.path.exists(states_path)):
            raise TrainingError(
                f"rank {dist.rank()} cannot read {params_path}: with --resume, --save-dir must be on a "
                f"filesystem every worker sees"
            )
        net.load_parameters(params_path, ctx=ctx, cast_dtype=True)
        trainer.load_states(states_path)  # a pickle: trusted run directories only
        if primary:
            logger.info("resumed from %s (epoch %d)", params_path, first)
    if primary and args.resume:
        # lines of epochs after the checkpoint (a kill between the two writes) are dropped
        rows = truncate_metrics(os.path.join(args.save_dir, "metrics.jsonl"), first)
        best = max((r[key] for r in rows if r.get(key) is not None), default=-1.0)
    # every worker starts from rank 0's parameters (fresh initialisation, pretrained or resumed checkpoint)
    dist.broadcast_parameters(net.collect_params())
    ema, best_ema = None, -1.0
    if args.ema is not None:
        ema = EMA(net, args.ema)
        ema_path = ema_checkpoint_path(args.save_dir, args.model, first)
        if first > 0 and os.path.exists(ema_path):
            ema.load(ema_path, first * plan.updates)
        elif first > 0 and primary:
            logger.warning("no %s: the moving average starts again from the resumed weights", ema_path)
        ema_key = key + "_ema"
        best_ema = max((r[ema_key] for r in rows if r.get(ema_key) is not None), default=-1.0)
    return rows, best, ema, best_ema


def _batches(data_iter, args: argparse.Namespace):
    """The batches of ``data_iter``; a record it cannot decode stops the run with a TrainingError."""
    it = iter(data_iter)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ValueError as err:
            raise TrainingError(
                f"training data: {err}. The checkpoints in {args.save_dir} are intact: --resume continues "
                "once the data is fixed"
            ) from err
        yield batch


def _checked_loss(pending, args, bar) -> float:
    """The mean loss over workers of a step, read now (``pending`` holds it summed over workers on the
    device); a non-finite one stops the run, on every worker at the same step (they read the same sum)."""
    summed, workers, where, lr = pending
    mean_loss = summed.asscalar() / workers
    if not np.isfinite(mean_loss):
        bar.close()
        raise TrainingError(
            f"non-finite loss ({mean_loss}) at {where}; nothing was saved after the last checkpoint. Lower "
            f"--lr (now {lr:.4g}) or check the data; --resume continues from the last good checkpoint in "
            f"{args.save_dir}"
        )
    return mean_loss


def train_epoch(task: Task, net, trainer, epoch: int, ctx, plan: Plan, scaler=None, ema=None, board=None):
    """One epoch of ``plan.steps`` batches (``steps / --accumulate`` updates); returns (mean training loss
    over all workers, seconds, last lr).

    On a GPU the host does not wait for the step it has just queued: a step's loss, summed over workers
    on the device, is read during the next step (whose forward and backward are queued by then), so the
    optimizer update, the Horovod calls and the next batch overlap the device's work. On a CPU, where
    host and device are the same cores, the loss is read before the update (as MXNet's MKLDNN arrays and
    Horovod's CPU allreduce, left to overlap, let workers' weights drift apart by a rounding error).
    ``scaler`` (a :class:`~resnest_gluon.training.LossScaler`, float16) scales the loss and skips
    overflowed steps; ``ema`` (an :class:`~resnest_gluon.training.ema.EMA`) follows every update; ``board``
    (a :class:`~resnest_gluon.training.tensorboard.Board`, rank 0) gets each step's loss and rate.
    """
    args, steps = task.args, plan.steps
    total_steps = args.epochs * steps // args.accumulate
    rng = np.random.RandomState(args.seed + 7919 * epoch + dist.rank())
    workers, primary = dist.size(), dist.is_primary()
    overlap = args.ctx == "gpu"
    data_iter = task.train_data(epoch, ctx)
    bar = progress_bar(
        total=steps,
        desc=f"epoch {epoch + 1}/{args.epochs}",
        disable=not show_progress(args, primary),
        leave=False,
    )
    loss_sum, lr, start, done, pending = 0.0, 0.0, time.time(), 0, None

    def read(pending):
        nonlocal loss_sum, done
        loss = _checked_loss(pending, args, bar)
        loss_sum += loss
        done += 1
        if board is not None:
            board.step(epoch * steps + done, loss, pending[3])
        bar.update(1)
        bar.set_postfix(  # no refresh: the bar redraws at its own interval (a line per 30 s in a log)
            loss=f"{loss_sum / done:.3f}",
            img_s=f"{done * args.batch_size * workers / (time.time() - start):.0f}",
            refresh=False,
        )

    for i, batch in enumerate(_batches(data_iter, args)):
        if i >= steps:  # equal step counts on every worker, whatever the shard sizes
            break
        step = (epoch * steps + i) // args.accumulate  # the update this batch contributes to
        lr = task.lr_at(step, plan.peak_lr, plan.warmup_steps, total_steps)
        trainer.set_learning_rate(lr)
        data, target = task.inputs(batch, ctx, epoch, rng)
        with autograd.record():
            loss = task.loss(net, data, target)
            scaled = loss * scaler.scale if scaler is not None else loss
        scaled.backward()
        if pending is not None:
            # The previous step's loss: done before this step's forward began, so reading it waits for
            # nothing the device still has to do. (Read before this step's "loss" allreduce: Horovod
            # allows one tensor of a name in flight.)
            read(pending)
        summed = dist.allreduce_sum(loss.mean().reshape((1,)), name="loss")
        pending = (summed, workers, f"epoch {epoch + 1}, step {i + 1} of {steps} (update {step + 1})", lr)
        if not overlap:
            read(pending)
            pending = None
        if (i + 1) % args.accumulate == 0:
            if scaler is not None:
                scaler.step(trainer, args.batch_size * args.accumulate)  # skipped when a gradient overflowed
            else:
                trainer.step(args.batch_size * args.accumulate)
            if args.accumulate > 1:
                net.collect_params().zero_grad()
            if ema is not None:
                ema.update()
    if pending is not None:  # the last step's loss, checked before anything is saved
        read(pending)
    mx.nd.waitall()
    seconds = time.time() - start
    bar.close()
    return loss_sum / steps, seconds, lr


def check_finite(net, ema, args: argparse.Namespace, epoch: int) -> None:
    """Every worker, before anything of ``epoch`` is saved: one fused all-finite check of the weights (and
    of the moving average), agreed over workers with one allreduce. A NaN or an infinity stops the run, so
    a non-finite model never replaces a checkpoint or a best file (oneDNN's ReLU and pooling can hide NaN
    weights behind a finite loss)."""
    bad = non_finite_arrays(param_arrays(net))
    bad_ema = non_finite_arrays(ema.shadow) if ema is not None else []
    mine = mx.nd.array([len(bad), len(bad_ema)])
    total = dist.allreduce_sum(mine, name="finite").asnumpy()
    if total.any():
        what = bad or bad_ema
        count = len(param_arrays(net)) if bad else len(ema.shadow)
        where = "weights" if bad else "moving average (--ema)"
        names = ", ".join(what[:3]) + (", ..." if len(what) > 3 else "") or "on another worker"
        raise TrainingError(
            f"after epoch {epoch} {len(what) or 'some'} of {count} parameter arrays of the {where} are "
            f"NaN or infinite ({names}); "
            f"nothing of this epoch was saved. Lower --lr (now {args.lr:g}) and --resume from the last good "
            f"checkpoint in {args.save_dir}"
        )


def show_progress(args: argparse.Namespace, primary: bool) -> bool:
    """Progress bars on rank 0 unless ``--no-progress``."""
    return primary and getattr(args, "progress", None) is not False


def eta_text(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = int(round(max(seconds, 0)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def size_text(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def files_to_ship(save_dir: str, model: str) -> list:
    """``(name, bytes)`` of the files of a run that a user ships (what ``predict.py --run`` and
    ``verify.py --run`` read): the best weights (else the newest checkpoint), the EMA's best, the class
    names and args.json. The rest (epoch checkpoints, ``.states``, logs, curves) stays with the run."""
    names = [f"{model}-best.params"]
    if not os.path.isfile(os.path.join(save_dir, names[0])):
        found = latest_checkpoint(save_dir, model)
        names = [os.path.basename(found[1])] if found else []
    names += [f"{model}-ema-best.params", "classes.txt", "args.json"]
    return [
        (name, os.path.getsize(os.path.join(save_dir, name)))
        for name in names
        if os.path.isfile(os.path.join(save_dir, name))
    ]


def run_summary(task: Task, args: argparse.Namespace, rows: list, seconds: float) -> dict:
    """The run's figures for its last log lines: the last epoch's (the run's result) and the best epoch's
    (chosen on the validation set), the time, the files to ship and the run directory's size."""
    key = next(iter(task.metrics))
    done = [r for r in rows if r.get(key) is not None]
    last = done[-1] if done else None
    best = max(done, key=lambda r: r[key]) if done else None
    total = sum(
        os.path.getsize(os.path.join(args.save_dir, n))
        for n in os.listdir(args.save_dir)
        if os.path.isfile(os.path.join(args.save_dir, n))
    )
    return dict(
        metric=task.metrics[key],
        last=None if last is None else (last["epoch"], last[key]),
        best=None if best is None else (best["epoch"], best[key]),
        seconds=seconds,
        ship=files_to_ship(args.save_dir, args.model),
        run_bytes=total,
    )


def log_summary(summary: dict, args: argparse.Namespace) -> None:
    label = summary["metric"]
    if summary["last"] is not None:
        logger.info(
            "result: val %s %.2f%% at the last epoch (%d)", label, summary["last"][1], summary["last"][0]
        )
        logger.info(
            "best:   val %s %.2f%% at epoch %d (chosen on validation: optimistic as an estimate)",
            label,
            summary["best"][1],
            summary["best"][0],
        )
    else:
        logger.info("no validation ran (no --rec-val): no accuracy to report")
    logger.info(
        "time %s; run directory %s (%s in all)",
        eta_text(summary["seconds"]),
        args.save_dir,
        size_text(summary["run_bytes"]),
    )
    logger.info(
        "files to ship: %s (the rest is for --resume and the record)",
        ", ".join(f"{name} ({size_text(size)})" for name, size in summary["ship"]) or "none",
    )


def save_ema(net, ema, args: argparse.Namespace, epoch: int) -> str:
    """``{model}-{epoch}-ema.params`` (for --resume), copied to ``{model}-ema.params``; returns its path."""
    path = ema_checkpoint_path(args.save_dir, args.model, epoch)
    with ema.applied():
        save_params(net, path)
    copy_atomic(path, os.path.join(args.save_dir, f"{args.model}-ema.params"))
    return path


def save_epoch(net, trainer, args: argparse.Namespace, row: dict, rows: list, ema, epoch: int):
    """Rank 0, before validation: the metrics line, then the moving average and the checkpoint (whose
    params file marks the epoch complete). A crash in validation loses no epoch, and a kill before the
    checkpoint lands leaves a line that ``--resume`` drops. Returns the paths (params, EMA or None)."""
    metrics_path = os.path.join(args.save_dir, "metrics.jsonl")
    with held_signals():
        append_metrics(metrics_path, row)
        rows.append(row)
        ema_path = save_ema(net, ema, args, epoch) if ema is not None else None
        params_path = save_checkpoint(net, trainer, args.save_dir, args.model, epoch)
    return params_path, ema_path


class _Best:
    """The best validation figure so far, of the live and of the EMA weights."""

    def __init__(self, live: float, ema: float):
        self.live, self.ema = live, ema


def finish_epoch(task: Task, args, rows: list, best: _Best, paths, values, ema_values, workers: int) -> None:
    """Rank 0, after validation: metrics rewritten with the figures, the best files copied, old
    checkpoints pruned, curves drawn."""
    key = next(iter(task.metrics))
    params_path, ema_path = paths
    with held_signals():
        if values is not None:
            write_metrics(os.path.join(args.save_dir, "metrics.jsonl"), rows)
            if values[key] > best.live:
                best.live = values[key]
                copy_atomic(params_path, os.path.join(args.save_dir, f"{args.model}-best.params"))
            if ema_values is not None and ema_values[key] > best.ema:
                best.ema = ema_values[key]
                copy_atomic(ema_path, os.path.join(args.save_dir, f"{args.model}-ema-best.params"))
        protect = best_epochs(rows, args.keep_best, key=key) if args.keep_best else ()
        prune_checkpoints(args.save_dir, args.model, args.keep, protect)
        title = f"{args.model}, {workers} worker(s)"
        plot_curves(rows, os.path.join(args.save_dir, "curves.png"), title, task.metrics, task.metric_axis)


def _eta(run_start: float, done: int, left: int) -> str:
    """``  ETA 3m05s`` for the epochs ``left``, at the mean pace of the ``done`` ones of this process."""
    if left <= 0 or done <= 0:
        return ""
    return f"  ETA {eta_text((time.time() - run_start) / done * left)}"


def _figures(task: Task, values, ema_values) -> str:
    if values is None:
        return " ".join(f"{label} -" for label in task.metrics.values())
    text = " ".join(f"{label} {values[key]:.2f}%" for key, label in task.metrics.items())
    if ema_values is not None:
        key, label = next(iter(task.metrics.items()))
        text += f" (EMA {label} {ema_values[key]:.2f}%)"
    return text


def fit(task: Task, ctx: mx.Context, n_train: int) -> dict:
    """Trains ``task`` on ``n_train`` images (over all workers) from where its run directory stands;
    returns the last epoch's metrics row plus ``best_<metric>``, ``best_<metric>_ema`` and ``save_dir``."""
    args = task.args
    workers, primary = dist.size(), dist.is_primary()
    plan = plan_steps(args, n_train, workers)
    first = start_epoch(
        args,
        primary,
        dict(
            task.run_info(),
            workers=workers,
            total_batch=plan.total_batch,
            peak_lr=plan.peak_lr,
            steps_per_epoch=plan.steps,
            updates_per_epoch=plan.updates,
            update_batch=plan.total_batch * args.accumulate,
            num_training_samples=n_train,
        ),
    )
    net = task.build_net(ctx)
    # rank 0 loads the starting weights (broadcast in restore); a resumed run has them in its checkpoint
    task.prepare(net, ctx, load=primary and first == 0)
    trainer, scaler = make_trainer(net, args, plan)
    rows, best_live, ema, best_ema = restore(net, trainer, args, task, first, ctx, plan, primary)
    best = _Best(best_live, best_ema)
    if not args.no_hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    key = next(iter(task.metrics))
    board = open_board(getattr(args, "tensorboard", None)) if primary else None
    run_start = time.time()

    row = {}
    for epoch in range(first, args.epochs):
        tic = time.time()
        extra = task.begin_epoch(net, epoch)
        train_loss, train_seconds, lr = train_epoch(task, net, trainer, epoch, ctx, plan, scaler, ema, board)
        # BN statistics differ per worker: average them so every worker holds the same model
        average_aux_states(net, dist.allreduce_sum, workers)
        check_finite(net, ema, args, epoch + 1)
        row = dict(epoch=epoch + 1, lr=lr, train_loss=train_loss, **{k: None for k in task.metrics})
        row.update(
            samples_per_sec=plan.steps * plan.total_batch / train_seconds,
            time=time.time() - tic,
            **extra,
            workers=workers,
            loss_scale=None if scaler is None else scaler.scale,
            skipped_steps=0 if scaler is None else scaler.skipped,
        )
        if ema is not None:
            row.update({k + "_ema": None for k in task.metrics})
        paths = save_epoch(net, trainer, args, row, rows, ema, epoch + 1) if primary else (None, None)
        values = ema_values = None
        if (epoch + 1) % args.eval_frequency == 0 or epoch + 1 == args.epochs:
            values = task.validate(net, ctx, epoch + 1)
        if values is not None:
            row.update(values)
            if ema is not None:
                with ema.applied():
                    ema_values = task.validate(net, ctx, epoch + 1, "val_ema")
                row.update({k + "_ema": v for k, v in ema_values.items()})
            row.update(time=time.time() - tic)
        if primary:
            finish_epoch(task, args, rows, best, paths, values, ema_values, workers)
            logger.info(
                "epoch %d/%d  loss %.4f  lr %.4g  val %s  %.1f img/s  %.1fs%s",
                epoch + 1,
                args.epochs,
                train_loss,
                lr,
                _figures(task, values, ema_values),
                row["samples_per_sec"],
                row["time"],
                _eta(run_start, epoch + 1 - first, args.epochs - epoch - 1),
            )
            if board is not None:
                board.epoch(row)
        elif values is not None:
            best.live = max(best.live, values[key])
        dist.barrier(f"epoch{epoch + 1}")  # nobody races ahead of (or exits before) rank 0's writes
    summary = None
    if primary:
        if board is not None:
            board.close()
        summary = run_summary(task, args, rows, time.time() - run_start)
        log_summary(summary, args)
        if best.ema >= 0:
            logger.info("EMA: best val %s %.2f%%", task.metrics[key], best.ema)
    short = key[len("val_") :] if key.startswith("val_") else key
    return dict(
        row,
        **{
            f"best_{short}": best.live if best.live >= 0 else None,
            f"best_{short}_ema": best.ema if best.ema >= 0 else None,
        },
        save_dir=args.save_dir,
        summary=summary,
    )
