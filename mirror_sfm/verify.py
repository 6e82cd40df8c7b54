"""Geometric verification of a retrieval shortlist with the SIFT features COLMAP matches anyway.

Each image's CNN shortlist (its top N candidates) is re-ranked by how well the pair verifies: the first
``num_features`` SIFT features of both images (COLMAP stores the largest scales first) are matched by COLMAP's rule
(mutual nearest neighbours, ratio 0.8, distance 0.7; ``sift_matching``) and a two-view geometry is estimated by
pycolmap (``estimate_two_view_geometry``: E, F or H by RANSAC, 4 px). The geometric score of a pair is its number of
inlier matches, 0 when COLMAP would not keep the pair (fewer than ``min_num_inliers`` inliers, or a degenerate
geometry). Ranking per query: verified pairs first by score, then the others, ties broken by the CNN score.

Features come from a COLMAP database, opened read-only (``database_reader``): the user's own, or a light one
(``light_sift_options``: ≤ 1,024 features, ≤ 1,024 px) extracted into a cache beside the output. Each unordered pair
is verified once. Finished scores go to a cache file (``name1 name2 score`` lines under a header naming the
feature source), so a killed run resumes; memory is bounded by the shortlist and an LRU of decoded features.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pycolmap
import torch
from tqdm import tqdm

from .database_reader import FeatureDatabase, ImageFeatures
from .errors import MirrorError
from .pairs_io import Pair
from .sift_matching import SiftMatchingRule, descriptor_tensor, match_one_to_many

logger = logging.getLogger(__name__)

VERIFY_METHODS = ("sift", "none")
CACHE_VERSION = "mirror_sfm verify cache v1"
FAILED_CONFIGS = {int(pycolmap.TwoViewGeometryConfiguration.UNDEFINED),
                  int(pycolmap.TwoViewGeometryConfiguration.DEGENERATE)}


@dataclass
class VerifyOptions:
    """How each image's CNN shortlist is verified and re-ranked (defaults measured: benchmarks/RESULTS.md §11)."""

    method: str = "sift"          # sift: re-rank the shortlist by verified inliers | none: CNN (+ PR-MAC) order
    shortlist: int = 30           # CNN candidates per image that are verified (N >= K)
    num_features: int = 1024      # first N SIFT features of each image (largest scale first)
    min_num_inliers: int = 15     # COLMAP's TwoViewGeometryOptions.min_num_inliers: fewer fail
    sift_max_image_size: int = 1024   # light SIFT (no --database): long side limit, px
    sift_max_num_features: int = 1024  # light SIFT (no --database): features per image
    num_threads: int = 2          # two-view geometry estimation threads (pycolmap releases the GIL)
    feature_cache: int = 4096     # images whose decoded features stay in memory (LRU)
    seed: int = 0                 # RANSAC seed, so a re-run gives the same scores

    def validate(self) -> None:
        if self.method not in VERIFY_METHODS:
            raise MirrorError(f"verify must be one of {', '.join(VERIFY_METHODS)}; got {self.method!r}")
        for name in ("shortlist", "num_features", "sift_max_image_size", "sift_max_num_features", "num_threads"):
            if getattr(self, name) < 1:
                raise MirrorError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def two_view_options(options: VerifyOptions) -> pycolmap.TwoViewGeometryOptions:
    opts = pycolmap.TwoViewGeometryOptions()
    opts.min_num_inliers = options.min_num_inliers
    opts.ransac.random_seed = options.seed
    return opts


class FeatureCache:
    """LRU of (features, descriptor tensor) per image name, read from the database on demand."""

    def __init__(self, db: FeatureDatabase, num_features: int, capacity: int):
        self.db, self.num_features, self.capacity = db, num_features, capacity
        self._items: OrderedDict[str, tuple[ImageFeatures, torch.Tensor]] = OrderedDict()

    def __getitem__(self, name: str) -> tuple[ImageFeatures, torch.Tensor]:
        item = self._items.get(name)
        if item is None:
            feats = self.db.read(name, self.num_features)
            item = (feats, descriptor_tensor(feats.descriptors))
            self._items[name] = item
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(name)
        return item


