"""Our own MXNet operators, in C++: built against the headers in the MXNet wheel, loaded at run time.

One operator so far, ``split_attention_sum(x, w, radix, cardinality)``: the weighted sum of the radix splits
at the end of a split-attention block, in one pass over the feature map (see ``split_attention.cc``).

``make`` builds ``libresnest_ops.so`` next to this file (``python -m resnest_gluon.ops build`` does the same):
CPU kernels (OpenMP; AVX-512, AVX2 and plain x86-64 clones chosen at load), plus CUDA kernels
(``split_attention_cuda.cu``) when nvcc exists and MXNet was built with CUDA. Where it cannot be built (no C++
compiler) or loaded, :func:`available` is False and every model runs on MXNet's standard operators, which
give the same numbers. :func:`resnest_gluon.deploy.prepare_for_inference` uses the operator on CPUs; training,
GPUs (unless switched on with :func:`resnest_gluon.set_fused_sum`) and every exported file (symbol JSON, ONNX,
OpenVINO) use the standard operators, so exported files load anywhere.

``build`` (the command) also compiles the data pipeline's kernels, no MXNet involved, loaded with ctypes:
``colour.cc``, ``affine.cc`` and ``tables.cc`` into ``libresnest_colour.so`` (:func:`build_colour`: the
training transform's clipped colour step and normalisation, and AutoAugment's steps with PIL's pixels,
:mod:`resnest_gluon.data.colour_kernel`), and
``jpeg_region.cc`` into ``libresnest_jpeg.so`` where libjpeg-turbo's headers exist (:func:`build_jpeg`:
decoding only the part of a JPEG that a training crop reads, :mod:`resnest_gluon.data.jpeg_kernel`).
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

logger = logging.getLogger(__name__)

__all__ = [
    "SOURCE",
    "CUDA_SOURCE",
    "LIBRARY",
    "COLOUR_SOURCE",
    "COLOUR_LIBRARY",
    "JPEG_SOURCE",
    "JPEG_LIBRARY",
    "available",
    "build",
    "build_colour",
    "build_jpeg",
    "load_error",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_HERE, "split_attention.cc")
CUDA_SOURCE = os.path.join(_HERE, "split_attention_cuda.cu")
LIBRARY = os.path.join(_HERE, "libresnest_ops.so")
# The data pipeline's kernels: plain C++, no MXNet, loaded with ctypes by resnest_gluon.data.
COLOUR_SOURCE = os.path.join(_HERE, "colour.cc")
AFFINE_SOURCE = os.path.join(_HERE, "affine.cc")
TABLES_SOURCE = os.path.join(_HERE, "tables.cc")
COLOUR_LIBRARY = os.path.join(_HERE, "libresnest_colour.so")
JPEG_SOURCE = os.path.join(_HERE, "jpeg_region.cc")
JPEG_LIBRARY = os.path.join(_HERE, "libresnest_jpeg.so")
_BUILD = "python -m resnest_gluon.ops build"
_state = {"loaded": None, "error": None}  # loaded: None (not tried yet), True or False


def _mxnet_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.origin:
        raise RuntimeError("MXNet is not installed")
    return os.path.dirname(spec.origin)


def build(library: str = LIBRARY, compiler: Optional[str] = None, cuda: Optional[bool] = None) -> str:
    """Compiles :data:`SOURCE` with MXNet's ``lib_api.cc`` into ``library`` and returns its path.

    ``compiler`` defaults to ``$CXX``, then ``g++``, then ``c++``. ``cuda``: None (default) adds the GPU
    kernels (:data:`CUDA_SOURCE`, compiled by ``nvcc``, ``$NVCC`` or on the ``PATH``) when this MXNet was
    built with CUDA and nvcc exists; True requires them; False builds the CPU kernels only. The library
    is linked under a temporary name and renamed when every step succeeds, so a failed build never leaves
    a broken library where a good one was. Raises ``RuntimeError`` (with the compiler's message).
    """
    try:
        compiler = _find_compiler(compiler)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: standard operators stay in use") from None
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if cuda is None:
        cuda = bool(nvcc) and _mxnet_has_cuda()
    elif cuda and not nvcc:
        raise RuntimeError("cuda=True needs nvcc (on the PATH, or set NVCC)")
    mx_dir = _mxnet_dir()
    lib_api = os.path.join(mx_dir, "src", "lib_api.cc")
    include = os.path.join(mx_dir, "include")
    if not os.path.isfile(lib_api):
        raise RuntimeError(f"{lib_api} is missing: this MXNet wheel does not ship the custom-operator API")
    # -Bsymbolic: libmxnet.so exports its own copy of lib_api's classes, and under Horovod (which loads it
    # into the global scope) our library's calls would otherwise bind to that copy and crash at load.
    cxx = [compiler, "-O3", "-std=c++17", "-fPIC", "-fopenmp", "-ffp-contract=off"]
    cxx += [f"-I{include}", f"-I{os.path.join(include, 'mxnet')}"]
    out_dir = os.path.dirname(os.path.abspath(library))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".libresnest_ops-") as tmp:
        out = os.path.join(tmp, "lib.so")
        if cuda:  # objects first, then nvcc links them with the CUDA runtime (static)
            objects = [os.path.join(tmp, n) for n in ("op.o", "lib_api.o", "cuda.o")]
            steps = [
                cxx + ["-DRESNEST_WITH_CUDA", "-c", SOURCE, "-o", objects[0]],
                cxx + ["-c", lib_api, "-o", objects[1]],
                [nvcc, "-O3", "--fmad=false", "-Xcompiler", "-fPIC", "-c", CUDA_SOURCE, "-o", objects[2]],
                [nvcc, "-shared", "-Xlinker", "-Bsymbolic", *objects, "-lgomp", "-o", out],
            ]
        else:
            steps = [cxx + ["-shared", "-Wl,-Bsymbolic", SOURCE, lib_api, "-o", out]]
        for cmd in steps:
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"building {library} failed:\n$ {' '.join(cmd)}\n{result.stderr.strip()}")
        os.replace(out, library)
    logger.info("built %s (%s kernels)", library, "CPU and CUDA" if cuda else "CPU")
    return library


def _find_compiler(compiler: Optional[str]) -> str:
    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler or not shutil.which(compiler):
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    return compiler


def build_colour(library: str = COLOUR_LIBRARY, compiler: Optional[str] = None) -> str:
    """Compiles :data:`COLOUR_SOURCE`, :data:`AFFINE_SOURCE` and :data:`TABLES_SOURCE` (the training
    transform's kernels, no MXNet headers) into ``library`` and returns its path; linked under a temporary
    name and renamed, as :func:`build`. Raises ``RuntimeError`` (with the compiler's message)."""
    # -ffp-contract=off: no fused multiply-add, so each float32 product is rounded as in MXNet and PIL.
    # -fno-trapping-math changes no result (it ignores floating-point exception flags) but lets GCC turn the
    # clipping into branch-free vector min/max: 5x faster.
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-trapping-math"]
    return _build_plain(library, [COLOUR_SOURCE, AFFINE_SOURCE, TABLES_SOURCE], flags, compiler)


def build_jpeg(library: str = JPEG_LIBRARY, compiler: Optional[str] = None) -> str:
    """Compiles :data:`JPEG_SOURCE` with libjpeg-turbo's headers (``libjpeg-turbo8-dev`` or
    ``libjpeg62-turbo-dev``) into ``library``, as :func:`build_colour`. The library opens libjpeg itself
    when first used (RTLD_DEEPBIND: see the source)."""
    return _build_plain(library, [JPEG_SOURCE], ["-O3", "-std=c++17", "-fPIC", "-shared"], compiler, ["-ldl"])


def _build_plain(library: str, sources, flags, compiler: Optional[str], libs=()) -> str:
    compiler = _find_compiler(compiler)
    cmd = [compiler, *flags, *sources]
    out_dir = os.path.dirname(os.path.abspath(library))
    name = os.path.splitext(os.path.basename(library))[0]
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}-") as tmp:
        out = os.path.join(tmp, "lib.so")
        result = subprocess.run(cmd + ["-o", out, *libs], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"building {library} failed:\n$ {' '.join(cmd)}\n{result.stderr.strip()}")
        os.replace(out, library)
    logger.info("built %s", library)
    return library


def _mxnet_has_cuda() -> bool:
    import mxnet as mx

    return mx.runtime.Features().is_enabled("CUDA")


def load_error() -> Optional[str]:
    """Why the operator library is not in use (None when it is, or has not been tried yet)."""
    return _state["error"]


def available() -> bool:
    """Loads the operator library into MXNet once; True when ``split_attention_sum`` can be used.

    False, with one warning saying why, when the library is missing, older than its source, or fails to
    load; ``RESNEST_GLUON_OPS=0`` switches it off.
    """
    if _state["loaded"] is None:
        _state["error"] = _why_not()
        if _state["error"] is None:
            import mxnet as mx

            try:
                mx.library.load(LIBRARY, verbose=False)
            except Exception as exc:  # MXNetError or OSError: a library built for another MXNet
                _state["error"] = f"{LIBRARY} does not load ({exc}); rebuild it with `make` or remove it"
        if _state["error"] and os.environ.get("RESNEST_GLUON_OPS") != "0":
            logger.warning("split-attention operator not in use: %s", _state["error"])
        _state["loaded"] = _state["error"] is None
    return _state["loaded"]


def _why_not() -> Optional[str]:
    if os.environ.get("RESNEST_GLUON_OPS") == "0":
        return "switched off by RESNEST_GLUON_OPS=0"
    if not os.path.isfile(LIBRARY):
        return f"{LIBRARY} is not built: run `make` (or {_BUILD})"
    if os.path.getmtime(LIBRARY) < max(os.path.getmtime(SOURCE), os.path.getmtime(CUDA_SOURCE)):
        return f"{LIBRARY} is older than its sources: rebuild it with `make` (or {_BUILD})"
    return None


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m resnest_gluon.ops",
        description="Build our C++ MXNet operators (split_attention_sum) and the data pipeline's kernels.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help=f"compile {os.path.basename(LIBRARY)} next to its source")
    cmd.add_argument("--output", default=LIBRARY, help="library path (default: %(default)s)")
    cmd.add_argument(
        "--colour-output",
        help=f"the colour kernel's library (default: {os.path.basename(COLOUR_LIBRARY)} next to --output)",
    )
    cmd.add_argument(
        "--jpeg-output",
        help=f"the region JPEG decoder (default: {os.path.basename(JPEG_LIBRARY)} next to --output)",
    )
    cuda = cmd.add_mutually_exclusive_group()
    cuda.add_argument(
        "--cuda", dest="cuda", action="store_const", const=True, help="require the GPU kernels (needs nvcc)"
    )
    cuda.add_argument("--no-cuda", dest="cuda", action="store_const", const=False, help="CPU kernels only")
    cmd.add_argument(
        "--optional", action="store_true", help="on failure, warn and exit 0 (standard operators stay in use)"
    )
    sub.add_parser("check", help="load the library into MXNet and say whether the operator is in use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "check":
        ok = available()
        print("split_attention_sum: " + ("in use" if ok else f"not in use: {load_error()}"))
        return 0 if ok else 1
    out_dir = os.path.dirname(os.path.abspath(args.output))
    colour_output = args.colour_output or os.path.join(out_dir, os.path.basename(COLOUR_LIBRARY))
    jpeg_output = args.jpeg_output or os.path.join(out_dir, os.path.basename(JPEG_LIBRARY))
    failed = False
    makes = (
        lambda: build(args.output, cuda=args.cuda),
        lambda: build_colour(colour_output),
        lambda: build_jpeg(jpeg_output),
    )
    for make in makes:
        try:
            make()
        except RuntimeError as exc:
            print(f"warning: {exc}" if args.optional else f"error: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed and not args.optional else 0
