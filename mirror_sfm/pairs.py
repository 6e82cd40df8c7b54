"""From a folder of photos to a COLMAP/hloc pair file ranked by matchable-image retrieval.

Each image's CNN shortlist (global descriptor, PR-MAC re-ranking) is verified geometrically with SIFT
(``verify``: the features of a COLMAP database, or light SIFT cached beside the output) and its top K by
verified inliers are written in rank order as `query neighbour` lines (hloc's `pairs_from_retrieval`
convention); ``VerifyOptions.method = "none"`` keeps the CNN order (the fast mode). Sequential neighbours
in name order can be added for video or drone strips, and (a, b)/(b, a) repeats dropped on request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import features_io
from .database_reader import FeatureDatabase
from .errors import MirrorError
from .extract import ExtractionOptions, extract, pooling_of
from .images import list_images
from .io_utils import check_writable
from .model import RetrievalModel, load_model
from .pairs_io import Pair, unique_pairs, write_pairs
from .regions import RegionStore, lazy_regions, read_for_retrieval, regions_on_demand
from .retrieval import RetrievalOptions, choose_whitening, retrieve
from .verify import VerifyOptions, light_sift_database, rerank_by_geometry, verify_pairs

if TYPE_CHECKING:
    from .distributed import RayOptions

logger = logging.getLogger(__name__)


@dataclass
class PairsOptions:
    """Everything `generate_pairs` does besides its inputs and outputs.

    Attributes:
        extraction: how descriptors are computed (`ExtractionOptions`).
        retrieval: how each image's neighbours are found; `retrieval.num_matched` is K (`RetrievalOptions`).
        sequential: also pair each image with its next W images in name order (video, drone strips; 0: off).
        symmetric: keep one of (a, b) and (b, a) when both are listed.
        verify: geometric re-ranking of the CNN shortlist (`VerifyOptions`).
    """

    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    sequential: int = 0
    symmetric: bool = False
    verify: VerifyOptions = field(default_factory=VerifyOptions)


def sequential_pairs(names: list[str], window: int) -> list[tuple[int, int]]:
    """(i, j) index pairs of each image with its next `window` images in sorted name order."""
    order = np.argsort(names, kind="stable")
    out = []
    for pos, i in enumerate(order):
        for j in order[pos + 1 : pos + 1 + window]:
            out.append((int(i), int(j)))
    return out


def rank_pairs(
    names: list[str],
    glob: np.ndarray,
    regional: np.ndarray | RegionStore | None,
    options: PairsOptions,
    model: RetrievalModel | None = None,
) -> tuple[list[Pair], list[float]]:
    """CNN pairs and their scores for every image as a query, in rank order per query (+ sequential, symmetric)."""
    pairs, scores = retrieval_pairs(names, glob, regional, options, model)
    return finish_pairs(names, glob, pairs, scores, options)


def retrieval_pairs(
    names: list[str],
    glob: np.ndarray,
    regional: np.ndarray | RegionStore | None,
    options: PairsOptions,
    model: RetrievalModel | None = None,
) -> tuple[list[Pair], list[float]]:
    """Each image's top `options.retrieval.num_matched` neighbours by the CNN (and PR-MAC), in rank order."""
    whitening = choose_whitening(options.retrieval, model.whitening if model else None, regional, glob)
    pooling = pooling_of(options.extraction, model) if model is not None else options.extraction.pooling
    try:
        nn = retrieve(glob, regional, options.retrieval, whitening=whitening, rmac_global=pooling == "rmac")
    finally:
        if isinstance(regional, RegionStore):  # its h5 file (opened again if read again)
            regional.close()
    pairs, scores = [], []
    for q in range(len(names)):
        for j, s in zip(nn.indices[q], nn.scores[q]):
            if j >= 0:
                pairs.append((names[q], names[int(j)]))
                scores.append(float(s))
    return pairs, scores


