"""Turns the official ``ADEChallengeData2016.zip`` (MIT Scene Parsing, 150 classes) into pair records.

    python scripts/prepare_ade20k.py --zip ~/downloads/ADEChallengeData2016.zip --out-dir ~/data/ade20k

The archive holds ``ADEChallengeData2016/images/{training,validation}/ADE_*.jpg`` (20,210 and 2,000
images) and ``annotations/{training,validation}/ADE_*.png``, label maps of 0 ("other") to 150. Each pair
becomes one record of ``<out>/training.rec`` or ``<out>/validation.rec`` (with ``.idx``): the JPEG as it was
in the archive and the PNG label map, both checked to decode and to match in size
(:mod:`resnest_gluon.data.seg_records`). ``<out>/classes.txt`` lists the 150 class names of labels 1..150;
training and scoring use ``--mask-offset 1``, so label 0 ("other") is ignored by the loss and the metrics,
as in gluoncv. An unzipped folder works as well as the zip.

Resuming: the pairs are packed in parts of ``--part-size`` into ``<out>/.progress/``, each part written
under a temporary name and renamed when complete; a rerun keeps every finished part and every finished
split. A pair that does not decode is left out and listed in ``<split>.skipped.txt``; nothing already
packed is ever rewritten, so a damaged archive cannot replace a good pair with a broken one.
"""

import argparse
import logging
import os
import shutil
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

from . import common

logger = logging.getLogger("resnest_gluon.prepare_ade20k")

SPLITS = ("training", "validation")
EXPECTED = {"training": 20210, "validation": 2000}
CLASSES_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "ade20k_classes.txt"
)


def ade20k_class_names() -> List[str]:
    """ADE20K's 150 class names (objectInfo150's "Name" column) of labels 1..150, in order."""
    from resnest_gluon.data.class_names import read_class_names

    return read_class_names(CLASSES_FILE)


class Source:
    """The archive's files by their path below ``ADEChallengeData2016/``: a zip or an unzipped folder."""

    def __init__(self, path: str):
        self.path = path
        if os.path.isdir(path):
            self._zip = None
            top = os.path.join(path, "ADEChallengeData2016")
            self._root = top if os.path.isdir(top) else path
            self.names = {
                os.path.relpath(os.path.join(d, f), self._root).replace(os.sep, "/")
                for d, _, files in os.walk(self._root)
                for f in files
            }
        else:
            self._zip = zipfile.ZipFile(path)
            self._prefix, self.names = "", set()
            for name in self._zip.namelist():
                if name.endswith("/"):
                    continue
                head, _, rest = name.partition("/")
                if head == "ADEChallengeData2016" and rest:
                    self._prefix = head + "/"
                    self.names.add(rest)
                else:
                    self.names.add(name)

    def read(self, name: str) -> bytes:
        if self._zip is None:
            with open(os.path.join(self._root, name), "rb") as f:
                return f.read()
        return self._zip.read(self._prefix + name)

    def pairs(self, split: str) -> List[Tuple[str, Optional[str]]]:
        """``(image, mask or None)`` names of a split, sorted by image name."""
        images = sorted(
            n for n in self.names if n.startswith(f"images/{split}/") and n.lower().endswith(".jpg")
        )
        out = []
        for image in images:
            stem = os.path.splitext(os.path.basename(image))[0]
            mask = f"annotations/{split}/{stem}.png"
            out.append((image, mask if mask in self.names else None))
        return out

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _part_prefix(out: str, split: str, part: int) -> str:
    return os.path.join(out, ".progress", f"{split}-{part:05d}")


