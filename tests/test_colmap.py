"""COLMAP glue on the 12-image mary_rose fixture: pair methods, vocab tree, bad inputs (CPU, ~1 min)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from mirror_sfm.colmap import ReconstructionOptions, count_pairs, images_with_features, match_pairs, reconstruct
from mirror_sfm.errors import MirrorError
from mirror_sfm.vocabtree import build_vocab_tree, read_descriptors

FIXTURE = Path(__file__).parent / "fixtures" / "mary_rose" / "images"
NUM_IMAGES = 12
STATS_KEYS = {
    "method",
    "images",
    "images_skipped",
    "registered",
    "registered_any_model",
    "pairs_to_match",
    "verified_pairs",
    "num_models",
    "sparse_points",
    "observations",
    "mean_track_length",
    "mean_reprojection_error",
    "time_s",
    "pycolmap_version",
    "device",
}
TIME_KEYS = {"features", "pairs", "matching", "mapping", "total"}


@pytest.fixture(scope="module")
def exhaustive_run(tmp_path_factory) -> tuple[Path, dict]:
    """One full run (SIFT included); its database is the template the other tests start from."""
    out = tmp_path_factory.mktemp("exhaustive")
    return out, reconstruct(FIXTURE, out, ReconstructionOptions(pairs="exhaustive"))


@pytest.fixture(scope="module")
def sift_db(exhaustive_run, tmp_path_factory) -> Path:
    """A private copy of the exhaustive run's database (SIFT for all 12 images)."""
    dst = tmp_path_factory.mktemp("sift") / "database.db"
    shutil.copyfile(exhaustive_run[0] / "database.db", dst)
    return dst


@pytest.fixture(scope="module")
def vocab_tree(tmp_path_factory) -> Path:
    """A 256-word tree trained from the fixture images (SIFT extracted inside)."""
    out = tmp_path_factory.mktemp("vocab") / "tree-256.bin"
    return build_vocab_tree(FIXTURE, out, num_words=256, max_image_size=512)


def assert_registered(stats: dict, n: int = NUM_IMAGES) -> None:
    assert stats["registered"] >= 0.8 * n, stats


def test_exhaustive_writes_stats(exhaustive_run):
    out, stats = exhaustive_run
    assert STATS_KEYS <= set(stats)
    assert TIME_KEYS <= set(stats["time_s"])
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["method"] == "exhaustive" and stats["images"] == NUM_IMAGES and stats["images_skipped"] == []
    assert stats["pairs_to_match"] == NUM_IMAGES * (NUM_IMAGES - 1) // 2
    assert 0 < stats["verified_pairs"] <= stats["pairs_to_match"]
    assert_registered(stats)
    assert stats["registered"] <= stats["registered_any_model"] <= NUM_IMAGES
    assert stats["sparse_points"] > 100 and stats["observations"] > stats["sparse_points"]
    assert (out / stats["model"] / "images.bin").is_file()
    assert not list(out.glob(".*tmp"))


