"""`reconstruct`, the one composer: SIFT, a pair method, matching and mapping for one folder -> OUT/stats.json.

The pair set is CNN retrieval, a vocabulary tree, exhaustive or sequential, so the methods can be compared on the
number of pairs matched, registered images, points and time. Every step is a `mirror_sfm.colmap` module (or
`mirror_sfm.pairs` for retrieval); COLMAP's own log goes to OUT/colmap.log (`colmap.logs.colmap_log`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pycolmap
from tqdm import tqdm

from .colmap.database import clear_matches, count_pairs
from .colmap.logs import colmap_log
from .colmap.mapping import model_stats, run_mapping
from .colmap.matching import match_exhaustive, match_pairs, match_sequential
from .colmap.options import ReconstructionOptions, device_name
from .colmap.sift import drop_failed_extractions, list_usable_images, prepare_database
from .colmap.vocabtree import match_vocabtree
from .io_utils import check_writable, write_text_atomic

logger = logging.getLogger(__name__)

STATS_NAME = "stats.json"
STAGES = ("SIFT", "pairs + matching", "mapping")


def retrieval_pairs(
    image_dir: Path, out_dir: Path, names: list[str], options: ReconstructionOptions, database: Path | None = None
) -> Path:
    """Write the CNN retrieval pair file (global features cached beside it) and return its path.

    With `database` (the run's SIFT database) each image's shortlist is verified with its largest-scale SIFT features
    (read-only) unless the retrieval options say `verify: none`; no SIFT is extracted twice.
    """
    from .pairs import generate_pairs  # heavy (torch); only needed for this method

    pairs_path = Path(out_dir) / "pairs-retrieval.txt"
    kwargs = {**options.retrieval_kwargs, "options": _pairs_options(options)}
    generate_pairs(
        image_dir,
        pairs_path,
        num_matched=options.num_matched,
        image_names=names,
        features=Path(out_dir) / "global-feats.h5",
        database=database,
        **kwargs,
    )
    return pairs_path


def _pairs_options(options: ReconstructionOptions):
    """The run's `PairsOptions`: those given in `retrieval_kwargs`, else `pairs`' defaults verifying
    `RECONSTRUCT_SHORTLIST` candidates (what the pairs are made with and what stats.json records)."""
    from .pairs import PairsOptions
    from .verify import RECONSTRUCT_SHORTLIST, VerifyOptions

    return options.retrieval_kwargs.get("options") or PairsOptions(
        verify=VerifyOptions(shortlist=RECONSTRUCT_SHORTLIST)
    )


def run_matching(
    database: Path, image_dir: Path, out_dir: Path, names: list[str], options: ReconstructionOptions
) -> tuple[float, float]:
    """Build the pair set of `options.pairs` and match it; return (pair generation s, matching s)."""
    clear_matches(database)
    t_pairs = 0.0
    t0 = time.perf_counter()
    if options.pairs == "retrieval":
        pairs_path = retrieval_pairs(image_dir, out_dir, names, options, database)
        t_pairs = time.perf_counter() - t0
        logger.info("retrieval pairs (K=%d) in %.1f s", options.num_matched, t_pairs)
        t0 = time.perf_counter()
        match_pairs(database, pairs_path, options)
    elif options.pairs == "vocabtree":
        match_vocabtree(database, options)
    elif options.pairs == "exhaustive":
        match_exhaustive(database, options)
    else:
        match_sequential(database, options)
    t_match = time.perf_counter() - t0
    logger.info("%s matching in %.1f s", options.pairs, t_match)
    return t_pairs, t_match


def reconstruct(
    image_dir: Path, out_dir: Path, options: ReconstructionOptions | None = None, verbose: bool = False
) -> dict:
    """Run SIFT, the chosen pair method, matching and mapping; write and return `out_dir/stats.json`.

    Unreadable images are skipped (and listed in the stats); stats.json is written only when
    the whole run succeeds, so an older one survives a failed run. COLMAP's own log goes to
    `out_dir/colmap.log`, and also to stderr with `verbose`.
    """
    options = options or ReconstructionOptions()
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    options.validate()
    check_writable(out_dir / STATS_NAME)
    t_start = time.perf_counter()
    found, names, skipped = list_usable_images(image_dir, options.image_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("reconstructing %d image(s) of %s with %s pairs", len(names), image_dir, options.pairs)

    # the stage bar shows on a terminal only (disable=None): piped, each nested bar would add a line per refresh
    with (
        colmap_log(out_dir, verbose),
        tqdm(total=len(STAGES), desc="reconstruct", unit="stage", leave=False, disable=None) as bar,
    ):
        bar.set_postfix_str(STAGES[0])
        database, t_feat, reused = prepare_database(out_dir, image_dir, names, options)
        names, skipped = drop_failed_extractions(database, image_dir, names, skipped)
        bar.update(1)
        bar.set_postfix_str(STAGES[1])
        t_pairs, t_match = run_matching(database, image_dir, out_dir, names, options)
        matched, verified = count_pairs(database)
        logger.info("%d pairs matched, %d verified", matched, verified)
        bar.update(1)
        bar.set_postfix_str(STAGES[2])
        t0 = time.perf_counter()
        models = run_mapping(database, image_dir, out_dir, options, num_images=len(names))
        t_map = time.perf_counter() - t0
        bar.update(1)
    mstats = model_stats(models)
    logger.info(
        "mapping in %.1f s: %d/%d images registered, %d points",
        t_map,
        mstats["registered"],
        len(found),
        mstats["sparse_points"],
    )
    if not models:
        logger.warning("mapping produced no model for %s", image_dir)

    stats = {
        "method": options.pairs,
        "image_dir": str(image_dir),
        "images": len(found),
        "images_skipped": skipped,
        "registered": mstats.pop("registered"),
        "pairs_to_match": matched,
        "verified_pairs": verified,
        **mstats,
        "num_matched": options.num_matched if options.pairs in ("retrieval", "vocabtree") else None,
        **({"verify": _verify_record(options)} if options.pairs == "retrieval" else {}),
        "mapper": options.mapper,
        "features_reused": reused,
        "time_s": {
            "features": round(t_feat, 3),
            "pairs": round(t_pairs, 3),
            "matching": round(t_match, 3),
            "mapping": round(t_map, 3),
            "total": round(time.perf_counter() - t_start, 3),
        },
        "pycolmap_version": pycolmap.__version__,
        "device": device_name(options),
    }
    write_text_atomic(out_dir / STATS_NAME, json.dumps(stats, indent=2) + "\n")
    logger.info("wrote %s (total %.1f s)", out_dir / STATS_NAME, stats["time_s"]["total"])
    return stats


def _verify_record(options: ReconstructionOptions) -> dict:
    """How the retrieval pairs were verified (stats.json): method, shortlist and SIFT features used."""
    verify = _pairs_options(options).verify
    return {"method": verify.method, "shortlist": verify.shortlist, "features": verify.num_features}
