"""From a folder of photos to a COLMAP/hloc pair file ranked by matchable-image retrieval.

Each query's neighbours are written in rank order as `query neighbour` lines (hloc's
`pairs_from_retrieval` convention); sequential neighbours in name order can be added for video or
drone strips, and (a, b)/(b, a) repeats dropped on request.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .extract import ExtractionOptions, extract
from .features_io import read_descriptors
from .errors import MirrorError
from .images import list_images
from .model import RetrievalModel, load_model
from .pairs_io import Pair, unique_pairs, write_pairs
from .retrieval import RetrievalOptions, choose_whitening, retrieve

logger = logging.getLogger(__name__)


@dataclass
class PairsOptions:
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    sequential: int = 0        # also pair each image with its next W images in name order
    symmetric: bool = False    # keep one of (a, b) and (b, a)


def sequential_pairs(names: list[str], window: int) -> list[tuple[int, int]]:
    """(i, j) index pairs of each image with its next `window` images in sorted name order."""
    order = np.argsort(names, kind="stable")
    out = []
    for pos, i in enumerate(order):
        for j in order[pos + 1: pos + 1 + window]:
            out.append((int(i), int(j)))
    return out


def rank_pairs(names: list[str], glob: np.ndarray, regional: np.ndarray | None, options: PairsOptions,
               model: RetrievalModel | None = None) -> tuple[list[Pair], list[float]]:
    """Pairs and their scores for every image as a query, in rank order per query."""
    whitening = choose_whitening(options.retrieval, model.whitening if model else None, regional, glob)
    nn = retrieve(glob, regional, options.retrieval, whitening=whitening,
                  rmac_global=options.extraction.pooling == "rmac")
    per_query: list[list[tuple[int, float]]] = [
        [(int(j), float(s)) for j, s in zip(nn.indices[q], nn.scores[q]) if j >= 0] for q in range(len(names))
    ]
    if options.sequential > 0:
        for i, j in sequential_pairs(names, options.sequential):
            sim = float(glob[i] @ glob[j])
            if all(j != k for k, _ in per_query[i]):
                per_query[i].append((j, sim))
    pairs, scores = [], []
    for q, neighbours in enumerate(per_query):
        for j, s in neighbours:
            pairs.append((names[q], names[j]))
            scores.append(s)
    if options.symmetric:
        keep = unique_pairs(pairs, symmetric=True)
        score_of = {}
        for p, s in zip(pairs, scores):
            score_of.setdefault(p, s)
        pairs, scores = keep, [score_of[p] for p in keep]
    return pairs, scores


def generate_pairs(image_dir: str | Path, output: str | Path, num_matched: int = 20,
                   image_names: list[str] | None = None, features: str | Path | None = None,
                   options: PairsOptions | None = None, scores_output: str | Path | None = None,
                   model: RetrievalModel | None = None) -> list[Pair]:
    """Describe the images (cached in `features`, default `output` + `.h5` beside it), retrieve, write pairs.

    Returns the pairs written. The pair file (and the scores file) are written atomically.
    """
    options = options or PairsOptions()
    options = replace(options, retrieval=replace(options.retrieval, num_matched=num_matched))  # caller's stays as is
    output = Path(output)
    features = Path(features) if features else output.with_name(output.stem + "-global-feats.h5")
    model = model or load_model(options.extraction.weights)
    result = extract(image_dir, features, options.extraction, image_names=image_names, model=model)
    names = image_names if image_names is not None else list_images(image_dir)
    good = [n for n in names if n not in result.skipped]
    names, glob, regional = read_descriptors(features, good, regional=options.retrieval.rerank == "prmac")
    if len(names) < 2:
        raise MirrorError(f"need at least two readable images in {image_dir} to make pairs")
    pairs, scores = rank_pairs(names, glob, regional, options, model)
    write_pairs(output, pairs)
    if scores_output:
        write_pairs(scores_output, pairs, scores)
    logger.info("wrote %d pairs for %d images -> %s%s", len(pairs), len(names), output,
                f" ({len(result.skipped)} unreadable images skipped)" if result.skipped else "")
    return pairs
