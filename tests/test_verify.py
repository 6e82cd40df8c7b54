"""Verified pairs: COLMAP's SIFT matching rule in torch, read-only databases, geometric re-ranking, the CLI."""

import hashlib
import shutil
import sqlite3

import numpy as np
import pycolmap
import pytest
from conftest import FIXTURE
from PIL import Image

from mirror_sfm.cli import main
from mirror_sfm.database_reader import FeatureDatabase, feature_subset, keypoint_scales
from mirror_sfm.errors import MirrorError
from mirror_sfm.pairs import PairsOptions, generate_pairs
from mirror_sfm.pairs_io import read_pairs
from mirror_sfm.verify import VerifyOptions, rerank_by_geometry, verify_pairs
from mirror_sfm.working_database import working_database

EXPECTED = FIXTURE.parents[1] / "expected"


def _sift_database(path, image_dir, names=None, max_features=1024):
    opts = pycolmap.FeatureExtractionOptions()
    opts.max_image_size = 640
    opts.sift.max_num_features = max_features
    opts.num_threads = 2
    kwargs = {"image_names": names} if names is not None else {}
    pycolmap.extract_features(str(path), str(image_dir), extraction_options=opts, device=pycolmap.Device.cpu, **kwargs)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def fixture_database(tmp_path_factory):
    """A pycolmap-made SIFT database of the 12 fixture photos (never modified by the tests)."""
    return _sift_database(tmp_path_factory.mktemp("db") / "database.db", FIXTURE)


