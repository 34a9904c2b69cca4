"""The main job end to end on data that ships with scikit-learn (what ``make demo`` runs).

1. The 1,797 handwritten digits of ``sklearn.datasets.load_digits`` (8x8, 17 grey levels) are written as
   JPEG folders ``train/<digit>/`` and ``val/<digit>/`` (stratified 80/20 split), upscaled to 32 px RGB.
2. ``tools/im2rec.py`` lists and packs each folder into ``.lst``/``.rec``/``.idx``.
3. ``horovodrun -np 2 -H localhost:2 python scripts/train.py --ctx cpu`` trains a ResNeSt-14 from scratch
   (two data-parallel workers, Horovod over Gloo) and validates every epoch.
   It keeps an exponential moving average of the weights too (``--ema``), validated next to them.
4. ``scripts/verify.py`` evaluates the best checkpoint on the validation records.
5. Fine-tuning (docs/finetune.md): a ResNeSt-14 trained on the digits 0-5 is fine-tuned on another task,
   the digits 6-9 with only ``--shots`` labelled images per class, next to the same run from scratch; then
   ``scripts/predict.py`` labels the held-out images of 6-9 with the class names im2rec wrote.
6. The curves (``curves.png``) and summary tables end the run.

Everything goes into ``--out-dir`` (default ``demo_out/``, git-ignored; ``--out`` is the old spelling). A
folder that an earlier demo made (it holds the marker file ``.resnest-demo``) is replaced; the demo refuses
any other folder that is not empty, so it never deletes a user's files. ``--quick`` is the tiny version used
by the test suite (a few hundred images, one short epoch). Without Horovod (or with ``--workers 1``) the
training runs as one plain process.
"""

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from resnest_gluon.cli import child_env, command_line, common
from resnest_gluon.errors import UserError

