"""scripts/label_scenes.py: the synthetic part on 2 tiny scenes labels them (positives, masks, manifest) and resumes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from test_gtgen_scenes import require_offscreen_rendering

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_scenes.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("label_scenes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["label_scenes"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def label_scenes():
    require_offscreen_rendering()
    return _load_script()


def _run(module, root: Path) -> int:
    return module.main(
        [
            "--root",
            str(root),
            "--only",
            "synthetic",
            "--synthetic",
            "2",
            "--views",
            "8",
            "--size",
            "160x120",
            "--resolution",
            "96",
        ]
    )


def test_synthetic_scenes_get_positives_and_resume(label_scenes, tmp_path, capsys):
    assert _run(label_scenes, tmp_path) == 0
    scenes = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert scenes == ["synth_00_aerial", "synth_01_street"]
    for name in scenes:
        out = tmp_path / name
        manifest = json.loads((out / "triplets.json").read_text())
        assert Path(manifest["image_dir"]) == (out / "images").resolve()
        assert len(manifest["images"]) == 8
        assert any(a["strong"] for a in manifest["anchors"]) and any(a["weak"] for a in manifest["anchors"])
        first = next(a for a in manifest["anchors"] if a["strong"])["strong"][0]
        assert (out / first["mask"]).is_file() and (out / first["mask_other"]).is_file()
        for f in ("image_list.txt", "cameras.txt", "common_track.txt", "mesh_overlap.txt", "mask.bin"):
            assert (out / f).is_file() or (out / "geolabel" / f).is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["scene"] for r in summary] == scenes and all(r["pairs_co_ge_0.5"] > 0 for r in summary)
    assert "synth_00_aerial" in capsys.readouterr().out

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/triplets.json")}
    assert _run(label_scenes, tmp_path) == 0  # second run: both scenes skipped
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/triplets.json")} == stamps
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert all(r.get("resumed") for r in rows) and rows[0]["anchors"] == summary[0]["anchors"]


def test_synthetic_set_and_sparse_argument(label_scenes):
    specs = label_scenes.synthetic_specs()
    assert len(specs) >= 20 and len({s.seed for s in specs}) == len(specs)
    assert {s.path for s in specs} == {"aerial", "street", "orbit"}
    assert label_scenes.parse_args(["--sparse", "alexander=/x/sparse"]).sparse == [("alexander", Path("/x/sparse"))]
    with pytest.raises(SystemExit):
        label_scenes.parse_args(["--sparse", "alexander"])


def _write_model(folder: Path, num_images: int) -> None:
    import numpy as np

    from gtgen.synthetic import build_reconstruction

    poses = [(np.eye(3), np.array([float(k), 0.0, 5.0])) for k in range(num_images)]
    empty = [(np.zeros(0, np.int64), np.zeros((0, 2)))] * num_images
    folder.mkdir(parents=True)
    build_reconstruction(
        [f"{k}.jpg" for k in range(num_images)],
        poses,
        np.diag([100.0, 100.0, 1.0]),
        (64, 48),
        np.zeros((0, 3)),
        empty,
        np.zeros((0, 3), np.uint8),
    ).write(folder)


def test_sparse_model_choice(tmp_path):
    """--sparse first, then the scene's sparse/, then the benchmark's models; the largest numbered model wins."""
    module = _load_script()
    bench, scene_dir, given = tmp_path / "bench", tmp_path / "data" / "s", tmp_path / "mine"
    _write_model(bench / "s" / "exhaustive" / "sparse" / "0", 2)
    _write_model(bench / "s" / "exhaustive" / "sparse" / "1", 3)
    out = tmp_path / "labels" / "s"
    assert module.find_sparse("s", scene_dir, out, {}, bench, False) == (bench / "s/exhaustive/sparse/1", "benchmark")
    _write_model(scene_dir / "sparse" / "0", 2)
    assert module.find_sparse("s", scene_dir, out, {}, bench, False) == (scene_dir / "sparse" / "0", "scene")
    _write_model(given, 2)
    assert module.find_sparse("s", scene_dir, out, {"s": given}, bench, False) == (given, "given")
    with pytest.raises(module.MirrorError):
        module.find_sparse("s", scene_dir, out, {"s": tmp_path / "nothing"}, bench, False)


def test_global_mapping_fallback_and_resume(tmp_path, monkeypatch):
    """Incremental mapping under half the images -> global mapping on the same SIFT; the larger model is used and
    neither is run again on resume; a good incremental model is used as it is."""
    import mirror_sfm.colmap

    module = _load_script()
    calls = []
    registered = {"incremental": 2, "global": 29}

    def fake_reconstruct(image_dir, out_dir, options):
        calls.append((options.mapper, options.database_template))
        _write_model(out_dir / "sparse" / "0", 2)
        stats = {"images": 29, "registered": registered[options.mapper], "model": "sparse/0", "mapper": options.mapper}
        (out_dir / "stats.json").write_text(json.dumps(stats))
        return stats

    monkeypatch.setattr(mirror_sfm.colmap, "reconstruct", fake_reconstruct)
    scene_dir, out = tmp_path / "data" / "street", tmp_path / "labels" / "street"
    model, source = module.find_sparse("street", scene_dir, out, {}, None, False)
    assert (model, source) == (out / "reconstruction-global" / "sparse" / "0", "reconstructed")
    assert calls == [("incremental", None), ("global", out / "reconstruction" / "database.db")]
    assert module.reconstruction_stats(out)["recon_mapper"] == "global"
    assert module.find_sparse("street", scene_dir, out, {}, None, False)[0] == model and len(calls) == 2  # resumed

    registered["incremental"] = 20  # over half: no fallback
    calls.clear()
    other = tmp_path / "labels" / "house"
    assert module.find_sparse("house", scene_dir, other, {}, None, False)[0] == other / "reconstruction/sparse/0"
    assert calls == [("incremental", None)] and not (other / "reconstruction-global").exists()