def _texture_image(path, seed=0):
    """A photo of nothing in the fixture: smooth random blobs (SIFT finds features, none match the statue)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(path, quality=95)


def test_verification_ranks_true_neighbour_above_unrelated_image(tmp_path, fixture_database):
    images = tmp_path / "images"
    shutil.copytree(FIXTURE, images)
    _texture_image(images / "unrelated.jpg")
    database = _sift_database(tmp_path / "db.db", images)
    query, neighbour = "IMG_9669.jpg", "IMG_9670.jpg"
    # the CNN (here: made up) prefers the unrelated image; geometry must overrule it
    candidates = [(query, "unrelated.jpg"), (query, neighbour)]
    scores = verify_pairs(database, candidates, VerifyOptions())
    inliers = verify_pairs(database, candidates, VerifyOptions(score="inliers"))
    assert inliers[(query, neighbour)] >= 15
    assert 0 < scores[(query, neighbour)] <= inliers[(query, neighbour)]  # effective inliers: occupied grid cells
    assert scores[(query, "unrelated.jpg")] == 0 == inliers[(query, "unrelated.jpg")]
    pairs, cnn, geo = rerank_by_geometry(candidates, [0.9, 0.5], scores, num_matched=2)
    assert pairs == [(query, neighbour), (query, "unrelated.jpg")]
    assert cnn == [0.5, 0.9] and geo[1] == 0


def test_effective_inliers_count_the_area_the_inliers_cover():
    """Many inliers on one spot count once; the same number spread over the image count once per grid cell."""
    from types import SimpleNamespace

    from mirror_sfm.verify import GRID, geometric_score

    side = 640
    spread = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2) * (side / 8) + 5.0
    clump = np.full((64, 2), 100.0) + np.random.default_rng(0).uniform(0, 3, (64, 2))
    keypoints = {1: spread, 2: clump}
    cells = lambda image_id: (  # noqa: E731
        (keypoints[image_id][:, 1] / side * GRID).astype(int) * GRID
        + (keypoints[image_id][:, 0] / side * GRID).astype(int)
    )
    matches = np.stack([np.arange(64), np.arange(64)], 1)
    good = SimpleNamespace(config=2, inlier_matches=matches)  # CALIBRATED
    assert geometric_score(good, 15) == 64
    assert geometric_score(good, 15, cells, [1, 1]) == 64  # spread over 64 cells
    assert geometric_score(good, 15, cells, [1, 2]) == 1  # one side clumped in one cell: the smaller count
    failed = SimpleNamespace(config=1, inlier_matches=matches)  # DEGENERATE
    assert geometric_score(failed, 15, cells, [1, 1]) == 0
    few = SimpleNamespace(config=2, inlier_matches=matches[:10])
    assert geometric_score(few, 15, cells, [1, 1]) == 0


def test_rerank_failed_pairs_keep_cnn_order_below_verified():
    pairs = [("q", "a"), ("q", "b"), ("q", "c"), ("q", "d")]
    geometric = {("a", "q"): 0, ("b", "q"): 40, ("c", "q"): 0, ("d", "q"): 100}
    out, cnn, geo = rerank_by_geometry(pairs, [0.9, 0.8, 0.7, 0.6], geometric, num_matched=3)
    assert out == [("q", "d"), ("q", "b"), ("q", "a")]
    assert geo == [100, 40, 0]


def test_rerank_adds_verified_reverse_candidates():
    """b's shortlist held q and verified: b is q's candidate too, ranked by its score; a failed reverse pair is not."""
    pairs = [("q", "a"), ("q", "c"), ("b", "q"), ("e", "q"), ("b", "a")]
    geometric = {("a", "q"): 20, ("c", "q"): 0, ("b", "q"): 50, ("e", "q"): 0, ("a", "b"): 10}
    out, _, geo = rerank_by_geometry(pairs, [0.9, 0.8, 0.7, 0.6, 0.5], geometric, num_matched=5)
    per_query = {}
    for (q, d), g in zip(out, geo):
        per_query.setdefault(q, []).append((d, g))
    assert per_query["q"] == [("b", 50), ("a", 20), ("c", 0)]  # b from b's shortlist; e failed: not added
    assert per_query["b"] == [("q", 50), ("a", 10)]
    assert set(per_query) == {"q", "b", "e"}  # a and c, never queries, get no lines


def test_pairs_database_is_read_only_and_nothing_extracted(tmp_path, fixture_database):
    before = _digest(fixture_database)
    files_before = sorted(p.name for p in fixture_database.parent.iterdir())
    out = tmp_path / "pairs.txt"
    rc = main(
        [
            "pairs",
            str(FIXTURE),
            "-o",
            str(out),
            "-k",
            "3",
            "--shortlist",
            "6",
            "--weights",
            "imagenet",
            "--verify-features",
            "300",
            "--database",
            str(fixture_database),
            "--scores",
            str(tmp_path / "scores.txt"),
        ]
    )
    assert rc == 0
    assert _digest(fixture_database) == before
    assert sorted(p.name for p in fixture_database.parent.iterdir()) == files_before  # no -wal / -shm left beside it
    assert not (tmp_path / "pairs-sift.db").exists()  # features came from the database
    with pycolmap.Database.open(str(tmp_path / "pairs-verify.db")) as db:  # verification's own working copy
        assert max(len(db.read_keypoints(i.image_id)) for i in db.read_all_images()) == 300
    pairs = read_pairs(out)
    assert len(pairs) == 12 * 3
    lines = (tmp_path / "scores.txt").read_text().splitlines()
    fields = [line.split() for line in lines]
    assert all(len(f) == 4 for f in fields)
    # each query's pairs: verified inliers never increase down the list
    for q in {f[0] for f in fields}:
        inl = [int(f[3]) for f in fields if f[0] == q]
        assert inl == sorted(inl, reverse=True) and inl[0] >= 15


def test_database_lacking_an_image_is_one_clear_error(tmp_path, capsys):
    names = sorted(p.name for p in FIXTURE.iterdir())
    database = _sift_database(tmp_path / "partial.db", FIXTURE, names=names[:-1])
    rc = main(
        ["pairs", str(FIXTURE), "-o", str(tmp_path / "pairs.txt"), "--weights", "imagenet", "--database", str(database)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and names[-1] in err[0] and str(database) in err[0]
    assert not (tmp_path / "pairs.txt").exists()
    assert not (tmp_path / "pairs-global-feats.h5").exists()  # refused before any work


def test_verify_none_reproduces_the_cnn_ranking(tmp_path, imagenet_model):
    out = tmp_path / "pairs.txt"
    options = PairsOptions(verify=VerifyOptions(method="none"))
    generate_pairs(
        FIXTURE, out, num_matched=5, options=options, model=imagenet_model, scores_output=tmp_path / "scores.txt"
    )
    expected = (EXPECTED / "pairs-prmac-k5-scores.txt").read_text().splitlines()
    got = (tmp_path / "scores.txt").read_text().splitlines()
    assert [line.split()[:2] for line in got] == [line.split()[:2] for line in expected]
    assert np.allclose(
        [float(line.split()[2]) for line in got], [float(line.split()[2]) for line in expected], atol=1e-3
    )
    assert not (tmp_path / "pairs-sift.db").exists()


def test_image_without_features_scores_zero(tmp_path, imagenet_model):
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(p.name for p in FIXTURE.iterdir())[:5]:
        shutil.copy(FIXTURE / name, images / name)
    Image.new("RGB", (320, 240), (128, 128, 128)).save(images / "blank.jpg")  # no SIFT feature at all
    scores_file = tmp_path / "scores.txt"
    pairs = generate_pairs(
        images,
        tmp_path / "pairs.txt",
        num_matched=3,
        model=imagenet_model,
        options=PairsOptions(verify=VerifyOptions(shortlist=5)),
        scores_output=scores_file,
    )
    assert len(pairs) == 6 * 3
    rows = [line.split() for line in scores_file.read_text().splitlines()]
    assert all(int(r[3]) == 0 for r in rows if "blank.jpg" in r[:2])
    assert any(int(r[3]) >= 15 for r in rows if "blank.jpg" not in r[:2])
    assert (tmp_path / "pairs-sift.db").exists()  # light SIFT cache beside the output


def test_verification_resumes_and_rebuilds_a_stale_working_database(tmp_path, fixture_database, mirror_log):
    import logging

    source = tmp_path / "source.db"
    shutil.copyfile(fixture_database, source)
    names = sorted(p.name for p in FIXTURE.iterdir())
    pairs = [(a, b) for a in names[:4] for b in names if a != b]
    work = tmp_path / "work.db"
    opts = VerifyOptions(num_features=300)
    first = verify_pairs(source, pairs[:10], opts, work_database=work)
    both = verify_pairs(source, pairs, opts, work_database=work)  # the first 10 are in work.db already
    assert {k: both[k] for k in first} == first
    with pycolmap.Database.open(str(work)) as db:
        assert db.num_matched_image_pairs() == len(both)
        assert max(len(db.read_keypoints(i.image_id)) for i in db.read_all_images()) == 300
    mirror_log.set_level(logging.INFO, logger="mirror_sfm")
    source.touch()  # the source changed: the working copy is made again
    assert verify_pairs(source, pairs[:10], opts, work_database=work) == first
    assert "made from another database" in mirror_log.text
    with pycolmap.Database.open(str(work)) as db:
        assert db.num_matched_image_pairs() == 10
    # another matching rule: no pair keeps a match made under the old one
    looser = verify_pairs(source, pairs[:3], VerifyOptions(num_features=300, max_ratio=0.9), work_database=work)
    assert len(looser) == 3
    assert "matching rule" in mirror_log.text
    with pycolmap.Database.open(str(work)) as db:
        assert db.num_matched_image_pairs() == 3


def same_matcher_inputs(part, whole, images) -> bool:
    """Whether two working databases hold the same image ids, keypoints and descriptors for `images`."""
    with pycolmap.Database.open(str(part)) as a, pycolmap.Database.open(str(whole)) as b:
        for name in images:
            i, j = a.read_image_with_name(name).image_id, b.read_image_with_name(name).image_id
            if i != j or not np.array_equal(a.read_keypoints(i), b.read_keypoints(j)):
                return False
            if not np.array_equal(a.read_descriptors(i).data, b.read_descriptors(j).data):
                return False
    return True


def _held(path):
    """(image names, camera ids, frame ids, rig ids) of a COLMAP database, read with sqlite."""
    import sqlite3

    con = sqlite3.connect(path)
    try:
        return tuple(
            sorted(r[0] for r in con.execute(q))
            for q in (
                "SELECT name FROM images",
                "SELECT camera_id FROM cameras",
                "SELECT frame_id FROM frames",
                "SELECT rig_id FROM rigs",
            )
        )
    finally:
        con.close()


def test_working_database_of_an_image_subset_holds_only_those_images(tmp_path, fixture_database, mirror_log):
    import logging

    names = sorted(p.name for p in FIXTURE.iterdir())
    pairs = [(names[i], names[i + 1]) for i in range(3, 7)]
    subset = sorted({n for p in pairs for n in p})  # 5 of the 12 images
    opts = VerifyOptions(num_features=300)
    full = verify_pairs(fixture_database, pairs, opts, work_database=tmp_path / "full.db")
    part = verify_pairs(fixture_database, pairs, opts, work_database=tmp_path / "part.db", work_images=subset)
    # The matcher sees the same input as in a copy of every image: image ids, keypoints and descriptors. (Not the
    # same scores: COLMAP's CPU matcher may differ between two runs on some machines; CI saw two pairs swap.)
    assert part.keys() == full.keys() and any(part.values()) and any(full.values())
    assert same_matcher_inputs(tmp_path / "part.db", tmp_path / "full.db", subset)
    images, cameras, frames, rigs = _held(tmp_path / "part.db")
    all_images, all_cameras, all_frames, all_rigs = _held(fixture_database)
    assert images == subset and len(all_images) == 12
    with FeatureDatabase(fixture_database) as db:  # the subset's own cameras, frames and rigs, under the source ids
        assert cameras == sorted(db.image_ids[n][1] for n in subset)
    assert len(frames) == len(rigs) == 5 and set(frames) < set(all_frames) and set(rigs) < set(all_rigs)
    with pycolmap.Database.open(str(tmp_path / "part.db")) as db:
        assert db.num_images() == 5 and db.num_keypoints() <= 5 * 300 and db.num_matched_image_pairs() == 4
    assert (tmp_path / "part.db").stat().st_size < 0.6 * (tmp_path / "full.db").stat().st_size
    mirror_log.set_level(logging.INFO, logger="mirror_sfm")
    more = pairs + [(names[0], names[1])]  # another image set: the copy is made again, with those images
    verify_pairs(
        fixture_database, more, opts, work_database=tmp_path / "part.db", work_images=[n for p in more for n in p]
    )
    assert "image set" in mirror_log.text
    assert _held(tmp_path / "part.db")[0] == sorted({n for p in more for n in p})


@pytest.mark.parametrize(
    "bad",
    [
        {"shortlist": 0},
        {"num_features": -1},
        {"method": "orb"},
        {"max_ratio": 0},
        {"max_ratio": 1.5},
        {"feature_subset": "random"},
    ],
)
def test_bad_verify_options(bad):
    with pytest.raises(MirrorError):
        VerifyOptions(**bad).validate()


def test_k_must_be_positive(tmp_path, capsys):
    for k in ("0", "-3"):
        rc = main(["pairs", str(FIXTURE), "-o", str(tmp_path / "p.txt"), "-k", k, "--weights", "imagenet"])
        assert rc != 0
        assert "num_matched" in capsys.readouterr().err
    assert not (tmp_path / "p.txt").exists()


def test_database_of_another_folder_or_not_a_database(tmp_path, fixture_database):
    other = tmp_path / "other"
    other.mkdir()
    _texture_image(other / "elsewhere.jpg")
    with FeatureDatabase(fixture_database) as db, pytest.raises(MirrorError, match="another image folder"):
        db.check_names(["elsewhere.jpg"])
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(MirrorError, match="cannot read COLMAP database .*junk.db"):
        FeatureDatabase(junk)
    assert junk.read_bytes() == b"not a database at all" * 100


def test_locked_database_is_one_clear_error(tmp_path, fixture_database):
    import sqlite3

    copy = tmp_path / "locked.db"
    shutil.copyfile(fixture_database, copy)
    writer = sqlite3.connect(copy, isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")  # COLMAP 3.x's rollback journal: a writer blocks readers
    writer.execute("BEGIN EXCLUSIVE")  # as COLMAP holds it while writing
    try:
        with pytest.raises(MirrorError, match="locked by another program"):
            FeatureDatabase(copy, lock_timeout=0.2)
    finally:
        writer.rollback()
        writer.close()
    with FeatureDatabase(copy) as db:  # readable again once the writer is done
        assert len(db.image_ids) == 12


def test_steps_hand_each_other_files_and_match_generate_pairs(tmp_path, fixture_database, imagenet_model):
    """extract -> pairs_from_retrieval.main -> verify.main (hloc-style steps, files between them) gives the pairs
    of `generate_pairs` (which chains the same steps in memory), and the fast mode's file alone gives --verify none."""
    from mirror_sfm import pairs_from_retrieval
    from mirror_sfm import verify as verify_step
    from mirror_sfm.extract import extract

    feats = tmp_path / "global-feats.h5"
    extract(FIXTURE, feats, model=imagenet_model)
    fast = pairs_from_retrieval.main(feats, tmp_path / "fast.txt", 5, scores_output=tmp_path / "fast-scores.txt")
    expected = (EXPECTED / "pairs-prmac-k5-scores.txt").read_text().splitlines()
    assert [list(p) for p in fast] == [line.split()[:2] for line in expected]

    shortlist = pairs_from_retrieval.main(feats, tmp_path / "shortlist.txt", 6)
    options = VerifyOptions(shortlist=6, num_features=300)
    verified = verify_step.main(
        tmp_path / "shortlist.txt",
        fixture_database,
        tmp_path / "verified.txt",
        3,
        options,
        scores_output=tmp_path / "verified-scores.txt",
    )
    assert read_pairs(tmp_path / "verified.txt") == verified and len(verified) == 12 * 3
    # each pair was shortlisted one way or the other (reverse candidates: b's shortlist held a)
    assert all((a, b) in set(shortlist) or (b, a) in set(shortlist) for a, b in verified)
    composed = generate_pairs(
        FIXTURE,
        tmp_path / "composed.txt",
        3,
        options=PairsOptions(verify=options),
        model=imagenet_model,
        database=fixture_database,
    )
    assert verified == composed
    inliers = [int(line.split()[2]) for line in (tmp_path / "verified-scores.txt").read_text().splitlines()]
    assert len(inliers) == len(verified) and max(inliers) >= 15


