#!/usr/bin/env python3
"""Throughput of the ImageNet input pipelines of ``resnest_gluon.data``, against OpenCV's decode limit.

On one ``.rec`` file, in one run, measures images per second of

* ``decode_resize`` / ``decode_rrc``: the limit, ``cv2.imdecode`` of each record's JPEG plus a resize of
  the shorter side to ``ceil(size / 0.875)`` (validation-like) or a random resized crop to ``size``
  (training-like), on one core, records already in memory; ``decode_mxnet``: decoding alone with the
  JPEG decoder inside the MXNet wheel (``mx.image.imdecode``), the one ``ImageRecordIter`` uses;
* ``train``: :func:`resnest_gluon.data.train_iter` as training uses it by default (the Python path: OpenCV
  in a pool of threads) with the reference's augmentations (full-size decode, random resized crop, flip,
  colour jitter 0.4 and PCA lighting 0.1 each clipped to 0..255, normalisation);
* ``train_autoaug``: the same with the reference's AutoAugment on the whole decoded image (the recipe's
  pipeline, ``--recipe``);
* ``train_dct``: ``train`` with the DCT shortcut (``reduced_decode=True``); ``train_unclipped``: ``train``
  with the colour operations as one unclipped map (``clip_colour=False``); ``train_rounded`` (bench_transform
  only): ``train`` with the rounded colour step (``colour="rounded"``); ``train_fast``: both, the
  former default; ``train_autoaug_tv``: ``train_fast`` with the torchvision AutoAugment on the crop, the
  former ``--auto-aug``;
* ``train_cpp``: the same augmentations with MXNet's C++ ``ImageRecordIter`` (``backend="cpp"``);
* ``val``: :func:`resnest_gluon.data.val_iter` (the reference's evaluation crop, normalisation);

each with 1, 2, ... decoding threads (worker threads for the Python path). Besides wall-clock images/s
(and that divided by the threads), it reports images per CPU-second of the whole process
(``time.process_time()``: all its threads, OpenCV's, MXNet's engine and numpy's included, plus any child
processes), which is what sizes a machine and is less disturbed by other load on a shared one.

Right before each training-iterator measurement the decode limit is measured again on as many images
(``paired_limit``), so that each ratio "iterator per thread / limit" compares two measurements taken under
the same load; the medians of the ratios over the repeats are printed with whether the goal is met (0.8x
for the plain pipelines, 0.7x for the whole-image AutoAugment).

ResNeSt: Zhang et al., arXiv:2004.08955. Example::

    python scripts/bench_pipeline.py --make-data 1000 --data /tmp/bench/imagenet_like --threads 1 2 \\
        --batches 40 --json bench_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import cv2
import mxnet as mx
import numpy as np

from resnest_gluon import data
from resnest_gluon.data import index, transforms
from resnest_gluon.progress import progress_bar

logger = logging.getLogger("bench_pipeline")

# Assumed GPU throughput for the cores-per-GPU estimate: a V100 trains ResNeSt-50 at 224 px in float16
# at roughly 1,000 images/s (batch 128); the paper's training used V100s.
GPU_IMAGES_PER_S = 1000.0


# -------------------------------------------------------------------------------------------- data
def make_data(
    prefix: str,
    count: int,
    seed: int = 0,
    classes: int = 10,
    short_side: Optional[int] = None,
    quality: int = 90,
) -> str:
    """Write ``prefix.rec`` / ``prefix.idx``: ``count`` ImageNet-like JPEGs (300-500 px, quality 90).

    Random crops of random rescales (1-1.4x) of scikit-learn's two sample photographs, random flips,
    labels ``i % classes``. With ``short_side`` each image is then resized so that its shorter side is
    that long, as ``tools/im2rec.py --resize`` packs ImageNet (480 in ``scripts/prepare_imagenet.py``,
    with ``quality=95``). Written under temporary names and renamed when complete.

    Returns
    -------
    str
        Path of the ``.rec`` file.
    """
    from sklearn.datasets import load_sample_images

    if count < 1:
        raise ValueError(f"--make-data needs a positive number of images, got {count}")
    photos = [img for img in load_sample_images().images]  # RGB uint8, 427 x 640
    rng = np.random.default_rng(seed)
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench_pipeline-", dir=folder)
    os.close(fd)
    os.remove(tmp)
    record = mx.recordio.MXIndexedRecordIO(tmp + ".idx", tmp + ".rec", "w")
    try:
        for i in progress_bar(range(count), desc="making images", unit="img", leave=False):
            photo = photos[int(rng.integers(len(photos)))]
            scale = rng.uniform(1.0, 1.4)
            big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            h = min(int(rng.integers(300, 501)), big.shape[0])
            w = min(int(rng.integers(300, 501)), big.shape[1])
            y, x = int(rng.integers(0, big.shape[0] - h + 1)), int(rng.integers(0, big.shape[1] - w + 1))
            crop = big[y : y + h, x : x + w]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if short_side:
                f = short_side / min(h, w)
                size = (max(short_side, round(w * f)), max(short_side, round(h * f)))
                crop = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
            header = mx.recordio.IRHeader(0, float(i % classes), i, 0)
            bgr = np.ascontiguousarray(crop[:, :, ::-1])
            record.write_idx(i, mx.recordio.pack_img(header, bgr, quality=quality, img_fmt=".jpg"))
        record.close()
        os.replace(tmp + ".rec", prefix + ".rec")
        os.replace(tmp + ".idx", prefix + ".idx")
    finally:
        for leftover in (tmp + ".rec", tmp + ".idx"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return prefix + ".rec"


# ------------------------------------------------------------------------------------------- timing
def _children_cpu_seconds() -> float:
    """CPU seconds of this process's live child processes (DataLoader workers), from /proc; 0 elsewhere."""
    total, me, tick = 0.0, os.getpid(), os.sysconf("SC_CLK_TCK")
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, ..., utime (14th field overall), stime (15th).
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu_seconds() -> float:
    """CPU seconds of the whole process (every thread: OpenCV's, MXNet's engine, numpy's) and its children."""
    return time.process_time() + _children_cpu_seconds()


