"""Building blocks of ResNeSt: split attention and DropBlock.

Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955.
Ghiasi et al., "DropBlock: A regularization method for convolutional networks", NeurIPS 2018.
"""

from typing import Optional

from mxnet.gluon import HybridBlock, nn

__all__ = [
    "Identity",
    "SplitAttentionConv",
    "DropBlock",
    "make_norm",
    "set_drop_prob",
    "set_drop_per_sample",
    "set_fused_sum",
]


class Identity(HybridBlock):
    """Returns its input; stands in for an absent layer so that ``hybrid_forward`` needs no flags."""

    def hybrid_forward(self, F, x):
        return x


def make_norm(norm_layer, channels: int, norm_kwargs: Optional[dict] = None, **extra) -> HybridBlock:
    """``norm_layer(in_channels=channels, **norm_kwargs, **extra)``; an identity if ``norm_layer`` is None."""
    if norm_layer is None:
        return Identity()
    return norm_layer(in_channels=channels, **{**(norm_kwargs or {}), **extra})


class SplitAttentionConv(HybridBlock):
    """Split-attention convolution (the "splat" block of ResNeSt).

    A grouped convolution makes ``radix`` feature maps for each of ``cardinality`` groups; a small
    two-layer network over their pooled sum gives per-channel weights (softmax across the radix, or a
    sigmoid when ``radix == 1``), and the output is the weighted sum of the radix maps.

    Parameters
    ----------
    channels : int
        Output channels.
    kernel_size, strides, padding, dilation : int or tuple
        As for :class:`mxnet.gluon.nn.Conv2D`.
    in_channels : int
        Input channels (needed to size the attention network).
    radix : int
        Number of splits R within a cardinal group (>= 1).
    cardinality : int
        Number of cardinal groups K (>= 1); ``channels`` and ``in_channels`` must divide by it.
    reduction_factor : int
        The attention's hidden width is ``max(in_channels * radix // reduction_factor, 32)``.
    norm_layer : type or None
        Normalisation after the convolution and after the first attention layer; None for none.
    norm_kwargs : dict or None
        Keyword arguments of ``norm_layer``.
    drop_ratio : float
        Dropout on the attention's hidden layer.
    use_bias : bool
        Bias on the grouped convolution.

    Parameter names (``conv``, ``bn``, ``fc1``, ``bn1``, ``fc2``) are those of the published weights.
    """

    def __init__(
        self,
        channels: int,
        kernel_size=3,
        strides=1,
        padding=1,
        dilation=1,
        *,
        in_channels: int,
        radix: int = 2,
        cardinality: int = 1,
        reduction_factor: int = 4,
        norm_layer=nn.BatchNorm,
        norm_kwargs: Optional[dict] = None,
        drop_ratio: float = 0.0,
        use_bias: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if radix < 1 or cardinality < 1:
            raise ValueError(f"radix and cardinality must be >= 1, got {radix} and {cardinality}")
        if channels % cardinality or in_channels % (cardinality * radix):
            raise ValueError(
                f"channels ({channels}) must divide by cardinality ({cardinality}) and in_channels "
                f"({in_channels}) by cardinality * radix ({cardinality * radix})"
            )
        inter_channels = max(in_channels * radix // reduction_factor, 32)
        self.radix, self.cardinality, self.channels = radix, cardinality, channels
        with self.name_scope():
            self.conv = nn.Conv2D(
                channels * radix,
                kernel_size,
                strides,
                padding,
                dilation,
                groups=cardinality * radix,
                use_bias=use_bias,
                in_channels=in_channels,
            )
            self.bn = make_norm(norm_layer, channels * radix, norm_kwargs)
            self.relu = nn.Activation("relu")
            self.fc1 = nn.Conv2D(inter_channels, 1, in_channels=channels, groups=cardinality)
            self.bn1 = make_norm(norm_layer, inter_channels, norm_kwargs)
            self.relu1 = nn.Activation("relu")
            self.drop = nn.Dropout(drop_ratio) if drop_ratio > 0 else Identity()
            self.fc2 = nn.Conv2D(channels * radix, 1, in_channels=inter_channels, groups=cardinality)
        # The weighted sum as our one-pass C++ operator (see resnest_gluon.ops); set by set_fused_sum.
        self.fused_sum = False

    def hybrid_forward(self, F, x):
        R, K = self.radix, self.cardinality
        x = self.relu(self.bn(self.conv(x)))
        # Pool first, then sum the radix splits: the sum is linear, so this equals pooling the sum,
        # and it reduces a (B, R*C, 1, 1) tensor instead of a full feature map.
        gap = F.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg")
        if R > 1:
            gap = F.add_n(*F.split(gap, num_outputs=R, axis=1))
        atten = self.fc2(self.drop(self.relu1(self.bn1(self.fc1(gap)))))
        if R == 1:
            return F.broadcast_mul(x, F.sigmoid(atten))
        # fc2's channels are laid out [K][R][C/K]: softmax over R, then slice each radix back out as
        # [K][C/K] = the channel order of the matching split (no transpose, which ONNX turns into ScatterND).
        atten = F.softmax(atten.reshape((0, K, R, -1)), axis=2)
        if self.fused_sum:
            return F.split_attention_sum(x, atten, radix=R, cardinality=K)
        splits = F.split(x, num_outputs=R, axis=1)
        outs = [
            F.broadcast_mul(split, F.slice_axis(atten, axis=2, begin=r, end=r + 1).reshape((0, -1, 1, 1)))
            for r, split in enumerate(splits)
        ]
        return F.add_n(*outs)


class DropBlock(HybridBlock):
    """DropBlock: drops ``block_size`` x ``block_size`` regions of a feature map while training.

    Nothing is sized at construction: the seed rate and the rescaling are derived from the input's own
    shape, so one model runs at any input size. The layer is an exact identity at inference, also after
    ``hybridize()``: whether the graph is training is read from a dropout operator (which MXNet runs in
    training mode only under ``autograd.record(train_mode=True)``), not from a Python flag frozen at tracing.

    As in the ResNeSt reference, one mask of shape ``(1, C, H, W)`` is drawn per call (per device batch)
    and shared by its samples, rescaled by units / kept units; ``per_sample=True`` draws one mask per sample
    instead, each rescaled on its own.

    ``drop_prob`` and ``per_sample`` are plain attributes; change them with :func:`set_drop_prob` and
    :func:`set_drop_per_sample`, which also drop any cached graph so the new value takes effect.
    """

    def __init__(self, drop_prob: float = 0.0, block_size: int = 3, per_sample: bool = False, **kwargs):
        super().__init__(**kwargs)
        if block_size % 2 != 1:
            raise ValueError(f"block_size must be odd, got {block_size}")
        self.drop_prob, self.block_size, self.per_sample = float(drop_prob), block_size, bool(per_sample)

    def hybrid_forward(self, F, x):
        if self.drop_prob <= 0:
            return x
        bs = self.block_size
        # 1 when training, 0 at inference: dropout of ones gives 0 or 2 in training, exactly 1 otherwise.
        # (A constant, not a slice of x: MKLDNN's slice of a blocked layout crashes in MXNet 1.9.1.)
        training = F.abs(F.Dropout(F.ones(shape=(1, 1, 1, 1)), p=0.5) - 1)
        # Seed rate so that about drop_prob of the units fall in a dropped block (the paper's gamma); times
        # the flag, so that at inference no seed falls and the mask is all ones (no full-size pass for it).
        shape = F.cast(F.shape_array(x), "float32")
        hw = F.slice_axis(shape, axis=0, begin=2, end=4)
        valid = F.maximum(hw - (bs - 1), 1.0)
        gamma = training * (self.drop_prob / (bs * bs) * F.prod(hw) / F.prod(valid)).reshape((1, 1, 1, 1))
        # The 0/1 mask in x's dtype (exact in float16; half the bytes of float32), only the kept count in
        # float32. The mask takes no gradient: without BlockGrad, backward runs through the whole chain.
        noise = F.random.uniform_like(x)
        corner = F.slice(noise, begin=(0, 0, 0, 0), end=(1, 1, 1, 1))  # noise is plain memory, unlike x
        if not self.per_sample:
            # The first sample's noise makes the one (1, C, H, W) mask of the batch.
            noise = F.slice_axis(noise, axis=0, begin=0, end=1)
        gamma = F.amp_multicast(gamma, corner, num_outputs=2, cast_narrow=True)[0]
        pad = bs // 2
        seed = F.broadcast_lesser(noise, gamma)
        mask = 1 - F.Pooling(seed, kernel=(bs, bs), stride=(1, 1), pad=(pad, pad), pool_type="max")
        # Rescale per sample by 1 / (share of units kept) so the expected activation is unchanged (exactly 1
        # at inference). The share as a global average pool then a mean over channels: a quarter of the time
        # of MXNet's sum over three axes on a CPU.
        count = F.prod(F.slice_axis(shape, axis=0, begin=1, end=4)).reshape((1, 1, 1, 1))
        share = F.Pooling(F.amp_cast(mask, dtype="float32"), kernel=(1, 1), global_pool=True, pool_type="avg")
        share = F.broadcast_maximum(F.mean(share, axis=(1, 2, 3), keepdims=True), 1 / count)
        scale = F.amp_multicast(1 / share, corner, num_outputs=2, cast_narrow=True)[0]
        return F.broadcast_mul(x, F.BlockGrad(F.broadcast_mul(mask, scale)))


def _set_all(net: HybridBlock, kind: type, name: str, value) -> int:
    """Sets attribute ``name`` of every ``kind`` block in ``net``; clears cached graphs if one changed."""
    found = []

    def visit(block):
        if isinstance(block, kind):
            found.append(getattr(block, name) != value)
            setattr(block, name, value)

    net.apply(visit)
    if any(found):
        # A hybridized graph holds the old value: rebuild it at the next call.
        net.apply(lambda b: b._clear_cached_op() if isinstance(b, HybridBlock) else None)
    return len(found)


def set_drop_prob(net: HybridBlock, drop_prob: float) -> int:
    """Sets ``drop_prob`` of every :class:`DropBlock` in ``net`` and clears cached graphs.

    Returns the number of DropBlock layers.
    """
    return _set_all(net, DropBlock, "drop_prob", float(drop_prob))


def set_drop_per_sample(net: HybridBlock, per_sample: bool = True) -> int:
    """Every :class:`DropBlock` in ``net`` to one mask per sample (or, with False, one per batch, the
    reference's); clears cached graphs. Returns the number of DropBlock layers."""
    return _set_all(net, DropBlock, "per_sample", bool(per_sample))


def set_fused_sum(net: HybridBlock, enabled: bool = True) -> int:
    """Switches every :class:`SplitAttentionConv` in ``net`` to (or off) our one-pass C++ operator for the
    attention's weighted sum (radix-1 blocks, a sigmoid gate, are unaffected); returns the number of blocks.

    The operator gives the standard operators' outputs bit for bit and their gradients to float rounding,
    for float32 and float64 on the CPU. Raises ``RuntimeError`` when ``enabled`` and the operator library is
    not available (:func:`resnest_gluon.ops.available` says why). A graph hybridized with it can only be
    loaded where the library is: :func:`resnest_gluon.deploy.export` switches it off first.
    """
    if enabled:
        from .. import ops

        if not ops.available():
            raise RuntimeError(f"the split_attention_sum operator is not available: {ops.load_error()}")
    return _set_all(net, SplitAttentionConv, "fused_sum", bool(enabled))
