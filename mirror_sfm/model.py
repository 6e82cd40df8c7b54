"""The retrieval model: a backbone plus how its feature map is pooled, and an optional whitening.

`RetrievalModel.describe` is the one descriptor (backbone -> pooling -> whitening) that extraction, training and
evaluation use. Weights files are torch checkpoints `{"format": "mirror_sfm-weights-1", "backbone": name,
"state_dict": ..., "pooling": {"name": "mac" | "gem" | "rmac", "p": GeM exponent}, "whitening": {...} | None,
"meta": {...}}`, so a model trained with GeM is served with GeM; a file without "pooling" (older ones) takes
`meta["pooling"]` when present, else MAC. `load_model("default")` takes the fine-tuned weights shipped in
`mirror_sfm/weights/default.pt` when present, else the ImageNet initialisation, so a trained checkpoint
drops in with no code change.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .backbones import Backbone, build_backbone
from .errors import MirrorError
from .pooling import GEM_P, POOLINGS, RMAC_STEPS, l2n, pool_global, regional_mac, rmac_from_regions
from .whitening import Whitening

logger = logging.getLogger(__name__)

WEIGHTS_FORMAT = "mirror_sfm-weights-1"
DEFAULT_BACKBONE = "efficientnet-lite0"
PACKAGED_WEIGHTS = Path(__file__).parent / "weights" / "default.pt"


class RetrievalModel(nn.Module):
    """Backbone, its global pooling (`pooling`: mac | gem | rmac, `gem_p`) and its descriptor whitening;
    `forward` returns the feature map, `describe` the descriptors."""

    def __init__(
        self,
        backbone: Backbone,
        whitening: Whitening | None = None,
        meta: dict | None = None,
        pooling: str = "mac",
        gem_p: float = GEM_P,
    ):
        super().__init__()
        self.backbone = backbone
        self.whitening = whitening
        self.meta = dict(meta or {})
        self.pooling = check_pooling(pooling)
        self.gem_p = float(gem_p)
        self.channels_last = False  # inference copies (`for_inference`) run convolutions channels-last

    @property
    def name(self) -> str:
        return self.meta.get("name", self.backbone.info.name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> feature map (B, C, h, w)."""
        images = self.backbone.normalize(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def for_inference(self) -> RetrievalModel:
        """A copy for describing images only (no training): the backbone's fused form (BatchNorm folded into the
        convolutions) in channels-last memory. Same descriptors to float rounding, about 2-3x faster on CPU
        (RESULTS.md §11); the original model (and its weights' signature) is untouched."""
        model = RetrievalModel(self.backbone.fused(), self.whitening, self.meta, self.pooling, self.gem_p).eval()
        model.backbone.to(memory_format=torch.channels_last)
        model.channels_last = True
        return model

    def describe(
        self, images: torch.Tensor, regional: bool = False, whiten: bool = False, pooling: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """RGB in [0, 1], (B, 3, H, W) -> global (B, D) and, with `regional`, the 35 R-MAC regions (B, R, D),
        each L2-normalised: backbone -> pooling -> whitening.

        `pooling` overrides the model's own (an ablation); `whiten` applies the model's whitening (none when it
        has none). Extraction stores unwhitened descriptors: retrieval chooses the whitening (none | model |
        database) on the stored vectors, with the same maths as here.
        """
        return self.describe_map(self(images), regional, whiten, pooling)

    def describe_map(
        self, fmap: torch.Tensor, regional: bool = False, whiten: bool = False, pooling: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`describe` from an already computed feature map (training reuses the map for its masked terms)."""
        pooling = check_pooling(pooling or self.pooling)
        regions = regional_mac(fmap, RMAC_STEPS) if (regional or pooling == "rmac") else None
        glob = pool_global(fmap, pooling, self.gem_p, regions)
        regions = l2n(regions) if regional else None
        if whiten and self.whitening is not None:
            if regions is not None:
                regions = self._whiten(regions)
            glob = rmac_from_regions(regions) if (pooling == "rmac" and regions is not None) else self._whiten(glob)
        return glob, regions

    def _whiten(self, x: torch.Tensor) -> torch.Tensor:
        """`Whitening.apply` in torch, on x's device: L2(P (x - mean))."""
        mean = torch.as_tensor(self.whitening.mean, device=x.device, dtype=x.dtype)
        projection = torch.as_tensor(self.whitening.projection, device=x.device, dtype=x.dtype)
        return l2n((x - mean) @ projection.T)


def check_pooling(pooling: str) -> str:
    """`pooling` when it is a global pooling name, else one MirrorError naming the choices."""
    if pooling not in POOLINGS:
        raise MirrorError(f"unknown pooling {pooling!r}: choose {', '.join(POOLINGS)}")
    return pooling


def save_weights(model: RetrievalModel, path: str | Path, half: bool = True) -> None:
    """Save the model's weights (fp16 by default: a few MB) with its pooling, whitening and metadata, atomically."""
    from .io_utils import atomic_path

    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.backbone.state_dict().items()}
    ckpt = {
        "format": WEIGHTS_FORMAT,
        "backbone": model.backbone.info.name,
        "state_dict": state,
        "pooling": {"name": model.pooling, "p": model.gem_p},
        "whitening": model.whitening.to_dict() if model.whitening is not None else None,
        "meta": model.meta,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_torch_file(path: Path, fmt: str, what: str, kind: str) -> dict:
    """A torch.save'd dict whose "format" is `fmt`; unreadable or foreign files give one clear MirrorError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise MirrorError(f"cannot read {what} {path}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise MirrorError(f"not a mirror_sfm {kind}: {path}")
    return state


def is_imagenet(weights: str | Path) -> bool:
    """Whether `weights` names the ImageNet initialisation ("imagenet", or "default" with no shipped file): a
    model with no whitening, so --whitening auto needs no model loaded to know it whitens nothing."""
    return str(weights) == "imagenet" or (str(weights) == "default" and not PACKAGED_WEIGHTS.is_file())


def load_model(weights: str | Path = "default", backbone: str = DEFAULT_BACKBONE) -> RetrievalModel:
    """Load a model: "default" (shipped fine-tuned weights, else ImageNet), "imagenet", or a checkpoint path."""
    if str(weights) == "default":
        if PACKAGED_WEIGHTS.is_file():
            return load_model(PACKAGED_WEIGHTS)
        weights = "imagenet"
    if str(weights) == "imagenet":
        return RetrievalModel(build_backbone(backbone, imagenet=True), None, {"name": f"{backbone}-imagenet"})
    path = Path(weights)
    if not path.is_file():
        raise MirrorError(f"model weights not found: {path}")
    ckpt = load_torch_file(path, WEIGHTS_FORMAT, "model weights", "weights file")
    net = build_backbone(str(ckpt.get("backbone")), imagenet=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in (ckpt.get("state_dict") or {}).items()}
    _check_state_fits(path, ckpt.get("backbone"), net, state)
    net.load_state_dict(state)
    whitening = Whitening.from_dict(ckpt["whitening"]) if ckpt.get("whitening") else None
    if whitening is not None and whitening.mean.shape[-1] != net.info.channels:
        raise MirrorError(
            f"weights file {path}: its whitening takes {whitening.mean.shape[-1]}-d descriptors but "
            f"backbone {ckpt['backbone']} gives {net.info.channels}-d; re-fit it with 'mirror_sfm whiten'"
        )
    meta = dict(ckpt.get("meta") or {})
    meta.setdefault("name", path.stem)
    pooling = ckpt.get("pooling") or {"name": meta.get("pooling") or "mac"}
    if not isinstance(pooling, dict) or pooling.get("name") not in POOLINGS:
        raise MirrorError(f"weights file {path}: unknown pooling {pooling!r} (mac, gem or rmac)")
    return RetrievalModel(net, whitening, meta, pooling["name"], float(pooling.get("p", GEM_P)))


def _check_state_fits(path: Path, name: str, net: torch.nn.Module, state: dict) -> None:
    """One clear MirrorError when a weights file's tensors are not those of the backbone it names."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise MirrorError(
            f"weights file {path} does not fit backbone {name} (another architecture?): "
            f"{len(missing)} tensors missing, {len(unexpected)} unexpected, {len(wrong)} of another "
            f"shape (e.g. {example}); use the weights with the backbone they were trained with"
        )
