"""Overlap masks on the plane scene match the analytic overlap rectangle; pooling and positives by hand."""

import numpy as np
import pytest
import scipy.sparse as sp
from test_gtgen_scenes import footprint, plane_mesh, plane_scene

from gtgen.masks import (
    MaskOptions,
    anchor_masks,
    overlapping_pairs,
    pair_masks,
    pixel_overlap,
    pool_mask,
    read_mask_png,
    write_mask_png,
)
from gtgen.ratios import incidence_from_sets
from gtgen.triplets import TripletOptions, build_manifest, positive_pairs, select_positives
from gtgen.visibility import VisibilityOptions, mesh_overlap, triangle_maps


def _on_columns(mask: np.ndarray) -> np.ndarray:
    cols = np.flatnonzero(mask.any(axis=0))
    assert mask[:, cols].all()  # whole columns: the overlap spans the image height
    return cols


def test_pair_masks_match_the_overlap_rectangle():
    centres = [(0.0, 0.0, 5.0), (3.9, 0.0, 5.0)]
    mesh = plane_mesh()
    maps = triangle_maps(plane_scene(centres), [1, 2], mesh, VisibilityOptions(progress=False))
    incidence, mo = mesh_overlap(maps, len(mesh.faces))
    ((mask_a, mask_b),) = pair_masks(maps, incidence, [(0, 1)], MaskOptions((32, 32))).values()
    fa, fb = footprint(centres[0]), footprint(centres[1])
    # over A, the overlap is x >= fb.x0: columns from 32 * (fb.x0 - fa.x0) / 10 on (a cell on when any pixel is)
    start = 32 * (fb[0] - fa[0]) / (fa[1] - fa[0])  # 12.48
    cols_a = _on_columns(mask_a)
    assert cols_a[-1] == 31 and abs(cols_a[0] - np.floor(start)) <= 1
    # over B, the overlap is x <= fa.x1: columns up to 32 * (fa.x1 - fb.x0) / 10
    end = 32 * (fa[1] - fb[0]) / (fb[1] - fb[0])  # 19.52
    cols_b = _on_columns(mask_b)
    assert cols_b[0] == 0 and abs(cols_b[-1] - np.floor(end)) <= 1
    # contiguous
    assert np.array_equal(cols_a, np.arange(cols_a[0], 32)) and np.array_equal(cols_b, np.arange(0, cols_b[-1] + 1))


def test_training_grid_and_min_fraction():
    centres = [(0.0, 0.0, 5.0), (0.0, 2.5, 5.0)]  # B shifted along +y: image rows of A from the top overlap
    mesh = plane_mesh()
    maps = triangle_maps(plane_scene(centres), [1, 2], mesh, VisibilityOptions(progress=False))
    incidence, _ = mesh_overlap(maps, len(mesh.faces))
    any_px = anchor_masks(maps[0], incidence, [1], MaskOptions((7, 7)))[0]
    full = anchor_masks(maps[0], incidence, [1], MaskOptions((7, 7), min_fraction=1.0))[0]
    # world +y is image up: the overlap (y >= -2.5) is the top 3/4 of A, rows < 5.25 of 7
    rows_any = np.flatnonzero(any_px.any(axis=1))
    rows_full = np.flatnonzero(full.any(axis=1))
    assert rows_any.tolist() == [0, 1, 2, 3, 4, 5]  # row 5 is partly on
    assert rows_full.tolist() == [0, 1, 2, 3, 4]
    assert (full <= any_px).all()


def test_pool_mask_by_hand():
    m = np.zeros((4, 6), bool)
    m[0, 0] = True
    m[2:, 3:] = True
    assert pool_mask(m, MaskOptions((2, 2))).tolist() == [[True, False], [False, True]]
    assert pool_mask(m, MaskOptions((2, 2), min_fraction=0.5)).tolist() == [[False, False], [False, True]]


def test_anchor_masks_agree_with_pixel_overlap():
    rng = np.random.default_rng(0)
    emap = rng.integers(-1, 40, size=(24, 36))
    sets = [np.unique(emap[emap >= 0]), rng.choice(40, 10, replace=False), rng.choice(40, 25, replace=False)]
    inc = incidence_from_sets(sets, 40)
    opts = MaskOptions((6, 9))
    got = anchor_masks(emap, inc, [1, 2], opts)
    for n, j in enumerate([1, 2]):
        assert np.array_equal(got[n], pool_mask(pixel_overlap(emap, sets[j]), opts))


def test_overlapping_pairs_union_of_directions():
    mo = sp.csr_matrix(np.array([[0, 0.3, 0, 0], [0.1, 0, 0, 0], [0, 0, 0, 0], [0.02, 0, 0, 0]]))
    assert overlapping_pairs(mo) == [(0, 1), (0, 3)]
    assert overlapping_pairs(mo, 0.05) == [(0, 1)]


def test_png_round_trip(tmp_path):
    m = np.random.default_rng(1).random((7, 9)) > 0.5
    write_mask_png(tmp_path / "m.png", m)
    assert np.array_equal(read_mask_png(tmp_path / "m.png"), m)


def test_strong_and_weak_positives():
    co = sp.csr_matrix(
        np.array(
            [
                [1.0, 0.9, 0.5, 0.3, 0.2, 0.05, 0.04],
                [0.9, 1.0, 0, 0, 0, 0, 0],
                [0.5, 0, 0, 0, 0, 0, 0],
                [0.3, 0, 0, 0, 0, 0, 0],
                [0.2, 0, 0, 0, 0, 0, 0],
                [0.05, 0, 0, 0, 0, 0, 0],
                [0.04, 0, 0, 0, 0, 0, 0],
            ]
        )
    )
    anchors = select_positives(co, TripletOptions())
    a0 = anchors[0]
    assert a0.index == 0
    assert a0.strong == [(1, 0.9), (2, 0.5)]  # inclusive bounds, diagonal ignored
    assert a0.weak == [(4, 0.2), (5, 0.05)]  # 0.3 is between the ranges, 0.04 below
    assert [a.index for a in anchors] == [0, 1, 2, 4, 5]
    assert positive_pairs(anchors) == [(0, 1), (0, 2), (0, 4), (0, 5)]
    custom = select_positives(co, TripletOptions(strong=(0.8, 1.0), weak=(0.25, 0.6)))
    assert custom[0].strong == [(1, 0.9)] and custom[0].weak == [(2, 0.5), (3, 0.3)]
    m = build_manifest([f"im{k}" for k in range(7)], anchors, TripletOptions(), lambda i, j: f"masks/{i}_{j}.png")
    assert m["anchors"][0]["strong"][0] == {"j": 1, "co": 0.9, "mask": "masks/0_1.png", "mask_other": "masks/1_0.png"}


def test_bad_thresholds_are_refused():
    from mirror_sfm.errors import MirrorError

    with pytest.raises(MirrorError, match="strong"):
        select_positives(sp.csr_matrix((2, 2)), TripletOptions(strong=(0.9, 0.5)))
