"""Labels new images with a ResNeSt: the top-k class names and probabilities of every image.

    python scripts/predict.py photos/ --model resnest50 --pretrained               # ImageNet names
    python scripts/predict.py photos/ more.jpg --run runs/flowers --out preds.csv  # a training run
    python scripts/predict.py list.txt --run runs/flowers --ema --tta flip         # its EMA weights
    python scripts/predict.py photos/ --params my.params --model resnest50 --classes 5 --class-names n.txt
    python scripts/predict.py photos/ --symbol export/resnest50   # exported symbol (resnest-export)
    python scripts/predict.py photos/ --onnx resnest50.onnx       # onnxruntime; .meta.json gives the rest
    python scripts/predict.py photos/ --openvino resnest50.xml    # OpenVINO (resnest-export)

Inputs are image files, folders (searched recursively for .jpg/.jpeg/.png/.bmp/.webp/.tif/.tiff) and text
files (``.txt``) of paths, one per line, relative to the text file's folder. The preprocessing is
``scripts/verify.py``'s, the ResNeSt reference's: below 320 px the shorter side resized to
``crop / 0.875`` (bilinear) and the centre crop; from 320 px the centre square of ``crop / (crop + 32)`` of
the shorter side resized with PIL's bicubic filter; mean/std normalisation. A file that cannot be read or
decoded gets its reason in the status column (and on stderr) while every other image is predicted; the exit
status is then 2. Errors in the command (a missing path, an empty folder, class names that do not fit the
model) stop before any work with exit status 1.
"""

import argparse
import csv
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

import resnest_gluon
from resnest_gluon.cli.im2rec import OPENCV_MAX_PIXELS, image_info
from resnest_gluon.data.class_names import imagenet_class_names, read_class_names
from resnest_gluon.data.transforms import ValTransform, write_chw
from resnest_gluon.errors import UserError
from resnest_gluon.files import IMAGE_EXTS, NotRegularFile, read_regular, write_bytes
from resnest_gluon.progress import progress_bar

from . import common

#: images with more pixels are decoded one at a time (about 100 MB each as 8-bit BGR): four 20000^2
#: PNGs in four threads would otherwise need about 10 GB at once
LARGE_PIXELS = 1 << 25
_large = threading.Lock()
OK = "ok"


class PredictError(UserError):
    """A problem with the command (inputs, model, class names), found before any image is predicted."""


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser("Top-k class names and probabilities of images, from a ResNeSt.")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or .txt files of paths")
    src = p.add_argument_group(
        "the model (one of --run, --params, --pretrained, --symbol, --onnx, --openvino)"
    )
    src.add_argument("--run", help="a scripts/train.py run directory: model, classes, crop and class names")
    src.add_argument("--ema", action="store_true", help="with --run: the EMA weights (<model>-ema-best)")
    src.add_argument("--params", help="a .params file of --model with --classes classes")
    src.add_argument("--pretrained", action="store_true", help="the published ImageNet weights of --model")
    src.add_argument(
        "--symbol",
        metavar="PREFIX",
        help="an exported model: PREFIX-symbol.json, params and PREFIX.meta.json",
    )
    src.add_argument("--epoch", type=int, default=0, help="with --symbol: the number in PREFIX-NNNN.params")
    src.add_argument(
        "--onnx", metavar="FILE", help="an .onnx file (and its .meta.json), run with onnxruntime"
    )
    src.add_argument(
        "--openvino", metavar="XML", help="an OpenVINO .xml from resnest-export (and its .meta.json)"
    )
    model = p.add_argument_group("model and classes (an export's .meta.json gives them)")
    model.add_argument("--model", help="one of resnest_gluon.list_models() (with --params or --pretrained)")
    model.add_argument("--classes", type=int, default=None, help="classes of --params (default: 1000)")
    model.add_argument(
        "--class-names",
        help="names in label order, one per line (default: the run's or export's, or ImageNet's)",
    )
    model.add_argument(
        "--crop-size", type=int, default=None, help="centre crop (default: the model's, run's or export's)"
    )
    run = p.add_argument_group("running")
    run.add_argument("--top-k", type=int, default=5, help="classes listed per image")
    run.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    common.add_data_threads(run, 4, help="image decoding threads")
    common.add_ctx(run, help_gpu="gpu(0) (MXNet backends)")
    run.add_argument("--tta", choices=("none", "flip"), default="none", help="flip: average with the mirror")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="also write the results to this .csv or .json file")
    out.add_argument("--quiet", action="store_true", help="no table on standard output")
    common.add_progress(out)
    args = p.parse_args(argv)
    sources = [
        name for name in ("run", "params", "pretrained", "symbol", "onnx", "openvino") if getattr(args, name)
    ]
    if len(sources) != 1:
        p.error("give exactly one of --run, --params, --pretrained, --symbol, --onnx, --openvino")
    if args.top_k < 1 or args.batch_size < 1 or args.data_threads < 0:
        p.error("--top-k and --batch-size must be at least 1, --data-threads at least 0")
    if args.out and os.path.splitext(args.out)[1].lower() not in (".csv", ".json"):
        p.error("--out must end in .csv or .json")
    return args


