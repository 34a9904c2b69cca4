"""Published pretrained weights: where they live, how they are checked, how they are fetched.

The files are ``{model}-{sha1[:8]}.params``, each published as ``{file}.zip``: ResNeSt-50 and up by the
ResNeSt authors (GitHub release ``weights_step2``), ResNeSt-14 and -26 and the ADE20K DeepLabs
(``deeplab_resnest{50,101,200,269}_ade``) by gluoncv (its model store). Loading
checks the SHA-1 and then every key and shape against the model, so a file for another model fails with the
first mismatch named instead of a shape error deep in MXNet. :func:`download` fetches a file with a progress
bar, checks it and moves it into place; without a network it raises :class:`DownloadError` naming the URL.
"""

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Dict, List, Optional, Tuple

import mxnet as mx
from mxnet.gluon import Block

from ..errors import UserError

__all__ = [
    "CLASSIFIERS",
    "SHA1",
    "SOURCES",
    "DownloadError",
    "UnreadableParams",
    "default_root",
    "download",
    "download_all",
    "file_sha1",
    "load_params_checked",
    "load_pretrained",
    "pretrained_path",
    "published",
    "url_of",
]

logger = logging.getLogger(__name__)

SHA1: Dict[str, str] = {
    "resnest14": "7e0b0cae2fd7e9084d1e498b858af1429a6eb1cb",
    "resnest26": "364590740605b6a2b95f5bb77436d781a817436f",
    "resnest50": "bcfefe1dd1dd1ef5cfed5563123c1490ea37b42e",
    "resnest101": "5da943b3230f071525a98639945a6b3b3a45ac95",
    "resnest200": "0c5d117df664ace220aa6fc2922c094bb079d381",
    "resnest269": "11ae7f5da2bcdbad05ba7e84f9b74383e717f3e3",
    "resnest50_fast_1s1x64d": "5e16dbe56f1fba8e1bc2faddd91f874bfbd74193",
    "resnest50_fast_2s1x64d": "85eb779a5e313d74b5e5390dae02aa8082a0f469",
    "resnest50_fast_4s1x64d": "3f215532c6d8e07a10df116309993d4479fc3e4b",
    "resnest50_fast_1s2x40d": "af3514c2ec757a3a9666a75b82f142ed47d55bee",
    "resnest50_fast_2s2x40d": "2db13245aa4967cf5e8617cb4911880dd41628a4",
    "resnest50_fast_4s2x40d": "b24d515797832e02da4da9c8a15effd5e44cfb56",
    "resnest50_fast_1s4x24d": "7318153ddb5e542a20cc6c58192f3c6209cff9ed",
    # DeepLabV3 on ResNeSt trained on ADE20K (gluoncv 0.10.5, model_zoo/model_store.py)
    "deeplab_resnest50_ade": "a8312db6e30a464151580f2bda83479786455724",
    "deeplab_resnest101_ade": "6d05c630fb7acb38615f7f4d360fb90f47b25042",
    "deeplab_resnest200_ade": "9134a6f7d1399b549d5803d8faed3dfc74efc0d8",
    "deeplab_resnest269_ade": "d45b33dedf4cca13b8147213c5360e30f93685bd",
}
#: the ImageNet classifiers' files: what ``resnest-download all`` fetches (the DeepLabs are fetched by name)
CLASSIFIERS = tuple(name for name in SHA1 if not name.startswith("deeplab_"))

RELEASE_URL = "https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step2/"
#: gluoncv's model store (gluoncv 0.10.5, ``model_zoo/model_store.py``): ResNeSt-14 and -26, the DeepLabs
GLUONCV_URL = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/models/"

