"""`gtgen mesh`: sparse points -> oriented normals -> Poisson -> trimmed surface near the truth, whose mesh
overlap agrees with the true mesh's; the dense path's CUDA guard; one-line errors."""

import numpy as np
import pycolmap
import pytest
import trimesh
from test_gtgen_scenes import require_offscreen_rendering

from gtgen import meshing
from gtgen.align import SurfaceDistance
from gtgen.cli import main
from gtgen.visibility import VisibilityOptions, element_ids, element_map, mesh_overlap, triangle_maps
from mirror_sfm.errors import MirrorError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    """A rendered boxes scene with its true COLMAP model (tracks checked against rendered depth) and mesh."""
    require_offscreen_rendering()
    from gtgen import synthetic

    out = tmp_path_factory.mktemp("mesh_boxes")
    synthetic.synthesize_procedural(
        "boxes",
        out,
        synthetic.SynthOptions(num_views=12, width=160, height=120, num_points=3000, seed=3, progress=False),
    )
    return out


@pytest.fixture(scope="module")
def meshed(boxes):
    out = boxes / "poisson.ply"
    assert main(["mesh", "--sparse", str(boxes / "sparse"), "--out", str(out), "--method", "sparse-poisson"]) == 0
    return trimesh.load(out, process=False)


def test_mesh_lies_on_the_true_surface(boxes, meshed):
    truth = trimesh.load(boxes / "mesh.ply", process=False)
    assert len(meshed.faces) > 1000
    _, d, _ = SurfaceDistance(truth, 50_000, 0).closest_points(np.asarray(meshed.triangles_center))
    size = float(np.linalg.norm(np.ptp(truth.vertices, axis=0)))  # ~30 units
    assert np.median(d) < 0.005 * size and np.percentile(d, 90) < 0.02 * size
    # no balloon: the trimmed surface stays within the scene's bounds (plus a margin)
    assert (meshed.bounds[0] > truth.bounds[0] - 0.05 * size).all() and (
        meshed.bounds[1] < truth.bounds[1] + 0.05 * size
    ).all()


def test_mesh_overlap_agrees_with_the_true_mesh(boxes, meshed):
    rec = pycolmap.Reconstruction(boxes / "sparse")
    truth = trimesh.load(boxes / "mesh.ply", process=False)
    ids = sorted(rec.reg_image_ids())
    opts = VisibilityOptions(resolution=64, progress=False, element_size=1.0)
    mo = []
    for m in (truth, meshed):  # both counted in the same 1-unit cells, so the two meshes' ratios compare
        elements = element_ids(m, opts.element_size)
        maps = [element_map(t, elements) for t in triangle_maps(rec, ids, m, opts)]
        mo.append(mesh_overlap(maps, int(elements.max()) + 1)[1].toarray())
    off = ~np.eye(len(ids), dtype=bool)
    assert np.corrcoef(mo[0][off], mo[1][off])[0, 1] > 0.9


def test_normals_face_the_cameras_and_trim_cuts_far_faces():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-1, 1, (400, 2))
    points = np.c_[xy, 0.01 * rng.standard_normal(400)]
    normals = meshing.estimate_normals(points, 12)
    assert np.abs(normals[:, 2]).min() > 0.9
    oriented = meshing.orient_normals(normals, np.tile([0.0, 0.3, -1.0], (400, 1)))  # cameras below
    assert (oriented[:, 2] < 0).all()
    plane = trimesh.creation.box((4.0, 4.0, 0.01))  # a 4x4 slab around the 2x2 patch of points
    plane = plane.subdivide().subdivide().subdivide().subdivide()
    spacing = meshing.point_spacing(points)
    trimmed, _ = meshing.trim_surface(plane, points, spacing, meshing.MeshingOptions())
    assert 0 < len(trimmed.faces) < len(plane.faces)
    assert np.abs(trimmed.vertices[:, :2]).max() < 1.0 + 4 * spacing


def test_dense_needs_cuda(boxes, monkeypatch, capsys):
    monkeypatch.setattr(pycolmap, "has_cuda", False, raising=False)
    assert meshing.resolve_method("auto") == "sparse-poisson"
    assert main(["mesh", "--sparse", str(boxes / "sparse"), "--out", str(boxes / "d.ply"), "--method", "dense"]) == 2
    assert "CUDA" in capsys.readouterr().err
    monkeypatch.setattr(pycolmap, "has_cuda", True, raising=False)
    assert meshing.resolve_method("auto") == "dense"
    with pytest.raises(MirrorError, match="--images"):
        meshing.mesh_from_reconstruction(
            pycolmap.Reconstruction(boxes / "sparse"), meshing.MeshingOptions(method="dense")
        )


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["mesh", "--sparse", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.ply")]) == 2
    assert "nothing" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    pycolmap.Reconstruction().write(empty)
    assert main(["mesh", "--sparse", str(empty), "--out", str(tmp_path / "m.ply")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gtgen: error: ") and "no registered images" in err
    nested = tmp_path / "nested"
    (nested / "0").mkdir(parents=True)
    pycolmap.Reconstruction().write(nested / "0")
    assert main(["mesh", "--sparse", str(nested), "--out", str(tmp_path / "m.ply")]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert not (tmp_path / "m.ply").exists()


def test_too_few_points_is_an_error():
    from test_gtgen_scenes import add_tracks, plane_scene

    rec = plane_scene([(0.0, 0.0, 5.0), (1.0, 0.0, 5.0), (2.0, 0.0, 5.0)], num_keypoints=5)
    add_tracks(rec, [1, 2, 3], 0, 5)
    with pytest.raises(MirrorError, match="pass the filters"):
        meshing.mesh_from_reconstruction(rec, meshing.MeshingOptions(method="sparse-poisson"))
