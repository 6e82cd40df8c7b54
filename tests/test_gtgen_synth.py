"""`gtgen synth`: renders, the true COLMAP model and its tracks, camera paths, and overlap on the result."""

import json

import numpy as np
import pycolmap
import pytest
import trimesh
from PIL import Image
from test_gtgen_scenes import require_offscreen_rendering

from gtgen.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = (160, 120)


@pytest.fixture(scope="module")
def synthetic():
    """gtgen.synthetic, skipped (with the reason) where pyrender or an offscreen OpenGL context is missing."""
    require_offscreen_rendering()
    from gtgen import synthetic as module

    return module


def _options(synthetic, **kw):
    kw = {"num_views": 8, "width": SIZE[0], "height": SIZE[1], "num_points": 3000, "progress": False, **kw}
    return synthetic.SynthOptions(**kw)


@pytest.fixture(scope="module")
def boxes(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_boxes")
    result = synthetic.synthesize_procedural("boxes", out, _options(synthetic, seed=3))
    return out, result


@pytest.fixture(scope="module")
def box_orbit(synthetic, tmp_path_factory):
    """One cube, 8 views on the horizon 45 degrees apart, each seeing two faces square on."""
    out = tmp_path_factory.mktemp("synth_box")
    synthetic.synthesize_procedural("box", out, _options(synthetic, elevations=(0.0,), azimuth=22.5, jitter=0.0))
    return out


def test_writes_images_model_mesh_and_summary(boxes):
    out, result = boxes
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == result.names == [f"{k:05d}.jpg" for k in range(8)]
    with Image.open(out / "images" / names[0]) as im:
        assert im.size == SIZE and im.mode == "RGB"
        assert np.asarray(im).std() > 10  # textured, not blank
    assert (out / "mesh.ply").is_file() and (out / "sparse" / "images.bin").is_file()
    summary = json.loads((out / "synth.json").read_text())
    assert summary["images"] == 8 and summary["points3D"] == result.num_points > 100
    assert not list(out.glob(".*")) and not list((out / "images").glob(".*"))  # no temporaries left


def test_model_holds_the_requested_cameras(boxes):
    out, result = boxes
    rec = pycolmap.Reconstruction(out / "sparse")
    assert rec.num_reg_images() == 8
    camera = rec.camera(1)
    f = 0.8 * max(SIZE)
    assert camera.model_name == "PINHOLE" and (camera.width, camera.height) == SIZE
    assert np.allclose(camera.params, [f, f, SIZE[0] / 2, SIZE[1] / 2])
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        R, t = result.poses[result.names.index(image.name)]
        m = image.cam_from_world().matrix()
        assert np.allclose(m[:, :3], R, atol=1e-9) and np.allclose(m[:, 3], t, atol=1e-9)


def test_tracks_reproject_onto_their_keypoints(boxes):
    out, _ = boxes
    rec = pycolmap.Reconstruction(out / "sparse")
    errors, lengths = [], []
    for point in rec.points3D.values():
        lengths.append(point.track.length())
        for el in point.track.elements:
            image = rec.image(el.image_id)
            xy = image.project_point(point.xyz)
            errors.append(np.linalg.norm(xy - image.points2D[el.point2D_idx].xy))
    assert min(lengths) >= 2
    assert max(errors) < 0.5
    # every 2D point belongs to a track
    assert all(p.has_point3D() for i in rec.reg_image_ids() for p in rec.image(i).points2D)


def test_mesh_is_in_the_model_frame(boxes, synthetic):
    out, _ = boxes
    mesh = trimesh.load(out / "mesh.ply", force="mesh", process=False)
    source = synthetic.procedural_mesh("boxes", seed=3)
    assert np.allclose(mesh.vertices, source.vertices) and (mesh.faces == source.faces).all()
    rec = pycolmap.Reconstruction(out / "sparse")
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    pts = xyz[:50]  # each 3D point lies on some triangle (brute force: no rtree needed)
    tri = np.tile(mesh.triangles, (len(pts), 1, 1))
    closest = trimesh.triangles.closest_point(tri, np.repeat(pts, len(mesh.faces), axis=0))
    dist = np.linalg.norm(closest - np.repeat(pts, len(mesh.faces), axis=0), axis=1).reshape(len(pts), -1)
    assert dist.min(axis=1).max() < 1e-6


def test_overlap_runs_on_the_synthetic_scene(boxes, tmp_path, capsys):
    out, _ = boxes
    code = main(
        [
            "overlap",
            "--sparse",
            str(out / "sparse"),
            "--mesh",
            str(out / "mesh.ply"),
            "--out",
            str(tmp_path / "gt"),
            "--images",
            str(out / "images"),
            "--resolution",
            "64",
        ]
    )
    assert code == 0, capsys.readouterr().err
    geo = tmp_path / "gt" / "geolabel"
    assert (geo / "mesh_overlap.txt").read_text().strip() and (geo / "common_track.txt").read_text().strip()
    assert (tmp_path / "gt" / "triplets.json").is_file()


def _ratios(out):
    from gtgen.overlap import load_scene
    from gtgen.visibility import VisibilityOptions, load_mesh, mesh_overlap, triangle_maps

    scene = load_scene(out / "sparse")
    mesh = load_mesh(out / "mesh.ply")
    maps = triangle_maps(scene.reconstruction, scene.image_ids, mesh, VisibilityOptions(resolution=160, progress=False))
    return scene.ct.toarray(), mesh_overlap(maps, len(mesh.faces))[1].toarray()


def test_orbit_neighbours_overlap_and_opposite_views_do_not(box_orbit):
    ct, mo = _ratios(box_orbit)
    for k in range(8):
        nxt, opposite = (k + 1) % 8, (k + 4) % 8
        # neighbours 45 degrees apart see the same two faces (k even) or share one of them (k odd)
        assert ct[k, nxt] >= (0.8 if k % 2 == 0 else 0.35)
        assert mo[k, nxt] >= (0.85 if k % 2 == 0 else 0.35)  # the grazing face loses a few triangles
        # 180 degrees apart: the other two faces, nothing in common
        assert ct[k, opposite] == 0
        assert mo[k, opposite] <= 0.02


def test_same_seed_same_scene_other_seed_other_scene(synthetic, boxes, tmp_path):
    out, result = boxes
    again = synthetic.synthesize_procedural("boxes", tmp_path / "a", _options(synthetic, seed=3))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(result.poses, again.poses))
    for name in result.names[:2]:
        assert (out / "images" / name).read_bytes() == (tmp_path / "a" / "images" / name).read_bytes()
    p, q = pycolmap.Reconstruction(out / "sparse"), pycolmap.Reconstruction(tmp_path / "a" / "sparse")
    assert p.num_points3D() == q.num_points3D()
    other = synthetic.synthesize_procedural("boxes", tmp_path / "b", _options(synthetic, seed=4, num_views=2))
    assert not np.allclose(other.poses[0][1], result.poses[0][1])