def apply_export_meta(args: argparse.Namespace) -> Optional[dict]:
    """For --onnx, --openvino and --symbol: the export's ``.meta.json`` fills --crop-size, --classes and the
    class names that were not given (``args.meta_class_names``); returns the metadata, or None without one."""
    from resnest_gluon.deploy import read_meta

    args.meta_class_names = None
    target = args.onnx or args.openvino or args.symbol
    if not target:
        return None
    try:
        meta = read_meta(target)
    except ValueError as err:
        raise PredictError(str(err)) from None
    if meta is None:
        return None
    args.crop_size = args.crop_size or meta.get("input_size")
    args.classes = args.classes or meta.get("classes")
    args.model = args.model or meta.get("model")
    if args.class_names is None:
        args.meta_class_names = meta.get("class_names")
    return meta


# ---------------------------------------------------------------------------------------------- inputs
def collect_images(inputs: Sequence[str]) -> List[str]:
    """The image paths named by ``inputs`` (files, folders searched recursively, .txt lists of paths).

    Raises
    ------
    PredictError
        For a path that does not exist, a folder without images or a list without paths.
    """
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item, followlinks=True):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTS)]
            if not found:
                raise PredictError(f"folder {item} holds no images ({', '.join(IMAGE_EXTS)})")
            paths += found
        elif item.lower().endswith(".txt") and os.path.isfile(item):
            base = os.path.dirname(os.path.abspath(item))
            with open(item, encoding="utf-8") as f:
                listed = [line.strip() for line in f if line.strip()]
            if not listed:
                raise PredictError(f"list {item} names no images")
            listed = [p if os.path.isabs(p) else os.path.join(base, p) for p in listed]
            missing = [p for p in listed if not os.path.exists(p)]
            if missing:
                raise PredictError(f"{missing[0]} (listed in {item}) does not exist")
            paths += listed
        elif os.path.lexists(item):
            paths.append(item)
        else:
            raise PredictError(f"{item} does not exist")
    return paths


class Preprocess:
    """File -> normalised ``(3, crop, crop)`` float32 array, exactly as scripts/verify.py's validation."""

    def __init__(self, crop: int):
        self.crop, self._transform = crop, ValTransform(crop)

    def __call__(self, path: str) -> Tuple[Optional[np.ndarray], str]:
        """``(image, "ok")``, or ``(None, reason)`` for a file that cannot be used."""
        try:
            data = read_regular(path)  # a FIFO named a.jpg would block, /dev/zero would fill the memory
        except NotRegularFile as err:
            return None, f"cannot read: {err}"
        except OSError as err:
            return None, f"cannot read: {err.strerror or err}"
        if not data:
            return None, "empty file"
        pixels = image_pixels(data)
        if pixels > OPENCV_MAX_PIXELS:
            return None, f"image too large ({pixels} pixels; OpenCV decodes at most {OPENCV_MAX_PIXELS})"
        try:
            if pixels > LARGE_PIXELS:
                with _large:
                    crop, affine = self._transform(np.frombuffer(data, np.uint8), None, None, (path, 0))
            else:
                crop, affine = self._transform(np.frombuffer(data, np.uint8), None, None, (path, 0))
        except ValueError:
            return None, "not a decodable image (corrupt, or not an image format OpenCV reads)"
        out = np.empty((3, self.crop, self.crop), np.float32)
        write_chw(crop, affine, out, np.empty(crop.shape, np.float32))
        return out, OK


