"""Overlap masks: where, in image i, lies the surface that image j also sees.

Pixel p of image i is on for partner j when the triangle (or element) i sees at p is in j's seen set.
The pixel mask is pooled onto a coarse grid: GL3D's ``mask.bin`` uses 32 x 32 (stretched over the
whole image, whatever its aspect); a trainer wants its backbone's feature-map size. A cell is on when
any of its pixels is on (``min_fraction`` = 0), or when at least that fraction of them is. All
partners of one image are done at once with sparse products, no loop over pixels.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from PIL import Image

from mirror_sfm.io_utils import atomic_path
from mirror_sfm.labels import read_mask_png  # noqa: F401 (the reader, re-exported)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MaskOptions:
    """`size`: (rows, cols) of the mask grid; `min_fraction`: share of a cell's pixels that must be on
    for the cell to be on (0: any pixel)."""

    size: tuple[int, int] = (32, 32)
    min_fraction: float = 0.0


def cell_of_pixels(shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Flat (rows*cols,) index of the grid cell holding each pixel centre of a `shape` map."""
    h, w = shape
    gr = np.minimum(((np.arange(h) + 0.5) * size[0] / h).astype(np.int64), size[0] - 1)
    gc = np.minimum(((np.arange(w) + 0.5) * size[1] / w).astype(np.int64), size[1] - 1)
    return (gr[:, None] * size[1] + gc[None, :]).ravel()


def pool_counts(counts: np.ndarray, totals: np.ndarray, min_fraction: float) -> np.ndarray:
    """On/off per cell from on-pixel `counts` and pixels per cell `totals` (cells with no pixel stay off)."""
    if min_fraction <= 0:
        return counts > 0
    return (counts > 0) & (counts >= min_fraction * totals)


def pool_mask(pixel_mask: np.ndarray, options: MaskOptions | None = None) -> np.ndarray:
    """(rows, cols) bool grid of a full-resolution bool mask."""
    options = options or MaskOptions()
    cells = cell_of_pixels(pixel_mask.shape, options.size)
    n = options.size[0] * options.size[1]
    counts = np.bincount(cells, weights=pixel_mask.ravel().astype(np.float64), minlength=n)
    totals = np.bincount(cells, minlength=n)
    return pool_counts(counts, totals, options.min_fraction).reshape(options.size)


def pixel_overlap(element_map: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Full-resolution bool mask of the pixels of `element_map` whose element is in `seen`."""
    return (element_map >= 0) & np.isin(element_map, seen)


def anchor_masks(
    element_map: np.ndarray,
    incidence: sp.csr_matrix,
    partners: list[int] | np.ndarray,
    options: MaskOptions | None = None,
) -> np.ndarray:
    """(len(partners), rows, cols) masks over one image: cell on where partner j sees the same elements."""
    options = options or MaskOptions()
    partners = np.asarray(partners, np.int64)
    n_cells = options.size[0] * options.size[1]
    cells = cell_of_pixels(element_map.shape, options.size)
    totals = np.bincount(cells, minlength=n_cells)
    flat = element_map.ravel()
    hit = flat >= 0
    if not hit.any() or len(partners) == 0:
        return np.zeros((len(partners), *options.size), bool)
    seen_by_partner = incidence[partners][:, flat[hit]]  # (P, hit pixels), 1 = shared
    to_cell = sp.csr_matrix(
        (np.ones(int(hit.sum())), (np.arange(int(hit.sum())), cells[hit])), shape=(int(hit.sum()), n_cells)
    )
    counts = np.asarray((seen_by_partner @ to_cell).todense())
    return pool_counts(counts, totals[None, :], options.min_fraction).reshape(len(partners), *options.size)


def pair_masks(
    element_maps: list[np.ndarray],
    incidence: sp.csr_matrix,
    pairs: list[tuple[int, int]],
    options: MaskOptions | None = None,
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """{(i, j): (mask over i of what j sees, mask over j of what i sees)} for each pair (i < j)."""
    partners: dict[int, list[int]] = defaultdict(list)
    for i, j in pairs:
        partners[i].append(j)
        partners[j].append(i)
    directed: dict[tuple[int, int], np.ndarray] = {}
    for a in sorted(partners):
        for b, m in zip(partners[a], anchor_masks(element_maps[a], incidence, partners[a], options)):
            directed[(a, b)] = m
    return {(i, j): (directed[(i, j)], directed[(j, i)]) for i, j in pairs}


def overlapping_pairs(directional: sp.spmatrix, min_ratio: float = 0.0) -> list[tuple[int, int]]:
    """Pairs (i < j) with r(i, j) > min_ratio or r(j, i) > min_ratio, sorted."""
    d = sp.csr_matrix(directional)
    d = d.multiply(d > min_ratio) if min_ratio > 0 else d
    both = sp.triu(d + d.T, k=1).tocoo()
    keep = both.data > 0
    return sorted(zip(both.row[keep].tolist(), both.col[keep].tolist()))


def mask_png_name(i: int, j: int) -> str:
    """File name of the mask over image i of what image j sees."""
    return f"{i:06d}_{j:06d}.png"


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """8-bit grey PNG, 255 = on; written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
