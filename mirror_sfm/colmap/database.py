"""COLMAP database helpers: which images and features it holds, pair counts, clearing matches, merging."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pycolmap

from ..errors import MirrorError
from ..io_utils import atomic_path


def database_images(database: Path) -> dict[str, int]:
    """Map image name -> image id for the images in a COLMAP database (read-only: an older COLMAP's database is
    not migrated by looking at it)."""
    from ..database_reader import FeatureDatabase

    with FeatureDatabase(database) as db:
        return {name: image_id for name, (image_id, _) in db.image_ids.items()}


def images_with_features(database: Path) -> set[str]:
    """Names of the database images that have both keypoints and descriptors (read-only: looking does not change
    the file's bytes or mtime, which the working databases built from it are keyed on)."""
    from ..database_reader import FeatureDatabase

    with FeatureDatabase(database) as db:
        return db.names_with_features()


def merge_databases(parts: list[tuple[str, Path]], output: Path) -> Path:
    """Write one database holding the images (cameras, keypoints, descriptors) of every `(prefix, database)`,
    each image renamed `<prefix>/<name>` so that names from different databases cannot clash."""
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        merged = None
        for i, (prefix, database) in enumerate(parts):
            renamed = Path(work) / f"part{i}.db"
            shutil.copyfile(database, renamed)
            with pycolmap.Database.open(str(renamed)) as db:
                for img in db.read_all_images():
                    img.name = f"{prefix}/{img.name}"
                    db.update_image(img)
            if merged is None:
                merged = renamed
                continue
            target = Path(work) / f"merged{i}.db"
            with (
                pycolmap.Database.open(str(merged)) as a,
                pycolmap.Database.open(str(renamed)) as b,
                pycolmap.Database.open(str(target)) as m,
            ):
                pycolmap.Database.merge(a, b, m)
            merged = target
        if merged is None:
            raise MirrorError("no databases to merge")
        with atomic_path(output) as tmp:
            shutil.copyfile(merged, tmp)
    return output


def count_pairs(database: Path) -> tuple[int, int]:
    """Return (matched, verified) distinct unordered image pairs in a database.

    matched: rows of the `matches` table, i.e. every pair the matcher processed, even those
    that got zero matches; verified: two-view geometries with at least one inlier match.
    """
    with pycolmap.Database.open(str(database)) as db:
        matched = db.num_matched_image_pairs()
        _, num_inliers = db.read_two_view_geometry_num_inliers()
        verified = sum(1 for n in num_inliers if n > 0)
    return matched, verified


def clear_matches(database: Path) -> None:
    """Drop matches and two-view geometries so a new pair method starts from features alone."""
    with pycolmap.Database.open(str(database)) as db:
        db.clear_matches()
        db.clear_two_view_geometries()