def test_aerial_looks_down_and_street_looks_sideways(synthetic):
    mesh = synthetic.procedural_mesh("boxes", seed=1)
    bounds = np.asarray(mesh.bounds)
    rng = np.random.default_rng(0)
    aerial = synthetic.camera_path(bounds, _options(synthetic, path="aerial", num_views=9, jitter=0.0), rng)
    assert len(aerial) == 9
    centres = np.array([-R.T @ t for R, t in aerial])
    assert all(R[2] @ [0, 0, 1] < -0.999 for R, _ in aerial)  # optical axis straight down
    assert (centres[:, 2] > bounds[1, 2]).all()  # above everything
    assert len(np.unique(np.round(centres[:, :2], 6), axis=0)) == 9  # a grid, no repeats
    street = synthetic.camera_path(bounds, _options(synthetic, path="street", num_views=5, jitter=0.0), rng)
    centres = np.array([-R.T @ t for R, t in street])
    assert all(abs(R[2] @ [0, 0, 1]) < 1e-9 for R, _ in street)  # horizontal
    assert np.ptp(centres[:, 2]) < 1e-9 and np.ptp(centres[:, 1]) < 1e-9  # a straight walk at one height
    assert all(R[2] @ [0, 1, 0] > 0.999 for R, _ in street)  # facing the scene, sideways


def test_textured_glb_input_and_stale_views(synthetic, tmp_path):
    glb = tmp_path / "box.glb"
    synthetic.procedural_mesh("box", seed=0).export(glb)
    out = tmp_path / "out"
    synthetic.synthesize_file(glb, out, _options(synthetic, num_views=4, num_points=500))
    with Image.open(out / "images" / "00000.jpg") as im:
        assert np.asarray(im).std() > 10
    synthetic.synthesize_file(glb, out, _options(synthetic, num_views=2, num_points=500))
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.jpg", "00001.jpg"]
    assert pycolmap.Reconstruction(out / "sparse").num_reg_images() == 2


def test_cli_procedural_and_errors(synthetic, tmp_path, capsys):
    code = main(
        [
            "synth",
            "--procedural",
            "box",
            "--out",
            str(tmp_path / "cli"),
            "--views",
            "3",
            "--size",
            "64x48",
            "--points",
            "200",
            "--path",
            "orbit",
            "--seed",
            "1",
        ]
    )
    assert code == 0 and "3 views" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "images").glob("*.jpg"))) == 3

    assert main(["synth", "--mesh", str(tmp_path / "missing.obj"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.obj" in capsys.readouterr().err
    cloud = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((10, 3))).export(cloud)
    assert main(["synth", "--mesh", str(cloud), "--out", str(tmp_path / "x")]) == 2
    assert "no triangles" in capsys.readouterr().err
    assert main(["synth", "--procedural", "box", "--out", str(tmp_path / "x"), "--elevations", "95"]) == 2
    assert "elevations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--procedural", "box", "--out", str(tmp_path / "x"), "--size", "big"])
