"""COLMAP's vocabulary-tree pairing: each image matched with its tree neighbours (optionally spatially verified).

Building a tree is `mirror_sfm.vocabtree`; this module only uses one.
"""

from __future__ import annotations

from pathlib import Path

import pycolmap

from ..errors import MirrorError
from .options import DEVICES, ReconstructionOptions, check_vocab_tree, first_line, matching_options  # noqa: F401


def match_vocabtree(database: Path, options: ReconstructionOptions) -> None:
    """Match each image with its vocab-tree neighbours (K others: the query itself is ranked first).

    With `vocab_tree_verify` = N, COLMAP spatially verifies the top N candidates and keeps the best K.
    """
    pairing = pycolmap.VocabTreePairingOptions()
    pairing.vocab_tree_path = str(options.vocab_tree)
    pairing.num_images = options.num_matched + 1
    if options.vocab_tree_verify > 0:
        pairing.num_images = max(options.vocab_tree_verify, options.num_matched + 1)
        pairing.num_images_after_verification = options.num_matched + 1
    pairing.num_threads = options.num_threads
    try:
        pycolmap.match_vocabtree(
            str(database),
            matching_options=matching_options(options),
            pairing_options=pairing,
            device=DEVICES[options.device],
        )
    except (ValueError, RuntimeError) as exc:
        raise MirrorError(f"cannot use vocabulary tree {options.vocab_tree}: {first_line(exc)}") from None
