"""benchmarks/sfm_comparison.py (1DSfM table) and benchmarks/overlap_map.py (overlap mAP) on tiny inputs (CPU)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from mirror_sfm.errors import MirrorError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
FIXTURE = Path(__file__).parent / "fixtures" / "mary_rose" / "images"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sfm = _load("sfm_comparison")
omap = _load("overlap_map")


# ------------------------------------------------------------------------------------------ sfm_comparison


def test_parse_methods():
    p = lambda name: sfm.parse_method(name, 20, 10)  # noqa: E731
    assert p("exhaustive") == sfm.Method("exhaustive", "exhaustive")
    assert p("retrieval@5") == sfm.Method("retrieval@5", "retrieval", 5)
    assert p("retrieval-imagenet@20") == sfm.Method("retrieval-imagenet@20", "retrieval", 20, "imagenet")
    assert p("retrieval-verified@5") == sfm.Method("retrieval-verified@5", "retrieval-verified", 5)
    assert p("vocabtree").k == 20 and p("vocabtree-sv@30").k == 30 and p("sequential").k == 10
    m = p("retrieval@match-vocabtree-sv")
    assert m.kind == "retrieval" and m.match == "vocabtree-sv" and m.k is None
    for bad in (
        "nearest",
        "retrieval@x",
        "exhaustive@3",
        "sequential@match-vocabtree",
        "retrieval@match-exhaustive",
        "retrieval@0",
        "retrieval-verified@match-vocabtree",
    ):
        with pytest.raises(MirrorError):
            p(bad)


def test_match_target_resolved_and_run_first():
    args = sfm.parse_args(["x", "--out", "y", "--methods", "retrieval@match-vocabtree", "vocabtree@20", "exhaustive"])
    order = sfm.resolve_methods(args.methods, args)
    assert [m.name for m in order] == ["vocabtree@20", "retrieval@match-vocabtree", "exhaustive"]
    assert order[1].match == "vocabtree@20"  # the listed method with the same meaning, not a second run
    args = sfm.parse_args(["x", "--out", "y", "--methods", "retrieval@match-vocabtree-sv"])
    assert [m.name for m in sfm.resolve_methods(args.methods, args)] == ["vocabtree-sv", "retrieval@match-vocabtree-sv"]


def test_k_for_a_pair_count():
    ranked = {"a": ["b", "c", "d"], "b": ["a", "c", "d"], "c": ["d", "a", "b"], "d": ["c", "b", "a"]}
    # k=1: ab, cd -> 2; k=2: + ac, bc, bd -> 5; k=3: + ad -> 6
    counts = sfm.pair_count_by_k(ranked, 3)
    assert counts == [2, 5, 6]
    assert sfm.closest_k(counts, 4) == 2 and sfm.closest_k(counts, 100) == 3
    assert sfm.closest_k([2, 4], 3) == 1  # a tie goes to the smaller K


def test_1dsfm_layout(tmp_path):
    images = tmp_path / "scene" / "images"
    images.mkdir(parents=True)
    for src in sorted(FIXTURE.iterdir())[:3]:
        shutil.copy(src, images / src.name)
    names = sorted(p.name for p in images.iterdir())
    (tmp_path / "scene" / "list.txt").write_text(
        f"images/{names[2]} 0 1200.5\nimages/{names[0]}\nimages/missing.jpg\n\n"
    )
    image_dir, listed = sfm.dataset_images(tmp_path / "scene")
    assert image_dir == images and listed == [names[2], names[0]]
    (tmp_path / "scene" / "list.txt").unlink()
    assert sfm.dataset_images(tmp_path / "scene") == (images, None)
    assert sfm.dataset_images(images) == (images, None)  # a plain folder
    with pytest.raises(MirrorError, match="not found"):
        sfm.dataset_images(tmp_path / "nowhere")


def test_sfm_comparison_end_to_end(tmp_path, caplog):
    out = tmp_path / "out"
    argv = [
        str(FIXTURE),
        "--out",
        str(out),
        "--methods",
        "exhaustive",
        "retrieval@5",
        "--max-num-features",
        "1024",
        "--max-image-size",
        "800",
        "--weights",
        "imagenet",
    ]
    assert sfm.main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in records] == ["exhaustive", "retrieval@5"]
    exh, ret = records
    for r in records:
        assert r["images"] == 12 and r["registered"] >= 10
        assert r["sparse_points"] > 100 and r["observations"] > r["sparse_points"]
        assert r["mean_track_length"] > 2 and r["mean_reprojection_error"] > 0
        assert set(r["time_s"]) >= {"pairs", "matching", "mapping", "total"} and r["sift_shared_s"] > 0
        assert r["features_reused"]  # SIFT came from the shared database
    assert exh["pairs_to_match"] == 66 and 0 < ret["pairs_to_match"] < 66 and ret["num_matched"] == 5
    assert ret["weights"] == "imagenet" and ret["time_s"]["pairs"] > 0
    table = (out / "results.md").read_text()
    assert "| exhaustive |" in table and "| retrieval@5 | 5 | 12 |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "methods" / "exhaustive" / "database.db").exists()  # copies dropped unless --keep-databases

    # resume: both records are kept, nothing runs again
    stamp = (out / "methods" / "exhaustive" / "stats.json").stat().st_mtime_ns
    assert sfm.main(argv) == 0
    assert (out / "methods" / "exhaustive" / "stats.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text()) == records


def test_sfm_comparison_verified_retrieval_with_repeats(tmp_path):
    out = tmp_path / "out"
    argv = [
        str(FIXTURE),
        "--out",
        str(out),
        "--methods",
        "retrieval-verified@3",
        "--repeats",
        "2",
        "--verify-shortlist",
        "6",
        "--max-num-features",
        "1024",
        "--max-image-size",
        "800",
        "--weights",
        "imagenet",
    ]
    assert sfm.main(argv) == 0
    (rec,) = json.loads((out / "results.json").read_text())
    assert rec["verify_shortlist"] == 6 and rec["num_matched"] == 3 and 0 < rec["pairs_to_match"] <= 36
    assert [r["seed"] for r in rec["repeats"]] == [0, 1]
    assert rec["registered_min"] <= rec["registered"] <= rec["registered_max"] and rec["registered_max"] >= 10
    assert "over 2 seeds" in (out / "results.md").read_text()
    scores = (out / "methods" / "retrieval-verified@3" / "pairs-retrieval.txt").read_text().splitlines()
    assert len(scores) == 36

    # stopped before its record was written: the finished seed is kept, not mapped again
    row = out / "methods" / "retrieval-verified@3" / "repeat-1" / "row.json"
    stamp = row.stat().st_mtime_ns
    (out / "results.json").unlink()
    assert sfm.main(argv) == 0
    (again,) = json.loads((out / "results.json").read_text())
    assert row.stat().st_mtime_ns == stamp and again["repeats"][1] == rec["repeats"][1]
    assert again["pairs_to_match"] == rec["pairs_to_match"]
    saved = json.loads(row.read_text())
    saved["matches"]["verified_pairs"] += 1000  # a row mapped from other matches is mapped again
    row.write_text(json.dumps(saved))
    (out / "results.json").unlink()
    assert sfm.main(argv) == 0
    assert json.loads(row.read_text())["matches"] == {k: again[k] for k in ("pairs_to_match", "verified_pairs")}
    stamp = row.stat().st_mtime_ns
    assert sfm.main([*argv, "--force"]) == 0  # --force maps every seed again
    assert row.stat().st_mtime_ns != stamp


def test_summarize_sfm_comparison(tmp_path, capsys):
    summ = _load("summarize_sfm_comparison")

    def rec(method, pairs, points, total):
        return {
            "method": method,
            "registered": 9,
            "images": 10,
            "registered_any_model": 10,
            "num_models": 2,
            "pairs_to_match": pairs,
            "verified_pairs": pairs // 2,
            "sparse_points": points,
            "time_s": {"total": total + 0.5},
            "method_s": total,
        }

    scene = tmp_path / "scene"
    scene.mkdir()
    old = rec("vocabtree", 20, 900, 30.0)
    del old["registered_any_model"]  # a record from before the field: no models saved -> "–"
    (scene / "results.json").write_text(
        json.dumps(
            [
                rec("exhaustive", 40, 1000, 80.0),
                rec("retrieval@5", 10, 950, 20.0),
                old,
                {"method": "sequential", "error": "boom"},
            ]
        )
    )
    assert summ.main([str(scene), str(tmp_path / "missing")]) == 0
    out = capsys.readouterr()
    assert "| scene | retrieval@5 | 9 / 10 | 10 | 2 | 10 | 5 | 950 | 20.0 | 0.25 | 0.95 | 0.25 |" in out.out
    assert "| scene | vocabtree | 9 / 10 | – | 2 |" in out.out and "| scene | sequential | failed: boom |" in out.out
    assert "skipped" in out.err and "missing" in out.err
    assert summ.main([str(tmp_path / "missing")]) == 2
    assert "mean vs exhaustive" not in out.out  # no table of seeds without --repeats

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    exh, ver = rec("exhaustive", 40, 1000, 80.0), rec("retrieval-verified@5", 10, 950, 20.0)
    exh["repeats"] = [{"seed": s, "registered": n} for s, n in enumerate((10, 10, 10))]
    ver["repeats"] = [{"seed": s, "registered": n} for s, n in enumerate((8, 9, 10))]
    (seeds / "results.json").write_text(json.dumps([exh, ver]))
    assert summ.main([str(seeds)]) == 0
    out = capsys.readouterr().out
    assert "| seeds | exhaustive | 3 | 10 / 10 / 10 | 10.0 | 10–10 | – |" in out
    assert "| seeds | retrieval-verified@5 | 3 | 8 / 9 / 10 | 9.0 | 8–10 | 0.900 [0.8" in out
    mean, lo, hi = summ.ratio_interval([8, 9, 10], [10, 10, 10])
    assert mean == pytest.approx(0.9) and 0.8 <= lo < 0.9 < hi <= 1.0


def test_sfm_comparison_needs_a_vocab_tree(tmp_path, capsys):
    argv = [str(FIXTURE), "--out", str(tmp_path / "out"), "--methods", "vocabtree", "--vocab-images", str(FIXTURE)]
    args = sfm.parse_args(argv)
    with pytest.raises(MirrorError, match="overlaps the evaluated scene"):
        sfm.vocab_tree(FIXTURE, tmp_path / "out", args)
    assert sfm.main([str(tmp_path / "empty-missing"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ overlap_map

NAMES = sorted(p.name for p in FIXTURE.iterdir())[:4]
A, B, C, D = NAMES


def write_gt(folder: Path) -> Path:
    """4 images, GL3D layout. Symmetric ratios: CT(a,b)=0.5 -> CO 1; MO(a,c)=0.6; MO(a,d)=0.3; MO(b,c)=0.1;
    CT(c,d)=0.1 (< t_sfm) with MO(c,d)=0.7. Positives at CO >= 0.5: a-b, a-c, c-d."""
    geo = folder / "geolabel"
    geo.mkdir(parents=True)
    (folder / "image_list.txt").write_text("".join(n + "\n" for n in NAMES))

    def both(pairs):
        return "".join(f"{i} {j} {r}\n{j} {i} {r}\n" for i, j, r in pairs)

    (geo / "common_track.txt").write_text(both([(0, 1, 0.5), (2, 3, 0.1)]))
    (geo / "mesh_overlap.txt").write_text(both([(0, 1, 0.4), (0, 2, 0.6), (0, 3, 0.3), (1, 2, 0.1), (2, 3, 0.7)]))
    return folder


def test_gt_positives(tmp_path):
    gt = omap.load_gt(write_gt(tmp_path / "s"), omap.LabelOptions())
    assert gt.positives == {A: {B, C}, B: {A}, C: {A, D}, D: {C}}
    ct = omap.load_gt(tmp_path / "s", omap.LabelOptions(label="ct"))
    assert ct.positives == {A: {B}, B: {A}, C: set(), D: set()}


def test_overlap_map_scores_a_pair_file(tmp_path):
    gt = write_gt(tmp_path / "scene")
    pairs = tmp_path / "pairs.txt"
    # a: c d b (rel at 1, 3); b: a; c: b a (rel at 2; d never found); d: none; plus a name outside the GT
    pairs.write_text(f"{A} {C}\n{A} {D}\n{A} {B}\n{B} {A}\n{C} {B}\n{C} {A}\n{A} unknown.jpg\n")
    out = tmp_path / "out"
    argv = ["--gt", str(gt), "--pairs", str(pairs), "--out", str(out), "--k", "3", "--images", str(FIXTURE)]
    assert omap.main(argv) == 0
    res = json.loads((out / "overlap_map.json").read_text())
    assert "time_s" not in res  # a pair file was scored: nothing was run here
    ap_k = [(1 + 2 / 3) / 2, 1.0, 0.5 / 2, 0.0]
    ap_m = [0.5 * (1 + 1) / 2 + 0.5 * (0.5 + 2 / 3) / 2, 1.0, 0.5 * (0 + 0.5) / 2, 0.0]
    scene = res["scenes"]["scene"]
    assert scene["num_queries"] == 4 and scene["num_empty_gt"] == 0 and scene["num_images"] == 4
    assert scene["map"]["3"]["ap_at_k"] == pytest.approx(sum(ap_k) / 4)
    assert scene["map"]["3"]["mirror"] == pytest.approx(sum(ap_m) / 4)
    assert res["overall"]["map"]["3"] == scene["map"]["3"]
    assert "| scene | 4 | 4 | 0 |" in (out / "overlap_map.md").read_text()
    for png in ("pr.png", "topk.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # CT-only positives: a-b alone; c and d have empty GT and are left out
    assert omap.main(argv + ["--label", "ct", "--out", str(tmp_path / "ct")]) == 0
    ct = json.loads((tmp_path / "ct" / "overlap_map.json").read_text())["scenes"]["scene"]
    assert ct["num_queries"] == 2 and ct["num_empty_gt"] == 2
    assert ct["map"]["3"]["ap_at_k"] == pytest.approx((1 / 3 + 1) / 2)


def test_overlap_map_pooled(tmp_path):
    s1, s2 = write_gt(tmp_path / "s1"), write_gt(tmp_path / "s2")
    pairs = tmp_path / "pooled.txt"
    # s1/a: s2/b (another scene: never positive), s1/b, s1/c -> AP@3 = (1/2 + 2/3) / 2; nothing else ranked
    pairs.write_text(f"s1/{A} s2/{B}\ns1/{A} s1/{B}\ns1/{A} s1/{C}\n")
    out = tmp_path / "out"
    assert (
        omap.main(
            [
                "--gt",
                str(s1),
                str(s2),
                "--pooled",
                "--pairs",
                str(pairs),
                "--out",
                str(out),
                "--k",
                "3",
                "--grid-queries",
                "0",
            ]
        )
        == 0
    )
    res = json.loads((out / "overlap_map.json").read_text())
    assert res["pooled"] and res["num_images"] == 8
    assert res["scenes"]["s1"]["map"]["3"]["ap_at_k"] == pytest.approx((1 / 2 + 2 / 3) / 2 / 4)
    assert res["scenes"]["s2"]["map"]["3"]["ap_at_k"] == 0.0
    assert res["overall"]["num_queries"] == 8
    assert res["overall"]["map"]["3"]["ap_at_k"] == pytest.approx((1 / 2 + 2 / 3) / 2 / 8)


def test_overlap_map_errors(tmp_path, capsys):
    gt = write_gt(tmp_path / "scene")
    assert omap.main(["--gt", str(gt), "--pairs", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "pair file not found" in capsys.readouterr().err
    assert omap.main(["--gt", str(tmp_path / "nope"), "--pairs", "x", "--out", str(tmp_path / "o")]) == 2
    assert "ground-truth folder not found" in capsys.readouterr().err
    (gt / "geolabel" / "mesh_overlap.txt").unlink()
    with pytest.raises(MirrorError, match="--label ct"):
        omap.load_gt(gt, omap.LabelOptions())


def test_overlap_map_runs_retrieval(tmp_path):
    gt = write_gt(tmp_path / "scene")
    out = tmp_path / "out"
    assert (
        omap.main(
            [
                "--gt",
                str(gt),
                "--method",
                "retrieval",
                "--weights",
                "imagenet",
                "--images",
                str(FIXTURE),
                "--out",
                str(out),
                "--k",
                "3",
                "--grid-queries",
                "1",
            ]
        )
        == 0
    )
    ranked = omap.rankings_from_pairs(out / "pairs-scene.txt", NAMES)  # the rankings, to score again with --pairs
    assert sorted(ranked) == NAMES and all(len(v) == 3 and q not in v for q, v in ranked.items())
    res = json.loads((out / "overlap_map.json").read_text())
    assert "weights imagenet" in res["name"] and 0 <= res["overall"]["map"]["3"]["ap_at_k"] <= 1
    assert res["time_s"]["features"] > 0 and res["time_s"]["ranking"] > 0
    assert (out / "topk.png").is_file()


def test_overlap_map_runs_vocabtree_with_a_tree_per_scene(tmp_path, capsys, mirror_log):
    """--vocab-tree with {scene}: each scene's queries are ranked with its own tree, per scene, pooled and verified."""
    from mirror_sfm.colmap import database_images as omap_images
    from mirror_sfm.vocabtree import build_vocab_tree

    s1, s2 = write_gt(tmp_path / "s1"), write_gt(tmp_path / "s2")
    tree = build_vocab_tree(
        FIXTURE, tmp_path / "trees" / "tree-s1.bin", num_words=64, max_num_features=512, max_image_size=320
    )
    template = str(tmp_path / "trees" / "tree-{scene}.bin")
    common = [
        "--gt",
        str(s1),
        str(s2),
        "--method",
        "vocabtree",
        "--vocab-tree",
        template,
        "--images",
        str(FIXTURE),
        str(FIXTURE),
        "--k",
        "3",
        "--grid-queries",
        "0",
        "--max-num-features",
        "512",
        "--max-image-size",
        "320",
        "--work",
        str(tmp_path / "work"),
    ]
    # a missing tree is named before any SIFT is extracted
    assert omap.main(common + ["--out", str(tmp_path / "o0")]) == 2
    assert "tree-s2.bin (for scene s2" in capsys.readouterr().err and not (tmp_path / "work").exists()

    shutil.copyfile(tree, tmp_path / "trees" / "tree-s2.bin")
    mirror_log.set_level(logging.INFO, logger="mirror_sfm")
    for i, extra in enumerate(([], ["--pooled"], ["--sv-candidates", "4"])):
        out = tmp_path / f"o{i + 1}"
        mirror_log.clear()
        assert omap.main(common + extra + ["--out", str(out)]) == 0
        # only the first run extracts SIFT: the pooled one merges the per-scene databases
        assert ("extracting SIFT" in mirror_log.text) == (i == 0)
        res = json.loads((out / "overlap_map.json").read_text())
        assert res["overall"]["num_queries"] == 8 and 0 <= res["overall"]["map"]["3"]["ap_at_k"] <= 1
        assert ("top 4 verified" in res["name"]) == ("--sv-candidates" in extra)
        assert res["time_s"]["features"] >= 0 and res["time_s"]["ranking"] > 0
        assert "ranking" in (out / "overlap_map.md").read_text()
        pooled = "--pooled" in extra
        key = "pooled" if pooled else "s1"
        names = [f"s{i}/{n}" for i in (1, 2) for n in NAMES] if pooled else NAMES
        ranked = omap.rankings_from_pairs(out / f"pairs-{key}.txt", names)
        assert sorted(ranked) == sorted(names) and all(0 < len(v) <= 3 and q not in v for q, v in ranked.items())
    assert sorted(omap_images(tmp_path / "work" / "sift-pooled" / "database.db")) == sorted(
        f"s{i}/{n}" for i in (1, 2) for n in NAMES
    )