def image_pixels(data: bytes) -> int:
    """Width x height from the file's header without decoding (JPEG and PNG; other formats through Pillow
    when it is installed), 0 when unknown."""
    try:
        info = image_info(data)
    except Exception:  # noqa: BLE001 - a damaged header is the decoder's to report
        return 0
    if info.width:
        return info.width * info.height
    try:
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.width * im.height
    except Exception:  # noqa: BLE001 - no Pillow, or not an image it knows
        return 0


def printable_path(path: str) -> str:
    """``path`` as valid Unicode: bytes of a name that are not UTF-8 (``os.fsdecode``'s lone surrogates)
    become ``\\xNN`` escapes, so one such name does not lose the whole CSV or JSON."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def csv_cell(text: str) -> str:
    """A cell that a spreadsheet shows as text: one starting with ``= + - @`` (or a tab or CR) gets a
    leading ``'``, as OWASP recommends against formula injection."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# ---------------------------------------------------------------------------------------------- models
class Model:
    """A backend's forward pass ``(B, 3, H, W) float32 -> (B, classes) logits`` and what it needs."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], crop: int, classes: Optional[int]):
        self.forward, self.crop, self.classes = forward, crop, classes


def _context(args) -> mx.Context:
    if args.ctx == "gpu":
        if mx.context.num_gpus() == 0:
            raise PredictError("--ctx gpu but MXNet sees no GPU: install mxnet-cu112, or pass --ctx cpu")
        return mx.gpu(0)
    return mx.cpu()


def _default_crop(args) -> int:
    """--crop-size, else the paper crop of --model, else 224 (for exported graphs)."""
    if args.crop_size:
        return args.crop_size
    return resnest_gluon.model_info(args.model)["crop_size"] if args.model else 224


def _gluon_forward(net, ctx: mx.Context) -> Callable[[np.ndarray], np.ndarray]:
    from resnest_gluon.deploy import prepare_for_inference

    net = prepare_for_inference(net)
    if not getattr(net, "_active", False):
        net.hybridize(static_alloc=True, static_shape=True)
    return lambda x: net(mx.nd.array(x, ctx=ctx)).asnumpy()


def load_mxnet(args) -> Model:
    """--run, --params, --pretrained (Gluon models) and --symbol (an exported graph) with MXNet."""
    from resnest_gluon.models.pretrained import load_params_checked

    ctx = _context(args)
    if args.symbol:
        from resnest_gluon.deploy import load_exported

        try:
            net = load_exported(args.symbol, args.epoch, ctx)
        except (OSError, ValueError, mx.base.MXNetError) as err:
            raise PredictError(f"--symbol {args.symbol}: {err}") from err
        return Model(lambda x: net(mx.nd.array(x, ctx=ctx)).asnumpy(), _default_crop(args), args.classes)
    model, classes, params = args.model, args.classes, args.params
    crop = args.crop_size
    if args.run:
        from resnest_gluon.training.rundir import NotARun, run_files

        try:
            saved, params = run_files(args.run, args.ema)
        except NotARun as err:
            raise PredictError(str(err)) from None
        model, classes = saved["model"], saved["classes"]
        crop = crop or saved.get("val_crop_size")
    if model not in resnest_gluon.list_models():
        raise PredictError(
            f"--model {model!r} is not a model name; choose one of: {', '.join(resnest_gluon.list_models())}"
        )
    crop = crop or resnest_gluon.model_info(model)["crop_size"]
    classes = classes or 1000
    try:
        if args.pretrained:
            net = resnest_gluon.get_model(model, pretrained=True, ctx=ctx)
        else:
            net = resnest_gluon.get_model(model, classes=classes)
            load_params_checked(net, params, ctx)
    except (OSError, ValueError, mx.base.MXNetError) as err:
        raise PredictError(str(err)) from err
    return Model(_gluon_forward(net, ctx), crop, classes)


def load_onnx_model(args) -> Model:
    """--onnx with onnxruntime (CPU)."""
    from resnest_gluon.deploy import load_onnx, run_onnx

    if not os.path.isfile(args.onnx):
        raise PredictError(f"--onnx {args.onnx} does not exist")
    try:
        session = load_onnx(args.onnx, threads=args.data_threads)
    except Exception as err:  # onnxruntime raises its own exception types
        raise PredictError(f"--onnx {args.onnx} cannot be loaded: {err}") from err
    shape = session.get_inputs()[0].shape
    fixed = shape[0] if isinstance(shape[0], int) else None  # an export without a dynamic batch
    crop = args.crop_size or (shape[-1] if isinstance(shape[-1], int) else _default_crop(args))

    def forward(x: np.ndarray) -> np.ndarray:
        if fixed is None:
            return run_onnx(session, x)
        parts = []
        for i in range(0, len(x), fixed):
            part = x[i : i + fixed]
            padded = np.concatenate([part, np.zeros((fixed - len(part),) + part.shape[1:], part.dtype)])
            parts.append(run_onnx(session, padded)[: len(part)])
        return np.concatenate(parts)

    return Model(forward, crop, args.classes)


def load_openvino_model(args) -> Model:
    """--openvino with OpenVINO (CPU), at the precision it was exported with."""
    from resnest_gluon.deploy import load_openvino, run_openvino

    if not os.path.isfile(args.openvino):
        raise PredictError(f"--openvino {args.openvino} does not exist")
    try:
        compiled = load_openvino(args.openvino, threads=args.data_threads)
    except Exception as err:  # OpenVINO raises its own exception types
        raise PredictError(f"--openvino {args.openvino} cannot be loaded: {err}") from err
    return Model(lambda x: run_openvino(compiled, x), _default_crop(args), args.classes)


# Every way of running a model; a new backend is one more loader here and one more flag.
BACKENDS: Dict[str, Callable[[argparse.Namespace], Model]] = {
    "mxnet": load_mxnet,
    "onnx": load_onnx_model,
    "openvino": load_openvino_model,
}


def backend_of(args) -> str:
    return "onnx" if args.onnx else "openvino" if args.openvino else "mxnet"


def class_names_for(args, model: Model) -> Optional[List[str]]:
    """``--class-names``, else the run's ``classes.txt``, else ImageNet's for --pretrained; checked against
    the model's number of classes when it is known."""
    path = args.class_names
    if path is None and args.run and os.path.isfile(os.path.join(args.run, "classes.txt")):
        path = os.path.join(args.run, "classes.txt")
    if path is not None:
        try:
            names = read_class_names(path)
        except (OSError, ValueError) as err:
            raise PredictError(str(err)) from err
    elif getattr(args, "meta_class_names", None):
        names = args.meta_class_names
    elif args.pretrained:
        names = imagenet_class_names()
    else:
        return None
    if model.classes is not None and len(names) != model.classes:
        raise PredictError(
            f"{path or 'the ImageNet class names'} names {len(names)} classes but the model has "
            f"{model.classes}: pass the class names of this model (or the right --classes)"
        )
    return names