def pack_split(
    source: Source, out: str, split: str, part_size: int = 1000, progress: bool = True
) -> Dict[str, int]:
    """Packs one split into ``out/<split>.rec`` through resumable parts; returns counts."""
    from resnest_gluon.data.seg_records import PairRecords, write_pair_records

    final = os.path.join(out, split + ".rec")
    skipped_file = os.path.join(out, split + ".skipped.txt")
    if os.path.isfile(final) and os.path.isfile(os.path.join(out, split + ".idx")):
        reader = PairRecords(final)
        n = len(reader)
        reader.close()
        logger.info("%s: %s is complete (%d pairs), kept", split, final, n)
        return dict(pairs=n, skipped=_count_lines(skipped_file), kept=1)
    pairs = source.pairs(split)
    if not pairs:
        raise ValueError(f"{source.path} has no images/{split}/*.jpg: is it ADEChallengeData2016.zip?")
    os.makedirs(os.path.join(out, ".progress"), exist_ok=True)
    parts = [pairs[i : i + part_size] for i in range(0, len(pairs), part_size)]
    for k, chunk in enumerate(_bar(parts, progress, split)):
        prefix = _part_prefix(out, split, k)
        if os.path.isfile(prefix + ".rec") and os.path.isfile(prefix + ".idx"):
            continue  # finished by an earlier run: never rewritten
        missing = [image for image, mask in chunk if mask is None]
        chunk = [(image, mask) for image, mask in chunk if mask is not None]
        data = ((source.read(image), source.read(mask)) for image, mask in chunk)
        _, skipped = write_pair_records(prefix, data, names=[image for image, _ in chunk])
        with open(prefix + ".skipped.tmp", "w") as f:
            f.writelines(f"{image}: no mask {os.path.basename(image)[:-4]}.png\n" for image in missing)
            f.writelines(line + "\n" for line in skipped)
        os.replace(prefix + ".skipped.tmp", prefix + ".skipped.txt")
    written, skipped_lines = _merge(out, split, len(parts))
    if len(pairs) != EXPECTED.get(split):
        logger.info("%s: %d images (the official archive has %s)", split, len(pairs), EXPECTED.get(split))
    return dict(pairs=written, skipped=len(skipped_lines), kept=0)


def _merge(out: str, split: str, num_parts: int) -> Tuple[int, List[str]]:
    """Joins the parts into ``<split>.rec`` (written under a temporary name, then renamed)."""
    from resnest_gluon.data.seg_records import PairRecords, unpack_pair, write_pair_records

    skipped: List[str] = []

    def records():
        for k in range(num_parts):
            prefix = _part_prefix(out, split, k)
            with open(prefix + ".skipped.txt") as f:
                skipped.extend(line.rstrip("\n") for line in f if line.strip())
            reader = PairRecords(prefix + ".rec")
            for key in reader.keys:
                _, image, mask = unpack_pair(reader.read_raw(key))
                yield bytes(image), bytes(mask)
            reader.close()

    written, _ = write_pair_records(os.path.join(out, split), records(), check=False)
    with open(os.path.join(out, split + ".skipped.txt"), "w") as f:
        f.writelines(line + "\n" for line in skipped)
    for k in range(num_parts):
        for ext in (".rec", ".idx", ".skipped.txt"):
            os.remove(_part_prefix(out, split, k) + ext)
    return written, skipped


def _count_lines(path: str) -> int:
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def _bar(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from resnest_gluon.progress import progress_bar

    return progress_bar(items, desc=desc, unit="part")


def prepare(
    archive: str, out: str, splits: Sequence[str] = SPLITS, part_size: int = 1000, progress: bool = True
) -> Dict[str, Dict[str, int]]:
    """Packs ``splits`` of ``archive`` (zip or folder) into ``out``; writes ``classes.txt``."""
    os.makedirs(out, exist_ok=True)
    shutil.copyfile(CLASSES_FILE, os.path.join(out, "classes.txt"))
    source = Source(archive)
    try:
        summary = {split: pack_split(source, out, split, part_size, progress) for split in splits}
    finally:
        source.close()
    progress_dir = os.path.join(out, ".progress")
    if os.path.isdir(progress_dir) and not os.listdir(progress_dir):
        os.rmdir(progress_dir)
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = common.parser("Pack ADEChallengeData2016.zip (ADE20K, 150 classes) into image-mask pair records.")
    p.add_argument("--zip", required=True, help="ADEChallengeData2016.zip, or the folder it unzips to")
    p.add_argument("--out-dir", required=True, help="where <split>.rec/.idx and classes.txt go")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to pack")
    p.add_argument("--part-size", type=int, default=1000, help="pairs per resumable part")
    common.add_progress(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs; returns 0, or 2 when some pairs were left out (listed in ``<split>.skipped.txt``)."""
    from resnest_gluon.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not os.path.exists(args.zip):
        raise UserError(
            f"--zip {args.zip} not found: download ADEChallengeData2016.zip from the MIT Scene Parsing site"
        )
    try:
        summary = prepare(args.zip, args.out_dir, args.splits, args.part_size, args.progress is not False)
    except (ValueError, zipfile.BadZipFile) as err:
        raise UserError(str(err)) from err
    for split, counts in summary.items():
        logger.info("%s: %d pairs, %d left out", split, counts["pairs"], counts["skipped"])
    return 2 if any(c["skipped"] for c in summary.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