def finish_pairs(
    names: list[str], glob: np.ndarray, pairs: list[Pair], scores: list, options: PairsOptions
) -> tuple[list[Pair], list]:
    """Add each image's next `sequential` images in name order (after its ranked ones) and, with `symmetric`,
    drop (b, a) when (a, b) is listed. `scores` may hold any per-pair value (sequential pairs get the CNN cosine)."""
    if options.sequential > 0:
        per_query: dict[str, list[tuple[str, object]]] = {n: [] for n in names}
        for p, s in zip(pairs, scores):
            per_query[p[0]].append((p[1], s))
        for i, j in sequential_pairs(names, options.sequential):
            listed = per_query[names[i]]
            if all(names[j] != d for d, _ in listed):
                listed.append((names[j], _sequential_score(glob, i, j, scores)))
        pairs = [(q, d) for q in names for d, _ in per_query[q]]
        scores = [s for q in names for _, s in per_query[q]]
    if options.symmetric:
        keep = unique_pairs(pairs, symmetric=True)
        score_of: dict[Pair, object] = {}
        for p, s in zip(pairs, scores):
            score_of.setdefault(p, s)
        pairs, scores = keep, [score_of[p] for p in keep]
    return pairs, scores


def _sequential_score(glob: np.ndarray, i: int, j: int, scores: list):
    sim = float(glob[i] @ glob[j])
    if scores and isinstance(scores[0], tuple):  # (CNN score, geometric score): not verified
        return (sim, None)
    return sim


def resolve_num_matched(options: PairsOptions, num_matched: int | None) -> PairsOptions:
    """`options` with K settled by one rule: an explicit `num_matched` is K, None keeps `options.retrieval.num_matched`.

    An explicit K that replaces a non-default K set in `options` (both given, and different) is logged as a
    warning naming both. K below 1 is a MirrorError.
    """
    if num_matched is not None and num_matched != options.retrieval.num_matched:
        if options.retrieval.num_matched != RetrievalOptions().num_matched:
            logger.warning(
                "num_matched=%d given: it replaces options.retrieval.num_matched=%d",
                num_matched,
                options.retrieval.num_matched,
            )
        options = replace(options, retrieval=replace(options.retrieval, num_matched=num_matched))
    k = options.retrieval.num_matched
    if k < 1:
        raise MirrorError(f"num_matched (-k) must be >= 1, got {k}")
    return options


def foreign_descriptors(
    features: Path, names: list[str], options: PairsOptions
) -> tuple[np.ndarray, np.ndarray | None, PairsOptions]:
    """Descriptors of `names` from a file mirror_sfm did not write (e.g. hloc's global-feats; read, never
    written), and `options` fitted to it: PR-MAC only where it holds regional vectors, no R-MAC rebuild."""
    prmac = options.retrieval.rerank == "prmac"
    lazy = regions_on_demand(options.retrieval.rerank, len(names), options.retrieval.exact_max)
    glob, regional = features_io.read_foreign_descriptors(features, names, regional=prmac and not lazy)
    if lazy:
        try:
            regional = lazy_regions(features, names, options.retrieval.exact_max)
        except MirrorError:  # not stored for every image: no PR-MAC, as below exact_max
            regional = None
    logger.info(
        "%s was not written by mirror_sfm (e.g. hloc's global-feats): ranking from its %d-d global "
        "descriptors%s; it is not modified",
        features,
        glob.shape[1],
        " and regional ones (PR-MAC)"
        if regional is not None
        else (", without PR-MAC re-ranking (no regional descriptors)" if prmac else ""),
    )
    retrieval = options.retrieval
    if prmac and regional is None:
        retrieval = replace(retrieval, rerank="none")
    if retrieval.whitening == "model":
        raise MirrorError(
            f"--whitening model applies the weights' whitening to their own descriptors, not to "
            f"those of {features}: use --whitening none or database"
        )
    if retrieval.whitening == "auto":
        logger.info(
            "%s records no weights: its descriptors are not whitened (--whitening auto applies a weights "
            "file's whitening only to descriptors made by those weights)",
            features,
        )
        retrieval = replace(retrieval, whitening="none")
    extraction = replace(options.extraction, pooling="mac")  # no R-MAC rebuild of another network's global
    return glob, regional, replace(options, retrieval=retrieval, extraction=extraction)


