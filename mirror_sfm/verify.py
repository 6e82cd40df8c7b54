"""Geometric verification of a retrieval shortlist with the SIFT features COLMAP matches anyway.

Each image's CNN shortlist (its top N candidates) is re-ranked by how well the pair verifies in COLMAP's own
hands: the ``num_features`` largest-scale SIFT features of both images (COLMAP's vocab-tree verification keeps the same;
the first rows would be the finest scales, which COLMAP stores first: ``database_reader.feature_subset``) are
matched and verified by ``pycolmap.match_image_pairs`` (its SIFT matcher: mutual nearest neighbours, ratio 0.8,
distance 0.7; then two-view geometry: E, F or H by RANSAC, 4 px) in a working database of mirror_sfm's own
(``working_database``: the source cut to those features). The geometric score of a pair is its number of inlier
matches, 0 when COLMAP drops the pair (fewer than ``min_num_inliers`` inliers, or a degenerate geometry). Ranking
per query: verified pairs first by score, then the others, ties broken by the CNN score; a query's candidates are its
own shortlist plus the images whose shortlists held it and verified with it (free: each pair is verified once).

Features come from a COLMAP database, never written: the user's own, or a light one (≤ 2,048 features,
≤ 1,024 px) extracted into a cache beside the output. Each unordered pair is verified once, in blocks (progress);
COLMAP skips pairs already in the working database, so a killed run resumes. Memory is bounded by the shortlist.
(A batched torch matcher with pycolmap's two-view estimation was measured too: 1.6× slower on 2 cores for the
same pass/fail decisions, RESULTS.md §11.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from .database_reader import SUBSET, SUBSETS, FeatureDatabase
from .errors import MirrorError
from .io_utils import check_writable
from .pairs_io import Pair, read_pairs, write_pairs
from .working_database import working_database

logger = logging.getLogger(__name__)

VERIFY_METHODS = ("sift", "none")
SCORES = ("effective", "inliers")
SIFT_CHUNK = 32  # images per pycolmap extraction call of the light SIFT (progress between calls)
BLOCK_PAIRS = 2000  # pairs per COLMAP matching call at least: each call reloads features (RESULTS.md §11)
GRID = 32  # cells per image side for effective inliers (COLMAP's vote-and-verify uses 32 x 32)
DEVICES = {"auto": pycolmap.Device.auto, "cpu": pycolmap.Device.cpu, "cuda": pycolmap.Device.cuda}
FAILED_CONFIGS = {
    int(pycolmap.TwoViewGeometryConfiguration.UNDEFINED),
    int(pycolmap.TwoViewGeometryConfiguration.DEGENERATE),
}


# reconstruct's default N: on 135 internet photos the 50-candidate shortlist kept the largest model at 83-98 images
# over nine mapping runs, the 30-candidate one at 50-93 over six (benchmarks/RESULTS.md §11, sixth session)
RECONSTRUCT_SHORTLIST = 50


@dataclass
class VerifyOptions:
    """How each image's CNN shortlist is verified and re-ranked (defaults measured: benchmarks/RESULTS.md §11).

    Attributes:
        method: sift: re-rank each image's CNN shortlist by SIFT inliers (COLMAP's matching rule and two-view
            geometry); none: CNN + PR-MAC order only, the fast mode.
        shortlist: CNN candidates per image that are verified (N >= K). `pairs` verifies 30 (its speed target);
            `reconstruct` verifies 50 (`RECONSTRUCT_SHORTLIST`): internet photos need the depth (RESULTS.md §11).
        num_features: SIFT features per image used to verify (which ones: `feature_subset`).
        feature_subset: which `num_features` (`database_reader.feature_subset`): largest (scales, the default:
            COLMAP's vocab-tree verification keeps the same) | spread (evenly over the stored, finest-first rows) |
            first (the first rows: the finest scales; how mirror_sfm chose before RESULTS.md §11 measured it).
        min_num_inliers: COLMAP's TwoViewGeometryOptions.min_num_inliers: pairs with fewer fail.
        sift_max_image_size: light SIFT (no database given): long side limit, px.
        sift_max_num_features: light SIFT (no database given): features per image.
        num_threads: COLMAP matching and verification threads (-1: all cores).
        device: auto: COLMAP's CUDA matcher where pycolmap has CUDA | cpu | cuda.
        seed: RANSAC seed, so a re-run usually gives the same scores (not always: on one CI machine COLMAP's
            CPU matching gave two pairs different scores in two runs on the same features).
        score: what orders a query's verified candidates: effective (COLMAP's effective inliers: cells of a
            32 x 32 grid holding an inlier, the smaller count of the two images, so it grows with the shared
            area) | inliers (the inlier count).
        max_ratio: the ratio test of COLMAP's SIFT matcher in the verification pass (COLMAP's default 0.8; higher
            keeps more matches on repetitive texture, which RANSAC then judges).
    """

    method: str = "sift"
    shortlist: int = 30
    num_features: int = 2048
    feature_subset: str = SUBSET
    min_num_inliers: int = 15
    sift_max_image_size: int = 1024
    sift_max_num_features: int = 2048
    num_threads: int = -1
    device: str = "auto"
    seed: int = 0
    score: str = "effective"
    max_ratio: float = 0.8

    def validate(self) -> None:
        if self.score not in SCORES:
            raise MirrorError(f"verification score must be one of {', '.join(SCORES)}; got {self.score!r}")
        if self.method not in VERIFY_METHODS:
            raise MirrorError(f"verify must be one of {', '.join(VERIFY_METHODS)}; got {self.method!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MirrorError(f"verification device must be auto, cpu or cuda; got {self.device!r}")
        if self.feature_subset not in SUBSETS:
            raise MirrorError(f"feature subset must be one of {', '.join(SUBSETS)}; got {self.feature_subset!r}")
        if not 0 < self.max_ratio <= 1:
            raise MirrorError(f"verify-max-ratio must be in (0, 1], got {self.max_ratio}")
        for name in ("shortlist", "num_features", "sift_max_image_size", "sift_max_num_features"):
            if getattr(self, name) < 1:
                raise MirrorError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def two_view_options(options: VerifyOptions) -> pycolmap.TwoViewGeometryOptions:
    opts = pycolmap.TwoViewGeometryOptions()
    opts.min_num_inliers = options.min_num_inliers
    opts.ransac.random_seed = options.seed
    return opts


def _pair_key(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


@contextmanager
def quiet_colmap(verbose: bool = False) -> Iterator[None]:
    """COLMAP's own INFO log (a dozen lines a call) only when asked for."""
    previous = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = int(pycolmap.logging.Level.WARNING)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def checked_pair_keys(database: Path, pairs: Iterable[Pair], allow_missing: bool) -> list[Pair]:
    """The unordered pairs to verify (sorted names, first-appearance order), checked against `database`: an image it
    lacks is a MirrorError naming it, or with `allow_missing` a warning, and that image's pairs are left out."""
    keys = list(dict.fromkeys(_pair_key(a, b) for a, b in pairs if a != b))
    with FeatureDatabase(database) as db:
        involved = sorted({n for key in keys for n in key})
        if not allow_missing:
            db.check_names(involved)
            return keys
        absent = {n for n in involved if n not in db.image_ids}
    for name in sorted(absent):
        logger.warning("no SIFT features for %s in %s: its pairs score 0", name, database)
    return [k for k in keys if k[0] not in absent and k[1] not in absent]