def _row(name: str, threads: int, images: int, wall: float, cpu: float, **extra) -> Dict:
    return {
        "name": name,
        "threads": threads,
        "images": images,
        "seconds": round(wall, 4),
        "cpu_seconds": round(cpu, 4),
        "images_per_s": round(images / wall, 1),
        "images_per_s_per_thread": round(images / wall / threads, 1),
        "images_per_cpu_s": round(images / cpu, 1) if cpu > 0 else None,
        **extra,
    }


def bench_decode(rec_path: str, size: int, limit: Optional[int] = None, seed: int = 0) -> List[Dict]:
    """OpenCV decode + resize (shorter side to ``ceil(size/0.875)``) and decode + random resized crop.

    One core (``cv2.setNumThreads(1)``), records read into memory first, so only decoding and resizing
    are timed.
    """
    payloads = _payloads(rec_path, limit)
    resize = int(math.ceil(size / 0.875))
    rng = np.random.default_rng(seed)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    rows = []
    try:
        for name in ("decode_resize", "decode_rrc", "decode_mxnet"):
            wall0, cpu0 = time.perf_counter(), _cpu_seconds()
            for payload in payloads:
                if name == "decode_mxnet":
                    # The JPEG decoder bundled in the MXNet wheel, which ImageRecordIter uses.
                    mx.image.imdecode(payload).wait_to_read()
                    continue
                img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
                if name == "decode_resize":
                    transforms._resize_short(img, resize, cv2.INTER_LINEAR)
                else:
                    transforms._random_resized_crop(img, size, rng, cv2.INTER_LINEAR)
            wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
            rows.append(_row(name, 1, len(payloads), wall, cpu, image_size=size))
    finally:
        cv2.setNumThreads(previous)
    return rows