def _blobs(database, table):
    """{image_id: rows x cols array} of a keypoints or descriptors table, read without writing the database."""
    dtype = np.float32 if table == "keypoints" else np.uint8
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as con:
        rows = con.execute(f"SELECT image_id, rows, cols, data FROM {table}").fetchall()
    return {i: np.frombuffer(data, dtype).reshape(r, c) for i, r, c, data in rows}


def test_working_database_keeps_each_images_largest_scales(tmp_path, fixture_database):
    """COLMAP stores the finest scales first: the working copy keeps each image's N largest scales (coarse octaves
    kept), keypoints and descriptors row for row; an image with at most N features is copied whole."""
    n = 100
    work = working_database(fixture_database, tmp_path / "work.db", n)
    for table in ("keypoints", "descriptors"):
        full, kept = _blobs(fixture_database, table), _blobs(work, table)
        assert kept.keys() == full.keys()
        for image_id, rows in full.items():
            subset = feature_subset(_blobs(fixture_database, "keypoints")[image_id], n)
            np.testing.assert_array_equal(kept[image_id], rows[subset])
            assert len(kept[image_id]) == min(len(rows), n)

    full, kept = _blobs(fixture_database, "keypoints"), _blobs(work, "keypoints")
    image_id = max(full, key=lambda i: len(full[i]))
    assert len(full[image_id]) > 2 * n
    scale = keypoint_scales
    assert scale(full[image_id][:n]).max() < scale(kept[image_id]).min()  # the first n rows: all fine scales
    assert scale(kept[image_id]).min() >= np.sort(scale(full[image_id]))[-n]
    rows = np.array([[0, 0, 1.0, 0], [0, 0, 3.0, 0], [0, 0, 2.0, 0], [0, 0, 0.5, 0]], np.float32)  # x, y, scale, angle
    assert feature_subset(rows, 9) == slice(None) and list(feature_subset(rows, 2)) == [1, 2]
    assert list(feature_subset(rows, 2, "spread")) == [0, 3] and list(feature_subset(rows, 2, "first")) == [0, 1]
    first = working_database(fixture_database, tmp_path / "first.db", n, subset="first")
    assert all(
        np.array_equal(kept, _blobs(fixture_database, "keypoints")[i][:n])
        for i, kept in _blobs(first, "keypoints").items()
    )