def test_overlap_map_verified_retrieval(tmp_path):
    """--verify sift: the CNN top N re-ranked by SIFT inliers, per scene and pooled (merged SIFT database)."""
    s1, s2 = write_gt(tmp_path / "s1"), write_gt(tmp_path / "s2")
    common = [
        "--gt",
        str(s1),
        str(s2),
        "--method",
        "retrieval",
        "--weights",
        "imagenet",
        "--verify",
        "sift",
        "--verify-shortlist",
        "2",
        "--images",
        str(FIXTURE),
        str(FIXTURE),
        "--k",
        "3",
        "--grid-queries",
        "0",
        "--max-num-features",
        "512",
        "--max-image-size",
        "320",
        "--work",
        str(tmp_path / "work"),
    ]
    for extra in ([], ["--pooled"]):
        out = tmp_path / ("pooled" if extra else "per-scene")
        assert omap.main(common + extra + ["--out", str(out)]) == 0
        res = json.loads((out / "overlap_map.json").read_text())
        assert "top 2 verified by SIFT" in res["name"]
        assert res["time_s"]["verification"] > 0 and res["overall"]["num_queries"] == 8
        key = "pooled" if extra else "s1"
        names = [f"s{i}/{n}" for i in (1, 2) for n in NAMES] if extra else NAMES
        ranked = omap.rankings_from_pairs(out / f"pairs-{key}.txt", names)
        assert sorted(ranked) == sorted(names) and all(len(v) == 3 and q not in v for q, v in ranked.items())


