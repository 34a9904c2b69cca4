#!/usr/bin/env python3
"""Turn the official ILSVRC2012 archives into class folders and MXNet RecordIO files.

Inputs (from image-net.org, not downloadable here):

* ``ILSVRC2012_img_train.tar``: one tar per class (``n01440764.tar``, ...) of JPEGs;
* ``ILSVRC2012_img_val.tar``: 50,000 JPEGs ``ILSVRC2012_val_00000001.JPEG`` ... in one folder;
* ``ILSVRC2012_devkit_t12.tar.gz``: ``data/meta.mat`` (synsets: ``ILSVRC2012_ID``, ``WNID``, ``words``,
  ``num_children``, ...) and ``data/ILSVRC2012_validation_ground_truth.txt`` (the ``ILSVRC2012_ID`` of
  each validation image, in file-number order).

Outputs under ``--out-dir``: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``, ``synsets.txt`` (label order),
``train.lst``/``val.lst`` and ``train.rec``/``.idx``, ``val.rec``/``.idx`` made with ``tools/im2rec.py``
(shorter side 480 px by default, as ResNeSt's training recipe expects; arXiv:2004.08955). Labels are the
positions of the 1,000 leaf WNIDs in sorted order, the same numbering ``im2rec.py --list --recursive`` gives
on the train folder. The work is resumable: each extracted class leaves a marker in ``.progress/``, and
finished ``.rec`` files are kept, so a rerun continues where the last one stopped.

Example::

    python scripts/prepare_imagenet.py --download-dir ~/imagenet_tars --out-dir ~/data/imagenet \\
        --num-thread 16
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import re
import shutil
import tarfile
from typing import Dict, List, Optional, Sequence, Tuple

from . import common

logger = logging.getLogger(__name__)

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.JPEG$", re.IGNORECASE)
_IMAGE_EXTS = (".jpeg", ".jpg", ".png")


def _load_im2rec():
    from . import im2rec

    return im2rec


def read_devkit(path: str) -> Tuple[Dict[int, Tuple[str, str]], List[int]]:
    """Read the devkit archive.

    Returns
    -------
    synsets : dict
        ``ILSVRC2012_ID -> (wnid, words)`` for the leaf synsets (the 1,000 classes).
    ground_truth : list of int
        ``ILSVRC2012_ID`` of validation image 1, 2, ...
    """
    from scipy.io import loadmat

    meta = truth = None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith("data/meta.mat"):
                meta = tar.extractfile(member).read()
            elif member.isfile() and member.name.endswith("data/ILSVRC2012_validation_ground_truth.txt"):
                truth = tar.extractfile(member).read().decode()
    if meta is None or truth is None:
        raise ValueError(
            f"{path} lacks data/meta.mat or data/ILSVRC2012_validation_ground_truth.txt: "
            "is it ILSVRC2012_devkit_t12.tar.gz?"
        )
    rows = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    synsets = {}
    for row in rows.reshape(-1):
        if int(row["num_children"]) == 0:
            synsets[int(row["ILSVRC2012_ID"])] = (str(row["WNID"]), str(row["words"]))
    ground_truth = [int(line) for line in truth.split()]
    return synsets, ground_truth


def _marker(out: str, name: str) -> str:
    return os.path.join(out, ".progress", name + ".done")


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("done\n")


def _extract_images(tar: tarfile.TarFile, dest: str) -> int:
    """Write the image files of a (streamed) tar into ``dest``, flat; returns how many."""
    count = 0
    for member in tar:
        name = os.path.basename(member.name)  # never trust paths inside an archive
        if not member.isfile() or not name.lower().endswith(_IMAGE_EXTS):
            continue
        with open(os.path.join(dest, name), "wb") as f:
            shutil.copyfileobj(tar.extractfile(member), f)
        count += 1
    return count


def extract_train(train_tar: str, out: str, wnids: Sequence[str], progress: bool = True) -> Dict[str, int]:
    """Extract every class tar of the train archive into ``out/train/<wnid>``, skipping finished classes.

    A class is written to ``<wnid>.partial`` and renamed when complete, then marked done.

    Returns
    -------
    dict
        ``extracted`` and ``skipped`` class counts, ``images`` extracted.
    """
    from resnest_gluon.progress import progress_bar

    known = set(wnids)
    stats = {"extracted": 0, "skipped": 0, "images": 0}
    train_dir = os.path.join(out, "train")
    os.makedirs(train_dir, exist_ok=True)
    with tarfile.open(train_tar, "r:") as outer:
        members = [m for m in outer.getmembers() if m.isfile() and m.name.endswith(".tar")]
        if not members:
            raise ValueError(f"{train_tar} holds no per-class .tar files: is it ILSVRC2012_img_train.tar?")
        for member in progress_bar(members, unit="class", disable=not progress, desc="train"):
            wnid = os.path.basename(member.name)[:-4]
            if wnid not in known:
                logger.warning("%s: %s is not one of the devkit classes, ignored", train_tar, member.name)
                continue
            if os.path.exists(_marker(out, "train_" + wnid)):
                stats["skipped"] += 1
                continue
            partial, final = os.path.join(train_dir, wnid + ".partial"), os.path.join(train_dir, wnid)
            for path in (partial, final):
                shutil.rmtree(path, ignore_errors=True)
            os.makedirs(partial)
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                stats["images"] += _extract_images(inner, partial)
            os.replace(partial, final)
            _touch(_marker(out, "train_" + wnid))
            stats["extracted"] += 1
    return stats


def extract_val(
    val_tar: str,
    out: str,
    synsets: Dict[int, Tuple[str, str]],
    ground_truth: List[int],
    progress: bool = True,
) -> Dict[str, int]:
    """Extract the validation images into ``out/val/<wnid>`` using the ground truth; skipped when done."""
    from resnest_gluon.progress import progress_bar

    if os.path.exists(_marker(out, "val")):
        return {"images": 0, "skipped": 1}
    val_dir = os.path.join(out, "val")
    for wnid, _ in synsets.values():
        os.makedirs(os.path.join(val_dir, wnid), exist_ok=True)
    count = 0
    with tarfile.open(val_tar, "r|") as tar, progress_bar(
        unit="img", disable=not progress, desc="val"
    ) as bar:
        for member in tar:
            match = _VAL_NAME.search(os.path.basename(member.name))
            if not member.isfile() or not match:
                continue
            number = int(match.group(1))
            if not 1 <= number <= len(ground_truth):
                raise ValueError(f"{member.name}: no ground truth line {number} in the devkit")
            label_id = ground_truth[number - 1]
            if label_id not in synsets:
                raise ValueError(
                    f"{member.name}: ground truth ID {label_id} is not a leaf synset of meta.mat"
                )
            dest = os.path.join(val_dir, synsets[label_id][0], os.path.basename(member.name))
            try:
                with open(dest + ".tmp", "wb") as f:
                    shutil.copyfileobj(tar.extractfile(member), f)
            except BaseException:  # Ctrl-C, SIGTERM, a full disk: no half-written image left
                os.remove(dest + ".tmp")
                raise
            os.replace(dest + ".tmp", dest)
            count += 1
            bar.update(1)
    if count != len(ground_truth):
        logger.warning(
            "%s held %d validation images, the ground truth lists %d", val_tar, count, len(ground_truth)
        )
    _touch(_marker(out, "val"))
    return {"images": count, "skipped": 0}


def build_list(split_dir: str, wnids: Sequence[str], shuffle: bool) -> list:
    """List ``split_dir/<wnid>/*`` with label = position of the wnid in ``wnids`` (sorted WNIDs)."""
    im2rec = _load_im2rec()
    items = []
    for label, wnid in enumerate(wnids):
        folder = os.path.join(split_dir, wnid)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(_IMAGE_EXTS):
                items.append(im2rec.ListItem(len(items), f"{wnid}/{name}", (float(label),)))
    if shuffle:  # the same shuffle as im2rec.py --list
        random.Random(100).shuffle(items)
    return items


def prepare(
    out: str,
    train_tar: Optional[str],
    val_tar: Optional[str],
    devkit: str,
    splits: Sequence[str] = ("train", "val"),
    resize: int = 480,
    quality: int = 95,
    num_thread: int = 1,
    no_upscale: bool = False,
    pack: bool = True,
    progress: bool = True,
) -> Dict[str, object]:
    """Extract, list and pack; every step is skipped when its output is already complete.

    Returns
    -------
    dict
        Per split: extraction stats, ``listed`` images, ``packed`` (False when an existing .rec was kept)
        and ``skipped_images`` (unpackable files, listed in ``<split>.skipped.tsv``).
    """
    im2rec = _load_im2rec()
    synsets, ground_truth = read_devkit(devkit)
    wnids = sorted(wnid for wnid, _ in synsets.values())
    words = {wnid: text for wnid, text in synsets.values()}
    os.makedirs(out, exist_ok=True)
    im2rec._atomic_write_text(os.path.join(out, "synsets.txt"), "".join(f"{w} {words[w]}\n" for w in wnids))
    summary: Dict[str, object] = {"classes": len(wnids)}
    opts = im2rec.EncodeOptions(resize=resize, quality=quality, no_upscale=no_upscale)
    for split in splits:
        info: Dict[str, object] = {}
        if split == "train":
            info["extract"] = extract_train(train_tar, out, wnids, progress)
        else:
            info["extract"] = extract_val(val_tar, out, synsets, ground_truth, progress)
        stem = os.path.join(out, split)
        fresh = info["extract"].get("extracted", 0) or info["extract"].get("images", 0)
        done = not fresh and os.path.exists(stem + ".rec") and os.path.exists(stem + ".idx")
        if not done:
            items = build_list(stem, wnids, shuffle=split == "train")
            if not items:
                raise ValueError(f"no images found under {stem}")
            im2rec.write_list(stem + ".lst", items)
            info["listed"] = len(items)
        info["packed"] = False
        info["skipped_images"] = 0
        if pack and not done:
            stats = im2rec.pack_list(stem + ".lst", stem, opts, num_thread, progress)
            info.update(
                packed=True, written=stats.written, skipped_images=stats.skipped, seconds=stats.seconds
            )
            if stats.skipped:
                logger.warning("%s: skipped %d images, see %s", split, stats.skipped, stats.report)
        elif done:
            logger.info("%s.rec exists: kept (delete it to pack again)", stem)
        summary[split] = info
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = common.parser("Build ImageNet class folders and RecordIO files from the ILSVRC2012 archives.")
    data = parser.add_argument_group("data")
    data.add_argument("--download-dir", default=".", help="folder holding the three official archives")
    data.add_argument("--train-tar", help=f"path of {TRAIN_TAR} (default: in --download-dir)")
    data.add_argument("--val-tar", help=f"path of {VAL_TAR} (default: in --download-dir)")
    data.add_argument("--devkit", help=f"path of {DEVKIT} (default: in --download-dir)")
    data.add_argument(
        "--splits", nargs="+", default=["train", "val"], choices=["train", "val"], help="splits"
    )
    pack = parser.add_argument_group("packing")
    pack.add_argument("--resize", type=int, default=480, help="shorter side of the packed images (0: keep)")
    pack.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    pack.add_argument("--no-upscale", action="store_true", help="keep smaller images (JPEG bytes copied)")
    pack.add_argument("--num-thread", type=int, default=os.cpu_count() or 1, help="packing processes")
    pack.add_argument("--no-rec", action="store_true", help="only extract and write the .lst files")
    out = parser.add_argument_group("output")
    # not required=True: argparse would then refuse the old spelling --out
    out.add_argument("--out-dir", help="output folder, needs ~150 GB for folders + records (required)")
    common.alias(out, "--out", dest="out_dir")
    common.add_progress(out)
    args = parser.parse_args(argv)
    if not args.out_dir:
        parser.error("the following arguments are required: --out-dir")
    args.train_tar = args.train_tar or os.path.join(args.download_dir, TRAIN_TAR)
    args.val_tar = args.val_tar or os.path.join(args.download_dir, VAL_TAR)
    args.devkit = args.devkit or os.path.join(args.download_dir, DEVKIT)
    needed = [args.devkit] + [args.train_tar if s == "train" else args.val_tar for s in args.splits]
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing:
        parser.error(
            "missing " + ", ".join(missing) + ": download the ILSVRC2012 archives from https://image-net.org "
            "(an account is needed) and pass --download-dir or the individual paths"
        )
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run; returns 0, 2 when some images could not be packed (listed in ``<split>.skipped.tsv``), 1 on an
    error, 130 / 143 when stopped by SIGINT / SIGTERM (finished steps are kept: a rerun continues)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    from resnest_gluon.interrupts import exit_status, stop_message, stop_on_sigterm

    stop_on_sigterm()
    try:
        return _run(args)
    except (ValueError, tarfile.TarError, _load_im2rec().PackError) as err:
        logger.error("error: %s", err)
        return 1
    except KeyboardInterrupt as err:
        logger.error(stop_message("prepare_imagenet", err, "finished steps are kept: run it again to go on"))
        return exit_status(err)


def _run(args: argparse.Namespace) -> int:
    summary = prepare(
        args.out_dir,
        args.train_tar,
        args.val_tar,
        args.devkit,
        args.splits,
        args.resize,
        args.quality,
        args.num_thread,
        args.no_upscale,
        pack=not args.no_rec,
        progress=args.progress is not False,
    )
    for split in args.splits:
        logger.info("%s: %s", split, summary[split])
    return 2 if any(summary[s]["skipped_images"] for s in args.splits) else 0
