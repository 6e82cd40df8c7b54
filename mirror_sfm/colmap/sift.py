"""SIFT into a COLMAP database: which images are usable, extraction, and a database resumed or started afresh."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pycolmap
from tqdm import tqdm

from ..errors import MirrorError
from ..images import check_names, list_images
from ..io_utils import atomic_path, write_text_atomic
from .database import database_images, images_with_features
from .options import CAMERA_MODES, DEVICES, ReconstructionOptions, extraction_options, features_key

logger = logging.getLogger(__name__)

DATABASE_NAME = "database.db"
FEATURES_SIDECAR = "features.json"  # SIFT settings of database.db, to detect stale features on resume


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def check_readable(image_dir: Path, names: list[str]) -> tuple[list[str], list[str]]:
    """Split `names` into (readable, skipped): zero-byte or undecodable files are skipped.

    The check is `mirror_sfm.images.unreadable_reason`, the one every step shares (a full decode at
    reduced size: a truncated JPEG is skipped here, not left to fail in COLMAP or extraction). Files are
    checked on a few threads (Pillow decodes without the GIL); each skipped file is logged once as a warning.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = [Path(image_dir) / name for name in names]
    readable, skipped = [], []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = pool.map(_unreadable_reason, paths)
        for name, path, reason in zip(
            names,
            paths,
            tqdm(reasons, total=len(names), desc="checking images", unit="img", leave=False, disable=len(names) < 100),
        ):
            if reason is None:
                readable.append(name)
            else:
                logger.warning("skipping unreadable image %s: %s", path, reason)
                skipped.append(name)
    return readable, skipped


def _unreadable_reason(path: Path) -> str | None:
    """Why `path` is no usable image (None: it is); see `mirror_sfm.images.unreadable_reason`."""
    from ..images import unreadable_reason

    return unreadable_reason(path)


def list_usable_images(image_dir: Path, names: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Return (found, readable, skipped) image names (all of `image_dir`, or `names`); MirrorError when none can be
    read."""
    if names is not None:
        check_names(names, image_dir)
    found = list(names) if names is not None else list_images(image_dir)
    readable, skipped = check_readable(image_dir, found)
    if not readable:
        raise MirrorError(f"no readable image in {image_dir} ({len(skipped)} skipped as unreadable)")
    return found, readable, skipped


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def extract_sift(
    database: Path, image_dir: Path, image_names: list[str], options: ReconstructionOptions | None = None
) -> None:
    """Extract SIFT for `image_names` (relative to `image_dir`) into `database`.

    Images already in the database are skipped by COLMAP, so an interrupted run resumes.
    """
    options = options or ReconstructionOptions()
    if not image_names:
        raise MirrorError(f"no images to extract features from in {image_dir}")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    pycolmap.extract_features(
        database_path=str(database),
        image_path=str(image_dir),
        image_names=list(image_names),
        camera_mode=CAMERA_MODES[options.camera_mode],
        extraction_options=extraction_options(options),
        device=DEVICES[options.device],
    )


def prepare_database(
    out_dir: Path, image_dir: Path, names: list[str], options: ReconstructionOptions
) -> tuple[Path, float, bool]:
    """Make `out_dir/database.db` hold SIFT for `names`; return (path, seconds, reused).

    Starts from `options.database_template` when given; otherwise reuses an existing database
    whose SIFT settings match and whose images are a subset of `names` (resume).
    """
    database = Path(out_dir) / DATABASE_NAME
    sidecar = Path(out_dir) / FEATURES_SIDECAR
    key = features_key(options)
    t0 = time.perf_counter()
    if options.database_template is not None:
        extra = set(database_images(options.database_template)) - set(names)
        if extra:
            raise MirrorError(
                f"database template {options.database_template} holds {len(extra)} image(s) that are not "
                f"readable images of this run, e.g. {sorted(extra)[0]}"
            )
        with atomic_path(database) as tmp:
            shutil.copyfile(options.database_template, tmp)
        logger.info("copied SIFT database from %s", options.database_template)
    elif database.exists() and not _reusable(database, sidecar, names, key):
        database.unlink()
    write_text_atomic(sidecar, json.dumps(key, indent=2) + "\n")  # before extracting: a crash resumes
    present = images_with_features(database) if database.exists() else set()
    missing = [n for n in names if n not in present]
    reused = not missing
    if missing:
        logger.info("extracting SIFT for %d image(s) (%d already in the database)", len(missing), len(present))
        extract_sift(database, image_dir, missing, options)
    seconds = time.perf_counter() - t0
    logger.info("SIFT features ready in %.1f s%s", seconds, " (reused)" if reused else "")
    return database, seconds, reused


def _reusable(database: Path, sidecar: Path, names: list[str], key: dict) -> bool:
    """An existing database can be resumed if made with the same SIFT settings and no extra images."""
    if sidecar.exists():
        try:
            if json.loads(sidecar.read_text()) != key:
                logger.info("SIFT settings changed since %s was made; extracting again", database)
                return False
        except (OSError, ValueError):
            return False
    extra = set(database_images(database)) - set(names)
    if extra:
        logger.info(
            "%s holds %d image(s) not in this run (e.g. %s); extracting again", database, len(extra), sorted(extra)[0]
        )
        return False
    return True


def drop_failed_extractions(
    database: Path, image_dir: Path, names: list[str], skipped: list[str]
) -> tuple[list[str], list[str]]:
    """Move images COLMAP could not read (no features in the database) to the skipped list."""
    present = images_with_features(database)
    failed = [n for n in names if n not in present]
    for name in failed:
        logger.warning("skipping image %s: COLMAP could not extract features from it", Path(image_dir) / name)
    if failed and len(failed) == len(names):
        raise MirrorError(f"COLMAP could not read any image in {image_dir}")
    return [n for n in names if n in present], sorted(skipped + failed)
