"""COLMAP's SIFT matching rule, batched in torch: mutual nearest neighbours passing the ratio and distance tests.

COLMAP (``SiftMatchingOptions``: ``max_ratio`` 0.8, ``max_distance`` 0.7, ``cross_check`` on) compares uint8 SIFT
descriptors (L2 norm 512) by the angle between them, ``d = acos(<a, b> / 512²)``; a feature's best neighbour is kept
when ``d1 <= max_distance`` and ``d1 < max_ratio · d2`` (``d2``: the second best), in both directions, and only
mutual pairs survive. This module computes the same matches (the test suite checks them against pycolmap's
``FeatureMatcher``) with one matrix product per image pair, from features held in memory: no database to write,
so a user's database can be read without being touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SIFT_NORM = 512.0


@dataclass(frozen=True)
class SiftMatchingRule:
    """COLMAP's defaults (``pycolmap.SiftMatchingOptions``)."""

    max_ratio: float = 0.8        # best distance < max_ratio x second best
    max_distance: float = 0.7     # best distance (radians) at most this
    cross_check: bool = True      # keep only mutual best matches


def descriptor_tensor(descriptors: np.ndarray) -> torch.Tensor:
    """uint8 (n, 128) SIFT descriptors as float32 unit vectors (COLMAP normalises them to norm 512)."""
    return torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32)).mul_(1.0 / SIFT_NORM)


def _best_two(sim: torch.Tensor, dim: int, rule: SiftMatchingRule) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the best neighbour along `dim` and whether it passes the distance and ratio tests."""
    if sim.shape[dim] < 2:  # no second neighbour: the ratio test cannot reject
        best, idx = sim.max(dim=dim)
        ok = torch.arccos(best.clamp(-1, 1)) <= rule.max_distance
        return idx, ok
    top = sim.topk(2, dim=dim)
    dist = torch.arccos(top.values.clamp(-1, 1))
    d1, d2 = dist.select(dim, 0), dist.select(dim, 1)
    ok = (d1 <= rule.max_distance) & (d1 < rule.max_ratio * d2)
    return top.indices.select(dim, 0), ok


def match_one_to_many(query: torch.Tensor, candidates: list[torch.Tensor],
                      rule: SiftMatchingRule = SiftMatchingRule()) -> list[np.ndarray]:
    """Match one image's descriptors against each candidate's: a (m, 2) uint32 array of (query, candidate)
    feature indices per candidate, as COLMAP's matcher returns them (sorted by query feature)."""
    out: list[np.ndarray] = []
    n = len(query)
    for cand in candidates:
        m = len(cand)
        if n == 0 or m == 0:
            out.append(np.zeros((0, 2), np.uint32))
            continue
        sim = query @ cand.T  # (n, m) cosine similarities
        j, ok12 = _best_two(sim, 1, rule)
        if rule.cross_check:
            i_back, ok21 = _best_two(sim, 0, rule)
            rows = torch.arange(n)
            keep = ok12 & ok21[j] & (i_back[j] == rows)
        else:
            keep = ok12
        rows = torch.nonzero(keep).squeeze(1)
        out.append(torch.stack([rows, j[rows]], 1).numpy().astype(np.uint32))
    return out