def test_overlap_suite_folds_and_table(tmp_path):
    suite = _load("overlap_suite")
    a, b = suite.folds(["alexander", "banana", "statue_of_liberty", "statue_of_liberty_40", "skull"])
    assert {"statue_of_liberty", "statue_of_liberty_40"} <= set(a) or {
        "statue_of_liberty",
        "statue_of_liberty_40",
    } <= set(b)
    assert not set(a) & set(b) and len(a) + len(b) == 5 and a and b
    root = tmp_path / "labels"
    s1 = write_gt(root / "s1")
    (root / "s1" / "images").symlink_to(FIXTURE)  # --image-root ROOT/<scene>/images
    out = tmp_path / "suite"
    assert (
        suite.main(
            [
                str(s1),
                "--image-root",
                str(root),
                "--out",
                str(out),
                "--methods",
                "cnn",
                "verified@2",
                "--weights",
                "imagenet",
                "--max-num-features",
                "512",
                "--max-image-size",
                "320",
            ]
        )
        == 0
    )
    text = (out / "suite.md").read_text()
    assert "| s1 | 4 |" in text and "CO ≥ 0.5" in text and "CT ≥ 0.2" in text
    ct = json.loads((out / "verified@2" / "ct" / "overlap_map.json").read_text())
    assert ct["positives"].startswith("symmetric CT")


