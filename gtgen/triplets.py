"""Training positives per anchor image from the combined overlap ratio (CO), as a JSON manifest.

MIRorR (sec. 3.2): CO(i, j) = 1 when the symmetric common-track ratio reaches t_sfm, else the
symmetric mesh-overlap ratio. Strong positives have CO in [0.5, 1], weak positives CO in
[0.05, 0.2]; pairs in between are left out on purpose (ambiguous), as are CO < 0.05 (negatives come
from other anchors' images at training time). Bounds are inclusive and configurable.

Manifest (``triplets.json``, version 1)::

    {"version": 1, "images": [names, index k = image k], "image_dir": str | null,
     "thresholds": {"strong": [lo, hi], "weak": [lo, hi], "t_sfm": t},
     "masks": {"bin": "geolabel/mask.bin" | null, "bin_size": 32,
               "png_dir": "masks" | null, "png_size": [rows, cols]},
     "anchors": [{"index": i, "name": str,
                  "strong": [{"j": j, "co": r, "mask": "masks/<i>_<j>.png", "mask_other": "masks/<j>_<i>.png"}, ...],
                  "weak": [...]}, ...]}

Paths are relative to the manifest's folder; "mask" is the mask over the anchor of what j sees,
"mask_other" the converse (absent when PNG masks were not written). Lists are sorted by CO, highest
first; only anchors with at least one positive are listed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import write_text_atomic
from mirror_sfm.labels import MANIFEST_VERSION, read_manifest  # noqa: F401 (the reader, re-exported)


@dataclasses.dataclass
class TripletOptions:
    """CO ranges (inclusive) for strong and weak positives; t_sfm: symmetric CT that makes CO = 1."""

    strong: tuple[float, float] = (0.5, 1.0)
    weak: tuple[float, float] = (0.05, 0.2)
    t_sfm: float = 0.2

    def check(self) -> None:
        for name, (lo, hi) in (("strong", self.strong), ("weak", self.weak)):
            if not 0.0 <= lo <= hi <= 1.0:
                raise MirrorError(f"{name} positive range must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]")


@dataclasses.dataclass
class Anchor:
    """One anchor image and its positives as (partner index, CO) lists, highest CO first."""

    index: int
    strong: list[tuple[int, float]]
    weak: list[tuple[int, float]]


def _in_range(cols: np.ndarray, vals: np.ndarray, lo: float, hi: float) -> list[tuple[int, float]]:
    """(column, ratio) of the positive ratios within [lo, hi], in the given order."""
    sel = (vals >= lo) & (vals <= hi) & (vals > 0)
    return [(int(j), float(r)) for j, r in zip(cols[sel], vals[sel])]


def select_positives(co: sp.spmatrix, options: TripletOptions | None = None) -> list[Anchor]:
    """Anchors with at least one strong or weak positive, from a symmetric CO matrix."""
    options = options or TripletOptions()
    options.check()
    co = sp.csr_matrix(co)
    anchors = []
    for i in range(co.shape[0]):
        cols = co.indices[co.indptr[i] : co.indptr[i + 1]]
        vals = co.data[co.indptr[i] : co.indptr[i + 1]]
        keep = cols != i
        cols, vals = cols[keep], vals[keep]
        order = np.lexsort((cols, -vals))
        cols, vals = cols[order], vals[order]

        strong, weak = _in_range(cols, vals, *options.strong), _in_range(cols, vals, *options.weak)
        if strong or weak:
            anchors.append(Anchor(i, strong, weak))
    return anchors


def positive_pairs(anchors: list[Anchor]) -> list[tuple[int, int]]:
    """Unordered pairs (i < j) that appear as a positive of some anchor, sorted."""
    pairs = {(min(a.index, j), max(a.index, j)) for a in anchors for j, _ in a.strong + a.weak}
    return sorted(pairs)


def build_manifest(
    names: list[str],
    anchors: list[Anchor],
    options: TripletOptions,
    mask_path: Callable[[int, int], str | None] | None = None,
    *,
    image_dir: str | None = None,
    mask_bin: str | None = None,
    mask_bin_size: int | None = None,
    png_dir: str | None = None,
    png_size: tuple[int, int] | None = None,
) -> dict:
    """The manifest as a dict (see the module docstring); `mask_path(i, j)` names the PNG over i for j."""

    def entry(i: int, j: int, r: float) -> dict:
        e: dict = {"j": j, "co": r}
        if mask_path is not None:
            mine, other = mask_path(i, j), mask_path(j, i)
            if mine is not None and other is not None:
                e["mask"], e["mask_other"] = mine, other
        return e

    return {
        "version": MANIFEST_VERSION,
        "images": list(names),
        "image_dir": image_dir,
        "thresholds": {"strong": list(options.strong), "weak": list(options.weak), "t_sfm": options.t_sfm},
        "masks": {
            "bin": mask_bin,
            "bin_size": mask_bin_size,
            "png_dir": png_dir,
            "png_size": list(png_size) if png_size else None,
        },
        "anchors": [
            {
                "index": a.index,
                "name": names[a.index],
                "strong": [entry(a.index, j, r) for j, r in a.strong],
                "weak": [entry(a.index, j, r) for j, r in a.weak],
            }
            for a in anchors
        ],
    }


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Write the manifest JSON atomically."""
    write_text_atomic(path, json.dumps(manifest, indent=1) + "\n")