#: who published the files, where, under which licence, and how their top-1 was measured
SOURCES: Dict[str, dict] = {
    "resnest": dict(
        url=RELEASE_URL,
        publisher="the ResNeSt authors (github.com/zhanghang1989/ResNeSt, release weights_step2)",
        licence="Apache-2.0",
        protocol="ImageNet-1k validation (50,000 images), one centre crop at the model's crop size after "
        "resizing the shorter side to crop / 0.875 (Zhang et al. 2020, Gluon column)",
    ),
    "gluoncv": dict(
        url=GLUONCV_URL,
        publisher="gluoncv (github.com/dmlc/gluon-cv model zoo; the file gluoncv 0.10.5 loads)",
        licence="Apache-2.0",
        protocol="ImageNet-1k validation (50,000 images), one 224 px centre crop after resizing the shorter "
        "side to 256 (gluoncv's model zoo table)",
    ),
    "gluoncv-ade20k": dict(
        url=GLUONCV_URL,
        publisher="gluoncv (github.com/dmlc/gluon-cv model zoo; the file gluoncv 0.10.5 loads)",
        licence="Apache-2.0",
        protocol="ADE20K validation (2,000 images, 150 classes), pixel accuracy and mIoU from gluoncv's "
        "test.py --eval: scales 0.5-1.75 with flipping, base size 520, crop 480, in the version read "
        "(docs/segmentation.md#evaluation)",
    ),
}
_SOURCE_OF = dict(
    {"resnest14": "gluoncv", "resnest26": "gluoncv"},
    **{name: "gluoncv-ade20k" for name in SHA1 if name.startswith("deeplab_")},
)


class DownloadError(UserError, OSError):
    """A download that failed (no network, no such file, a wrong checksum); the message names the URL."""


def default_root() -> str:
    """``$RESNEST_GLUON_HOME``, else ``~/.mxnet/models`` (where gluoncv keeps the same files)."""
    return os.path.expanduser(os.environ.get("RESNEST_GLUON_HOME", "~/.mxnet/models"))


def _sha1(name: str) -> str:
    if name not in SHA1:
        raise ValueError(f"no published weights for {name!r}; published: {', '.join(SHA1)}")
    return SHA1[name]


def url_of(name: str, base_url: Optional[str] = None) -> str:
    """The ``.zip`` URL of ``name``'s file: under ``base_url``, else ``$RESNEST_GLUON_URL``, else its
    publisher's."""
    base = base_url or os.environ.get("RESNEST_GLUON_URL") or SOURCES[_SOURCE_OF.get(name, "resnest")]["url"]
    return base.rstrip("/") + f"/{name}-{_sha1(name)[:8]}.zip"


def published(name: str) -> dict:
    """``name``'s published file: ``sha1``, ``file``, ``url``, ``publisher``, ``licence`` and the
    ``protocol`` of its published top-1. Raises ``ValueError`` for a model without published weights."""
    sha1 = _sha1(name)
    source = SOURCES[_SOURCE_OF.get(name, "resnest")]
    return dict(source, sha1=sha1, file=f"{name}-{sha1[:8]}.params", url=url_of(name))


def pretrained_path(name: str, root: Optional[str] = None) -> str:
    """The expected path of ``name``'s published file under ``root``."""
    return os.path.join(os.path.expanduser(root or default_root()), f"{name}-{_sha1(name)[:8]}.params")


def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    name: str,
    root: Optional[str] = None,
    base_url: Optional[str] = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> str:
    """Fetches ``name``'s published ``{file}.zip`` (from ``base_url``, e.g. a ``file://`` mirror, else
    ``$RESNEST_GLUON_URL``, else its publisher), checks the SHA-1 and moves the file into ``root``.

    A file already in place with the right SHA-1 is not fetched again. A failed or partial download leaves
    nothing behind and raises :class:`DownloadError` (an ``OSError``) naming the URL. Returns the path.
    """
    path = pretrained_path(name, root)
    if os.path.isfile(path) and file_sha1(path) == _sha1(name):
        logger.info("%s is already there (SHA-1 checked)", path)
        return path
    url = url_of(name, base_url)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logger.info("downloading %s", url)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path), prefix=".download-") as tmp:
        archive = os.path.join(tmp, "weights.zip")
        _fetch(url, archive, progress, timeout)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extract(os.path.basename(path), tmp)
        except (zipfile.BadZipFile, KeyError) as err:
            raise DownloadError(f"{url} is not the published archive ({err}); nothing was saved") from None
        extracted = os.path.join(tmp, os.path.basename(path))
        if file_sha1(extracted) != _sha1(name):
            raise DownloadError(f"{url} does not have the published SHA-1 {_sha1(name)}; nothing was saved")
        os.replace(extracted, path)
    logger.info("saved %s (SHA-1 checked)", path)
    return path


