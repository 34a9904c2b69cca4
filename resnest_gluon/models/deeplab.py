"""DeepLabV3 on the dilated ResNeSt: gluoncv's published ADE20K models, ``deeplab_resnest{50,...}_ade``.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587 (the ASPP
head); Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955 (the backbone and the ADE20K
results). The parameter names are those of gluoncv's files (``conv1`` ... ``layer4`` of the backbone, then
``head`` and ``auxlayer``), so ``load_parameters`` reads the published ``.params`` unchanged.

Two things differ from gluoncv's code, neither in the numbers: nothing depends on the input size (gluoncv
fixes the size of its ASPP pooling branch and of the final upsampling when it builds the model), and the
auxiliary FCN head is an output only while ``aux`` is on (training); its weights are always kept, so the
same file loads either way. The final upsampling gives ``BilinearResize2D``'s numbers (to float rounding)
as two matrix products, which are faster on CPU (:mod:`resnest_gluon.models.resize`).
"""

import warnings
from typing import Optional, Sequence, Union

import mxnet as mx
from mxnet.gluon import HybridBlock, nn
from mxnet.gluon.contrib.nn import HybridConcurrent

from .layers import make_norm
from .pretrained import SHA1
from .resize import bilinear_resize
from .resnest import ResNeSt

__all__ = ["ASPP", "DeepLabHead", "DeepLabV3", "FCNHead", "SEG_MODELS", "get_deeplab", "load_backbone_params"]

# Published by gluoncv (model zoo "ADE20K Dataset" table and model_store.py): pixel accuracy and mIoU (%)
# on ADE20K val, 150 classes, from gluoncv's scripts/segmentation/test.py --eval, which scores every image
# at scales 0.5-1.75 with flipping (multi-scale + flip), base size 520, crop 480.
_ADE = dict(dataset="ade20k", classes=150, crop_size=480, base_size=520, protocol="multi-scale + flip")
SEG_MODELS = {
    f"deeplab_{backbone}_ade": dict(
        _ADE, backbone=backbone, pixacc=pixacc, miou=miou, sha1=SHA1[f"deeplab_{backbone}_ade"]
    )
    for backbone, pixacc, miou in (
        ("resnest50", 81.2, 45.1),
        ("resnest101", 82.1, 46.9),
        ("resnest200", 82.5, 48.4),
        ("resnest269", 82.6, 47.6),
    )
}


def _conv_bn_relu(in_channels, channels, kernel, dilation, norm_layer, norm_kwargs) -> nn.HybridSequential:
    block = nn.HybridSequential()
    pad = dilation if kernel == 3 else 0
    block.add(
        nn.Conv2D(channels, kernel, padding=pad, dilation=dilation, use_bias=False, in_channels=in_channels),
        make_norm(norm_layer, channels, norm_kwargs),
        nn.Activation("relu"),
    )
    return block


