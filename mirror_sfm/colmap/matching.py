"""COLMAP matching and two-view verification of a pair set: an imported pair file, exhaustive or sequential."""

from __future__ import annotations

from pathlib import Path

import pycolmap

from ..errors import MirrorError
from ..pairs_io import read_pairs
from .database import database_images
from .options import DEVICES, ReconstructionOptions, matching_options


def match_pairs(database: Path, pairs_path: Path, options: ReconstructionOptions | None = None) -> None:
    """Match and verify the pairs listed in a COLMAP/hloc pair file; every name must be in `database`."""
    options = options or ReconstructionOptions()
    database, pairs_path = Path(database), Path(pairs_path)
    if not database.is_file():
        raise MirrorError(f"COLMAP database not found: {database}")
    pairs = read_pairs(pairs_path)  # MirrorError when missing
    if not pairs:
        raise MirrorError(f"pair file holds no pairs: {pairs_path}")
    known = database_images(database)
    unknown = sorted({n for pair in pairs for n in pair if n not in known})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise MirrorError(f"{len(unknown)} image name(s) in {pairs_path} are not in database {database}: {shown}")
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pairs_path)
    pycolmap.match_image_pairs(
        str(database),
        matching_options=matching_options(options),
        pairing_options=pairing,
        device=DEVICES[options.device],
    )


def match_exhaustive(database: Path, options: ReconstructionOptions) -> None:
    """Match every image pair."""
    pycolmap.match_exhaustive(str(database), matching_options=matching_options(options), device=DEVICES[options.device])


def match_sequential(database: Path, options: ReconstructionOptions) -> None:
    """Match each image with the next `sequential_overlap` images in name order."""
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = options.sequential_overlap
    pairing.num_threads = options.num_threads
    pycolmap.match_sequential(
        str(database),
        matching_options=matching_options(options),
        pairing_options=pairing,
        device=DEVICES[options.device],
    )