# ---------------------------------------------------------------------------------------------- predict
def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict(
    paths: Sequence[str],
    model: Model,
    names: Optional[List[str]],
    top_k: int = 5,
    batch_size: int = 16,
    threads: int = 4,
    tta: str = "none",
    progress: bool = True,
) -> List[dict]:
    """One row per path: ``path``, ``status`` (``"ok"`` or the reason), ``names`` and ``probs`` (top-k)."""
    preprocess = Preprocess(model.crop)
    rows: List[dict] = []
    pool = ThreadPoolExecutor(threads) if threads > 0 else None
    bar = progress_bar(total=len(paths), desc="predict", unit="img", disable=not progress)
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            decoded = list(pool.map(preprocess, chunk) if pool else map(preprocess, chunk))
            good = [i for i, (img, _) in enumerate(decoded) if img is not None]
            probs = np.zeros((0, 0), np.float32)
            if good:
                batch = np.stack([decoded[i][0] for i in good])
                probs = softmax(model.forward(batch))
                if tta == "flip":
                    probs = 0.5 * (probs + softmax(model.forward(np.ascontiguousarray(batch[..., ::-1]))))
            k = min(top_k, probs.shape[1]) if good else 0
            position = {i: j for j, i in enumerate(good)}
            for i, path in enumerate(chunk):
                status = decoded[i][1]
                row = dict(path=path, status=status, names=[], probs=[])
                if status == OK:
                    p = probs[position[i]]
                    top = np.argsort(-p, kind="stable")[:k]
                    row["names"] = [names[c] if names else str(c) for c in top]
                    row["probs"] = [float(p[c]) for c in top]
                else:
                    print(f"{printable_path(path)}: {status}", file=sys.stderr)
                rows.append(row)
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return rows