def test_overlap_suite_seeds_only_the_labelled_images(tmp_path):
    """A label's database also holds photos its reconstruction did not register: the suite's copy keeps the labelled
    images only, feature rows unchanged, so the suite's SIFT step reuses it instead of extracting all again."""
    import pycolmap

    from mirror_sfm.colmap import ReconstructionOptions, database_images, prepare_database

    suite = _load("overlap_suite")
    label = write_gt(tmp_path / "labels" / "s1")
    sift = ReconstructionOptions(max_num_features=256, max_image_size=320)
    every = sorted(p.name for p in FIXTURE.iterdir())[:6]
    prepare_database(label / "reconstruction", FIXTURE, every, sift)
    work = tmp_path / "work"
    suite.seed_sift(label, work)
    seeded = work / "sift-s1" / "database.db"
    assert sorted(database_images(seeded)) == NAMES
    with (
        pycolmap.Database.open(str(label / "reconstruction" / "database.db")) as a,
        pycolmap.Database.open(str(seeded)) as b,
    ):
        ids_a = {i.name: i.image_id for i in a.read_all_images()}
        ids_b = {i.name: i.image_id for i in b.read_all_images()}
        assert all((a.read_keypoints(ids_a[n]) == b.read_keypoints(ids_b[n])).all() for n in NAMES)
    assert prepare_database(work / "sift-s1", FIXTURE, NAMES, sift)[2]  # reused: nothing extracted again


