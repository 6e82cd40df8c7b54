"""`gtgen overlap` / `gtgen triplets` end to end on a generated scene, and one-line errors that name the file."""

import json
import subprocess
import sys

import numpy as np
import pycolmap
import pytest
import trimesh
from test_gtgen_scenes import add_tracks, footprint, plane_mesh, plane_scene, rect_overlap

from gtgen import gl3d
from gtgen.cli import main
from gtgen.masks import read_mask_png

# A-B overlap 0.7 (strong), A-C 0.12 (weak), B-C 0.42 (neither), D sees no common surface but shares
# all its tracks with B (CT -> CO = 1, strong). Names are not in id order: output order is by name.
CENTRES = {"a.jpg": (0.0, 0.0, 5.0), "b.jpg": (3.0, 0.0, 5.0), "c.jpg": (8.8, 0.0, 5.0), "d.jpg": (-12.0, -12.0, 2.0)}
ID_ORDER = ["d.jpg", "b.jpg", "a.jpg", "c.jpg"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    rec = plane_scene([CENTRES[n] for n in ID_ORDER], names=ID_ORDER, num_keypoints=10)
    ids = {n: k + 1 for k, n in enumerate(ID_ORDER)}
    add_tracks(rec, [ids["b.jpg"], ids["d.jpg"]], 0, 5)  # B and D share 5 tracks
    add_tracks(rec, [ids["b.jpg"], ids["a.jpg"]], 5, 1)  # A and B share 1 of B's 6 (A's only one)
    sparse = root / "sparse"
    sparse.mkdir()
    rec.write(sparse)
    mesh = root / "plane.ply"
    plane_mesh().export(mesh)
    return root, sparse, mesh


@pytest.fixture(scope="module")
def run(scene):
    root, sparse, mesh = scene
    out = root / "out"
    assert main(["overlap", "--sparse", str(sparse), "--mesh", str(mesh), "--out", str(out), "--png-size", "6x8"]) == 0
    return out


def test_overlap_writes_every_file(run):
    out = run
    names = sorted(CENTRES)
    assert gl3d.read_image_list(out / "image_list.txt") == names
    for f in ("cameras.txt", "common_track.txt", "mesh_overlap.txt", "mask.bin"):
        assert (out / "geolabel" / f).is_file(), f
    cams = gl3d.read_cameras(out / "geolabel" / "cameras.txt")
    assert [c.idx for c in cams] == [0, 1, 2, 3]
    for c, n in zip(cams, names):  # camera centre -R^T t is where we put image n
        assert np.allclose(-c.R.T @ c.t, CENTRES[n]) and (c.fx, c.width) == (100.0, 200)
    assert (out / "triplets.json").is_file() and any((out / "cache" / "triangles").glob("*.npz"))


def test_overlap_ratios_and_tracks(run):
    mo = gl3d.read_ratios(run / "geolabel" / "mesh_overlap.txt", 4).toarray()
    ct = gl3d.read_ratios(run / "geolabel" / "common_track.txt", 4).toarray()
    a, b, c, d = 0, 1, 2, 3
    fp = {n: footprint(CENTRES[n]) for n in CENTRES}
    assert mo[a, b] == pytest.approx(rect_overlap(fp["a.jpg"], fp["b.jpg"]), abs=0.03)
    assert mo[a, c] == pytest.approx(rect_overlap(fp["a.jpg"], fp["c.jpg"]), abs=0.03)
    assert mo[d].sum() == 0 and mo[:, d].sum() == 0
    assert ct[b, d] == pytest.approx(5 / 6) and ct[d, b] == pytest.approx(1.0) and ct[a, b] == pytest.approx(1.0)
    masks = gl3d.read_mask_bin(run / "geolabel" / "mask.bin")
    assert sorted(masks) == [(a, b), (a, c), (b, c)]
    mask_a, mask_c = masks[(a, c)]
    assert mask_a[:, -1].all() and not mask_a[:, 0].any() and mask_c[:, 0].all() and not mask_c[:, -1].any()


def test_manifest_lists_positives_with_masks(run):
    m = json.loads((run / "triplets.json").read_text())
    assert m["images"] == sorted(CENTRES) and m["thresholds"]["t_sfm"] == 0.2
    by = {x["name"]: x for x in m["anchors"]}
    assert [e["j"] for e in by["a.jpg"]["strong"]] == [1] and [e["j"] for e in by["a.jpg"]["weak"]] == [2]
    # B-D: CT = (5/6, 1) -> CO = 1; B-A: CT = (1/6, 1), symmetric 0.41 >= t_sfm -> CO = 1; ties by index
    assert [(e["j"], e["co"]) for e in by["b.jpg"]["strong"]] == [(0, 1.0), (3, 1.0)]
    assert by["c.jpg"]["strong"] == [] and [e["j"] for e in by["c.jpg"]["weak"]] == [0]
    assert [e["j"] for e in by["d.jpg"]["strong"]] == [1]
    entry = by["a.jpg"]["weak"][0]
    png = read_mask_png(run / entry["mask"])
    assert png.shape == (6, 8) and png[:, -1].all() and not png[:, 0].any()
    assert read_mask_png(run / entry["mask_other"])[:, 0].all()
    assert m["masks"]["bin"] == "geolabel/mask.bin" and m["masks"]["png_size"] == [6, 8]
    assert len(list((run / "masks").glob("*.png"))) == 2 * 3  # pairs a-b, a-c, b-d, both directions


def test_rerun_resumes_from_cache_with_identical_outputs(scene, run, tmp_path):
    root, sparse, mesh = scene
    before = {p.name: p.read_bytes() for p in (run / "geolabel").iterdir()}
    cache = sorted((run / "cache" / "triangles").glob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in cache]
    assert main(["overlap", "--sparse", str(sparse), "--mesh", str(mesh), "--out", str(run), "--png-size", "6x8"]) == 0
    assert [p.stat().st_mtime_ns for p in cache] == stamps
    assert {p.name: p.read_bytes() for p in (run / "geolabel").iterdir()} == before


def test_gl3d_folder_as_input(run, scene, tmp_path):
    """Our own output is a GL3D scene: feeding it back gives the same mesh overlap and tracks."""
    _, _, mesh = scene
    out = tmp_path / "again"
    assert main(["overlap", "--sparse", str(run), "--mesh", str(mesh), "--out", str(out), "--no-pngs"]) == 0
    for f in ("common_track.txt", "cameras.txt", "image_list.txt"):
        src = run / ("geolabel" if f != "image_list.txt" else "") / f
        dst = out / ("geolabel" if f != "image_list.txt" else "") / f
        assert dst.read_text() == src.read_text(), f
    a = gl3d.read_ratios(run / "geolabel" / "mesh_overlap.txt", 4).toarray()
    b = gl3d.read_ratios(out / "geolabel" / "mesh_overlap.txt", 4).toarray()
    assert np.allclose(a, b, atol=0.01)


def test_triplets_subcommand_retunes_thresholds(run, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["triplets", str(run), "-o", str(out), "--strong", "0.4", "1"]) == 0
    m = json.loads(out.read_text())
    by = {x["name"]: x for x in m["anchors"]}
    assert 2 in [e["j"] for e in by["b.jpg"]["strong"]]  # B-C (0.42) is now strong
    e = by["a.jpg"]["strong"][0]
    assert (out.parent / e["mask"]).resolve() == (run / "masks" / "000000_000001.png").resolve()
    assert m["masks"]["bin"] is not None and (out.parent / m["masks"]["bin"]).is_file()


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gtgen: error: ")
    return err[-1]


def test_missing_inputs_name_the_file(scene, tmp_path, capsys):
    root, sparse, mesh = scene
    msg = _error(
        capsys, ["overlap", "--sparse", str(sparse), "--mesh", str(tmp_path / "none.ply"), "--out", str(tmp_path / "o")]
    )
    assert "none.ply" in msg and "not found" in msg
    msg = _error(
        capsys, ["overlap", "--sparse", str(tmp_path / "nosparse"), "--mesh", str(mesh), "--out", str(tmp_path / "o")]
    )
    assert "nosparse" in msg
    nested = tmp_path / "nested"
    (nested / "0").mkdir(parents=True)
    pycolmap.Reconstruction(sparse).write(nested / "0")
    msg = _error(capsys, ["overlap", "--sparse", str(nested), "--mesh", str(mesh), "--out", str(tmp_path / "o")])
    assert "did you mean" in msg and str(nested / "0") in msg
    bad = tmp_path / "bad.ply"
    bad.write_text("not a mesh")
    msg = _error(capsys, ["overlap", "--sparse", str(sparse), "--mesh", str(bad), "--out", str(tmp_path / "o")])
    assert "bad.ply" in msg
    msg = _error(capsys, ["triplets", str(tmp_path)])
    assert "mesh_overlap.txt" in msg


def test_empty_reconstruction_and_unseen_mesh(scene, tmp_path, capsys):
    root, sparse, mesh = scene
    empty = tmp_path / "empty"
    empty.mkdir()
    pycolmap.Reconstruction().write(empty)
    msg = _error(capsys, ["overlap", "--sparse", str(empty), "--mesh", str(mesh), "--out", str(tmp_path / "o")])
    assert "no registered images" in msg and str(empty) in msg
    far = tmp_path / "far.ply"
    m = plane_mesh(half=2.0, cell=1.0)
    trimesh.Trimesh(m.vertices + [0, 0, 1000.0], m.faces, process=False).export(far)
    msg = _error(capsys, ["overlap", "--sparse", str(sparse), "--mesh", str(far), "--out", str(tmp_path / "o")])
    assert "no camera sees any triangle" in msg
    assert not (tmp_path / "o" / "geolabel").exists()


def test_module_entry_point_help():
    res = subprocess.run(
        [sys.executable, "-m", "gtgen", "overlap", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "--sparse" in res.stdout and "--mask-size" in res.stdout


def test_mesh_seen_by_few_cameras_is_refused(scene, tmp_path, capsys):
    """A patch only c.jpg sees (x in [10.5, 12.5]: a's, b's and d's footprints end before): 1 of 4 cameras."""
    root, sparse, _ = scene
    patch = tmp_path / "patch.ply"
    m = plane_mesh(half=1.0, cell=0.5)
    trimesh.Trimesh(m.vertices + [11.5, 0, 0], m.faces, process=False).export(patch)
    out = tmp_path / "o"
    args = ["overlap", "--sparse", str(sparse), "--mesh", str(patch), "--out", str(out), "--no-cache"]
    msg = _error(capsys, args)
    assert f"mesh {patch} is seen by 1 of 4 cameras (25%)" in msg and "--min-visible-fraction 0 to accept" in msg
    assert not (out / "geolabel").exists()
    assert main(args + ["--min-visible-fraction", "0"]) == 0  # accepted on request
    assert (out / "geolabel" / "mesh_overlap.txt").is_file()
    assert main(args + ["--min-visible-fraction", "0.2"]) == 0


def test_unwritable_outputs_stop_before_any_work(scene, run, tmp_path, capsys):
    root, sparse, mesh = scene
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    msg = _error(capsys, ["overlap", "--sparse", str(sparse), "--mesh", str(mesh), "--out", str(blocker)])
    assert str(blocker) in msg and "is a file, not a folder" in msg
    msg = _error(capsys, ["mesh", "--sparse", str(sparse), "--out", str(tmp_path)])
    assert str(tmp_path) in msg and "is an existing folder" in msg
    msg = _error(capsys, ["triplets", str(run), "-o", str(tmp_path)])
    assert "is an existing folder" in msg
