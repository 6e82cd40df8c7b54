"""Step: a descriptor file -> a pair file, as hloc's ``pairs_from_retrieval.main(descriptors, output, num_matched)``.

Reads global (and, for PR-MAC, regional) descriptors from an h5 file — mirror_sfm's own (``mirror_sfm extract``) or
hloc's ``global-feats`` (read, never written) — ranks every image against all others and writes each image's top
K as ``query neighbour`` lines in rank order. No images are read. Hand the result (at a depth N >= K) to
``mirror_sfm.verify.main`` to re-rank it by geometry; ``mirror_sfm.pairs.generate_pairs`` chains both in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import features_io
from .errors import MirrorError
from .extract import made_by
from .io_utils import check_writable
from .model import RetrievalModel, is_imagenet, load_model
from .pairs import PairsOptions, foreign_descriptors, rank_pairs, resolve_num_matched
from .pairs_io import Pair, write_pairs
from .regions import read_for_retrieval

logger = logging.getLogger(__name__)


def main(
    descriptors: str | Path,
    output: str | Path,
    num_matched: int | None = None,
    options: PairsOptions | None = None,
    scores_output: str | Path | None = None,
    model: RetrievalModel | None = None,
) -> list[Pair]:
    """Rank the images of `descriptors` and write each one's top K to `output` (atomically); returns the pairs.

    K: `num_matched`, else `options.retrieval.num_matched`. `scores_output`: `name1 name2 cnn_score` lines.
    `model` is needed only for the weights' whitening (default: the weights named in `options.extraction`):
    `whitening = "auto"` applies it when the file records those weights (else none, logged), `"model"` refuses
    a file made by other weights.
    """
    options = resolve_num_matched(options or PairsOptions(), num_matched)
    output, descriptors = Path(output), Path(descriptors)
    check_writable(output)
    if scores_output:
        check_writable(Path(scores_output))
    if features_io.is_foreign(descriptors):
        names = features_io.list_h5_names(descriptors)
        glob, regional, options = foreign_descriptors(descriptors, names, options)
        model = None
    else:
        names, glob, regional = read_for_retrieval(
            descriptors, None, options.retrieval.rerank, options.retrieval.exact_max
        )
        whitening = options.retrieval.whitening
        if whitening == "model" or (
            whitening == "auto" and not (model is None and is_imagenet(options.extraction.weights))
        ):
            model = model or load_model(options.extraction.weights)
            if not made_by(descriptors, model):
                if whitening == "model":
                    raise MirrorError(
                        f"--whitening model: {descriptors} was not described by the weights {model.name} "
                        f"(another network or weights file): use --whitening none or database"
                    )
                if model.whitening is not None:
                    logger.info(
                        "%s was described by other weights than %s: its descriptors are not whitened "
                        "(--whitening auto)",
                        descriptors,
                        model.name,
                    )
                model = None
    pairs, scores = rank_pairs(names, glob, regional, options, model)
    write_pairs(output, pairs)
    if scores_output:
        write_pairs(scores_output, pairs, scores)
    logger.info("wrote %d pairs for %d images -> %s", len(pairs), len(names), output)
    return pairs
