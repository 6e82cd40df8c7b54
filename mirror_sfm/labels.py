"""The labelled-scene format gtgen writes, read in one place: by training, evaluation and gtgen itself.

A scene folder holds ``image_list.txt`` (line k = image k), ``geolabel/`` in GL3D's layout
(``common_track.txt`` and ``mesh_overlap.txt``: directional ``i j ratio`` lines, r(i, j) = |S(i) & S(j)| / |S(i)|,
only r > 0; ``mask.bin`` v2: packed records ``struct '2i' + '?' * 2 * size * size``, little-endian, idx0 <= idx1,
then image idx0's size x size row-major bool mask, then image idx1's), optional ``masks/<i>_<j>.png`` (8-bit grey,
255 = on: the cells of image i whose surface image j also sees) and ``triplets.json`` (the positives manifest,
see `gtgen.triplets`). Ratios are combined as in MIRorR (eqs. 3-4): symmetric = sqrt(r(i, j) r(j, i));
CO = 1 where the symmetric common-track ratio reaches t_sfm, else the symmetric mesh overlap.
The writers live in gtgen; nothing here imports it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import MirrorError

logger = logging.getLogger(__name__)

IMAGE_LIST = "image_list.txt"
GEOLABEL = "geolabel"
COMMON_TRACK = "common_track.txt"
MESH_OVERLAP = "mesh_overlap.txt"
MASK_BIN = "mask.bin"
MANIFEST = "triplets.json"
MANIFEST_VERSION = 1
MASK_SIZE = 32  # GL3D's mask grid (its reader's default)


# ----------------------------------------------------------------------------- files


def read_image_list(path: str | Path) -> list[str]:
    """``image_list.txt``: the name of image k on line k (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"image list not found: {path}")
    return [line for line in path.read_text().splitlines() if line.strip()]


def read_ratios(path: str | Path, num_images: int | None = None) -> sp.csr_matrix:
    """``i j ratio`` lines -> sparse (N, N) float64 matrix; N = `num_images` or max index + 1."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"ratio file not found: {path}")
    rows, cols, vals = [], [], []
    seen: set[tuple[int, int]] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            if len(parts) != 3:
                raise ValueError(f"expected 'i j ratio', got {line!r}")
            i, j = int(parts[0]), int(parts[1])
            r = float(parts[2])
        except ValueError as exc:
            raise MirrorError(f"{path}:{n}: {exc}") from None
        if (i, j) in seen:
            raise MirrorError(f"{path}:{n}: pair {i} {j} listed twice")
        seen.add((i, j))
        rows.append(i)
        cols.append(j)
        vals.append(r)
    n_img = num_images if num_images is not None else (max(max(rows), max(cols)) + 1 if rows else 0)
    if rows and max(max(rows), max(cols)) >= n_img:
        raise MirrorError(f"{path}: image index {max(max(rows), max(cols))} out of range for {n_img} images")
    m = sp.csr_matrix(
        (np.asarray(vals, np.float64), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))), shape=(n_img, n_img)
    )
    m.eliminate_zeros()
    return m


def mask_record_dtype(size: int = MASK_SIZE) -> np.dtype:
    """numpy twin of struct '2i' + '?' * 2 * size * size (little-endian, packed): one ``mask.bin`` record."""
    return np.dtype([("idx", "<i4", (2,)), ("masks", "?", (2, size, size))])


def read_mask_bin(path: str | Path, size: int = MASK_SIZE) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """``mask.bin`` -> {(idx0, idx1): (size x size bool mask over idx0, same over idx1)}."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"mask file not found: {path}")
    dtype = mask_record_dtype(size)
    nbytes = path.stat().st_size
    if nbytes % dtype.itemsize:
        raise MirrorError(
            f"{path}: {nbytes} bytes is not a whole number of {size}x{size} mask records ({dtype.itemsize} bytes each)"
        )
    rec = np.fromfile(path, dtype=dtype)
    return {(int(i), int(j)): (m[0].copy(), m[1].copy()) for (i, j), m in zip(rec["idx"], rec["masks"])}