def verify_pairs(
    database: str | Path,
    pairs: Iterable[Pair],
    options: VerifyOptions | None = None,
    work_database: str | Path | None = None,
    allow_missing: bool = False,
    work_images: Iterable[str] | None = None,
) -> dict[Pair, int]:
    """Geometric score of every pair (keyed by the sorted name pair; each unordered pair is verified once).

    `database`: a COLMAP database holding SIFT for every name in `pairs`, only read; an image it lacks is an error,
    or with `allow_missing` (mirror_sfm's own cache, where COLMAP could not read a photo) scores 0.
    `work_database`: where the working copy (`num_features` features per image, the matches) lives; default beside
    `database` as `<name>-verify-F.db`. Keep it to resume a killed run. `work_images`: the images the working copy
    holds (every image of `pairs` must be among them; None: every image of `database`), e.g. those of a Ray
    worker's part of the pairs.
    """
    options = options or VerifyOptions()
    options.validate()
    database = Path(database)
    keys = checked_pair_keys(database, pairs, allow_missing)
    scores = {k: 0 for k in keys}
    if not keys:
        return scores
    work = (
        Path(work_database)
        if work_database
        else database.with_name(f"{database.stem}-verify-{options.num_features}.db")
    )
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = options.num_threads
    matching.sift.max_ratio = options.max_ratio
    rule = {} if options.max_ratio == VerifyOptions.max_ratio else {"max_ratio": options.max_ratio}
    working_database(database, work, options.num_features, rule, images=work_images, subset=options.feature_subset)
    block = max(BLOCK_PAIRS, len(keys) // 20)
    pair_file = work.with_name(f".{work.name}.{os.getpid()}.pairs.txt")  # this run's block of pairs
    try:
        with tqdm(total=len(keys), desc="verifying pairs", unit="pair", leave=False) as bar, quiet_colmap():
            for start in range(0, len(keys), block):
                chunk = keys[start : start + block]
                pair_file.write_text("".join(f"{a} {b}\n" for a, b in chunk))
                pairing = pycolmap.ImportedPairingOptions()
                pairing.match_list_path = str(pair_file)
                pycolmap.match_image_pairs(
                    str(work),
                    matching_options=matching,
                    pairing_options=pairing,
                    verification_options=two_view_options(options),
                    device=DEVICES[options.device],
                )
                bar.update(len(chunk))
    except (RuntimeError, ValueError) as exc:
        raise MirrorError(f"COLMAP matching failed on {work}: {exc}") from None
    finally:
        pair_file.unlink(missing_ok=True)
    with pycolmap.Database.open(str(work)) as db:
        images = {int(img.image_id): img for img in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
        cells = _GridCells(db, images) if options.score == "effective" else None
        for pair_id, geometry in zip(pair_ids, geometries):
            ids = [int(i) for i in pycolmap.pair_id_to_image_pair(int(pair_id))]
            key = _pair_key(images[ids[0]].name, images[ids[1]].name)
            if key in scores:
                scores[key] = geometric_score(geometry, options.min_num_inliers, cells, ids)
    return scores


class _GridCells:
    """Grid cell of every keypoint of the working database's images (read once per image, on first use)."""

    def __init__(self, db, images: dict):
        self.db, self.images, self.cache = db, images, {}
        self.cameras = {int(c.camera_id): c for c in db.read_all_cameras()}

    def __call__(self, image_id: int):
        if image_id not in self.cache:
            camera = self.cameras[int(self.images[image_id].camera_id)]
            xy = np.asarray(self.db.read_keypoints(image_id))[:, :2]
            cx = np.clip((xy[:, 0] / max(camera.width, 1) * GRID).astype(int), 0, GRID - 1)
            cy = np.clip((xy[:, 1] / max(camera.height, 1) * GRID).astype(int), 0, GRID - 1)
            self.cache[image_id] = cy * GRID + cx
        return self.cache[image_id]


def geometric_score(geometry, min_num_inliers: int, cells: _GridCells | None = None, ids=None) -> int:
    """0 when COLMAP would drop the pair (failed, degenerate or too few inliers); else its inlier count, or with
    `cells` its effective inliers: grid cells holding an inlier, the smaller count of the two images."""
    if geometry is None:
        return 0
    matches = geometry.inlier_matches
    if int(geometry.config) in FAILED_CONFIGS or len(matches) < min_num_inliers:
        return 0
    if cells is None:
        return len(matches)
    return int(min(len(set(cells(ids[0])[matches[:, 0]])), len(set(cells(ids[1])[matches[:, 1]]))))


def rerank_by_geometry(
    pairs: list[Pair], cnn_scores: list[float], geometric: dict[Pair, int], num_matched: int
) -> tuple[list[Pair], list[float], list[int]]:
    """Per query (in first-appearance order), its candidates sorted by (geometric score, CNN score), top K kept.

    A query's candidates are its own shortlist plus every image whose shortlist held the query and verified with it
    (a verified pair is verified both ways: the reverse candidate costs nothing and adds true neighbours the
    query's own CNN ranking placed just below its shortlist). Returns (pairs, CNN scores, geometric scores), each
    query's pairs in rank order.
    """
    per_query: dict[str, dict[str, tuple[int, float]]] = {}
    for (q, d), s in zip(pairs, cnn_scores):
        per_query.setdefault(q, {}).setdefault(d, (geometric.get(_pair_key(q, d), 0), s))
    for (q, d), s in zip(pairs, cnn_scores):
        geo = geometric.get(_pair_key(q, d), 0)
        if geo > 0 and d in per_query and q not in per_query[d]:
            per_query[d][q] = (geo, s)
    out_pairs, out_cnn, out_geo = [], [], []
    for q, cands in per_query.items():
        ranked = sorted(cands.items(), key=lambda c: (-c[1][0], -c[1][1]))  # stable: ties keep shortlist order
        for d, (geo, s) in ranked[:num_matched]:
            out_pairs.append((q, d))
            out_cnn.append(s)
            out_geo.append(geo)
    return out_pairs, out_cnn, out_geo


def light_sift_database(
    image_dir: str | Path, names: list[str], database: str | Path, options: VerifyOptions | None = None
) -> Path:
    """Extract light SIFT (≤ `sift_max_num_features`, ≤ `sift_max_image_size` px) for `names` into `database`,
    a cache mirror_sfm owns; images already there are skipped (resume). Returns the database path."""
    from .colmap.database import images_with_features
    from .colmap.options import ReconstructionOptions
    from .colmap.sift import extract_sift

    options = options or VerifyOptions()
    database = Path(database)
    present = images_with_features(database) if database.is_file() else set()
    missing = [n for n in names if n not in present]
    if missing:
        logger.info("light SIFT for %d image(s) -> %s (%d cached)", len(missing), database, len(present))
        sift = ReconstructionOptions(
            max_image_size=options.sift_max_image_size, max_num_features=options.sift_max_num_features
        )
        # in chunks, for a progress bar (one pycolmap call reports nothing until it ends); each chunk is committed,
        # so a killed run resumes from the chunks done
        with tqdm(total=len(missing), desc="light SIFT", unit="img", leave=False) as bar, quiet_colmap():
            for start in range(0, len(missing), SIFT_CHUNK):
                chunk = missing[start : start + SIFT_CHUNK]
                extract_sift(database, Path(image_dir), chunk, sift)
                bar.update(len(chunk))
    return database


def main(
    shortlist: str | Path,
    database: str | Path,
    output: str | Path,
    num_matched: int = 20,
    options: VerifyOptions | None = None,
    scores_output: str | Path | None = None,
    work_database: str | Path | None = None,
) -> list[Pair]:
    """Step: a shortlist pair file (each query's candidates in CNN order, e.g. from `pairs_from_retrieval.main` at
    depth N) + a COLMAP database with SIFT for its images -> the pair file of each query's top `num_matched` by
    geometric score (failed pairs last, ties in shortlist order), written atomically; returns the pairs.

    `database` is only read; verification matches into `work_database` (default `output` + `-verify.db`; keep it to
    resume). `scores_output`: `name1 name2 inliers` lines (0: failed verification).
    """
    if num_matched < 1:
        raise MirrorError(f"num_matched must be >= 1, got {num_matched}")
    output = Path(output)
    check_writable(output)
    if scores_output:
        check_writable(Path(scores_output))
    candidates = read_pairs(shortlist)
    work = Path(work_database) if work_database else output.with_name(output.stem + "-verify.db")
    geometric = verify_pairs(database, candidates, options, work_database=work)
    # equal CNN scores: the stable sort keeps ties (and failed pairs) in shortlist order
    pairs, _, geo = rerank_by_geometry(candidates, [0.0] * len(candidates), geometric, num_matched)
    write_pairs(output, pairs)
    if scores_output:
        write_pairs(scores_output, pairs, [int(g) for g in geo])
    logger.info("verified %d candidate pairs of %s: %d pairs -> %s", len(geometric), shortlist, len(pairs), output)
    return pairs
