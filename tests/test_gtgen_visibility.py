"""Ray-cast visibility against scenes with analytic answers: plane footprints, a cube, a distorted camera."""

import logging

import numpy as np
import pycolmap
import pytest
import trimesh
from test_gtgen_scenes import (
    footprint,
    look_down,
    make_reconstruction,
    plane_mesh,
    plane_scene,
    plane_triangle_at,
    rect_overlap,
)

from gtgen.visibility import (
    MeshRayCaster,
    VisibilityOptions,
    camera_rays,
    element_ids,
    element_map,
    grid_pixel_centres,
    grid_shape,
    mesh_overlap,
    triangle_map,
    triangle_maps,
)
from mirror_sfm.errors import MirrorError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def plane():
    return plane_mesh()


def _mo(rec, mesh, **kw):
    ids = sorted(rec.reg_image_ids())
    maps = triangle_maps(rec, ids, mesh, VisibilityOptions(progress=False, **kw))
    return mesh_overlap(maps, len(mesh.faces))[1].toarray()


@pytest.mark.parametrize("offset", [(3.9, 0.0), (3.0, 2.0), (-6.3, 1.7)])
def test_plane_overlap_matches_footprint_intersection(plane, offset):
    centres = [(0.0, 0.0, 5.0), (offset[0], offset[1], 5.0)]
    mo = _mo(plane_scene(centres), plane)
    fa, fb = footprint(centres[0]), footprint(centres[1])
    expected = rect_overlap(fa, fb)
    # discretisation: a boundary triangle counts in full; 0.25 cells on a 10 x 10 footprint
    assert mo[0, 1] == pytest.approx(expected, abs=0.03)
    assert mo[1, 0] == pytest.approx(expected, abs=0.03)


def test_plane_overlap_is_directional(plane):
    """A camera twice as high sees 4x the area: r(low, high) = 1, r(high, low) = 1/4."""
    mo = _mo(plane_scene([(0.0, 0.0, 4.0), (0.0, 0.0, 8.0)]), plane)
    assert mo[0, 1] == pytest.approx(1.0, abs=1e-9)
    assert mo[1, 0] == pytest.approx(0.25, abs=0.02)


def test_disjoint_footprints_do_not_overlap(plane):
    mo = _mo(plane_scene([(-7.0, 0.0, 3.0), (7.0, 0.0, 3.0)]), plane)
    assert mo[0, 1] == 0 and mo[1, 0] == 0


def test_cube_front_face_hides_back_face():
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    front = np.flatnonzero(np.isclose(box.face_normals[:, 2], -1.0))
    back = np.flatnonzero(np.isclose(box.face_normals[:, 2], 1.0))
    # camera at z = -5 looking along +z (identity rotation), wide enough to see the whole cube
    rec = make_reconstruction(
        [("PINHOLE", [100.0, 100.0, 100.0, 100.0], 200, 200)], [(np.eye(3), np.array([0, 0, 5.0]))]
    )
    tri = triangle_map(MeshRayCaster(box), rec.camera(1), rec.image(1).cam_from_world(), resolution=200)
    seen = set(np.unique(tri[tri >= 0]).tolist())
    assert seen == set(front.tolist())
    assert not seen & set(back.tolist())
    # the front face (half-size 1 at depth 4) covers 2 * 100 / 4 = 50 px square of the 200 px image
    assert (tri >= 0).sum() == pytest.approx(50 * 50, rel=0.05)


def test_distorted_camera_rays_land_where_undistortion_says(plane):
    """SIMPLE_RADIAL k = -0.08 looking down from h = 4: each pixel sees the triangle under the analytically
    undistorted ray (Newton on r_d = r (1 + k r^2), independent of pycolmap)."""
    f, k, h, w, hh = 120.0, -0.08, 4.0, 240, 160
    rec = make_reconstruction([("SIMPLE_RADIAL", [f, w / 2, hh / 2, k], w, hh)], [look_down((0.5, -0.3, h))])
    tri = triangle_map(MeshRayCaster(plane), rec.camera(1), rec.image(1).cam_from_world(), resolution=240)
    xy = grid_pixel_centres(w, hh, tri.shape)
    xd, yd = (xy[:, 0] - w / 2) / f, (xy[:, 1] - hh / 2) / f
    rd = np.hypot(xd, yd)
    r = rd.copy()
    for _ in range(50):
        r -= (r * (1 + k * r * r) - rd) / (1 + 3 * k * r * r)
    scale = np.divide(r, rd, out=np.ones_like(r), where=rd > 0)
    xu, yu = xd * scale, yd * scale
    X, Y = 0.5 + h * xu, -0.3 - h * yu  # look_down: image x -> +x, image y -> -y
    expected = plane_triangle_at(X, Y)
    got = tri.ravel()
    assert (got >= 0).all()
    assert np.mean(got == expected) > 0.995  # misses only on triangle edges
    # barrel distortion widens the view: the corner ray reaches further than the pinhole one would
    assert abs(X[0] - 0.5) > h * abs(xd[0])