def read_mask_png(path: str | Path) -> np.ndarray:
    """A mask PNG as a bool grid (grey >= 128 is on)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) >= 128
    except FileNotFoundError:
        raise MirrorError(f"mask file not found: {path}") from None


def read_manifest(path: str | Path) -> dict:
    """Load a ``triplets.json`` manifest, checking its version."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"triplet manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MirrorError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("version") != MANIFEST_VERSION:
        raise MirrorError(f"{path}: manifest version {manifest.get('version')!r}, expected {MANIFEST_VERSION}")
    return manifest


# ----------------------------------------------------------------------------- ratio maths


def symmetric_ratios(directional: sp.spmatrix) -> sp.csr_matrix:
    """Geometric mean sqrt(r(i, j) r(j, i)) of the two directions."""
    return directional.multiply(directional.T).sqrt().tocsr()


def combined_ratios(ct: sp.spmatrix, mo: sp.spmatrix, t_sfm: float = 0.2) -> sp.csr_matrix:
    """CO (eq. 4): 1 where the symmetric CT >= t_sfm, else the symmetric mesh-overlap ratio."""
    ct_s, mo_s = symmetric_ratios(ct), symmetric_ratios(mo)
    strong = (ct_s >= t_sfm).astype(np.float64)
    return (strong + mo_s - mo_s.multiply(strong)).tocsr()


# ----------------------------------------------------------------------------- scenes


def scene_image_dir(scene_dir: Path) -> Path:
    """The photos of a labelled scene: triplets.json's image_dir (absolute or relative), else SCENE/images."""
    scene_dir = Path(scene_dir)
    manifest = scene_dir / MANIFEST
    given = None
    if manifest.is_file():
        try:
            given = json.loads(manifest.read_text()).get("image_dir")
        except json.JSONDecodeError as exc:
            raise MirrorError(f"{manifest}: not valid JSON ({exc})") from None
    path = scene_dir / given if given else scene_dir / "images"
    if not path.is_dir():
        raise MirrorError(f"image folder of scene {scene_dir} not found: {path}")
    return path


@dataclass
class SceneLabels:
    """A labelled scene's image names and directional ratio matrices (N, N)."""

    name: str
    image_dir: Path
    names: list[str]
    ct: sp.csr_matrix  # common-track ratios (zeros when the scene has no common_track.txt)
    mo: sp.csr_matrix  # mesh-overlap ratios

    def relevance(self, criterion: str, threshold: float, t_sfm: float = 0.2) -> sp.csr_matrix:
        """Symmetric (N, N) bool matrix of relevant pairs (no diagonal): criterion co | ct | mo >= threshold
        (> 0 when the threshold is 0)."""
        if criterion == "co":
            m = combined_ratios(self.ct, self.mo, t_sfm)
        elif criterion == "ct":
            m = symmetric_ratios(self.ct)
        else:
            m = symmetric_ratios(self.mo)
        m = sp.csr_matrix(m >= threshold) if threshold > 0 else sp.csr_matrix(m > 0)
        m.setdiag(False)
        m.eliminate_zeros()
        return m

    def ground_truth(self, criterion: str, threshold: float, t_sfm: float = 0.2) -> dict[str, set[str]]:
        """{image name: names of its relevant images} (see `relevance`)."""
        rel = self.relevance(criterion, threshold, t_sfm)
        return {
            self.names[i]: {self.names[j] for j in rel.indices[rel.indptr[i] : rel.indptr[i + 1]]}
            for i in range(len(self.names))
        }


def load_scene_labels(scene_dir: str | Path) -> SceneLabels:
    """image_list.txt + geolabel ratio files of a gtgen/GL3D scene folder (common_track.txt optional)."""
    scene_dir = Path(scene_dir)
    if not scene_dir.is_dir():
        raise MirrorError(f"scene folder not found: {scene_dir}")
    names = read_image_list(scene_dir / IMAGE_LIST)
    n = len(names)
    mo = read_ratios(scene_dir / GEOLABEL / MESH_OVERLAP, n)
    ct_path = scene_dir / GEOLABEL / COMMON_TRACK
    ct = read_ratios(ct_path, n) if ct_path.is_file() else sp.csr_matrix((n, n))
    return SceneLabels(scene_dir.name, scene_image_dir(scene_dir), names, ct, mo)
