"""Pooling of a CNN feature map into global and regional descriptors (MAC, GeM, R-MAC regions).

Functional forms first, `nn.Module` twins after (the cnnimageretrieval-pytorch layout). All maps are
(B, C, H, W) non-negative activations; descriptors come out L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RMAC_STEPS = (1, 3, 5)


def l2n(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise along `dim`."""
    return x / (x.norm(p=2, dim=dim, keepdim=True) + eps)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: (B, C, H, W) -> (B, C)."""
    return x.amax(dim=(-2, -1))


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean pooling: (mean x^p)^(1/p), (B, C, H, W) -> (B, C)."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def masked_mac(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAC over the cells where `mask` (B, H, W) is true, resized to the map; an empty mask gives zeros.

    Used by the mask triplet loss: features pooled only over the part of the image that the
    other image of the pair also sees.
    """
    if mask.shape[-2:] != x.shape[-2:]:
        mask = F.interpolate(mask[:, None].float(), size=x.shape[-2:], mode="nearest")[:, 0]
    m = mask.bool()[:, None]
    neg = torch.finfo(x.dtype).min
    pooled = x.masked_fill(~m, neg).amax(dim=(-2, -1))
    return torch.where(m.flatten(1).any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


def rmac_windows(size: int, step: int) -> tuple[int, int]:
    """Window length and stride along one axis for `step` windows (MIRorR: k=(H//(s+1))*2, (H-k)//(s-1))."""
    if step == 1:
        return size, 1
    k = max(1, (size // (step + 1)) * 2)
    stride = max(1, (size - k) // (step - 1))
    return k, stride


def regional_mac(x: torch.Tensor, steps: tuple[int, ...] = RMAC_STEPS) -> torch.Tensor:
    """Max-pooled R-MAC regions: (B, C, H, W) -> (B, R, C), R = sum(s*s) (35 for steps 1,3,5).

    Step 1 is the global max; for s > 1 an s x s grid of windows per axis, so a non-square map
    (the whole image, not a centre crop) still yields s*s regions. Region vectors are not normalised.
    """
    b, c, h, w = x.shape
    regions = []
    for s in steps:
        if s == 1:
            regions.append(mac(x)[:, None])
            continue
        kh, sh = rmac_windows(h, s)
        kw, sw = rmac_windows(w, s)
        pooled = F.max_pool2d(x, kernel_size=(kh, kw), stride=(sh, sw))
        pooled = pooled[:, :, :s, :s]
        # Maps too small for s distinct windows repeat the last one, so R stays fixed.
        if pooled.shape[-2] < s or pooled.shape[-1] < s:
            ih = torch.clamp(torch.arange(s), max=pooled.shape[-2] - 1)
            iw = torch.clamp(torch.arange(s), max=pooled.shape[-1] - 1)
            pooled = pooled[:, :, ih][:, :, :, iw]
        regions.append(pooled.flatten(2).transpose(1, 2))
    return torch.cat(regions, dim=1)


def rmac_from_regions(regions: torch.Tensor) -> torch.Tensor:
    """R-MAC global descriptor: L2-normalised sum of L2-normalised (optionally whitened) regions."""
    return l2n(l2n(regions, dim=-1).sum(dim=1))


def prmac_score(q_regions: torch.Tensor, d_regions: torch.Tensor) -> torch.Tensor:
    """PR-MAC similarity: sum over the query's regions of its best cosine match among each database image's.

    q_regions (Rq, D) and d_regions (N, Rd, D), both L2-normalised per region; returns (N,).
    """
    sims = torch.einsum("rd,nsd->nrs", q_regions, d_regions)
    return sims.amax(dim=2).sum(dim=1)


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(mac(x))


class GeM(nn.Module):
    def __init__(self, p: float = 3.0, learnable: bool = False):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p))) if learnable else float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(gem(x, self.p))


class RMAC(nn.Module):
    def __init__(self, steps: tuple[int, ...] = RMAC_STEPS):
        super().__init__()
        self.steps = tuple(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmac_from_regions(regional_mac(x, self.steps))


POOLINGS = {"mac": MAC, "gem": GeM, "rmac": RMAC}
GEM_P = 3.0  # GeM's exponent unless a model says otherwise


def pool_global(
    x: torch.Tensor, pooling: str = "mac", p: float = GEM_P, regions: torch.Tensor | None = None
) -> torch.Tensor:
    """Global L2-normalised descriptor (B, C) of a feature map: MAC, GeM with exponent `p`, or R-MAC (from the
    unnormalised `regions` of `regional_mac` when already computed)."""
    if pooling == "mac":
        return l2n(mac(x))
    if pooling == "gem":
        return l2n(gem(x, p))
    if pooling == "rmac":
        return rmac_from_regions(regional_mac(x, RMAC_STEPS) if regions is None else regions)
    raise ValueError(f"unknown pooling {pooling!r}; choose from {sorted(POOLINGS)}")


def global_from_map(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """Global L2-normalised descriptor of a feature map by pooling name (mac | gem | rmac)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {sorted(POOLINGS)}")
    return POOLINGS[pooling]()(x)
