"""pycolmap glue, one job per module: options, sift, matching, vocabtree (pairing), mapping, database, logs.

Every public name is importable from here as before the split; `reconstruct` (the composer) and its pair
step live in `mirror_sfm.reconstruct` and are re-exported lazily (that module imports this package's modules).
"""

from __future__ import annotations

from .database import clear_matches, count_pairs, database_images, images_with_features, merge_databases
from .logs import LOG_NAME, colmap_log
from .mapping import largest_model, model_stats, registered_any_model, run_mapping
from .matching import match_exhaustive, match_pairs, match_sequential
from .options import CAMERA_MODES, DEVICES, MAPPERS, PAIR_METHODS, ReconstructionOptions, check_vocab_tree, device_name
from .sift import (
    DATABASE_NAME,
    FEATURES_SIDECAR,
    check_readable,
    drop_failed_extractions,
    extract_sift,
    list_usable_images,
    prepare_database,
)
from .vocabtree import match_vocabtree

_COMPOSER = ("STATS_NAME", "reconstruct", "retrieval_pairs", "run_matching")

__all__ = [
    "CAMERA_MODES",
    "DATABASE_NAME",
    "DEVICES",
    "FEATURES_SIDECAR",
    "LOG_NAME",
    "MAPPERS",
    "PAIR_METHODS",
    "ReconstructionOptions",
    "check_readable",
    "check_vocab_tree",
    "clear_matches",
    "colmap_log",
    "count_pairs",
    "database_images",
    "device_name",
    "drop_failed_extractions",
    "extract_sift",
    "images_with_features",
    "largest_model",
    "list_usable_images",
    "match_exhaustive",
    "match_pairs",
    "match_sequential",
    "match_vocabtree",
    "merge_databases",
    "model_stats",
    "prepare_database",
    "registered_any_model",
    "run_mapping",
    *_COMPOSER,
]


def __getattr__(name: str):
    """`reconstruct` and friends, from `mirror_sfm.reconstruct` on first use."""
    if name in _COMPOSER:
        from .. import reconstruct as composer

        return getattr(composer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