def _pair_key(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def _cache_header(database: Path, options: VerifyOptions) -> str:
    st = Path(database).stat()
    return (f"# {CACHE_VERSION} database={Path(database).resolve()} size={st.st_size} mtime_ns={st.st_mtime_ns} "
            f"features={options.num_features} min_inliers={options.min_num_inliers} seed={options.seed}")


def _read_cache(path: Path | None, header: str) -> dict[Pair, int]:
    """Scores finished by an earlier run with the same features and settings; {} when stale or absent."""
    if path is None or not path.is_file():
        return {}
    lines = path.read_text(errors="replace").splitlines()
    if not lines or lines[0] != header:
        logger.info("verification cache %s was made from other features or settings; verifying again", path)
        return {}
    done = {}
    for line in lines[1:]:
        fields = line.split(" ")
        if len(fields) == 3 and fields[2].isdigit():  # a line cut short by a kill is dropped
            done[_pair_key(fields[0], fields[1])] = int(fields[2])
    return done


def verify_pairs(database: str | Path, pairs: Iterable[Pair], options: VerifyOptions | None = None,
                 cache: str | Path | None = None, allow_missing: bool = False) -> dict[Pair, int]:
    """Geometric score of every pair (keyed by the sorted name pair; each unordered pair is verified once).

    `database`: a COLMAP database holding SIFT for every name in `pairs` (read-only); an image it lacks is an
    error, or with `allow_missing` (mirror_sfm's own cache, where COLMAP could not read a photo) scores 0.
    `cache`: a file of finished scores, appended as they come, so a killed run resumes.
    """
    options = options or VerifyOptions()
    options.validate()
    database = Path(database)
    todo_keys = list(dict.fromkeys(_pair_key(a, b) for a, b in pairs if a != b))
    cache = Path(cache) if cache else None
    with FeatureDatabase(database) as db:
        involved = sorted({n for key in todo_keys for n in key})
        if allow_missing:
            absent = {n for n in involved if n not in db.image_ids}
            for name in sorted(absent):
                logger.warning("no SIFT features for %s in %s: its pairs score 0", name, database)
            todo_keys = [k for k in todo_keys if k[0] not in absent and k[1] not in absent]
        else:
            db.check_names(involved)
        header = _cache_header(database, options)
        scores = _read_cache(cache, header)
        todo = [k for k in todo_keys if k not in scores]
        if scores:
            logger.info("verification: %d pairs from %s, %d to verify", len(todo_keys) - len(todo), cache, len(todo))
        features = FeatureCache(db, options.num_features, options.feature_cache)
        sink = _open_cache(cache, header, fresh=not scores)
        try:
            for query, others, results in match_and_estimate(features, todo, two_view_options(options),
                                                             options.num_threads, "verifying pairs"):
                for other, (_, geometry) in zip(others, results):
                    score = geometric_score(geometry, options.min_num_inliers)
                    scores[(query, other)] = score
                    if sink is not None:
                        sink.write(f"{query} {other} {score}\n")
                if sink is not None:
                    sink.flush()
        finally:
            if sink is not None:
                sink.close()
    return scores


def _open_cache(cache: Path | None, header: str, fresh: bool):
    if cache is None:
        return None
    cache.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        sink = open(cache, "w")
        sink.write(header + "\n")
        return sink
    with open(cache, "rb") as f:  # a run killed mid-line left no newline: end that line first
        f.seek(-1, os.SEEK_END)
        ended = f.read(1) == b"\n"
    sink = open(cache, "a")
    if not ended:
        sink.write("\n")
    return sink


def match_and_estimate(features: FeatureCache, pairs: list[Pair], two_view: pycolmap.TwoViewGeometryOptions,
                       num_threads: int, desc: str) -> Iterator[tuple[str, list[str], list[tuple]]]:
    """Match and estimate the two-view geometry of every pair, grouped by first image.

    Yields (query, others, [(matches, geometry or None)] per other); geometry is None where there are fewer
    matches than `two_view.min_num_inliers` (COLMAP would not even try). Matching the next query (torch) overlaps
    the RANSAC of the previous ones (a thread pool: pycolmap releases the GIL).
    """
    by_query: dict[str, list[str]] = defaultdict(list)
    for a, b in pairs:
        by_query[a].append(b)
    min_matches = two_view.min_num_inliers

    def estimate(a: ImageFeatures, b: ImageFeatures, matches: np.ndarray):
        if len(matches) < min_matches:
            return matches, None
        return matches, pycolmap.estimate_two_view_geometry(a.camera, a.keypoints, b.camera, b.keypoints,
                                                            matches, two_view)

    in_flight: deque = deque()
    with ThreadPoolExecutor(num_threads) as pool, \
            tqdm(total=len(pairs), desc=desc, unit="pair", leave=False, disable=not pairs) as bar:
        for query, others in by_query.items():
            q_feats, q_desc = features[query]
            cands = [features[o] for o in others]
            matches = match_one_to_many(q_desc, [c[1] for c in cands])
            in_flight.append((query, others, [pool.submit(estimate, q_feats, c[0], m)
                                              for c, m in zip(cands, matches)]))
            while len(in_flight) > 2:
                q, o, futures = in_flight.popleft()
                yield q, o, [f.result() for f in futures]
                bar.update(len(o))
        while in_flight:
            q, o, futures = in_flight.popleft()
            yield q, o, [f.result() for f in futures]
            bar.update(len(o))


def geometric_score(geometry, min_num_inliers: int) -> int:
    """Inlier matches of COLMAP's two-view geometry; 0 when COLMAP would drop the pair."""
    if geometry is None:
        return 0
    inliers = len(geometry.inlier_matches)
    if int(geometry.config) in FAILED_CONFIGS or inliers < min_num_inliers:
        return 0
    return inliers


def rerank_by_geometry(pairs: list[Pair], cnn_scores: list[float], geometric: dict[Pair, int],
                       num_matched: int) -> tuple[list[Pair], list[float], list[int]]:
    """Per query (in first-appearance order), its candidates sorted by (geometric score, CNN score), top K kept.

    Returns (pairs, CNN scores, geometric scores), each query's pairs in rank order.
    """
    per_query: dict[str, list[tuple[int, float, str]]] = {}
    for (q, d), s in zip(pairs, cnn_scores):
        per_query.setdefault(q, []).append((geometric.get(_pair_key(q, d), 0), s, d))
    out_pairs, out_cnn, out_geo = [], [], []
    for q, cands in per_query.items():
        cands.sort(key=lambda c: (-c[0], -c[1]))
        for geo, s, d in cands[:num_matched]:
            out_pairs.append((q, d))
            out_cnn.append(s)
            out_geo.append(geo)
    return out_pairs, out_cnn, out_geo


def light_sift_database(image_dir: str | Path, names: list[str], database: str | Path,
                        options: VerifyOptions | None = None) -> Path:
    """Extract light SIFT (≤ `sift_max_num_features`, ≤ `sift_max_image_size` px) for `names` into `database`,
    a cache mirror_sfm owns; images already there are skipped (resume). Returns the database path."""
    from .colmap import ReconstructionOptions, extract_sift, images_with_features

    options = options or VerifyOptions()
    database = Path(database)
    present = images_with_features(database) if database.is_file() else set()
    missing = [n for n in names if n not in present]
    if missing:
        logger.info("light SIFT for %d image(s) -> %s (%d cached)", len(missing), database, len(present))
        sift = ReconstructionOptions(max_image_size=options.sift_max_image_size,
                                     max_num_features=options.sift_max_num_features)
        extract_sift(database, Path(image_dir), missing, sift)
    return database
