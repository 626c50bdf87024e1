"""Segmentation models written here (no torchvision, no pretrained weights), as in the lecture's
use case: a DeepLab-v3-style teacher and a MobileNet-style student. Both map images
``(B, 1, H, W)`` (or flat ``(B, H*W)``) to per-pixel class logits ``(B, C, H, W)`` and carry
``distill_factory`` (``"distill.segmentation:DeepLabV3"`` / ``":MobileNetSeg"`` + ``arch``), so
checkpoints rebuild them like :class:`distill.models.classifiers.MLP`.

* :class:`DeepLabV3` (Chen et al. 2017): a strided convolutional backbone down to output stride
  ``4`` followed by *dilated* (atrous) 3x3 convolutions, which grow the receptive field without
  further down-sampling, then an **atrous spatial pyramid pooling** head: parallel 1x1 and dilated
  3x3 branches at several rates plus a global image-pooling branch, concatenated and projected;
  then, as in DeepLab-v3+, a light decoder joining the up-sampled features with the stride-2
  stem features (thin digit strokes need finer detail than output stride 4); a 1x1 classifier;
  bilinear up-sampling to the input size.
* :class:`MobileNetSeg` (Howard et al. 2017): a 3x3 stem then *depthwise-separable* blocks
  (a depthwise 3x3 convolution per channel followed by a pointwise 1x1 convolution), the last
  ones dilated, the same kind of decoder (one separable block), a 1x1 classifier and the same
  bilinear up-sampling. With the defaults it has about 1/50 of the teacher's parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _as_images(x: torch.Tensor, image_shape) -> torch.Tensor:
    """``x`` as ``(B, 1, H, W)``: flat ``(B, H*W)`` and ``(B, H, W)`` inputs are viewed as images."""
    if x.dim() == 4:
        return x
    h, w = image_shape
    return x.reshape(x.shape[0], 1, h, w)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    """``conv k x k (padding keeps the size) -> BatchNorm -> ReLU``."""
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``concat[1x1 conv, 3x3 conv at each rate, global average
    pool -> 1x1 conv -> broadcast] -> 1x1 projection`` (each conv followed by BatchNorm + ReLU)."""

    def __init__(self, cin: int, cout: int, rates=(2, 4, 6)):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn(cin, cout, 1)] + [conv_bn(cin, cout, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, 1))


