#!/usr/bin/env python3
"""Benchmark ``tools/im2rec.py`` against the ``im2rec.py`` shipped in the MXNet wheel, side by side.

Makes an ImageNet-like image folder from real photographs (random crops and rescales of scikit-learn's two
sample photos, 300-500 px on the longer side, varied aspect ratios, JPEG quality 90), writes one ``.lst``,
then packs it with both tools under the same flags and one worker per core, alternating the tools in each
repeat. Each run is a separate process timed from start to finish (what a user waits for); a second,
small run of each tool measures its fixed start-up cost (MXNet's import for the reference), which gives
the marginal throughput with start-up excluded as well. CPU seconds (user + system of the tool and all its
worker processes) are recorded too: on a shared machine, images per CPU-second is the figure other
people's load disturbs least. Medians over the repeats are reported.

Used to size the ImageNet packing for ResNeSt (arXiv:2004.08955). Example::

    python scripts/bench_im2rec.py --images 3000 --repeats 3 --json bench_im2rec.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

# our packer, run as a user runs it (its own process, the installed package)
OURS = ["-m", "resnest_gluon", "im2rec"]

#: (name, our flags, reference flags, goal ratio)
CASES = [
    ("resize 256", ["--resize", "256", "--quality", "95"], ["--resize", "256", "--quality", "95"], 1.2),
    ("resize 480", ["--resize", "480", "--quality", "95"], ["--resize", "480", "--quality", "95"], 1.2),
    (
        "no-upscale 480",
        ["--no-upscale", "--resize", "480", "--quality", "95"],
        ["--resize", "480", "--quality", "95"],
        3.0,
    ),
]


def reference_im2rec() -> str:
    """Path of the ``im2rec.py`` inside the installed mxnet wheel (found without importing mxnet)."""
    import importlib.util

    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mxnet is not installed: the reference im2rec.py ships inside its wheel")
    path = os.path.join(list(spec.submodule_search_locations)[0], "tools", "im2rec.py")
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} not found in the mxnet wheel")
    return path


def make_images(root: str, count: int, classes: int = 10, seed: int = 0) -> None:
    """Write ``count`` JPEGs (quality 90, longer side 300-500 px) in ``classes`` folders under ``root``."""
    from sklearn.datasets import load_sample_images

    photos = [img[:, :, ::-1] for img in load_sample_images().images]  # RGB -> BGR
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c:03d}"), exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        ph, pw = photo.shape[:2]
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))) * (
            1 if rng.random() < 0.75 else 3 / 4
        )
        ch = int(rng.integers(ph // 3, ph + 1))
        cw = min(pw, max(16, int(ch * aspect * 4 / 3)))
        y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop = photo[y : y + ch, x : x + cw]
        longer = int(rng.integers(300, 501))
        scale = longer / max(ch, cw)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        img = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        path = os.path.join(root, f"class{i % classes:03d}", f"img{i:06d}.jpg")
        cv2.imwrite(path, np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, 90])


def _run(cmd: List[str], cwd: str) -> Tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the process and all its workers) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def run_benchmark(
    images: int = 3000,
    repeats: int = 3,
    workers: Optional[int] = None,
    workdir: Optional[str] = None,
    small: int = 50,
    cases: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """Time both tools on every case; returns the measurements (seconds per run, medians, ratios)."""
    workers = workers or os.cpu_count() or 1
    ref = reference_im2rec()
    own_tmp = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="bench_im2rec_")
    try:
        root = os.path.join(workdir, "images")
        if not os.path.isdir(root):
            make_images(root, images)
        # one list for everything, written once; each run gets its own folder so PREFIX matches one .lst
        listing = os.path.join(workdir, "all.lst")
        subprocess.run(
            [sys.executable, *OURS, "--list", "--recursive", os.path.join(workdir, "all"), root],
            check=True,
            capture_output=True,
        )
        lines = open(listing).read().splitlines(keepends=True)
        n_images = len(lines)
        lists = {}
        for tag, part in (("full", lines), ("small", lines[:small])):
            for tool in ("ours", "ref"):
                folder = os.path.join(workdir, f"{tool}_{tag}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, "data.lst"), "w") as f:
                    f.writelines(part)
                lists[tool, tag] = os.path.join(folder, "data")
        for path in lines:  # warm the page cache so the first tool does not pay for the disk
            with open(os.path.join(root, path.rstrip("\n").split("\t")[-1]), "rb") as f:
                f.read()
        threads = ["--num-thread", str(workers)]
        load_before = os.getloadavg()
        results = []
        for name, ours_flags, ref_flags, goal in CASES:
            if cases and name not in cases:
                continue
            times: Dict[str, List[float]] = {k: [] for k in ("ours", "ref", "ours_small", "ref_small")}
            cpu: Dict[str, List[float]] = {k: [] for k in ("ours", "ref")}
            for _ in range(repeats):
                for tool, script, flags in (("ref", [ref], ref_flags), ("ours", OURS, ours_flags)):
                    extra = ["--no-progress"] if tool == "ours" else []
                    for tag, key in (("full", tool), ("small", tool + "_small")):
                        cmd = [sys.executable, *script, lists[tool, tag], root] + flags + threads + extra
                        wall, used = _run(cmd, workdir)
                        times[key].append(wall)
                        if tag == "full":
                            cpu[key].append(used)
            med = {k: statistics.median(v) for k, v in times.items()}
            med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
            row = {
                "case": name,
                "ours_flags": " ".join(ours_flags + threads),
                "ref_flags": " ".join(ref_flags + threads),
                "goal": goal,
                "seconds": times,
                "median_seconds": med,
                "ours_img_s": n_images / med["ours"],
                "ref_img_s": n_images / med["ref"],
                "cpu_seconds": cpu,
                "ours_img_per_cpu_s": n_images / med_cpu["ours"],
                "ref_img_per_cpu_s": n_images / med_cpu["ref"],
                "ours_startup_s": med["ours_small"],
                "ref_startup_s": med["ref_small"],
            }
            row["ratio"] = row["ours_img_s"] / row["ref_img_s"]
            row["cpu_ratio"] = row["ours_img_per_cpu_s"] / row["ref_img_per_cpu_s"]
            for tool in ("ours", "ref"):
                marginal = med[tool] - med[tool + "_small"]
                row[f"{tool}_marginal_img_s"] = (
                    (n_images - small) / marginal if marginal > 0 else float("nan")
                )
            row["marginal_ratio"] = row["ours_marginal_img_s"] / row["ref_marginal_img_s"]
            row["ours_mb"] = os.path.getsize(lists["ours", "full"] + ".rec") / 1e6
            row["ref_mb"] = os.path.getsize(lists["ref", "full"] + ".rec") / 1e6
            results.append(row)
        import mxnet  # only for the version string, after the timings

        return {
            "images": n_images,
            "repeats": repeats,
            "workers": workers,
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "mxnet": mxnet.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "results": results,
        }
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)


def format_table(data: Dict[str, object]) -> str:
    """Markdown table of :func:`run_benchmark`'s result."""
    head = (
        f"{data['images']} JPEGs, {data['workers']} workers on {data['cores']} cores, medians of "
        f"{data['repeats']} runs; python {data['python']}, opencv {data['opencv']}, mxnet {data['mxnet']}; "
        f"1-min load average before/after {data['load_average_before'][0]:.1f}/"
        f"{data['load_average_after'][0]:.1f}\n\n"
    )
    rows = [
        "| case | ours img/s | reference img/s | ratio (goal) | img per CPU-s ours / ref | ratio |"
        " img/s excl. start-up ours / ref | ratio | start-up ours / ref (s) | .rec MB ours / ref |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        rows.append(
            f"| {r['case']} | {r['ours_img_s']:.0f} | {r['ref_img_s']:.0f} |"
            f" {r['ratio']:.2f}x ({r['goal']}x) |"
            f" {r['ours_img_per_cpu_s']:.0f} / {r['ref_img_per_cpu_s']:.0f} | {r['cpu_ratio']:.2f}x |"
            f" {r['ours_marginal_img_s']:.0f} / {r['ref_marginal_img_s']:.0f} | {r['marginal_ratio']:.2f}x |"
            f" {r['ours_startup_s']:.1f} / {r['ref_startup_s']:.1f} |"
            f" {r['ours_mb']:.1f} / {r['ref_mb']:.1f} |"
        )
    return head + "\n".join(rows)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=3000, help="number of JPEGs to make (>= 2000 for the goals)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool and case (median reported)")
    parser.add_argument("--num-thread", type=int, default=None, help="workers per tool (default: cores)")
    parser.add_argument("--small", type=int, default=50, help="images in the start-up measuring run")
    parser.add_argument("--workdir", help="keep images and outputs here (reused when it already has images)")
    parser.add_argument("--cases", nargs="+", help="subset of: " + ", ".join(repr(c[0]) for c in CASES))
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    data = run_benchmark(args.images, args.repeats, args.num_thread, args.workdir, args.small, args.cases)
    data["command"] = " ".join(["resnest-bench-im2rec"] + list(argv if argv is not None else sys.argv[1:]))
    print(format_table(data))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(data, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0
