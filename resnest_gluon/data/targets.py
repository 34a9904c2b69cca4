"""Training targets: label smoothing and mixup."""

from typing import Tuple

import mxnet as mx
import numpy as np


def smooth_one_hot(label: mx.nd.NDArray, classes: int, eps: float = 0.1) -> mx.nd.NDArray:
    """Label-smoothed one-hot targets: ``1 - eps + eps / classes`` on the label, ``eps / classes`` elsewhere.

    Parameters
    ----------
    label : mxnet.nd.NDArray
        ``(B,)`` class indices (float or int).
    classes : int
        Number of classes.
    eps : float
        Smoothing (0 gives plain one-hot).

    Returns
    -------
    mxnet.nd.NDArray
        ``(B, classes)``; each row sums to 1.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing eps must be in [0, 1), got {eps}")
    off = eps / classes
    return mx.nd.one_hot(label, classes, on_value=1.0 - eps + off, off_value=off)


def mixup(
    data: mx.nd.NDArray, soft_label: mx.nd.NDArray, alpha: float, rng: np.random.Generator
) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Mixup (Zhang et al. 2018) of a batch with itself reversed, one ``lambda ~ Beta(alpha, alpha)``.

    Parameters
    ----------
    data : mxnet.nd.NDArray
        ``(B, ...)`` images.
    soft_label : mxnet.nd.NDArray
        ``(B, classes)`` targets, e.g. from :func:`smooth_one_hot`.
    alpha : float
        Beta parameter; ``alpha <= 0`` returns the inputs unchanged.
    rng : numpy.random.Generator
        Source of lambda.

    Returns
    -------
    (mxnet.nd.NDArray, mxnet.nd.NDArray)
        ``lam * x + (1 - lam) * x[::-1]`` for both.
    """
    if alpha <= 0:
        return data, soft_label
    lam = float(rng.beta(alpha, alpha))
    mixed = lam * data + (1.0 - lam) * mx.nd.flip(data, axis=0)
    return mixed, lam * soft_label + (1.0 - lam) * mx.nd.flip(soft_label, axis=0)
