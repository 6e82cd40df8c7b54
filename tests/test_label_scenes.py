"""scripts/label_scenes.py: the synthetic part on 2 tiny scenes labels them (positives, masks, manifest) and resumes."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from test_gtgen_scenes import require_offscreen_rendering

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_scenes.py"


@pytest.fixture(scope="module")
def label_scenes():
    require_offscreen_rendering()
    spec = importlib.util.spec_from_file_location("label_scenes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["label_scenes"] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _run(module, root: Path) -> int:
    return module.main(["--root", str(root), "--only", "synthetic", "--synthetic", "2", "--views", "8",
                        "--size", "160x120", "--resolution", "96"])


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
    assert _run(label_scenes, tmp_path) == 0                    # second run: both scenes skipped
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
