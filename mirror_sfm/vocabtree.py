"""Build a COLMAP vocabulary tree locally from SIFT descriptors.

COLMAP's default tree is an internet download, which fails offline; a tree trained on a few
thousand images' SIFT (ideally not the scene being evaluated) is a fair vocab-tree baseline.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from .colmap.options import ReconstructionOptions
from .colmap.sift import check_readable, extract_sift
from .errors import MirrorError
from .images import list_images
from .io_utils import atomic_path, check_writable

logger = logging.getLogger(__name__)

SIFT_DIM = 128
EMBEDDING_DIM = 64  # Hamming embedding size COLMAP pairs with 128-d SIFT


def read_descriptors(databases: Path | Sequence[Path], max_descriptors: int | None = None, seed: int = 0) -> np.ndarray:
    """Return SIFT descriptors (N x 128 uint8) of all images in one or more COLMAP databases.

    With `max_descriptors`, a uniform random sample of that many (without replacement) over
    all images, so that training memory stays bounded on large collections.
    """
    databases = [Path(databases)] if isinstance(databases, (str, Path)) else [Path(d) for d in databases]
    counts = _descriptor_counts(databases)
    total = sum(n for _, _, n in counts)
    if total == 0:
        raise MirrorError(f"no SIFT descriptors in {', '.join(map(str, databases))}")
    keep = None
    if max_descriptors is not None and max_descriptors < total:
        keep = np.sort(np.random.default_rng(seed).choice(total, size=max_descriptors, replace=False))
    chunks, start = [], 0
    groups = _group_by_database(counts)
    for database, image_ids in tqdm(
        groups, desc="reading descriptors", unit="db", leave=False, disable=len(groups) < 2
    ):
        with pycolmap.Database.open(str(database)) as db:
            for image_id, n in image_ids:
                rows = None if keep is None else _rows_in(keep, start, n)
                start += n
                if rows is not None and rows.size == 0:
                    continue
                data = np.asarray(db.read_descriptors(image_id).data)
                chunks.append(data if rows is None else data[rows])
    return np.ascontiguousarray(np.concatenate(chunks, axis=0))


def _descriptor_counts(databases: list[Path]) -> list[tuple[Path, int, int]]:
    """(database, image id, number of descriptors) for every image with descriptors."""
    counts = []
    for database in databases:
        if not database.is_file():
            raise MirrorError(f"COLMAP database not found: {database}")
        with pycolmap.Database.open(str(database)) as db:
            for img in sorted(db.read_all_images(), key=lambda im: im.image_id):
                if db.exists_descriptors(img.image_id):
                    counts.append((database, img.image_id, int(db.num_descriptors_for_image(img.image_id))))
    return counts


def _group_by_database(counts: list[tuple[Path, int, int]]) -> list[tuple[Path, list[tuple[int, int]]]]:
    groups: dict[Path, list[tuple[int, int]]] = {}
    for database, image_id, n in counts:
        groups.setdefault(database, []).append((image_id, n))
    return list(groups.items())


def _rows_in(keep: np.ndarray, start: int, n: int) -> np.ndarray:
    """Rows of one image (global range [start, start + n)) that the sorted sample `keep` selects."""
    lo, hi = np.searchsorted(keep, [start, start + n])
    return keep[lo:hi] - start


def build_vocab_tree(
    image_dir: Path | None,
    output: Path,
    num_words: int = 4096,
    database: Path | Sequence[Path] | None = None,
    max_num_features: int = 8192,
    *,
    max_image_size: int = 1600,
    max_descriptors: int | None = None,
    num_iterations: int = 25,
    num_rounds: int = 1,
    num_threads: int = -1,
    device: str = "auto",
    seed: int = 0,
) -> Path:
    """Train a vocabulary tree of `num_words` visual words and write it atomically to `output`.

    Descriptors come from `database` (one or several COLMAP databases) when given, otherwise
    SIFT is extracted from `image_dir` into a temporary database. `max_descriptors` caps the
    k-means training sample (default 64 per word: k-means time grows with it, and a 4096-word
    tree on 262k descriptors takes a few minutes on 2 CPU cores).
    """
    output = Path(output)
    if num_words < 2:
        raise MirrorError(f"num_words must be >= 2, got {num_words}")
    check_writable(output)
    max_descriptors = max_descriptors or 64 * num_words
    t0 = time.perf_counter()
    if database is not None:
        descriptors = read_descriptors(database, max_descriptors, seed)
    elif image_dir is not None:
        sift = ReconstructionOptions(
            max_image_size=max_image_size, max_num_features=max_num_features, num_threads=num_threads, device=device
        )
        descriptors = _descriptors_from_images(Path(image_dir), output.parent, sift, max_descriptors, seed)
    else:
        raise MirrorError("build_vocab_tree needs an image folder or a COLMAP database")
    if len(descriptors) < num_words:
        raise MirrorError(
            f"only {len(descriptors)} SIFT descriptors to train {num_words} visual words; "
            f"use fewer words or more images"
        )
    logger.info("training a %d-word vocabulary tree on %d descriptors", num_words, len(descriptors))
    index = _train_index(descriptors, num_words, num_iterations, num_rounds, num_threads)
    with atomic_path(output) as tmp:
        index.write(str(tmp))
    logger.info("wrote vocabulary tree %s in %.1f s", output, time.perf_counter() - t0)
    return output


def _descriptors_from_images(
    image_dir: Path, work_dir: Path, options: ReconstructionOptions, max_descriptors: int, seed: int
) -> np.ndarray:
    """Extract SIFT from the readable images of `image_dir` into a throwaway database and sample it."""
    names, _ = check_readable(image_dir, list_images(image_dir))
    if not names:
        raise MirrorError(f"no readable image in {image_dir}")
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vocabtree.", dir=work_dir) as tmp:
        database = Path(tmp) / "database.db"
        extract_sift(database, image_dir, names, options)
        return read_descriptors(database, max_descriptors, seed)


def _train_index(
    descriptors: np.ndarray, num_words: int, num_iterations: int, num_rounds: int, num_threads: int
) -> pycolmap.VisualIndex:
    """k-means the descriptors into visual words and learn the Hamming embedding."""
    build = pycolmap.VisualIndex.BuildOptions()
    build.num_visual_words = num_words
    build.num_iterations = num_iterations
    build.num_rounds = num_rounds
    build.num_threads = num_threads
    index = pycolmap.VisualIndex.create(SIFT_DIM, EMBEDDING_DIM)
    # COLMAP converts uint8 SIFT to float by value (FeatureDescriptors.to_float) when querying.
    data = pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT, descriptors.astype(np.float32))
    index.build(build, data)
    return index