class DeepLabV3(nn.Module):
    """DeepLab-v3-style teacher: ``stem 3x3/2 -> 3x3/2 -> 3x3 -> dilated 3x3 (rate 2) -> dilated
    3x3 (rate 4) -> ASPP(rates)`` at output stride 4 (channels ``width``, ``2 width``, ``2 width``,
    ``3 width``, ``3 width``; ``aspp`` channels per ASPP branch, default ``2 width``), then (as in
    DeepLab-v3+) a light decoder: the ASPP features up-sampled x2, concatenated with the stem's
    stride-2 features (projected to ``width // 2`` channels by a 1x1 conv), a 3x3 conv to ``width``
    channels, a 1x1 classifier, bilinear up-sampling x2.
    """

    KEY_NAME = "distill.segmentation.DeepLabV3"  # its name in run keys (distill.digest.key_name)

    def __init__(self, num_classes: int = 11, image_shape=(64, 64), width: int = 32, aspp: int | None = None,
                 rates=(2, 4, 6)):
        super().__init__()
        h, w = (int(s) for s in image_shape)
        width, rates = int(width), [int(r) for r in rates]
        aspp = 2 * width if aspp is None else int(aspp)
        if num_classes < 2 or width < 2 or aspp < 1 or not rates:
            raise ValueError("DeepLabV3 needs num_classes >= 2, width >= 2, aspp >= 1 and at least one rate")
        self.arch = dict(num_classes=int(num_classes), image_shape=[h, w], width=width, aspp=aspp, rates=rates)
        self.image_shape = (h, w)
        c1, c2, c3 = width, 2 * width, 3 * width
        self.stem = conv_bn(1, c1, 3, stride=2)
        self.backbone = nn.Sequential(conv_bn(c1, c2, 3, stride=2), conv_bn(c2, c2, 3),
                                      conv_bn(c2, c3, 3, dilation=2), conv_bn(c3, c3, 3, dilation=4))
        self.aspp = ASPP(c3, aspp, rates)
        self.low = conv_bn(c1, c1 // 2, 1)
        self.decoder = conv_bn(aspp + c1 // 2, c1, 3)
        self.classifier = nn.Conv2d(c1, num_classes, 1)

    @property
    def distill_factory(self) -> tuple[str, dict]:
        return "distill.segmentation:DeepLabV3", dict(self.arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_images(x, self.image_shape)
        low = self.stem(x)
        deep = _resize(self.aspp(self.backbone(low)), low)
        out = self.classifier(self.decoder(torch.cat([deep, self.low(low)], 1)))
        return _resize(out, x)


def _resize(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear up-sampling of ``t`` to ``like``'s height and width."""
    return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)


def separable(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """MobileNet's depthwise-separable block: ``depthwise 3x3 (groups = channels) -> BN -> ReLU ->
    pointwise 1x1 -> BN -> ReLU``."""
    return nn.Sequential(conv_bn(cin, cin, 3, stride=stride, dilation=dilation, groups=cin), conv_bn(cin, cout, 1))


class MobileNetSeg(nn.Module):
    """MobileNet-style student: ``stem 3x3/2 -> separable /2 -> separable -> separable (rate 2) ->
    separable (rate 4)`` at output stride 4, then the same light decoder as the teacher's (x2
    up-sampling, concatenation with the stem's features, one separable block), a 1x1 classifier
    and bilinear up-sampling x2."""

    KEY_NAME = "distill.segmentation.MobileNetSeg"  # its name in run keys (distill.digest.key_name)

    def __init__(self, num_classes: int = 11, image_shape=(64, 64), width: int = 16):
        super().__init__()
        h, w = (int(s) for s in image_shape)
        width = int(width)
        if num_classes < 2 or width < 1:
            raise ValueError("MobileNetSeg needs num_classes >= 2 and width >= 1")
        self.arch = dict(num_classes=int(num_classes), image_shape=[h, w], width=width)
        self.image_shape = (h, w)
        c1, c2 = width, 2 * width
        self.stem = conv_bn(1, c1, 3, stride=2)
        self.features = nn.Sequential(separable(c1, c2, stride=2), separable(c2, c2),
                                      separable(c2, c2, dilation=2), separable(c2, c2, dilation=4))
        self.decoder = separable(c1 + c2, c2)
        self.classifier = nn.Conv2d(c2, num_classes, 1)

    @property
    def distill_factory(self) -> tuple[str, dict]:
        return "distill.segmentation:MobileNetSeg", dict(self.arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_images(x, self.image_shape)
        low = self.stem(x)
        deep = _resize(self.features(low), low)
        return _resize(self.classifier(self.decoder(torch.cat([deep, low], 1))), x)


#: pixel-wise distillation settings of ``distill student --teacher`` on label masks, chosen on a
#: validation split of the training canvases (see distill.experiments.segmentation)
DISTILL_TEMPERATURE = 1.0
DISTILL_HARD_WEIGHT = 1.0
#: their learning rates when none is given, by optimiser (the classifiers' defaults are too high here)
DEFAULT_LR = {"sgd": 0.05, "adam": 0.003}

#: ``--arch`` names of the segmentation models (``distill teacher|student``)
ARCHS = {"deeplab": DeepLabV3, "mobilenet": MobileNetSeg}


def build(arch: str, num_classes: int, image_shape, width: int | None = None) -> nn.Module:
    """The model ``arch`` (``deeplab`` or ``mobilenet``) for ``num_classes`` classes on images of
    ``image_shape`` (H, W), at its default width unless ``width`` is given."""
    if arch not in ARCHS:
        raise ValueError(f"unknown segmentation model {arch!r}; choose one of {sorted(ARCHS)}")
    kwargs = dict(num_classes=num_classes, image_shape=tuple(image_shape))
    if width is not None:
        kwargs["width"] = width
    return ARCHS[arch](**kwargs)