def test_sfm_comparison_features_from_another_run(tmp_path, capsys):
    from mirror_sfm.colmap import ReconstructionOptions, reconstruct

    first = tmp_path / "first"
    stats = reconstruct(
        FIXTURE,
        first,
        ReconstructionOptions(pairs="sequential", sequential_overlap=2, max_num_features=1024, max_image_size=800),
    )
    out = tmp_path / "out"
    base = [
        str(FIXTURE),
        "--methods",
        "retrieval@3",
        "--weights",
        "imagenet",
        "--max-image-size",
        "800",
        "--features-from",
        str(first / "database.db"),
    ]
    assert sfm.main(base + ["--out", str(tmp_path / "bad"), "--max-num-features", "2048"]) == 0
    (bad,) = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert "other SIFT settings" in bad["error"]  # refused, nothing extracted
    assert sfm.main(base + ["--out", str(out), "--max-num-features", "1024"]) == 0
    (rec,) = json.loads((out / "results.json").read_text())
    assert rec["sift_shared_s"] == stats["time_s"]["features"] and rec["registered"] >= 10
    assert rec["pairs_to_match"] <= 36  # the source's sequential matches were dropped
    assert rec["sift_from"] == str(first / "database.db")
    assert f"SIFT copied from {first / 'database.db'}" in (out / "results.md").read_text()  # not "extracted"