def _payloads(rec_path: str, limit: Optional[int] = None) -> List[bytes]:
    record = mx.recordio.MXIndexedRecordIO(index.idx_path(rec_path), rec_path, "r")
    keys = [k for k, _ in data.read_index(rec_path)][:limit]
    payloads = [mx.recordio.unpack(record.read_idx(k))[1] for k in keys]
    record.close()
    return payloads


def bench_limit(payloads: Sequence[bytes], images: int, size: int, start: int = 0, seed: int = 0) -> Dict:
    """The decode limit (``cv2.imdecode`` + random resized crop, one core) over ``images`` records.

    Run right before each training-iterator measurement on as many images, so that the ratio compares
    two measurements taken under the same load.
    """
    rng = np.random.default_rng(seed)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        for i in range(start, start + images):
            img = cv2.imdecode(np.frombuffer(payloads[i % len(payloads)], np.uint8), cv2.IMREAD_COLOR)
            transforms._random_resized_crop(img, size, rng, cv2.INTER_LINEAR)
        wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    finally:
        cv2.setNumThreads(previous)
    return _row("paired_limit", 1, images, wall, cpu, image_size=size)


def bench_iter(name: str, it, threads: int, batches: int, warmup: int = 2, **extra) -> Dict:
    """Images/s of a DataIter over ``batches`` batches after ``warmup`` (epochs restart as needed)."""

    def batches_forever():
        while True:
            yield from it
            it.reset()

    stream = batches_forever()
    for _ in range(warmup):
        next(stream).data[0].wait_to_read()
    images = 0
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        batch = next(stream)
        batch.data[0].wait_to_read()
        images += batch.data[0].shape[0]
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    return _row(name, threads, images, wall, cpu, batch_size=it.batch_size, **extra)


PIPELINES = (
    "train",
    "train_autoaug",
    "train_dct",
    "train_unclipped",
    "train_fast",
    "train_autoaug_tv",
    "train_cpp",
    "val",
)
TRAIN_PIPELINES = tuple(p for p in PIPELINES if p.startswith("train"))
GOAL = 0.8  # training iterator per thread / decode limit
GOAL_AUTOAUG = 0.7  # the same with AutoAugment on the whole image


def _goal(name: str) -> float:
    return GOAL_AUTOAUG if name.startswith("train_autoaug") else GOAL


_RATIO_KEYS = (
    "limit_images_per_s",
    "limit_images_per_cpu_s",
    "ratio_per_thread_wall",
    "ratio_per_cpu_s",
)


def _ratios(row: Dict, limit: Dict) -> Dict:
    """The paired decode limit's rates and the iterator's ratios to them (per thread, per CPU-second)."""
    return {
        "limit_images_per_s": limit["images_per_s"],
        "limit_images_per_cpu_s": limit["images_per_cpu_s"],
        "ratio_per_thread_wall": round(row["images_per_s_per_thread"] / limit["images_per_s"], 3),
        "ratio_per_cpu_s": round((row["images_per_cpu_s"] or 0) / limit["images_per_cpu_s"], 3),
    }


_TRAIN_OPTIONS = {
    "train": {},
    "train_autoaug": dict(auto_aug="resnest"),
    "train_dct": dict(reduced_decode=True),
    "train_unclipped": dict(clip_colour=False),
    "train_rounded": dict(colour="rounded"),
    "train_fast": dict(reduced_decode=True, clip_colour=False),
    "train_autoaug_tv": dict(reduced_decode=True, clip_colour=False, auto_aug="torchvision"),
    "train_cpp": dict(backend="cpp"),
}