class ASPPPooling(HybridBlock):
    """Image-level features: global average, 1x1 conv, norm, ReLU, spread back over the input's grid.

    Upsampling a 1x1 map bilinearly gives a constant map, so a broadcast is exact, and it takes the size
    from the input itself (gluoncv fixes it when the model is built)."""

    def __init__(self, in_channels, channels, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.gap = nn.HybridSequential()
            self.gap.add(nn.GlobalAvgPool2D())
            self.gap.add(*_conv_bn_relu(in_channels, channels, 1, 1, norm_layer, norm_kwargs))

    def hybrid_forward(self, F, x):
        return F.broadcast_like(self.gap(x), x, lhs_axes=(2, 3), rhs_axes=(2, 3))


class ASPP(HybridBlock):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image pooling,
    concatenated and projected to ``channels``."""

    def __init__(
        self,
        in_channels: int = 2048,
        rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        norm_layer=nn.BatchNorm,
        norm_kwargs: Optional[dict] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        with self.name_scope():
            self.concurent = HybridConcurrent(axis=1)  # gluoncv's spelling: the published keys use it
            self.concurent.add(_conv_bn_relu(in_channels, channels, 1, 1, norm_layer, norm_kwargs))
            for rate in rates:
                self.concurent.add(_conv_bn_relu(in_channels, channels, 3, rate, norm_layer, norm_kwargs))
            self.concurent.add(ASPPPooling(in_channels, channels, norm_layer, norm_kwargs))
            self.project = _conv_bn_relu(channels * (len(rates) + 2), channels, 1, 1, norm_layer, norm_kwargs)
            self.project.add(nn.Dropout(0.5))

    def hybrid_forward(self, F, x):
        return self.project(self.concurent(x))


def _classifier(in_channels, mid_channels, classes, norm_layer, norm_kwargs) -> nn.HybridSequential:
    block = _conv_bn_relu(in_channels, mid_channels, 3, 1, norm_layer, norm_kwargs)
    block.add(nn.Dropout(0.1), nn.Conv2D(classes, 1, in_channels=mid_channels))
    return block


class DeepLabHead(HybridBlock):
    """ASPP, then 3x3 conv, norm, ReLU, dropout and a 1x1 classifier (logits at the feature resolution)."""

    def __init__(
        self,
        classes,
        in_channels=2048,
        rates=(12, 24, 36),
        norm_layer=nn.BatchNorm,
        norm_kwargs=None,
        channels: int = 256,
    ):
        super().__init__()
        with self.name_scope():
            self.aspp = ASPP(in_channels, rates, channels, norm_layer, norm_kwargs)
            self.block = _classifier(channels, channels, classes, norm_layer, norm_kwargs)

    def hybrid_forward(self, F, x):
        return self.block(self.aspp(x))


class FCNHead(HybridBlock):
    """The auxiliary head on C4: 3x3 conv to a quarter of the channels, norm, ReLU, dropout, classifier."""

    def __init__(self, classes, in_channels=1024, norm_layer=nn.BatchNorm, norm_kwargs=None):
        super().__init__()
        with self.name_scope():
            self.block = _classifier(in_channels, in_channels // 4, classes, norm_layer, norm_kwargs)

    def hybrid_forward(self, F, x):
        return self.block(x)


class DeepLabV3(HybridBlock):
    """DeepLabV3 with an auxiliary FCN head, on a ResNeSt built with ``output_stride=8``.

    Parameters
    ----------
    backbone : ResNeSt
        The dilated backbone; its stem and four stages become this model's children (its classifier is
        dropped), so a backbone loaded with ImageNet weights carries them over.
    classes : int
        Output classes.
    aux : bool
        Also return the auxiliary head's logits (``(main, aux)``): on for training, off for inference.
        :meth:`set_aux` switches it on a built (and hybridized) model.
    norm_layer, norm_kwargs
        Normalisation of the heads (use the backbone's).
    rates : sequence of 3 ints
        ASPP dilation rates (gluoncv: 12, 24, 36 at output stride 8).
    head_channels : int
        Channels of the ASPP branches and of the main head (gluoncv: 256); fewer make a small model.

    Outputs are logits of shape (N, classes, H, W) for an input of (N, 3, H, W), any H and W.
    """

    def __init__(
        self,
        backbone: ResNeSt,
        classes: int = 150,
        *,
        aux: bool = False,
        norm_layer=nn.BatchNorm,
        norm_kwargs: Optional[dict] = None,
        rates: Sequence[int] = (12, 24, 36),
        head_channels: int = 256,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.aux = aux
        self.classes = classes
        self.output_size = None  # (height, width) fixed for export, see set_output_size
        with self.name_scope():
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
                setattr(self, name, getattr(backbone, name))
            c4 = backbone.fc._in_units  # C5 channels; the auxiliary head reads C4, half as many
            self.head = DeepLabHead(classes, c4, rates, norm_layer, norm_kwargs, head_channels)
            self.auxlayer = FCNHead(classes, c4 // 2, norm_layer, norm_kwargs)

    def set_aux(self, on: bool) -> None:
        """Return the auxiliary logits too (training) or not (inference); a hybridized graph is rebuilt."""
        if bool(on) != self.aux:
            self.aux = bool(on)
            self._clear_cached_op()

    def set_output_size(self, size: Optional[Sequence[int]]) -> None:
        """Upsample to a fixed ``(height, width)`` instead of the input's own size (None: the input's).

        :func:`resnest_gluon.deploy.export_onnx` sets the exported input's size here for the export and
        clears it afterwards, so the exported graph sizes its upsampling from constants rather than from
        another array. The outputs are the same for that input size."""
        size = None if size is None else (int(size[0]), int(size[1]))
        if size != self.output_size:
            self.output_size = size
            self._clear_cached_op()

    def _upsample(self, F, x, like):
        # BilinearResize2D's numbers as two matrix products, a third of its time (models/resize.py)
        if self.output_size is None:
            return bilinear_resize(F, x, like=like)
        return bilinear_resize(F, x, size=self.output_size)

    def forward(self, x, *args):
        if self.aux:
            return super().forward(x, *args)
        with warnings.catch_warnings():  # the auxiliary head's weights are kept on purpose, unused
            warnings.filterwarnings("ignore", "Parameter .* is not used by any computation", UserWarning)
            return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        c = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(c)))
        out = self._upsample(F, self.head(self.layer4(c3)), x)
        if self.aux:  # a construction-time switch (set_aux), not a train/inference branch
            return out, self._upsample(F, self.auxlayer(c3), x)
        return out


def load_published(net: DeepLabV3, name: str, root: Optional[str] = None, ctx=None) -> str:
    """Loads gluoncv's published file for ``name`` (``resnest-download name`` fetches it) after checking
    its SHA-1, keys and shapes."""
    from .pretrained import load_pretrained

    return load_pretrained(net, name, root=root, ctx=ctx)


def load_backbone_params(
    net: DeepLabV3, backbone: str, pretrained: Union[bool, str], root: Optional[str] = None, ctx=None
) -> str:
    """Copies ImageNet weights into ``net``'s backbone: the published file of ``backbone`` (``True``; SHA-1
    checked) or any ``.params`` of that classifier, whatever its classes (its ``fc`` is left out). Every
    backbone key and shape is checked; the heads are left alone. Returns the file read."""
    if not isinstance(pretrained, str):
        from .zoo import get_model

        classifier = get_model(backbone, pretrained=True, root=root)
        loaded = {k: p.data() for k, p in classifier._collect_params_with_prefix().items()}
        path = f"published {backbone}"
    else:
        from .pretrained import UnreadableParams

        path = pretrained
        try:
            loaded = {k.split(":", 1)[-1]: v for k, v in mx.nd.load(path).items()}
        except (mx.base.MXNetError, AttributeError) as err:
            raise UnreadableParams(f"{path} is not a readable MXNet .params file of named arrays") from err
    params = net._collect_params_with_prefix()
    wanted = {k for k in params if not k.startswith(("head.", "auxlayer."))}
    loaded = {k: v for k, v in loaded.items() if not k.startswith("fc.")}
    for key in sorted(wanted | set(loaded)):
        if key not in loaded:
            raise ValueError(f"{path} is not a {backbone}: parameter {key!r} is missing from it")
        if key not in wanted:
            raise ValueError(f"{path} is not a {backbone}: it has {key!r}, which the backbone does not")
        if tuple(loaded[key].shape) != tuple(params[key].shape):
            raise ValueError(
                f"{path} is not a {backbone}: {key!r} has shape {tuple(loaded[key].shape)} in the file, "
                f"{tuple(params[key].shape)} in the model"
            )
    for key, value in loaded.items():
        params[key]._load_init(value, ctx or mx.cpu())
    return path


def get_deeplab(
    name: str,
    pretrained: Union[bool, str] = False,
    root: Optional[str] = None,
    ctx: Optional[mx.Context] = None,
    *,
    classes: Optional[int] = None,
    aux: bool = False,
    backbone: Optional[str] = None,
    pretrained_backbone: Union[bool, str] = False,
    norm_layer=nn.BatchNorm,
    norm_kwargs: Optional[dict] = None,
    output_stride: int = 8,
    rates: Sequence[int] = (12, 24, 36),
    head_channels: int = 256,
    **backbone_kwargs,
) -> DeepLabV3:
    """Builds ``name`` (one of :data:`SEG_MODELS`); ``resnest_gluon.get_model(name)`` calls this.

    Parameters
    ----------
    pretrained : bool or str
        True loads gluoncv's published file from ``root`` (SHA-1, keys and shapes checked); a path loads
        that ``.params`` file of the same architecture.
    classes : int, optional
        Output classes (default the data set's: 150 for ADE20K).
    aux : bool
        Return ``(main, aux)`` logits (training) instead of the main logits alone.
    backbone : str, optional
        Another registered ResNeSt (``resnest14`` for a small model); default the row's.
    pretrained_backbone : bool or str
        ImageNet weights for the backbone when ``pretrained`` is not given: True for the published file
        of ``backbone``, or a ``.params`` of that classifier with any classes (:func:`load_backbone_params`).
    norm_layer, norm_kwargs
        For the backbone and the heads (e.g. :class:`resnest_gluon.training.syncbn.SyncBatchNorm`).
    output_stride, rates, head_channels
        The backbone's output stride and the ASPP's dilation rates and width (gluoncv's: 8, (12, 24, 36),
        256); the built-in demo uses a smaller model (16, (2, 4, 6), 64).
    **backbone_kwargs
        Passed to the backbone's ``get_model`` (``dropblock_prob``, ``last_gamma``, ...).
    """
    from .zoo import get_model

    row = SEG_MODELS[name]
    backbone = backbone or row["backbone"]
    base = get_model(
        backbone,
        output_stride=output_stride,
        norm_layer=norm_layer,
        norm_kwargs=norm_kwargs,
        **backbone_kwargs,
    )
    net = DeepLabV3(
        base,
        row["classes"] if classes is None else classes,
        aux=aux,
        norm_layer=norm_layer,
        norm_kwargs=norm_kwargs,
        rates=rates,
        head_channels=head_channels,
    )
    net.model_name, net.crop_size, net.base_size = name, row["crop_size"], row["base_size"]
    if pretrained_backbone and not pretrained:  # the heads start as gluoncv starts them
        load_backbone_params(net, backbone, pretrained_backbone, root, ctx)
        for head in (net.head, net.auxlayer):
            head.initialize(ctx=ctx)
    if pretrained and not isinstance(pretrained, str):
        load_published(net, name, root, ctx)
    elif pretrained:
        from .pretrained import load_params_checked

        load_params_checked(net, pretrained, ctx)
    return net


def _register() -> None:
    from .zoo import register_model

    for name, row in SEG_MODELS.items():
        register_model(name, get_deeplab, row)


_register()
