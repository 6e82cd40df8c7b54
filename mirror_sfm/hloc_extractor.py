"""mirror_sfm's network as an hloc global-feature extractor.

hloc's `extract_features.main(conf, image_dir, export_dir)` loads `hloc.extractors.<conf["model"]["name"]>`
and calls its model class with `conf["model"]`; the model takes `{"image": (B, 3, H, W) RGB in [0, 1]}` and
returns `{"global_descriptor": (B, D)}`. `MirrorSfM` is such a model; it also returns the 35 R-MAC
`regional_descriptors` (B, R, D), which hloc stores beside the global one, so `mirror_sfm pairs --features`
can PR-MAC re-rank from hloc's file. hloc picks the class defined in its own extractor module, so register
it with a two-line module `hloc/extractors/mirror_sfm.py`::

    from mirror_sfm.hloc_extractor import MirrorSfM as _MirrorSfM
    class MirrorSfM(_MirrorSfM): pass

and extract with `HLOC_CONF` (the defaults of `mirror_sfm extract`: long side resized to 384 px)::

    from hloc import extract_features
    from mirror_sfm.hloc_extractor import HLOC_CONF
    extract_features.main(HLOC_CONF, images, outputs)   # -> outputs/global-feats-mirror_sfm.h5

Without hloc installed, `MirrorSfM` derives from a torch module with hloc's BaseModel interface.
"""

from __future__ import annotations

from copy import copy
from typing import Any

import torch
from torch import nn

from .images import resized_size
from .model import load_model

try:  # hloc's base class when hloc is installed, so hloc's dynamic_load accepts the model
    from hloc.utils.base_model import BaseModel
except ImportError:

    class BaseModel(nn.Module):
        """hloc's BaseModel interface: `conf` = `default_conf` updated by the given one, `_init(conf)`,
        `forward(data)` checks `required_inputs` and calls `_forward(data)`."""

        default_conf: dict[str, Any] = {}
        required_inputs: list[str] = []

        def __init__(self, conf: dict[str, Any] | None = None):
            super().__init__()
            self.conf = conf = {**self.default_conf, **(conf or {})}
            self.required_inputs = copy(self.required_inputs)
            self._init(conf)

        def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            for key in self.required_inputs:
                if key not in data:
                    raise KeyError(f"missing key {key!r} in data")
            return self._forward(data)

        def _init(self, conf: dict[str, Any]) -> None:
            raise NotImplementedError

        def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            raise NotImplementedError


class MirrorSfM(BaseModel):
    """Global (MAC, GeM or R-MAC) and regional descriptors of mirror_sfm's retrieval network.

    conf: `weights` ('default', 'imagenet' or a weights file, as `--weights`), `pooling` (model: the weights'
    own, MAC for ImageNet | mac | gem | rmac),
    `regional` (also return the R-MAC regional vectors), `resize` (long side in px the image is resized to
    here; 0: as given, e.g. when hloc's preprocessing already resized it).
    """

    default_conf: dict[str, Any] = {"weights": "default", "pooling": "model", "regional": True, "resize": 0}
    required_inputs = ["image"]

    def _init(self, conf: dict[str, Any]) -> None:
        self.net = load_model(conf["weights"]).eval().for_inference()  # BatchNorm folded: same descriptors, faster

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = data["image"]
        if image.shape[1] != 3:
            raise ValueError(
                f"mirror_sfm needs RGB images (B, 3, H, W), got {tuple(image.shape)}: "
                "set grayscale: False in hloc's preprocessing"
            )
        long_side = int(self.conf.get("resize") or 0)
        h, w = image.shape[-2:]
        if long_side > 0 and max(h, w) != long_side:
            new_w, new_h = resized_size(w, h, long_side)
            image = nn.functional.interpolate(
                image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )
        pooling = None if self.conf["pooling"] == "model" else self.conf["pooling"]
        glob, regional = self.net.describe(image, regional=bool(self.conf["regional"]), pooling=pooling)
        out = {"global_descriptor": glob}
        if regional is not None:
            out["regional_descriptors"] = regional
        return out


# hloc extract_features configuration with mirror_sfm's extraction defaults (384 px long side, the model's pooling).
HLOC_CONF: dict[str, Any] = {
    "output": "global-feats-mirror_sfm",
    "model": {"name": "mirror_sfm", "weights": "default", "pooling": "model", "regional": True},
    "preprocessing": {"resize_max": 384, "resize_force": True, "grayscale": False},
}