def bench_transform(
    rec_path: str,
    pipelines: Sequence[str] = ("train", "train_unclipped", "train_autoaug"),
    rounds: int = 9,
    size: int = 224,
    limit: Optional[int] = 300,
    seed: int = 0,
) -> List[Dict]:
    """CPU time per image of the Python path's training transform (decode, augmentation, crop, colour,
    normalisation into a CHW buffer) on one thread, against the decode limit (``cv2.imdecode`` + random
    resized crop). Interleaved over ``rounds`` rounds on the first ``limit`` records, each round timing the
    limit then each pipeline; returns per pipeline the median ms per image and the median over rounds of
    "limit / pipeline" (each ratio from one round, so both sides saw the same load). With ``train`` and
    ``train_unclipped`` both measured, the ``train`` row also has ``clipping_cost``: the median over rounds of
    its time over ``train_unclipped``'s, minus 1 (what clipping the colour operations costs per image), and
    with ``train_rounded`` (``colour="rounded"``) ``vs_rounded``, the same against that.
    """
    payloads = [np.frombuffer(p, np.uint8) for p in _payloads(rec_path, limit)]
    made = {}
    for name in pipelines:
        options = dict(_TRAIN_OPTIONS[name])
        made[name] = transforms.TrainTransform(
            size,
            0.4,
            0.1,
            options.get("auto_aug"),
            transforms.interp_name("auto", size),
            reduced_decode=options.get("reduced_decode", False),
            clip_colour=options.get("clip_colour", True),
            colour=options.get("colour", "auto"),
        )
    out, scratch = np.empty((3, size, size), np.float32), np.empty((size, size, 3), np.float32)
    times: Dict[str, List[float]] = {name: [] for name in ("limit",) + tuple(pipelines)}
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for r in range(rounds):
            rng = np.random.default_rng((seed, r))
            start = time.process_time()
            for payload in payloads:
                img = cv2.imdecode(payload, cv2.IMREAD_COLOR)
                transforms._random_resized_crop(img, size, rng, cv2.INTER_LINEAR)
            times["limit"].append((time.process_time() - start) / len(payloads))
            for name, transform in made.items():
                rng = np.random.default_rng((seed, r))
                draws = transform.draw(rng, len(payloads))
                start = time.process_time()
                for payload, draw in zip(payloads, draws):
                    transform.write(payload, draw, rng, out, scratch)
                times[name].append((time.process_time() - start) / len(payloads))
    finally:
        cv2.setNumThreads(previous)
    rows = [
        dict(
            pipeline="decode_limit", ms_per_image=round(1e3 * float(np.median(times["limit"])), 3), ratio=1.0
        )
    ]
    for name in pipelines:
        ratios = [a / b for a, b in zip(times["limit"], times[name])]
        rows.append(
            dict(
                pipeline=name,
                ms_per_image=round(1e3 * float(np.median(times[name])), 3),
                ratio=round(float(np.median(ratios)), 3),
                goal=_goal(name),
            )
        )
        if name == "train" and "train_unclipped" in times:
            paired = [a / b for a, b in zip(times["train"], times["train_unclipped"])]
            rows[-1]["clipping_cost"] = round(float(np.median(paired)) - 1.0, 3)
        if name == "train" and "train_rounded" in times:
            paired = [a / b for a, b in zip(times["train"], times["train_rounded"])]
            rows[-1]["vs_rounded"] = round(float(np.median(paired)) - 1.0, 3)
    return rows


def _make_iter(kind: str, rec_path: str, batch_size: int, input_size: int, threads: int):
    if kind in _TRAIN_OPTIONS:
        return data.train_iter(rec_path, batch_size, input_size, threads=threads, **_TRAIN_OPTIONS[kind])
    return data.val_iter(rec_path, batch_size, input_size, threads=threads)


def _median_rows(rows: List[Dict]) -> List[Dict]:
    """One row per (pipeline, threads): the median of each rate over the repeats."""
    groups: Dict = {}
    for r in rows:
        groups.setdefault((r["name"], r["threads"]), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])
        for key in ("images_per_s", "images_per_s_per_thread", "images_per_cpu_s") + _RATIO_KEYS:
            if key not in row:
                continue
            values = [r[key] for r in group if r[key] is not None]
            row[key] = (
                round(float(np.median(values)), 3 if key.startswith("ratio") else 1) if values else None
            )
        row["images"] = sum(r["images"] for r in group)
        row["seconds"] = round(sum(r["seconds"] for r in group), 4)
        row["cpu_seconds"] = round(sum(r["cpu_seconds"] for r in group), 4)
        row["repeats"] = len(group)
        out.append(row)
    return out


