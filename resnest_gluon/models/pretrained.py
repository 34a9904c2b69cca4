"""Published pretrained weights: where they live, how they are checked, how they are fetched.

The files are ``{model}-{sha1[:8]}.params`` as released with ResNeSt (GitHub release ``weights_step2``,
each as ``{file}.zip``). Loading checks the SHA-1 and then every key and shape against the model, so a
file for another model fails with the first mismatch named instead of a shape error deep in MXNet.
"""

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from typing import Dict, Optional, Tuple

import mxnet as mx
from mxnet.gluon import Block

__all__ = [
    "SHA1",
    "UnreadableParams",
    "default_root",
    "pretrained_path",
    "download",
    "load_pretrained",
    "load_params_checked",
]

logger = logging.getLogger(__name__)

SHA1: Dict[str, str] = {
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
}

RELEASE_URL = "https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step2/"


def default_root() -> str:
    """``$RESNEST_GLUON_HOME``, else ``~/.mxnet/models`` (where gluoncv keeps the same files)."""
    return os.path.expanduser(os.environ.get("RESNEST_GLUON_HOME", "~/.mxnet/models"))


def _sha1(name: str) -> str:
    if name not in SHA1:
        raise ValueError(f"no published weights for {name!r}; published: {', '.join(SHA1)}")
    return SHA1[name]


def pretrained_path(name: str, root: Optional[str] = None) -> str:
    """The expected path of ``name``'s published file under ``root``."""
    return os.path.join(os.path.expanduser(root or default_root()), f"{name}-{_sha1(name)[:8]}.params")


def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(name: str, root: Optional[str] = None, base_url: Optional[str] = None) -> str:
    """Fetches ``{file}.zip`` from the release (or ``base_url``, e.g. a ``file://`` mirror), checks the
    SHA-1 and moves the file into place; a failed or partial download leaves nothing behind."""
    path = pretrained_path(name, root)
    base_url = base_url or os.environ.get("RESNEST_GLUON_URL", RELEASE_URL)
    url = base_url.rstrip("/") + "/" + os.path.basename(path)[: -len(".params")] + ".zip"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logger.info("downloading %s", url)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        archive = os.path.join(tmp, "weights.zip")
        with urllib.request.urlopen(url) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extract(os.path.basename(path), tmp)
        extracted = os.path.join(tmp, os.path.basename(path))
        if file_sha1(extracted) != _sha1(name):
            raise OSError(f"{url} does not have the published SHA-1 {_sha1(name)}; nothing was saved")
        os.replace(extracted, path)
    return path


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


def load_pretrained(
    net: Block, name: str, path: Optional[str] = None, root: Optional[str] = None, ctx=None
) -> str:
    """Loads the published weights of ``name`` (or the file ``path``) into ``net``; returns the path."""
    if path is None:
        path = pretrained_path(name, root)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"pretrained weights for {name} not found at {path}. Download "
                f"{RELEASE_URL}{os.path.basename(path)[:-7]}.zip, unzip it into {os.path.dirname(path)} "
                f"(or set RESNEST_GLUON_HOME), or call resnest_gluon.models.pretrained.download({name!r})."
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