def test_rays_beyond_a_distortion_fold_are_dropped(plane):
    """k = -0.5: r_d = r (1 - 0.5 r^2) peaks at r_d = 0.54; corner pixels (r_d ~ 0.7) have no ray."""
    w, hh, f = 200, 200, 140.0
    cam = pycolmap.Camera(camera_id=1, model="SIMPLE_RADIAL", width=w, height=hh, params=[f, w / 2, hh / 2, -0.5])
    rays = camera_rays(cam, grid_shape(w, hh, 50))
    ok = np.isfinite(rays).all(axis=1).reshape(50, 50)
    assert ok[25, 25] and not ok[0, 0] and not ok[-1, -1]
    rec = make_reconstruction([("SIMPLE_RADIAL", [f, w / 2, hh / 2, -0.5], w, hh)], [look_down((0, 0, 3.0))])
    tri = triangle_map(MeshRayCaster(plane), rec.camera(1), rec.image(1).cam_from_world(), resolution=50)
    assert tri[0, 0] == -1 and tri[25, 25] >= 0


def test_grid_shape_keeps_aspect():
    assert grid_shape(4000, 3000, 256) == (192, 256)
    assert grid_shape(3000, 4000, 256) == (256, 192)
    assert grid_shape(10, 10, 256) == (256, 256)


def test_georeferenced_coordinates_keep_precision(plane):
    """Far from the origin (UTM-like), float32 embree still resolves 0.25 m triangles: the caster recentres."""
    offset = np.array([500000.0, 4200000.0, 100.0])
    moved = trimesh.Trimesh(plane.vertices + offset, plane.faces, process=False)
    centres = [(0.0, 0.0, 5.0), (3.9, 0.0, 5.0)]
    near = _mo(plane_scene(centres), plane)
    far = _mo(plane_scene([tuple(np.add(c, offset)) for c in centres]), moved)
    assert far == pytest.approx(near, abs=1e-9)


def test_cache_resumes_and_matches(tmp_path, plane):
    rec = plane_scene([(0.0, 0.0, 5.0), (3.0, 1.0, 5.0)])
    opts = VisibilityOptions(cache_dir=tmp_path, progress=False, resolution=64)
    first = triangle_maps(rec, [1, 2], plane, opts)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 2
    mtimes = [p.stat().st_mtime_ns for p in files]
    again = triangle_maps(rec, [1, 2], plane, opts)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert [p.stat().st_mtime_ns for p in files] == mtimes  # read, not rewritten
    # another resolution is another key
    triangle_maps(rec, [1], plane, VisibilityOptions(cache_dir=tmp_path, progress=False, resolution=32))
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_mesh_out_of_frame_is_a_clear_error(plane):
    far = trimesh.Trimesh(plane.vertices + [1000.0, 0, 0], plane.faces, process=False)
    rec = plane_scene([(0.0, 0.0, 5.0)])
    maps = triangle_maps(rec, [1], far, VisibilityOptions(progress=False, resolution=32))
    with pytest.raises(MirrorError, match="no camera sees any triangle"):
        mesh_overlap(maps, len(far.faces))


def test_fine_mesh_warns_and_elements_fix_the_ratio(caplog):
    """Triangles smaller than the ray spacing: each image samples different triangles, raw MO collapses;
    grouping triangles into 0.25-unit cells restores the footprint overlap."""
    fine = plane_mesh(half=6.0, cell=0.04)  # rays every 5/64 = 0.08 units: ~8 triangles per ray
    centres = [(0.0, 0.0, 2.5), (1.91, 0.04, 2.5)]  # shifts of ~half a ray spacing
    rec = plane_scene(centres)
    with caplog.at_level(logging.WARNING, logger="gtgen"):
        maps = triangle_maps(rec, [1, 2], fine, VisibilityOptions(progress=False, resolution=64))
    assert "finer than the ray grid" in caplog.text
    raw = mesh_overlap(maps, len(fine.faces))[1].toarray()
    expected = rect_overlap(footprint(centres[0]), footprint(centres[1]))
    assert raw[0, 1] < 0.5 * expected
    el = element_ids(fine, 0.25)
    grouped = mesh_overlap([element_map(m, el) for m in maps], int(el.max()) + 1)[1].toarray()
    assert grouped[0, 1] == pytest.approx(expected, abs=0.05)


def test_empty_image_list_is_an_error(plane):
    with pytest.raises(MirrorError, match="no registered images"):
        triangle_maps(pycolmap.Reconstruction(), [], plane, VisibilityOptions(progress=False))