def test_light_sift_goes_in_chunks_and_a_killed_run_resumes(tmp_path, monkeypatch):
    """Light SIFT is extracted a chunk at a time (a progress bar between pycolmap calls); a run killed after the
    first chunk keeps it, and the next run extracts only the rest."""
    from mirror_sfm import verify as verify_module
    from mirror_sfm.colmap import images_with_features, sift

    names = sorted(p.name for p in FIXTURE.iterdir())[:5]
    monkeypatch.setattr(verify_module, "SIFT_CHUNK", 2)
    calls = []
    real = sift.extract_sift

    def killed_after_one_chunk(database, image_dir, chunk, options):
        calls.append(list(chunk))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(database, image_dir, chunk, options)

    monkeypatch.setattr(sift, "extract_sift", killed_after_one_chunk)
    database = tmp_path / "light.db"
    options = VerifyOptions(sift_max_image_size=320, sift_max_num_features=256)
    with pytest.raises(KeyboardInterrupt):
        verify_module.light_sift_database(FIXTURE, names, database, options)
    assert images_with_features(database) == set(names[:2])
    resumed = []

    def recorded(database, image_dir, chunk, options):
        resumed.extend(chunk)
        real(database, image_dir, chunk, options)

    monkeypatch.setattr(sift, "extract_sift", recorded)
    verify_module.light_sift_database(FIXTURE, names, database, options)
    assert images_with_features(database) == set(names) and resumed == names[2:]
