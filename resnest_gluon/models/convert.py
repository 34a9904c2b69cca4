"""Import the official PyTorch ResNeSt weights (and timm's ``resnest*d``/``resnest*e``, same keys).

The PyTorch layout differs from ours only in names: BatchNorm ``weight``/``bias`` are our ``gamma``/``beta``,
the split-attention block's first norm is ``bn0`` (ours ``bn``), and ``num_batches_tracked`` has no
counterpart. ``.safetensors`` files are read without torch; ``.pth`` files need torch (``weights_only=True``).
"""

import os
from typing import Dict, Union

import mxnet as mx
import numpy as np
from mxnet.gluon import Block

__all__ = ["read_state_dict", "torch_to_gluon_key", "load_torch_weights"]


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Reads a PyTorch state dict from ``.safetensors`` (numpy only) or ``.pth``/``.pt`` (needs torch)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch; install torch, or convert the file to .safetensors elsewhere"
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v.float().numpy() for k, v in state.items()}


def torch_to_gluon_key(key: str, gluon_keys) -> Union[str, None]:
    """Our name for a PyTorch key, or None for keys with no counterpart (``num_batches_tracked``)."""
    if key.endswith("num_batches_tracked"):
        return None
    key = key.replace(".bn0.", ".bn.")
    module, _, leaf = key.rpartition(".")
    if leaf in ("weight", "bias") and f"{module}.gamma" in gluon_keys:  # a norm layer
        return f"{module}.{'gamma' if leaf == 'weight' else 'beta'}"
    return key


def load_torch_weights(net: Block, state: Union[str, Dict[str, np.ndarray]], ctx=None) -> None:
    """Loads a PyTorch ResNeSt state dict (a path or a dict of arrays) into ``net``.

    Every key must map onto a parameter of ``net`` with the same shape, and every parameter must be
    covered: unknown, missing or misshapen keys raise ``ValueError`` naming them.
    """
    if isinstance(state, str):
        state = read_state_dict(state)
    params = net._collect_params_with_prefix()
    mapped = {}
    for key, value in state.items():
        name = torch_to_gluon_key(key, params)
        if name is None:
            continue
        if name not in params:
            raise ValueError(f"unknown key {key!r}: no parameter {name!r} in {type(net).__name__}")
        if 0 not in params[name].shape and tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(f"{key!r} has shape {tuple(value.shape)}, the model wants {params[name].shape}")
        mapped[name] = value
    missing = sorted(set(params) - set(mapped))
    if missing:
        raise ValueError(f"{len(missing)} parameters missing from the state dict, e.g. {missing[:3]}")
    for name, value in mapped.items():
        params[name]._load_init(mx.nd.array(value, dtype="float32"), ctx or mx.cpu())