def test_resume_reuses_features(exhaustive_run, sift_db, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    shutil.copyfile(sift_db, out / "database.db")
    stats = reconstruct(FIXTURE, out, ReconstructionOptions(pairs="sequential", sequential_overlap=3))
    assert stats["features_reused"] and stats["time_s"]["features"] < 1.0
    assert stats["pairs_to_match"] < exhaustive_run[1]["pairs_to_match"]
    assert count_pairs(out / "database.db")[0] == stats["pairs_to_match"]  # old matches were cleared
    assert_registered(stats)


def test_retrieval(exhaustive_run, sift_db, tmp_path):
    opts = ReconstructionOptions(pairs="retrieval", num_matched=5, database_template=sift_db)
    stats = reconstruct(FIXTURE, tmp_path, opts)
    assert (tmp_path / "pairs-retrieval.txt").is_file()
    assert 0 < stats["pairs_to_match"] < exhaustive_run[1]["pairs_to_match"]
    assert_registered(stats)


def test_vocab_tree(vocab_tree, sift_db, exhaustive_run, tmp_path):
    assert vocab_tree.is_file() and vocab_tree.stat().st_size > 0
    opts = ReconstructionOptions(pairs="vocabtree", num_matched=5, vocab_tree=vocab_tree, database_template=sift_db)
    stats = reconstruct(FIXTURE, tmp_path, opts)
    assert 0 < stats["pairs_to_match"] < exhaustive_run[1]["pairs_to_match"]
    assert_registered(stats)


def test_read_descriptors_samples(sift_db):
    full = read_descriptors(sift_db)
    assert full.shape[1] == 128 and full.dtype.name == "uint8"
    sample = read_descriptors([sift_db], max_descriptors=1000)
    assert sample.shape == (1000, 128)


def test_unreadable_images_are_skipped(sift_db, tmp_path, mirror_log):
    images = tmp_path / "images"
    shutil.copytree(FIXTURE, images)
    (images / "zero.jpg").write_bytes(b"")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    whole = (images / "IMG_9669.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # header intact: only a full decode sees it
    out = tmp_path / "out"
    stats = reconstruct(images, out, ReconstructionOptions(pairs="exhaustive", database_template=sift_db))
    skipped = ["corrupt.jpg", "truncated.jpg", "zero.jpg"]
    assert stats["images"] == NUM_IMAGES + 3
    assert stats["images_skipped"] == skipped
    assert json.loads((out / "stats.json").read_text())["images_skipped"] == skipped
    assert_registered(stats)
    for name in skipped:
        warnings = [r for r in mirror_log.records if r.levelno == logging.WARNING and name in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MirrorError, match=str(empty)):
        reconstruct(empty, tmp_path / "out", ReconstructionOptions(pairs="exhaustive"))
    assert not (tmp_path / "out").exists()


def test_only_unreadable_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "zero.jpg").write_bytes(b"")
    with pytest.raises(MirrorError, match="no readable image"):
        reconstruct(images, tmp_path / "out", ReconstructionOptions(pairs="exhaustive"))
    assert not (tmp_path / "out" / "stats.json").exists()


def test_missing_vocab_tree_keeps_old_stats(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text('{"old": true}\n')
    missing = tmp_path / "no-such-tree.bin"
    with pytest.raises(MirrorError, match=str(missing)):
        reconstruct(FIXTURE, out, ReconstructionOptions(pairs="vocabtree", vocab_tree=missing))
    assert (out / "stats.json").read_text() == '{"old": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["stats.json"]


def test_name_with_space(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted(FIXTURE.iterdir())[:2]:
        shutil.copy(src, images / src.name)
    shutil.copy(FIXTURE / "IMG_9675.jpg", images / "IMG 9675.jpg")
    with pytest.raises(MirrorError, match="IMG 9675.jpg"):
        reconstruct(images, tmp_path / "out", ReconstructionOptions(pairs="exhaustive"))
    assert not (tmp_path / "out").exists()


def test_bad_option(tmp_path):
    with pytest.raises(MirrorError, match="pairs must be one of"):
        reconstruct(FIXTURE, tmp_path / "out", ReconstructionOptions(pairs="nearest"))


def test_match_pairs_errors(sift_db, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("IMG_9669.jpg IMG_9670.jpg\n")
    with pytest.raises(MirrorError, match="database not found"):
        match_pairs(tmp_path / "missing.db", pairs)
    with pytest.raises(MirrorError, match="pair file not found"):
        match_pairs(sift_db, tmp_path / "missing.txt")
    pairs.write_text("IMG_9669.jpg IMG_0000.jpg\n")
    with pytest.raises(MirrorError, match="IMG_0000.jpg"):
        match_pairs(sift_db, pairs)


def test_merge_databases_prefixes_names(sift_db, tmp_path):
    import numpy as np
    import pycolmap

    from mirror_sfm.colmap import database_images, merge_databases

    merged = merge_databases([("a", sift_db), ("b", sift_db)], tmp_path / "merged.db")
    original, names = database_images(sift_db), database_images(merged)
    assert sorted(names) == sorted(f"{p}/{n}" for p in "ab" for n in original)
    assert images_with_features(merged) == set(names) and not list(tmp_path.glob("*.tmp*"))
    name = sorted(original)[0]
    with pycolmap.Database.open(str(sift_db)) as src, pycolmap.Database.open(str(merged)) as dst:
        np.testing.assert_array_equal(src.read_keypoints(original[name]), dst.read_keypoints(names[f"b/{name}"]))
    with pytest.raises(MirrorError, match="no databases"):
        merge_databases([], tmp_path / "none.db")


def test_old_or_corrupt_vocab_tree_is_refused_before_any_work(tmp_path):
    old = tmp_path / "vocab_tree_flickr100K_words32K.bin"  # COLMAP < 3.12's format is not a VisualIndex file
    old.write_bytes(b"\x00\x01\x02\x03" * 4096)
    out = tmp_path / "out"
    with pytest.raises(MirrorError, match="COLMAP >= 3.12's format"):
        reconstruct(FIXTURE, out, ReconstructionOptions(pairs="vocabtree", vocab_tree=old))
    assert not out.exists()


def test_name_check_does_not_touch_the_database(sift_db, tmp_path):
    import hashlib

    from mirror_sfm.colmap import database_images

    copy = tmp_path / "db.db"
    shutil.copyfile(sift_db, copy)
    before, mtime = hashlib.sha256(copy.read_bytes()).hexdigest(), copy.stat().st_mtime_ns
    assert len(database_images(copy)) == NUM_IMAGES
    # what a resumed run looks at: the verification's working copy is keyed on the file's size and mtime
    assert images_with_features(copy) == set(database_images(copy))
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before and copy.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.db"]


def test_colmap_log_goes_to_a_file(sift_db, tmp_path, capfd):
    """COLMAP's own log lands in OUT/colmap.log; stderr keeps mirror_sfm's few lines (all of it with verbose)."""
    opts = ReconstructionOptions(pairs="sequential", sequential_overlap=3, database_template=sift_db)
    capfd.readouterr()
    reconstruct(FIXTURE, tmp_path / "quiet", opts)
    err = capfd.readouterr().err
    log = tmp_path / "quiet" / "colmap.log"
    assert log.is_file() and log.stat().st_size > 0
    assert "Registering image" in log.read_text() or "register" in log.read_text().lower()
    assert err.count("\n") <= 15, err
    assert not [line for line in err.split("\n") if line[:1] in "IW" and line[1:5].isdigit()], err  # no glog line
    assert not list((tmp_path / "quiet").glob(".colmap.log.*"))

    reconstruct(FIXTURE, tmp_path / "verbose", opts, verbose=True)
    err = capfd.readouterr().err
    assert err.count("\n") > 30 and (tmp_path / "verbose" / "colmap.log").stat().st_size > 0
