"""Overlap ratios between images from sets each image sees (3D tracks or mesh triangles).

Sets are rows of a sparse image x element incidence matrix, so all pairwise intersections come from
one sparse product, with no Python loop over pairs. Paper (MIRorR, eqs. 2-4): directional ratio
r(i, j) = |S(i) & S(j)| / |S(i)|; symmetric ratio = sqrt(r(i, j) r(j, i)) and CO live in `mirror_sfm.labels`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mirror_sfm.labels import combined_ratios, symmetric_ratios  # noqa: F401 (the reader's maths, re-exported)


def incidence_from_sets(sets: list[np.ndarray], num_elements: int | None = None) -> sp.csr_matrix:
    """Boolean (num_images, num_elements) matrix; row i marks the element ids in sets[i]."""
    rows = (
        np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(sets)])
        if sets
        else np.zeros(0, np.int64)
    )
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in sets]) if sets else np.zeros(0, np.int64)
    n_el = int(num_elements if num_elements is not None else (cols.max() + 1 if len(cols) else 0))
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(len(sets), n_el))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def directional_ratios(incidence: sp.csr_matrix) -> sp.csr_matrix:
    """Sparse (N, N) matrix of r(i, j) = |S(i) & S(j)| / |S(i)| for i != j, only where the sets meet."""
    inter = (incidence @ incidence.T).tocsr()
    inter.setdiag(0)
    inter.eliminate_zeros()
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    inv = np.divide(1.0, sizes, out=np.zeros_like(sizes, dtype=np.float64), where=sizes > 0)
    return sp.diags(inv) @ inter


def track_sets(reconstruction) -> tuple[list[str], list[np.ndarray]]:
    """Names of registered images and, for each, the ids of the 3D points (tracks) it observes."""
    names, sets = [], []
    for image_id in sorted(reconstruction.reg_image_ids()):
        image = reconstruction.image(image_id)
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        names.append(image.name)
        sets.append(np.unique(np.asarray(ids, dtype=np.int64)))
    return names, sets


def common_track_ratios(reconstruction) -> tuple[list[str], sp.csr_matrix]:
    """CT (eq. 2): image names and the sparse directional common-track ratio matrix."""
    names, sets = track_sets(reconstruction)
    return names, directional_ratios(incidence_from_sets(sets))
