"""`gtgen align`: a mesh moved by a known similarity is brought back exactly onto sparse points sampled from it;
poor fits and bad inputs are refused with one clear line."""

import json

import numpy as np
import pycolmap
import pytest
import trimesh
from scipy.spatial.transform import Rotation
from test_gtgen_scenes import make_reconstruction

from gtgen import align, synthetic
from gtgen.cli import main
from mirror_sfm.errors import MirrorError

SCALE, ROTATION, TRANSLATION = 3.7, Rotation.random(random_state=3).as_matrix(), np.array([5.0, -2.0, 10.0])
FAST = dict(num_samples=50_000, progress=False)


def _scene(mesh, num_points=800, seed=5):
    """Reconstruction in the frame x_rec = s R x_mesh + t: orbit cameras and points sampled on the mesh,
    each seen by three images."""
    rng = np.random.default_rng(1)
    poses = synthetic.camera_path(np.asarray(mesh.bounds), synthetic.SynthOptions(num_views=8, jitter=0.0), rng)
    poses = [(Rc @ ROTATION.T, SCALE * tc - Rc @ ROTATION.T @ TRANSLATION) for Rc, tc in poses]
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    rec = make_reconstruction(
        [("PINHOLE", [512.0, 512.0, 320.0, 240.0], 640, 480)] * len(poses), poses, num_keypoints=num_points
    )
    for k, p in enumerate(points):
        track = pycolmap.Track()
        for image_id in (1, 2, 3):
            track.add_element(image_id, k)
        rec.add_point3D(SCALE * ROTATION @ p + TRANSLATION, track)
    return rec


@pytest.fixture(scope="module")
def boxes_mesh():
    m = synthetic.procedural_mesh("boxes", seed=2)
    return trimesh.Trimesh(m.vertices, m.faces, process=False)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((50, 3))
    dst = SCALE * src @ ROTATION.T + TRANSLATION
    sim = align.umeyama(src, dst)
    assert (
        sim.scale == pytest.approx(SCALE)
        and np.allclose(sim.rotation, ROTATION)
        and np.allclose(sim.translation, TRANSLATION)
    )
    assert np.allclose(sim.inverse_apply(sim.apply(src)), src)


def test_recovers_the_known_transform(boxes_mesh):
    rec = _scene(boxes_mesh)
    aligned, report = align.align_mesh_to_reconstruction(boxes_mesh, rec, align.AlignOptions(**FAST))
    sim = report.similarity
    assert sim.scale == pytest.approx(SCALE, rel=1e-6)
    assert np.degrees(Rotation.from_matrix(sim.rotation @ ROTATION.T).magnitude()) < 1e-4
    assert np.allclose(sim.translation, TRANSLATION, atol=1e-5)
    assert report.inlier_fraction > 0.99 and report.median_distance < 1e-6 * report.scene_scale
    assert report.cameras_seeing_mesh == report.cameras == 8
    assert np.allclose(aligned.vertices, sim.apply(boxes_mesh.vertices))


def test_noisy_partial_points_and_outliers(boxes_mesh):
    """Points on part of the scene, with noise and 20% background outliers: still close to the truth."""
    rec = _scene(boxes_mesh, num_points=1000)
    rng = np.random.default_rng(2)
    for pid in list(rec.points3D):
        p = rec.point3D(pid)
        local = (p.xyz - TRANSLATION) @ ROTATION / SCALE
        if local[0] < -4:  # a strip of the scene was never reconstructed
            rec.delete_point3D(pid)
        elif rng.random() < 0.2:  # background clutter, far from the mesh
            p.xyz = p.xyz + rng.uniform(-1, 1, 3) * SCALE * 6
        else:
            p.xyz = p.xyz + rng.normal(0, 0.01 * SCALE, 3)
    _, report = align.align_mesh_to_reconstruction(boxes_mesh, rec, align.AlignOptions(**FAST))
    sim = report.similarity
    assert sim.scale == pytest.approx(SCALE, rel=0.01)
    assert np.degrees(Rotation.from_matrix(sim.rotation @ ROTATION.T).magnitude()) < 0.5
    assert 0.6 < report.inlier_fraction < 0.95


def test_cli_writes_mesh_and_transform(boxes_mesh, tmp_path, capsys):
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    _scene(boxes_mesh, num_points=600).write(sparse)
    src = tmp_path / "own_frame.ply"
    boxes_mesh.export(src)
    out, t_json = tmp_path / "aligned.ply", tmp_path / "T.json"
    assert (
        main(
            [
                "align",
                "--mesh",
                str(src),
                "--sparse",
                str(sparse),
                "--out",
                str(out),
                "--transform-out",
                str(t_json),
                "--samples",
                "50000",
            ]
        )
        == 0
    )
    assert "scale 3.7" in capsys.readouterr().out
    info = json.loads(t_json.read_text())
    assert info["similarity"]["scale"] == pytest.approx(SCALE) and "x_reconstruction" in info["convention"]
    assert np.allclose(np.array(info["similarity"]["matrix"])[:3, :3], SCALE * ROTATION, atol=1e-5)
    moved = trimesh.load(out, process=False)
    assert len(moved.faces) == len(boxes_mesh.faces)
    assert np.allclose(moved.vertices, SCALE * boxes_mesh.vertices @ ROTATION.T + TRANSLATION, atol=1e-4)


def test_textured_obj_keeps_its_texture(tmp_path):
    mesh = synthetic.procedural_mesh("box", seed=0)
    sim = align.Similarity(2.0, ROTATION, TRANSLATION)
    moved = mesh.copy()
    moved.apply_transform(sim.matrix)
    align.write_mesh(moved, tmp_path / "out" / "box.obj")
    back = align.load_mesh_keep_visuals(tmp_path / "out" / "box.obj")
    assert back.visual.kind == "texture" and len(back.visual.uv) == len(back.vertices)
    assert np.allclose(np.sort(back.vertices, axis=0), np.sort(sim.apply(mesh.vertices), axis=0), atol=1e-5)


def test_wrong_mesh_is_refused(boxes_mesh, capsys, tmp_path):
    rec = _scene(boxes_mesh, num_points=600)
    sphere = trimesh.creation.icosphere(3)
    with pytest.raises(MirrorError, match="does not fit"):
        align.align_mesh_to_reconstruction(sphere, rec, align.AlignOptions(**FAST, random_starts=8))


def test_errors(boxes_mesh, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    pycolmap.Reconstruction().write(empty)
    src = tmp_path / "m.ply"
    boxes_mesh.export(src)
    assert main(["align", "--mesh", str(src), "--sparse", str(empty), "--out", str(tmp_path / "o.ply")]) == 2
    assert "no registered images" in capsys.readouterr().err
    assert (
        main(["align", "--mesh", str(tmp_path / "none.obj"), "--sparse", str(empty), "--out", str(tmp_path / "o.ply")])
        == 2
    )
    err = capsys.readouterr().err
    assert "none.obj" in err and "not found" in err
    no_points = make_reconstruction([("PINHOLE", [100.0, 100.0, 50.0, 50.0], 100, 100)], [(np.eye(3), np.zeros(3))])
    with pytest.raises(MirrorError, match="no 3D points"):
        align.align_mesh_to_reconstruction(boxes_mesh, no_points, align.AlignOptions(**FAST))
    assert not (tmp_path / "o.ply").exists()
