"""The pyrender visibility engine against the ray caster and analytic answers (tiny offscreen renders)."""

import numpy as np
import pytest
import trimesh
from test_gtgen_scenes import (
    look_down,
    make_reconstruction,
    plane_mesh,
    plane_scene,
    plane_triangle_at,
    require_offscreen_rendering,
)

from gtgen.visibility import MeshRayCaster, VisibilityOptions, mesh_overlap, triangle_map, triangle_maps
from mirror_sfm.errors import MirrorError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def render():
    """gtgen.render, skipped (with the reason) where pyrender or an offscreen OpenGL context is missing."""
    require_offscreen_rendering()
    from gtgen import render as module

    return module


@pytest.fixture(scope="module")
def plane():
    return plane_mesh()


@pytest.fixture(scope="module")
def cube():
    return trimesh.creation.box(extents=(2.0, 2.0, 2.0))


@pytest.fixture(scope="module")
def fine_cube(cube):
    """768 triangles: MO ratios that one edge triangle cannot swing."""
    return cube.subdivide().subdivide().subdivide()


def _look_at(centre, target=(0.0, 0.0, 0.0)):
    from gtgen.synthetic import look_at

    return look_at(np.asarray(centre, float), np.asarray(target, float), np.array([0.0, 0.0, 1.0]))


def _maps(rec, mesh, engine, resolution):
    ids = sorted(rec.reg_image_ids())
    return triangle_maps(rec, ids, mesh, VisibilityOptions(resolution=resolution, engine=engine, progress=False))


def _agreement(rec, mesh, resolution):
    a, b = _maps(rec, mesh, "embree", resolution), _maps(rec, mesh, "pyrender", resolution)
    agree = [float((x == y).mean()) for x, y in zip(a, b)]
    mo_a = mesh_overlap(a, len(mesh.faces))[1].toarray()
    mo_b = mesh_overlap(b, len(mesh.faces))[1].toarray()
    return agree, mo_a, mo_b


def test_id_colours_round_trip(render):
    ids = np.array([0, 1, 255, 256, 65535, 65536, render.MAX_FACES - 1])
    code = ids + 1
    rgb = np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], axis=1).astype(np.uint8)
    assert render.decode_ids(rgb.reshape(1, -1, 3)).ravel().tolist() == ids.tolist()
    small = render.encode_ids(70000)
    assert np.allclose(small[:, 3], 1.0)
    rgb = np.round(small[:, :3] * 255).astype(np.uint8)
    assert (render.decode_ids(rgb[None]) == np.arange(70000)).all()
    assert render.decode_ids(np.zeros((2, 2, 3), np.uint8)).tolist() == [[-1, -1], [-1, -1]]


def test_too_many_faces_is_refused(render):
    with pytest.raises(MirrorError, match="24 bits"):
        render.encode_ids(render.MAX_FACES + 1)


def test_cube_agrees_with_ray_caster(render, fine_cube):
    centres = [(4.0, 1.3, 2.1), (-3.2, 3.9, 1.1), (0.7, -4.4, -2.3), (3.1, 3.3, 0.4)]
    poses = [_look_at(c, (0.05, -0.1, 0.02)) for c in centres]
    cams = [("PINHOLE", [150.0, 140.0, 82.0, 57.0], 160, 120)] * len(centres)
    agree, mo_a, mo_b = _agreement(make_reconstruction(cams, poses), fine_cube, 160)
    assert min(agree) >= 0.98
    assert np.abs(mo_a - mo_b).max() <= 0.02


def test_plane_agrees_with_ray_caster_on_a_coarser_grid(render, plane):
    # SIMPLE_PINHOLE-like intrinsics on a 200x150 image, a 120-cell grid: intrinsics are scaled to the grid
    centres = [(0.313, 0.127, 5.0), (2.71, -1.33, 6.2), (-1.9, 2.2, 4.4)]
    cams = [("SIMPLE_PINHOLE", [110.0, 93.0, 71.0], 200, 150)] * 3
    agree, mo_a, mo_b = _agreement(make_reconstruction(cams, [look_down(c) for c in centres]), plane, 120)
    assert min(agree) >= 0.98
    assert np.abs(mo_a - mo_b).max() <= 0.02
    assert mo_b[0, 1] > 0.3  # the footprints overlap: a meaningful comparison


def test_cameras_of_different_sizes_in_one_model(render, fine_cube):
    centres = [(4.0, 1.3, 2.1), (-3.2, 3.9, 1.1), (0.7, -4.4, -2.3)]
    cams = [
        ("PINHOLE", [150.0, 140.0, 82.0, 57.0], 160, 120),
        ("PINHOLE", [90.0, 90.0, 50.3, 50.1], 100, 100),
        ("SIMPLE_PINHOLE", [120.0, 60.2, 80.1], 120, 160),
    ]
    rec = make_reconstruction(cams, [_look_at(c) for c in centres])
    agree, mo_a, mo_b = _agreement(rec, fine_cube, 100)
    assert min(agree) >= 0.98 and np.abs(mo_a - mo_b).max() <= 0.02