def run(
    prefix: str,
    threads: Sequence[int] = (1, 2),
    batches: int = 40,
    batch_size: int = 64,
    input_size: int = 224,
    repeats: int = 3,
    pipelines: Sequence[str] = PIPELINES,
    progress: bool = True,
) -> List[Dict]:
    """Measure the decode limit and the pipelines on ``prefix.rec``; one dict per (pipeline, threads).

    Measurements are interleaved over ``repeats`` rounds and the median of each rate is kept, so that
    a burst of load from elsewhere on a shared machine hits all pipelines alike.

    Parameters
    ----------
    prefix : str
        Record file prefix (``prefix.rec`` + ``prefix.idx``); a path ending in ``.rec`` works too.
    threads : sequence of int
        Decoding threads (C++) or worker threads (Python path) to try.
    batches : int
        Timed batches per iterator measurement (AutoAugment: half as many).
    batch_size : int
        Batch size of the iterators (clipped to the number of records).
    input_size : int
        Training crop and validation crop size.
    repeats : int
        Rounds of measurements.
    pipelines : sequence of str
        Subset of :data:`PIPELINES`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of dict
        Keys ``name``, ``threads``, ``images``, ``seconds``, ``cpu_seconds``, ``images_per_s``,
        ``images_per_s_per_thread``, ``images_per_cpu_s``, ``repeats`` and the settings used.
    """
    rec_path = prefix if prefix.endswith(".rec") else prefix + ".rec"
    total = data.num_records(rec_path)
    batch_size = min(batch_size, total)
    unknown = set(pipelines) - set(PIPELINES)
    if unknown:
        raise ValueError(f"unknown pipelines {sorted(unknown)}; valid: {PIPELINES}")
    plan = [("decode", 1)] + [(kind, t) for t in threads for kind in pipelines]
    rows: List[Dict] = []
    payloads = None
    with progress_bar(total=repeats * len(plan), desc="bench_pipeline", disable=not progress) as bar:
        for _ in range(repeats):
            for kind, t in plan:
                if kind == "decode":
                    rows += bench_decode(rec_path, input_size)
                else:
                    n = max(1, batches // 2) if kind.startswith("train_autoaug") else batches
                    paired = None
                    if kind in TRAIN_PIPELINES:
                        # Before the iterator exists: ImageRecordIter starts decoding when it is built.
                        if payloads is None:
                            payloads = _payloads(rec_path)
                        paired = bench_limit(payloads, n * batch_size, input_size, start=len(rows) * 97)
                    it = _make_iter(kind, rec_path, batch_size, input_size, t)
                    # Warm up until every batch buffer the Python path keeps exists: steady state.
                    row = bench_iter(kind, it, t, n, warmup=t + 3, image_size=input_size)
                    if paired is not None:
                        row.update(_ratios(row, paired))
                    rows.append(row)
                    if hasattr(it, "close"):  # its batches in flight would share the cores with the next
                        it.close()
                    del it
                bar.update()
    return _median_rows(rows)


# ------------------------------------------------------------------------------------------ report
def summarise(rows: List[Dict], gpu_images_per_s: float = GPU_IMAGES_PER_S) -> str:
    """Text: table, train-iterator/decode-limit ratios, and CPU cores per GPU for ResNeSt-50 training."""
    lines = [
        f"{'pipeline':<15}{'threads':>8}{'img/s':>10}{'img/s/thread':>14}{'img/cpu-s':>11}{'images':>8}",
    ]
    for r in rows:
        per_cpu = "-" if r["images_per_cpu_s"] is None else f"{r['images_per_cpu_s']:.0f}"
        lines.append(
            f"{r['name']:<15}{r['threads']:>8}{r['images_per_s']:>10.0f}{r['images_per_s_per_thread']:>14.0f}"
            f"{per_cpu:>11}{r['images']:>8}"
        )
    by = {(r["name"], r["threads"]): r for r in rows}
    limit = by.get(("decode_rrc", 1))
    if limit is None:
        return "\n".join(lines)
    lines += [
        "",
        f"decode limit (cv2.imdecode + random resized crop, 1 core): {limit['images_per_s']:.0f} img/s, "
        f"{limit['images_per_cpu_s']:.0f} img per CPU-second",
    ]
    lines += [
        "",
        "Training iterator per thread vs the decode limit measured right before it on as many images "
        "(paired; medians over the repeats):",
        f"{'pipeline':<15}{'threads':>8}{'limit img/s':>13}{'ratio/thread':>14}"
        f"{'limit img/cpu-s':>17}{'ratio/cpu-s':>13}  goal",
    ]
    for (name, t), r in sorted(by.items()):
        if name in TRAIN_PIPELINES and "ratio_per_cpu_s" in r:
            goal = _goal(name)
            met = (
                "met"
                if min(r["ratio_per_thread_wall"], r["ratio_per_cpu_s"]) >= goal
                else ("met per CPU-second only" if r["ratio_per_cpu_s"] >= goal else "not met")
            ) + f" ({goal}x)"
            lines.append(
                f"{name:<15}{t:>8}{r['limit_images_per_s']:>13.0f}{r['ratio_per_thread_wall']:>14.2f}"
                f"{r['limit_images_per_cpu_s']:>17.0f}{r['ratio_per_cpu_s']:>13.2f}  {met}"
            )
    lines += [
        "",
        f"Cores per GPU, assuming a V100 trains ResNeSt-50 (224 px, float16, batch 128) at "
        f"~{gpu_images_per_s:.0f} img/s and ImageNet JPEGs cost about what these do to decode:",
    ]
    for name, label in (
        ("train", "default (Python path), the reference's augmentations"),
        ("train_autoaug", "the recipe's: + AutoAugment on the whole image"),
        ("train_fast", "DCT shortcut, unclipped colour (the former default)"),
        ("train_cpp", "C++ ImageRecordIter"),
    ):
        best = max((r["images_per_cpu_s"] or 0 for r in rows if r["name"] == name), default=0)
        if best:
            lines.append(
                f"  {label}: {best:.0f} img per CPU-second -> {gpu_images_per_s / best:.1f} cores "
                f"(~{math.ceil(gpu_images_per_s / best)}) per GPU for the input pipeline alone"
            )
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="record file prefix (PREFIX.rec + PREFIX.idx)")
    p.add_argument(
        "--make-data", type=int, metavar="N", default=0, help="first write N ImageNet-like JPEGs there"
    )
    p.add_argument(
        "--make-short-side",
        type=int,
        metavar="S",
        default=None,
        help="with --make-data: resize them to shorter side S (480: as ImageNet is packed)",
    )
    p.add_argument("--make-quality", type=int, default=90, help="with --make-data: JPEG quality")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="decoding threads to try")
    p.add_argument("--batches", type=int, default=40, help="timed batches per iterator")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--gpu-images-per-s", type=float, default=GPU_IMAGES_PER_S, help="assumed GPU speed")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args(argv)
    if min([args.batches, args.batch_size, args.repeats] + args.threads) < 1:
        p.error("--batches, --batch-size, --repeats and --threads must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prefix = args.data[:-4] if args.data.endswith(".rec") else args.data
    if args.make_data:
        make_data(prefix, args.make_data, short_side=args.make_short_side, quality=args.make_quality)
        logger.info("wrote %d images to %s.rec", args.make_data, prefix)
    rows = run(
        prefix, args.threads, args.batches, args.batch_size, args.input_size, args.repeats, args.pipelines
    )
    print(summarise(rows, args.gpu_images_per_s))
    if args.json:
        meta = {
            "command": " ".join(
                ["resnest-bench-pipeline"] + list(argv if argv is not None else sys.argv[1:])
            ),
            "cpu_count": os.cpu_count(),
            "processor": _cpu_model(),
            "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
            "mxnet": mx.__version__,
            "opencv": cv2.__version__,
            "records": data.num_records(prefix + ".rec"),
            "gpu_images_per_s_assumed": args.gpu_images_per_s,
        }
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
        os.replace(tmp, args.json)
    return rows