logger = logging.getLogger("resnest_gluon.demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser("Train and verify a ResNeSt on scikit-learn's digits with two Horovod workers.")
    p.add_argument(
        "--out-dir",
        default="demo_out",
        help="output folder: one an earlier demo made is replaced; any other with files in it is refused",
    )
    common.alias(p, "--out", dest="out_dir")
    p.add_argument(
        "--task",
        choices=("cls", "seg"),
        default="cls",
        help="seg: the segmentation demo instead (resnest_gluon.cli.demo_seg; --out-dir, --seed, --quick)",
    )
    p.add_argument("--workers", type=int, default=2, help="Horovod workers (1: a plain process)")
    p.add_argument("--model", default="resnest14", help="model name")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--epochs", type=int, default=15, help="training epochs")
    p.add_argument("--batch-size", type=int, default=16, help="images per worker and step")
    p.add_argument("--lr", type=float, default=0.4, help="learning rate per 256 images")
    p.add_argument("--warmup-epochs", type=float, default=2, help="linear warm-up epochs")
    p.add_argument("--val-fraction", type=float, default=0.2, help="stratified validation share")
    p.add_argument("--limit", type=int, default=0, help="use only this many digits (0: all 1,797)")
    p.add_argument("--quick", action="store_true", help="tiny run for tests: 300 digits, one epoch")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--ema", type=float, default=0.99, help="EMA decay of the main training run")
    p.add_argument("--shots", type=int, default=10, help="fine-tuning: labelled images per class")
    p.add_argument("--pretrain-epochs", type=int, default=4, help="fine-tuning: epochs on the digits 0-5")
    p.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning: epochs on the digits 6-9")
    p.add_argument("--no-finetune", action="store_true", help="skip step 5 (fine-tuning and predict.py)")
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.epochs = args.limit or 300, 1
        args.pretrain_epochs, args.finetune_epochs = 1, 1
    return args


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``val_fraction`` of every class goes to validation."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, int(round(len(members) * val_fraction)))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(val))


def digit_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (grey levels 0..16, ink high) as a ``size`` px, 3-channel, dark-on-light uint8 image."""
    grey = 255 - np.clip(pixels.reshape(8, 8) * (255.0 / 16.0), 0, 255).astype(np.uint8)
    # a 1 px paper margin, so that crops and the val resize keep the whole stroke
    grey = cv2.copyMakeBorder(grey, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=255)
    grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def write_digits(root: str, size: int, val_fraction: float, seed: int, limit: int = 0) -> Dict[str, int]:
    """Writes ``root/train/<digit>/*.jpg`` and ``root/val/<digit>/*.jpg``; returns the image counts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.data, digits.target
    if limit:
        keep = np.sort(np.random.RandomState(seed).permutation(len(labels))[:limit])
        images, labels = images[keep], labels[keep]
    counts = {}
    for split, indices in zip(("train", "val"), stratified_split(labels, val_fraction, seed)):
        for i in indices:
            folder = os.path.join(root, split, str(labels[i]))
            os.makedirs(folder, exist_ok=True)
            cv2.imwrite(
                os.path.join(folder, f"{i:04d}.jpg"),
                digit_image(images[i], size),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
        counts[split] = len(indices)
    return counts


class DemoError(UserError):
    """A step of the demo failed in a way its one line explains."""


_FATAL = re.compile(r"^\[(\d+)\]<stderr>:Fatal Python error: (.+?)\s*$")
_EXIT = re.compile(r"^Process (\d+) exit with status code (-?\d+)\.")


def worker_death(line: str) -> Optional[str]:
    """``"training rank N died of SIGSEGV (Segmentation fault)"`` when ``line`` of horovodrun's output
    reports a worker's native crash (faulthandler's first line) or a worker killed by a signal."""
    fatal = _FATAL.match(line)
    if fatal:
        reason = fatal.group(2)
        names = {"Segmentation fault": "SIGSEGV", "Bus error": "SIGBUS", "Aborted": "SIGABRT"}
        names.update({"Floating point exception": "SIGFPE", "Illegal instruction": "SIGILL"})
        return f"training rank {fatal.group(1)} died of {names.get(reason, 'a fatal signal')} ({reason})"
    code = _EXIT.match(line)
    if code and int(code.group(2)) < 0:
        return f"training rank {code.group(1)} was killed by {signal.Signals(-int(code.group(2))).name}"
    return None


def run(cmd: Sequence[str], log_path: str, env=None, quiet: bool = False) -> float:
    """Runs ``cmd`` (output to ``log_path``, and but for progress bars to the console); returns seconds."""
    logger.info("$ %s", " ".join(cmd))
    tic = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(env), text=True
        )
        died = None
        for line in proc.stdout:
            log.write(line)
            died = died or worker_death(line)
            # horovodrun turns every refresh of a worker's progress bar into a line: keep those in the log;
            # once a worker has died, the others' stop lines and horovodrun's traceback go to the log only
            if not quiet and "%|" not in line and died is None:
                sys.stderr.write(line)
        code = proc.wait()
    if code != 0 and died is not None:
        raise DemoError(f"{died}; its Python stacks and the rest are in {log_path}")
    if code != 0:
        raise UserError(f"command failed with exit status {code} (see {log_path}): {' '.join(cmd)}")
    return time.time() - tic


def pack(prefix: str, root: str, log_path: str, pass_through: bool = False) -> float:
    """``tools/im2rec.py`` list + pack of one folder of class folders (the JPEGs as they are with
    ``pass_through``)."""
    im2rec = command_line("im2rec")
    seconds = run([*im2rec, prefix, root, "--list", "--recursive"], log_path, quiet=True)
    encode = ["--pass-through"] if pass_through else ["--num-thread", "2", "--quality", "95"]
    seconds += run([*im2rec, prefix, root, *encode, "--no-progress"], log_path, quiet=True)
    return seconds


def subset_folders(src: str, dst: str, classes: Sequence[int], per_class: int = 0) -> int:
    """Links ``src/<digit>/`` (the first ``per_class`` images of each, or all) into ``dst/<digit>/``;
    returns the number of images."""
    count = 0
    for digit in classes:
        names = sorted(os.listdir(os.path.join(src, str(digit))))
        os.makedirs(os.path.join(dst, str(digit)))
        for name in names[:per_class] if per_class else names:
            os.symlink(os.path.join(src, str(digit), name), os.path.join(dst, str(digit), name))
            count += 1
    return count


def finetune_demo(args, out: str, log_path: str, env: dict) -> dict:
    """Pretrain on the digits 0-5, fine-tune on few images of 6-9 next to from scratch, predict.py on the
    held-out images of 6-9. Returns the figures and the prediction rows."""
    root, images = os.path.join(out, "finetune"), os.path.join(out, "images")
    tasks = dict(
        a_train=((0, 1, 2, 3, 4, 5), "train", 70),  # 420 images: enough to learn strokes, and quick
        a_val=((0, 1, 2, 3, 4, 5), "val", 0),
        b_train=((6, 7, 8, 9), "train", args.shots),
        b_val=((6, 7, 8, 9), "val", 0),
    )
    counts = {}
    for name, (classes, split, shots) in tasks.items():
        folder = os.path.join(root, "images", name)
        counts[name] = subset_folders(os.path.join(images, split), folder, classes, shots)
        pack(
            os.path.join(root, name), folder, log_path, pass_through=True
        )  # also writes <name>.classes.txt: "6" .. "9"
    common = command_line("train") + [
        "--ctx", "cpu", "--model", args.model, "--input-size", str(args.size),
        "--jitter", "0", "--lighting", "0", "--no-mirror", "--min-area", "0.35", "--data-threads", "1",
        "--no-wd", "--warmup-epochs", "0",
    ]  # fmt: skip

    def train(task: str, classes: int, save_dir: str, *extra: str) -> float:
        cmd = common + [
            "--classes", str(classes), "--rec-train", os.path.join(root, f"{task}_train.rec"),
            "--rec-val", os.path.join(root, f"{task}_val.rec"), "--save-dir", os.path.join(root, save_dir),
            *extra,
        ]  # fmt: skip
        return run(cmd, log_path, env=env, quiet=True)

    seconds = train("a", 6, "pretrain", "--epochs", str(args.pretrain_epochs), "--batch-size", "16",
                    "--lr", "0.4", "--last-gamma")  # fmt: skip
    pretrained = os.path.join(root, "pretrain", f"{args.model}-best.params")
    tune = ["--epochs", str(args.finetune_epochs), "--batch-size", "10", "--lr", "0.4", "--seed", "1"]
    seconds += train("b", 4, "finetuned", *tune, "--pretrained", pretrained)
    seconds += train("b", 4, "scratch", *tune)
    result = dict(train_seconds=seconds, pretrain_images=counts["a_train"], shots=args.shots)
    for name in ("pretrain", "finetuned", "scratch"):
        with open(os.path.join(root, name, "metrics.jsonl")) as f:
            result[name + "_top1"] = [json.loads(line) for line in f if line.strip()][-1]["val_top1"]
    held_out = os.path.join(root, "images", "b_val")
    csv_path = os.path.join(root, "predictions.json")
    predict = [
        *command_line("predict"), held_out, "--run",
        os.path.join(root, "finetuned"), "--top-k", "2", "--quiet", "--out", csv_path,
    ]  # fmt: skip
    result["predict_seconds"] = run(predict, log_path, env=env, quiet=True)
    with open(csv_path) as f:
        rows = json.load(f)
    truth = [os.path.basename(os.path.dirname(r["path"])) for r in rows]
    result.update(
        predict_images=len(rows),
        predict_top1=100.0 * np.mean([t == r["names"][0] for t, r in zip(truth, rows)]),
        predict_ms_per_image=1000.0 * result["predict_seconds"] / max(len(rows), 1),
        rows=[dict(r, truth=t) for t, r in zip(truth, rows)],
    )
    return result


MARKER = ".resnest-demo"  # in every folder the demo makes: only such a folder is ever replaced


def prepare_out_dir(path: str) -> str:
    """An empty ``path`` with the demo's marker in it: made, or replaced when an earlier demo made it.

    Raises
    ------
    UserError
        ``path`` is a file, or a folder with files in it that the demo did not make.
    """
    out = os.path.abspath(path)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out-dir {path} is a file: choose a folder")
        if os.path.isfile(os.path.join(out, MARKER)):
            shutil.rmtree(out)
        elif os.listdir(out):
            raise UserError(
                f"--out-dir {path} holds files that the demo did not make (no {MARKER}): choose another "
                "folder, or empty this one"
            )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("made by resnest-demo: the next demo run with this --out-dir replaces this folder\n")
    return out


def horovodrun() -> List[str]:
    """The horovodrun next to this Python (the venv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    return [beside if os.path.exists(beside) else shutil.which("horovodrun") or "horovodrun"]


def summary_table(rows: List[Tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = (
        [f"{'':-<{width + 2}}{'':-<34}"] + [f"{k:<{width}}  {v}" for k, v in rows] + [f"{'':-<{width + 36}}"]
    )
    return "\n".join(lines)


def print_finetune(ft: dict, args) -> None:
    """The fine-tuning figures and two predict.py rows per class."""
    print(
        "\n"
        + summary_table(
            [
                (
                    "pretrained on",
                    f"digits 0-5, {ft['pretrain_images']} images: val top-1 {ft['pretrain_top1']:.2f}%",
                ),
                (
                    "new task",
                    f"digits 6-9, {ft['shots']} labelled images per class, {args.finetune_epochs} epochs",
                ),
                ("fine-tuned (--pretrained)", f"val top-1 {ft['finetuned_top1']:.2f}%"),
                ("from scratch, same run", f"val top-1 {ft['scratch_top1']:.2f}%"),
                (
                    "predict.py, held-out 6-9",
                    f"{ft['predict_images']} images, top-1 {ft['predict_top1']:.2f}%, "
                    f"{ft['predict_ms_per_image']:.0f} ms per image (process start included)",
                ),
            ]
        )
    )
    print("\nimage        true  predicted  (prob)  second (prob)")
    shown = {}
    for r in ft["rows"]:
        if shown.setdefault(r["truth"], 0) < 2 and r["status"] == "ok":
            shown[r["truth"]] += 1
            name = os.path.join(r["truth"], os.path.basename(r["path"]))
            second = f"{r['names'][1]:>6} ({r['probs'][1]:.2f})" if len(r["names"]) > 1 else ""
            print(f"{name:<12} {r['truth']:>4}  {r['names'][0]:>9}  ({r['probs'][0]:.2f})  {second}")


def main(argv=None) -> dict:
    """Runs the whole demo; returns the summary (also written to ``OUT/summary.json``)."""
    args = parse_args(argv)
    if args.task == "seg":
        from . import demo_seg

        seg_argv = ["--out-dir", args.out_dir, "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return demo_seg.run(demo_seg.parse_args(seg_argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    out = prepare_out_dir(args.out_dir)
    log_path = os.path.join(out, "demo.log")
    tic = time.time()

    logger.info("1/5 writing the scikit-learn digits as JPEG folders in %s", out)
    counts = write_digits(os.path.join(out, "images"), args.size, args.val_fraction, args.seed, args.limit)
    logger.info("    %d training and %d validation images", counts["train"], counts["val"])

    logger.info("2/5 packing them with tools/im2rec.py")
    pack_seconds = 0.0
    for split in ("train", "val"):
        pack_seconds += pack(os.path.join(out, split), os.path.join(out, "images", split), log_path)

    run_dir = os.path.join(out, "run")
    train_args = command_line("train")[1:] + [
        "--ctx", "cpu",
        "--model", args.model,
        "--classes", "10",
        "--rec-train", os.path.join(out, "train.rec"),
        "--rec-val", os.path.join(out, "val.rec"),
        "--input-size", str(args.size),  # also the validation crop
        "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size),
        "--lr", str(args.lr),
        "--warmup-epochs", str(args.warmup_epochs if args.epochs > 2 else 0),
        "--no-wd",
        "--last-gamma",
        "--jitter", "0",
        "--lighting", "0",
        "--no-mirror",  # a mirrored digit is another glyph
        "--min-area", "0.35",  # an 8 x 8 digit has no detail to spare
        "--data-threads", "1",
        "--seed", str(args.seed),
        "--save-dir", run_dir,
        "--ema", str(args.ema),
    ]  # fmt: skip
    # one OpenMP thread per worker: two workers on two cores, not four threads fighting over them
    env = dict(
        os.environ, OMP_NUM_THREADS="1" if args.workers > 1 else os.environ.get("OMP_NUM_THREADS", "2")
    )
    if args.workers > 1:
        cmd = horovodrun() + ["-np", str(args.workers), "-H", f"localhost:{args.workers}", sys.executable]
    else:
        cmd = [sys.executable]
    logger.info("3/5 training %s with %d worker(s) for %d epochs", args.model, args.workers, args.epochs)
    train_seconds = run(cmd + train_args, log_path, env=env)

    logger.info("4/5 verifying the best checkpoint with scripts/verify.py")
    verify_json = os.path.join(out, "verify.json")
    verify_args = command_line("verify") + [
        "--ctx", "cpu",
        "--run", run_dir,  # model, classes, crop and the best checkpoint from the run
        "--rec-val", os.path.join(out, "val.rec"),
        "--batch-size", "64",
        "--json", verify_json,
    ]  # fmt: skip
    verify_seconds = run(verify_args, log_path, env=env)
    with open(verify_json) as f:
        verified = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]

    ft = None
    if not args.no_finetune:
        logger.info(
            "5/5 fine-tuning: digits 0-5 -> digits 6-9 with %d images per class, then predict.py", args.shots
        )
        # plain processes: both cores for one
        ft = finetune_demo(
            args, out, log_path, dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        )

    speed = float(np.median([r["samples_per_sec"] for r in rows]))
    summary = dict(
        model=args.model,
        workers=args.workers,
        epochs=len(rows),
        train_images=counts["train"],
        val_images=counts["val"],
        final_train_loss=rows[-1]["train_loss"],
        best_val_top1=max(r["val_top1"] for r in rows if r["val_top1"] is not None),
        final_val_top1=rows[-1]["val_top1"],
        final_val_top1_ema=rows[-1].get("val_top1_ema"),
        best_val_top1_ema=max(
            (r["val_top1_ema"] for r in rows if r.get("val_top1_ema") is not None), default=None
        ),
        verify_top1=verified["top1"],
        verify_top5=verified["top5"],
        train_samples_per_sec=speed,
        pack_seconds=pack_seconds,
        train_seconds=train_seconds,
        verify_seconds=verify_seconds,
        total_seconds=time.time() - tic,
        curves=os.path.join(run_dir, "curves.png"),
        finetune=None if ft is None else {k: v for k, v in ft.items() if k != "rows"},
    )
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\nepoch  lr        train loss  val top-1  val top-5  EMA top-1  img/s")
    for r in rows:
        top1 = "-" if r["val_top1"] is None else f"{r['val_top1']:.2f}%"
        top5 = "-" if r["val_top5"] is None else f"{r['val_top5']:.2f}%"
        ema = "-" if r.get("val_top1_ema") is None else f"{r['val_top1_ema']:.2f}%"
        print(
            f"{r['epoch']:>5}  {r['lr']:<8.4f}  {r['train_loss']:>10.4f}  {top1:>9}  {top5:>9}  {ema:>9}  "
            f"{r['samples_per_sec']:>5.0f}"
        )
    print(
        "\n"
        + summary_table(
            [
                (
                    "data",
                    f"sklearn digits: {counts['train']} train / {counts['val']} val, {args.size} px JPEG",
                ),
                ("model", f"{args.model}, 10 classes, trained from scratch"),
                (
                    "workers",
                    f"{args.workers} (horovodrun, Gloo, CPU)" if args.workers > 1 else "1 (plain process)",
                ),
                ("epochs", str(len(rows))),
                ("final train loss", f"{summary['final_train_loss']:.4f}"),
                ("val top-1, last epoch", f"{summary['final_val_top1']:.2f}%"),
                ("val top-1, best epoch", f"{summary['best_val_top1']:.2f}%"),
                (
                    f"EMA ({args.ema}) val top-1, last / best",
                    f"{summary['final_val_top1_ema']:.2f}% / {summary['best_val_top1_ema']:.2f}%",
                ),
                (
                    "verify.py, best checkpoint",
                    f"top-1 {verified['top1']:.2f}%, top-5 {verified['top5']:.2f}%",
                ),
                ("training speed", f"{speed:.0f} images/s (median over epochs, all workers)"),
                (
                    "time: pack / train / verify",
                    f"{pack_seconds:.0f}s / {train_seconds:.0f}s / {verify_seconds:.0f}s",
                ),
                ("total", f"{summary['total_seconds']:.0f}s"),
                ("curves", summary["curves"]),
            ]
        )
    )
    if ft is not None:
        print_finetune(ft, args)
    if summary["final_val_top1"] < 95.0:
        logger.warning(
            "the last epoch reached %.2f%% top-1, below the 95%% this demo aims for", rows[-1]["val_top1"]
        )
    return summary