def test_pixel_centres_match_the_analytic_plane(render, plane):
    centre = (0.413, -0.271, 5.0)
    rec = plane_scene([centre], size=(160, 120))
    with render.MeshRasterizer(plane) as raster:
        tri = raster.triangle_map(rec.camera(1), rec.image(1).cam_from_world(), resolution=160)
    r, c = np.mgrid[0:120, 0:160]
    x = centre[0] + (c + 0.5 - 80) * centre[2] / 100
    y = centre[1] - (r + 0.5 - 60) * centre[2] / 100
    assert (tri == plane_triangle_at(x, y)).mean() >= 0.995


def test_front_face_hides_back_face(render, cube):
    front = np.flatnonzero(np.isclose(cube.face_normals[:, 2], -1.0))
    # camera at z = -5 looking along +z; the principal point keeps the cube's edges off pixel centres
    rec = make_reconstruction([("PINHOLE", [50.0, 50.0, 40.3, 30.2], 80, 60)], [(np.eye(3), np.array([0, 0, 5.0]))])
    with render.MeshRasterizer(cube) as raster:
        tri = raster.triangle_map(rec.camera(1), rec.image(1).cam_from_world(), resolution=80)
    assert set(np.unique(tri[tri >= 0]).tolist()) == set(front.tolist())
    assert (tri == -1).any()


def test_camera_facing_away_sees_nothing(render, cube):
    R, _ = _look_at((5.0, 0.0, 0.0), (10.0, 0.0, 0.0))
    rec = make_reconstruction([("PINHOLE", [50.0, 50.0, 40.0, 30.0], 80, 60)], [(R, -R @ np.array([5.0, 0, 0]))])
    with render.MeshRasterizer(cube) as raster:
        assert (raster.triangle_map(rec.camera(1), rec.image(1).cam_from_world(), 80) == -1).all()


def test_georeferenced_coordinates_keep_precision(render, plane):
    shift = np.array([4.1e6, 5.3e5, 210.0])
    far = trimesh.Trimesh(plane.vertices + shift, plane.faces, process=False)
    centres = [(0.313, 0.127, 5.0), (1.71, -1.33, 6.2)]
    near_maps = _maps(plane_scene(centres, size=(120, 90)), plane, "pyrender", 120)
    far_maps = _maps(plane_scene([tuple(np.add(c, shift)) for c in centres], size=(120, 90)), far, "pyrender", 120)
    for a, b in zip(near_maps, far_maps):
        assert (a == b).mean() >= 0.99


def test_distorted_camera_is_refused_and_zero_distortion_accepted(render, cube):
    pose = [_look_at((4.0, 1.0, 1.0))]
    distorted = make_reconstruction([("OPENCV", [50.0, 50.0, 40.0, 30.0, -0.1, 0.01, 0.0, 0.0], 80, 60)], pose)
    with render.MeshRasterizer(cube) as raster:
        with pytest.raises(MirrorError, match="pinhole cameras only"):
            raster.triangle_map(distorted.camera(1), distorted.image(1).cam_from_world(), 80)
        fisheye = make_reconstruction([("OPENCV_FISHEYE", [50.0, 50.0, 40.0, 30.0, 0.0, 0.0, 0.0, 0.0], 80, 60)], pose)
        with pytest.raises(MirrorError, match="OPENCV_FISHEYE"):  # equidistant, not pinhole, even undistorted
            raster.triangle_map(fisheye.camera(1), fisheye.image(1).cam_from_world(), 80)
        plain = make_reconstruction([("OPENCV", [50.0, 50.0, 40.0, 30.0, 0.0, 0.0, 0.0, 0.0], 80, 60)], pose)
        pinhole = make_reconstruction([("PINHOLE", [50.0, 50.0, 40.0, 30.0], 80, 60)], pose)
        a = raster.triangle_map(plain.camera(1), plain.image(1).cam_from_world(), 80)
        b = raster.triangle_map(pinhole.camera(1), pinhole.image(1).cam_from_world(), 80)
    assert (a == b).all() and (a >= 0).any()


def test_engine_in_triangle_maps_caches_separately(render, plane, tmp_path):
    rec = plane_scene([(0.3, 0.1, 5.0), (1.2, 0.4, 5.0)], size=(80, 60))
    ids = sorted(rec.reg_image_ids())
    opts = VisibilityOptions(resolution=80, engine="pyrender", cache_dir=tmp_path, progress=False)
    first = triangle_maps(rec, ids, plane, opts)
    assert sorted(p.name.startswith("pyrender-") for p in tmp_path.iterdir()) == [True, True]
    again = triangle_maps(rec, ids, plane, opts)
    assert all((a == b).all() for a, b in zip(first, again))
    triangle_maps(
        rec, ids, plane, VisibilityOptions(resolution=80, engine="embree", cache_dir=tmp_path, progress=False)
    )
    assert len(list(tmp_path.iterdir())) == 4


def test_triangle_map_dispatches_to_the_rasteriser(render, cube):
    rec = make_reconstruction([("PINHOLE", [60.0, 60.0, 40.0, 30.0], 80, 60)], [_look_at((3.0, 2.0, 1.5))])
    with render.MeshRasterizer(cube) as raster:
        a = triangle_map(raster, rec.camera(1), rec.image(1).cam_from_world(), 80)
    b = triangle_map(MeshRayCaster(cube), rec.camera(1), rec.image(1).cam_from_world(), 80)
    assert (a == b).mean() >= 0.98
