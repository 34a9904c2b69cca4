"""resnest_gluon: ResNeSt (Split-Attention Networks, arXiv:2004.08955) for MXNet Gluon."""

from setuptools import find_packages, setup

setup(
    name="resnest_gluon",
    version="0.1.0",
    description="ResNeSt split-attention networks for MXNet Gluon, with RecordIO, training and benchmarks",
    packages=find_packages(include=["resnest_gluon", "resnest_gluon.*"]),
    package_data={"resnest_gluon.data": ["imagenet_classes.txt"]},  # ImageNet class names, label order
    python_requires=">=3.9",
    # MXNet itself is chosen by the installer: mxnet==1.9.1 (CPU) or mxnet-cu112==1.9.1 (GPU).
    install_requires=["numpy<1.24", "tqdm", "matplotlib", "safetensors"],
    extras_require={"cpu": ["mxnet==1.9.1"], "gpu": ["mxnet-cu112==1.9.1"], "horovod": ["horovod==0.28.1"]},
)
