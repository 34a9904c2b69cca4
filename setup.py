"""resnest_gluon: ResNeSt (Split-Attention Networks, arXiv:2004.08955) for MXNet Gluon."""

import importlib.util
import os

from setuptools import find_packages, setup

# resnest_gluon/cli/__init__.py lists the commands; loaded by path, as the package is not installed yet
_spec = importlib.util.spec_from_file_location(
    "_cli", os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnest_gluon", "cli", "__init__.py")
)
_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cli)
console_scripts = _cli.console_scripts

setup(
    name="resnest_gluon",
    version="0.1.0",
    description="ResNeSt split-attention networks for MXNet Gluon, with RecordIO, training and benchmarks",
    packages=find_packages(include=["resnest_gluon", "resnest_gluon.*"]),
    # ImageNet class names in label order; the C++ sources (python -m resnest_gluon.ops build)
    package_data={
        "resnest_gluon.data": ["imagenet_classes.txt", "ade20k_classes.txt"],
        "resnest_gluon.ops": ["*.cc", "*.cu"],
    },
    python_requires=">=3.9",
    # MXNet itself is chosen by the installer: mxnet==1.9.1 (CPU) or mxnet-cu112==1.9.1 (GPU).
    install_requires=["numpy<1.24", "tqdm", "matplotlib", "safetensors", "Pillow"],
    entry_points={"console_scripts": console_scripts()},
    extras_require={"cpu": ["mxnet==1.9.1"], "gpu": ["mxnet-cu112==1.9.1"], "horovod": ["horovod==0.28.1"]},
)