def _fetch(url: str, dest: str, progress: bool, timeout: float) -> None:
    """``url`` into ``dest`` with a progress bar; any failure becomes one :class:`DownloadError`."""
    from ..progress import progress_bar

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1],
                disable=not progress,
            ) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = getattr(err.reason, "strerror", None) or err.reason
        raise DownloadError(
            f"cannot download {url}: {reason} (no network? RESNEST_GLUON_URL or --base-url names a mirror; "
            "or copy the file in by hand)"
        ) from None
    except (OSError, ValueError) as err:  # a connection cut midway, a timeout, a malformed URL
        raise DownloadError(f"cannot download {url}: {err}") from None


def download_all(
    root: Optional[str] = None, base_url: Optional[str] = None, progress: bool = True
) -> List[str]:
    """:func:`download` for every published ImageNet classifier (:data:`CLASSIFIERS`); returns their paths."""
    return [download(name, root, base_url, progress) for name in CLASSIFIERS]


class UnreadableParams(ValueError):
    """A ``.params`` file MXNet cannot read at all (truncated, garbage, another format)."""


def _shapes(net: Block) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(p.shape) for k, p in net._collect_params_with_prefix().items()}


def load_params_checked(net: Block, path: str, ctx: Optional[mx.Context] = None) -> None:
    """``net.load_parameters(path)`` after checking every key and shape, naming the first mismatch."""
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise UnreadableParams(
            f"{path} ({os.path.getsize(path)} bytes) is not a readable MXNet .params file: it is cut short "
            "(an interrupted download or copy?) or not a parameter file at all. Download or copy it again "
            f"(MXNet: {str(err).strip().splitlines()[-1].split(': ')[-1]})"
        ) from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds no named parameters (not a Gluon .params file)")
    loaded = {k.split(":", 1)[-1]: v for k, v in loaded.items()}  # 'arg:'/'aux:' from export()
    expected = _shapes(net)
    model = getattr(net, "model_name", type(net).__name__)
    for key in sorted(set(expected) | set(loaded)):
        if key not in loaded:
            raise ValueError(f"{path} does not fit {model}: parameter {key!r} is missing from the file")
        if key not in expected:
            raise ValueError(f"{path} does not fit {model}: the file has {key!r}, which the model does not")
        shape = tuple(loaded[key].shape)
        if 0 not in expected[key] and shape != expected[key]:
            hint = (
                "; to fine-tune on other classes, load with the file's classes and replace net.fc"
                if key.startswith("fc.")
                else ""
            )
            raise ValueError(
                f"{path} does not fit {model}: {key!r} has shape {shape} in the file, "
                f"{expected[key]} in the model{hint}"
            )
    params = net._collect_params_with_prefix()
    for key, value in loaded.items():
        params[key]._load_init(value, ctx or mx.cpu())
    net.source_params = os.path.abspath(path)  # exports name it and its SHA-1 in their .meta.json


def load_pretrained(
    net: Block, name: str, path: Optional[str] = None, root: Optional[str] = None, ctx=None
) -> str:
    """Loads the published weights of ``name`` (or the file ``path``) into ``net``; returns the path."""
    if path is None:
        path = pretrained_path(name, root)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"pretrained weights for {name} not found at {path}: run `resnest-download {name}` (or "
                f"python -m resnest_gluon download {name}), or download {url_of(name)} and unzip it into "
                f"{os.path.dirname(path)} (or set RESNEST_GLUON_HOME)"
            )
        actual = file_sha1(path)
        if actual != _sha1(name):
            raise ValueError(
                f"{path} has SHA-1 {actual}, not the published {_sha1(name)}: the file is damaged or "
                f"belongs to another model; delete it and download it again"
            )
    elif not os.path.exists(path):
        raise FileNotFoundError(f"parameter file {path} does not exist")
    load_params_checked(net, path, ctx)
    return path
