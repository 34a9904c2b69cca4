"""The ResNeSt family and its ResNet-D backbone.

Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955; the backbone tricks (deep stem,
average-pool downsampling) are ResNet-D from He et al., "Bag of Tricks", arXiv:1812.01187.
Parameter names follow the published Gluon weights, so ``load_parameters`` reads them unchanged.
"""

from typing import List, Optional, Sequence, Tuple

from mxnet.gluon import HybridBlock, nn

from .layers import DropBlock, Identity, SplitAttentionConv, make_norm

__all__ = ["Bottleneck", "ResNeSt", "stage_strides"]


class Bottleneck(HybridBlock):
    """1x1 -> 3x3 (split attention when ``radix`` >= 1, plain otherwise) -> 1x1, with a residual.

    ``avd`` moves the stride of the 3x3 into a 3x3 average pool, before the 3x3 (``avd_first``) or after.
    """

    expansion = 4

    def __init__(
        self,
        channels: int,
        in_channels: int,
        *,
        strides: int = 1,
        dilation: int = 1,
        downsample: Optional[HybridBlock] = None,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        avd: bool = False,
        avd_first: bool = False,
        dropblock_prob: Optional[float] = None,
        last_gamma: bool = False,
        reduction_factor: int = 4,
        split_drop_ratio: float = 0.0,
        norm_layer=nn.BatchNorm,
        norm_kwargs: Optional[dict] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        width = int(channels * (bottleneck_width / 64.0)) * cardinality
        conv_strides = 1 if avd else strides

        def dropblock():  # None: no DropBlock; 0: present (free until set_drop_prob raises it)
            return Identity() if dropblock_prob is None else DropBlock(dropblock_prob, 3)

        def avd_pool():
            return nn.AvgPool2D(3, strides, padding=1) if avd else Identity()

        with self.name_scope():
            self.conv1 = nn.Conv2D(width, 1, use_bias=False, in_channels=in_channels)
            self.bn1 = make_norm(norm_layer, width, norm_kwargs)
            self.dropblock1 = dropblock()
            self.relu1 = nn.Activation("relu")
            self.avd_first = avd_pool() if avd_first else Identity()
            if radix >= 1:
                self.conv2 = SplitAttentionConv(
                    width,
                    3,
                    conv_strides,
                    dilation,
                    dilation,
                    in_channels=width,
                    radix=radix,
                    cardinality=cardinality,
                    reduction_factor=reduction_factor,
                    norm_layer=norm_layer,
                    norm_kwargs=norm_kwargs,
                    drop_ratio=split_drop_ratio,
                )
                self.bn2 = Identity()  # the split-attention block normalises and activates itself
                self.relu2 = Identity()
            else:
                self.conv2 = nn.Conv2D(
                    width,
                    3,
                    conv_strides,
                    dilation,
                    dilation,
                    groups=cardinality,
                    use_bias=False,
                    in_channels=width,
                )
                self.bn2 = make_norm(norm_layer, width, norm_kwargs)
                self.relu2 = nn.Activation("relu")
            self.dropblock2 = dropblock()
            self.avd_last = Identity() if avd_first else avd_pool()
            self.conv3 = nn.Conv2D(channels * self.expansion, 1, use_bias=False, in_channels=width)
            gamma = {"gamma_initializer": "zeros"} if last_gamma and norm_layer is not None else {}
            self.bn3 = make_norm(norm_layer, channels * self.expansion, norm_kwargs, **gamma)
            self.dropblock3 = dropblock()
            self.downsample = downsample if downsample is not None else Identity()
            self.relu3 = nn.Activation("relu")

    def hybrid_forward(self, F, x):
        out = self.relu1(self.dropblock1(self.bn1(self.conv1(x))))
        out = self.relu2(self.dropblock2(self.bn2(self.conv2(self.avd_first(out)))))
        out = self.dropblock3(self.bn3(self.conv3(self.avd_last(out))))
        return self.relu3(out + self.downsample(x))


def stage_strides(output_stride: int) -> List[Tuple[int, int]]:
    """(stride, dilation) of the four stages: strides become dilations once ``output_stride`` is reached."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    current, dilation, out = 4, 1, []  # the stem and max pool reduce by 4
    for stride in (1, 2, 2, 2):
        if current * stride > output_stride:
            dilation *= stride
            stride = 1
        current *= stride
        out.append((stride, dilation))
    return out


class ResNeSt(HybridBlock):
    """ResNeSt (``radix`` >= 1) or ResNet-D (``radix`` = 0).

    Parameters
    ----------
    layers : sequence of 4 ints
        Bottleneck blocks per stage.
    radix, cardinality, bottleneck_width : int
        Split-attention radix R (0 = plain 3x3 convolution), cardinality K and width per group.
    classes : int
        Output classes of the classifier.
    deep_stem : bool
        Three 3x3 convolutions (``stem_width``, ``stem_width``, ``2 * stem_width``) instead of one 7x7.
    stem_width : int
        Width of the deep stem.
    avg_down : bool
        Average-pool then 1x1 convolution on the downsampling shortcut (ResNet-D).
    avd, avd_first : bool
        Stride by average pooling in the bottleneck, before or after the 3x3.
    dropblock_prob : float
        DropBlock probability in the last two stages. The layers are always there; at 0 they cost nothing,
        and :func:`set_drop_prob` raises it during training (as ``scripts/train.py`` does).
    final_drop : float
        Dropout before the classifier.
    last_gamma : bool
        Zero-initialise the gamma of the last BN of each block.
    output_stride : int
        8, 16 or 32: later stages are dilated instead of strided (segmentation, detection backbones).
    norm_layer, norm_kwargs
        Normalisation layer class (``nn.BatchNorm``, ``gluon.contrib.nn.SyncBatchNorm``, ...) and its kwargs.
    reduction_factor, split_drop_ratio
        Attention width reduction and attention dropout of :class:`SplitAttentionConv`.
    features_only : bool
        Return the stage outputs ``[C2, C3, C4, C5]`` instead of logits (the classifier is kept, unused,
        so pretrained files still load).
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        classes: int = 1000,
        deep_stem: bool = True,
        stem_width: int = 64,
        avg_down: bool = True,
        avd: bool = True,
        avd_first: bool = False,
        dropblock_prob: float = 0.0,
        final_drop: float = 0.0,
        last_gamma: bool = False,
        output_stride: int = 32,
        norm_layer=nn.BatchNorm,
        norm_kwargs: Optional[dict] = None,
        reduction_factor: int = 4,
        split_drop_ratio: float = 0.0,
        features_only: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.features_only = features_only
        block_kwargs = dict(
            radix=radix,
            cardinality=cardinality,
            bottleneck_width=bottleneck_width,
            avd_first=avd_first,
            last_gamma=last_gamma,
            reduction_factor=reduction_factor,
            split_drop_ratio=split_drop_ratio,
            norm_layer=norm_layer,
            norm_kwargs=norm_kwargs,
        )
        with self.name_scope():
            if deep_stem:
                self.conv1 = nn.HybridSequential()
                self.conv1.add(
                    nn.Conv2D(stem_width, 3, 2, 1, use_bias=False, in_channels=3),
                    make_norm(norm_layer, stem_width, norm_kwargs),
                    nn.Activation("relu"),
                    nn.Conv2D(stem_width, 3, 1, 1, use_bias=False, in_channels=stem_width),
                    make_norm(norm_layer, stem_width, norm_kwargs),
                    nn.Activation("relu"),
                    nn.Conv2D(stem_width * 2, 3, 1, 1, use_bias=False, in_channels=stem_width),
                )
                in_channels = stem_width * 2
            else:
                self.conv1 = nn.Conv2D(64, 7, 2, 3, use_bias=False, in_channels=3)
                in_channels = 64
            self.bn1 = make_norm(norm_layer, in_channels, norm_kwargs)
            self.relu = nn.Activation("relu")
            self.maxpool = nn.MaxPool2D(3, 2, 1)

            previous_dilation = 1
            for index, (num_blocks, (strides, dilation)) in enumerate(
                zip(layers, stage_strides(output_stride))
            ):
                channels = 64 * 2**index
                stage = nn.HybridSequential()
                for i in range(num_blocks):
                    first = i == 0
                    stage.add(
                        Bottleneck(
                            channels,
                            in_channels,
                            strides=strides if first else 1,
                            # the first block of a dilated stage keeps the previous dilation (DeepLab-style)
                            dilation=previous_dilation if first else dilation,
                            downsample=self._shortcut(
                                in_channels, channels * 4, strides, avg_down, norm_layer, norm_kwargs
                            )
                            if first
                            else None,
                            # stride by pooling where the block strides, or where a dilated stage begins
                            avd=avd and first and (strides > 1 or dilation != previous_dilation),
                            dropblock_prob=dropblock_prob if index >= 2 else None,
                            **block_kwargs,
                        )
                    )
                    in_channels = channels * 4
                previous_dilation = dilation
                setattr(self, f"layer{index + 1}", stage)

            self.avgpool = nn.GlobalAvgPool2D()
            self.flat = nn.Flatten()
            self.drop = nn.Dropout(final_drop) if final_drop > 0 else Identity()
            self.fc = nn.Dense(classes, in_units=in_channels)

    @staticmethod
    def _shortcut(in_channels, channels, strides, avg_down, norm_layer, norm_kwargs):
        if strides == 1 and in_channels == channels:
            return None
        down = nn.HybridSequential()
        if avg_down:
            # keys stay downsample.1 / downsample.2 even when there is nothing to pool
            pool = nn.AvgPool2D(strides, strides, ceil_mode=True, count_include_pad=False)
            down.add(pool if strides > 1 else Identity())
            down.add(nn.Conv2D(channels, 1, use_bias=False, in_channels=in_channels))
        else:
            down.add(nn.Conv2D(channels, 1, strides, use_bias=False, in_channels=in_channels))
        down.add(make_norm(norm_layer, channels, norm_kwargs))
        return down

    def hybrid_forward(self, F, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        if self.features_only:
            return c2, c3, c4, c5
        return self.fc(self.drop(self.flat(self.avgpool(c5))))