def generate_pairs(
    image_dir: str | Path,
    output: str | Path,
    num_matched: int | None = None,
    image_names: list[str] | None = None,
    features: str | Path | None = None,
    options: PairsOptions | None = None,
    scores_output: str | Path | None = None,
    model: RetrievalModel | None = None,
    database: str | Path | None = None,
    ray: RayOptions | None = None,
) -> list[Pair]:
    """Describe the images (cached in `features`, default `output` + `-global-feats.h5` beside it), retrieve each
    image's shortlist, verify it with SIFT (unless `options.verify.method == "none"`), write the top K as pairs.

    A `features` file that mirror_sfm did not write (e.g. hloc's global-feats, any dimension) is ranked from
    as it is, never overwritten: it must hold every image; PR-MAC re-ranking needs its regional descriptors.

    K, the pairs kept per image: `num_matched` when given, else `options.retrieval.num_matched` (one rule, see
    `resolve_num_matched`; overriding a non-default K of `options` is logged as a warning). `database`: a COLMAP
    database holding SIFT for these images, read (never written) for verification; without it light SIFT is
    extracted into `output` + `-sift.db` beside the output (resumable); verification matches into `output` +
    `-verify.db` (a copy holding each image's `num_features` largest-scale features; keep it to resume).
    `scores_output`: `name1 name2 cnn_score` lines, plus the geometric score (verified inliers, 0 = failed) as a
    fourth field when verified.
    `ray` with an address: extraction and shortlist verification run on that Ray cluster (`distributed`; light
    SIFT is still extracted by this process), with the same results.
    Returns the pairs written. The pair file (and the scores file) are written atomically.
    """
    if ray is not None and ray.address:
        from .distributed import ray_cluster

        with ray_cluster(ray):  # one cluster for extraction and verification
            return _generate_pairs(
                image_dir, output, num_matched, image_names, features, options, scores_output, model, database, ray
            )
    return _generate_pairs(
        image_dir, output, num_matched, image_names, features, options, scores_output, model, database, None
    )


def _generate_pairs(
    image_dir: str | Path,
    output: str | Path,
    num_matched: int | None,
    image_names: list[str] | None,
    features: str | Path | None,
    options: PairsOptions | None,
    scores_output: str | Path | None,
    model: RetrievalModel | None,
    database: str | Path | None,
    ray: RayOptions | None,
) -> list[Pair]:
    options = resolve_num_matched(options or PairsOptions(), num_matched)
    k = options.retrieval.num_matched
    options.retrieval.validate()
    verify = options.verify
    verify.validate()
    output = Path(output)
    check_writable(output)
    if scores_output:
        check_writable(Path(scores_output))
    features = Path(features) if features else output.with_name(output.stem + "-global-feats.h5")
    names = image_names if image_names is not None else list_images(image_dir)
    if verify.method == "sift" and database is not None:
        with FeatureDatabase(database) as db:  # fail before any work when the database lacks an image
            db.check_names(names)
    skipped: dict[str, str] = {}
    if features_io.is_foreign(features):
        glob, regional, options = foreign_descriptors(features, names, options)
        model = None
    else:
        model = model or load_model(options.extraction.weights)
        result = extract(image_dir, features, options.extraction, image_names=image_names, model=model, ray=ray)
        skipped = result.skipped
        good = [n for n in names if n not in skipped]
        names, glob, regional = read_for_retrieval(
            features, good, options.retrieval.rerank, options.retrieval.exact_max
        )
    if len(names) < 2:
        raise MirrorError(f"need at least two readable images in {image_dir} to make pairs")
    if verify.method == "none":
        pairs, scores = rank_pairs(names, glob, regional, options, model)
    else:
        depth = max(verify.shortlist, k)
        retrieval = replace(options.retrieval, num_matched=depth, shortlist=max(options.retrieval.shortlist, depth))
        candidates, cnn = retrieval_pairs(names, glob, regional, replace(options, retrieval=retrieval), model)
        own_db = database is None
        if own_db:
            database = light_sift_database(image_dir, names, output.with_name(output.stem + "-sift.db"), verify)
        work = output.with_name(output.stem + "-verify.db")
        if ray is not None:
            from .distributed import verify_on_ray

            geometric = verify_on_ray(database, candidates, verify, work, own_db, ray)
        else:
            geometric = verify_pairs(database, candidates, verify, work_database=work, allow_missing=own_db)
        pairs, cnn, geo = rerank_by_geometry(candidates, cnn, geometric, k)
        pairs, scores = finish_pairs(names, glob, pairs, list(zip(cnn, geo)), options)
        logger.info(
            "verified %d candidate pairs (shortlist %d): %d of the %d kept pairs pass",
            len(geometric),
            depth,
            sum(1 for s in scores if s[1]),
            len(pairs),
        )
    write_pairs(output, pairs)
    if scores_output:
        write_pairs(scores_output, pairs, scores)
    logger.info(
        "wrote %d pairs for %d images -> %s%s",
        len(pairs),
        len(names),
        output,
        f" ({len(skipped)} unreadable images skipped)" if skipped else "",
    )
    return pairs