def format_table(rows: Sequence[dict], top_k: int) -> str:
    """A plain-text table: path, status, then ``name (prob)`` for each of the top-k."""
    header = ["path", "status"] + [f"top-{i + 1}" for i in range(top_k)]
    body = [
        [printable_path(r["path"]), r["status"]] + [f"{n} ({p:.3f})" for n, p in zip(r["names"], r["probs"])]
        for r in rows
    ]
    widths = [max(len(str(line[c])) for line in [header] + body if c < len(line)) for c in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in [header] + body
    )


def write_results(rows: Sequence[dict], path: str, top_k: int) -> None:
    """``rows`` as CSV (path, status, name_1, prob_1, ...) or JSON, through a temporary file."""
    rows = [dict(r, path=printable_path(r["path"]), status=printable_path(r["status"])) for r in rows]
    if path.lower().endswith(".json"):
        text = json.dumps(list(rows), indent=1) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "status"] + [f"{f}_{i + 1}" for i in range(top_k) for f in ("name", "prob")])
        for r in rows:
            cells = [csv_cell(r["path"]), csv_cell(r["status"])]
            for i in range(top_k):
                cells += (
                    [csv_cell(r["names"][i]), f"{r['probs'][i]:.6f}"] if i < len(r["names"]) else ["", ""]
                )
            writer.writerow(cells)
        text = buf.getvalue()
    write_bytes(path, text.encode("utf-8"))  # checked before it replaces anything; an error is one line


def main(argv=None) -> int:
    """Runs the prediction; returns the exit status (0: every image predicted, 2: some could not be)."""
    args = parse_args(argv)
    if (args.params or args.pretrained) and not args.model:
        raise PredictError("--params and --pretrained need --model NAME")
    apply_export_meta(args)
    paths = collect_images(args.inputs)
    if backend_of(args) == "mxnet":
        common.resolve_ctx(args)
    model = BACKENDS[backend_of(args)](args)
    names = class_names_for(args, model)
    tic = time.time()
    rows = predict(
        paths,
        model,
        names,
        args.top_k,
        args.batch_size,
        args.data_threads,
        args.tta,
        common.progress_enabled(args),
    )
    seconds = time.time() - tic
    if not args.quiet:
        print(format_table(rows, args.top_k))
    failed = sum(r["status"] != OK for r in rows)
    print(
        f"{len(rows) - failed} of {len(rows)} images predicted in {seconds:.2f} s "
        f"({1000 * seconds / max(len(rows), 1):.1f} ms per image)" + (f"; {failed} failed" if failed else ""),
        file=sys.stderr,
    )
    if args.out:
        write_results(rows, args.out, args.top_k)
    return 2 if failed else 0