def test_whitening_eval_configs_recall_and_paired_delta():
    wev = _load("whitening_eval")
    assert wev.parse_config("none") == {"kind": "none"}
    assert wev.parse_config("pca-db:128") == {"kind": "pca-db", "dim": 128}
    cfg = wev.parse_config("lw:co0.5:global:64:pre128:s0.3")
    assert cfg == {"kind": "lw", "positives": "co:0.5", "vectors": "global", "dim": 64, "pre_dim": 128,
                   "shrinkage": 0.3}  # fmt: skip
    assert wev.parse_config("lw:ct0.2:regional:256")["pre_dim"] == 512  # the documented default
    for bad in ("lw:ct0.2:regional", "pca-db:x", "lw:ct0.2:regional:8:zz", "whatever"):
        with pytest.raises(SystemExit, match="malformed config"):
            wev.parse_config(bad)
    ranked = {"q1": ["a", "b", "c"], "q2": ["c", "a"], "q3": ["a"]}
    gt = {"q1": {"b", "c"}, "q2": {"b"}, "q3": set()}
    assert wev.recall_at(ranked, gt, 2) == (pytest.approx((0.5 + 0.0) / 2), 2)  # q3 has no neighbour: not counted
    base = {"scenes": {"s": {"ap10_co_per_query": {"q1": 0.5, "q2": 0.5, "q3": 0.5}}}}
    better = {"scenes": {"s": {"ap10_co_per_query": {"q1": 0.6, "q2": 0.6, "q3": 0.6}}}}
    mean, lo, hi = wev.paired_delta(better, base, samples=200)
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_verify_variants_pass_rates_and_ranking():
    vv = _load("verify_variants")
    r = vv.pass_rates([0, 40, 60, 0, 20, 0], [True, True, True, False, False, False])
    assert r["positives"] == 3 and r["negatives"] == 3
    assert r["positives_failing"] == pytest.approx(1 / 3) and r["negatives_passing"] == pytest.approx(1 / 3)
    assert r["positive_median"] == 50 and r["negative_median"] == 20  # medians of the passing pairs only
    assert vv.pass_rates([0, 0], [True, False])["positive_median"] == 0.0
    cnn = {"q": ["a", "b", "c", "d"], "a": ["q"], "b": [], "c": [], "d": []}
    scores = {("b", "q"): 30, ("a", "q"): 0, ("c", "q"): 80}
    # verified candidates by score, the failed one after, the rest of the CNN ranking (beyond N) last
    assert vv.ranking(cnn, scores, 3)["q"] == ["c", "b", "a", "d"]


def test_verify_variants_missing_suite_file_is_one_line(tmp_path, capsys):
    vv = _load("verify_variants")
    assert vv.main([str(tmp_path / "suite"), "--labels-root", str(tmp_path), "--scenes", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("verify_variants: error:") and str(tmp_path / "a") in err[0]
