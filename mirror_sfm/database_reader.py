"""Read SIFT features from a COLMAP database without touching it.

The database is opened through SQLite's read-only URI (``mode=ro``), so a user's file is never migrated, locked
for writing or changed by a byte, whichever COLMAP made it (3.8's schema and 4.x's share the tables read here):

- ``images(image_id, name, camera_id)``, ``cameras(camera_id, model, width, height, params, prior_focal_length)``;
- ``keypoints(image_id, rows, cols, data)``: float32 rows x cols (x, y first; 2, 4 or 6 columns);
- ``descriptors(image_id, rows, cols, data)``: uint8 rows x 128.

COLMAP's SIFT stores an image's features octave by octave, the finest scales first (pycolmap 4.2's extractor:
the first quarter of an image's rows average 1.6 px of scale, the last 4-7 px). So the first N rows are not "the
N best": they are the N smallest, which a pair seen at two altitudes or zoom levels does not share. A subset of N
(`feature_subset`) keeps the N largest scales instead, as COLMAP's own vocab-tree verification does
(RESULTS.md §11).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from .errors import MirrorError

logger = logging.getLogger(__name__)


SUBSETS = ("largest", "spread", "first")
SUBSET = "largest"  # how verification picks N of an image's features (RESULTS.md §11)


def keypoint_scales(keypoints: np.ndarray) -> np.ndarray | None:
    """Each keypoint's scale from COLMAP's keypoint columns (x, y, a11, a12, a21, a22: sqrt |det A|; x, y, scale,
    orientation: the third), None for bare (x, y) rows."""
    if keypoints.shape[1] >= 6:
        return np.sqrt(np.abs(keypoints[:, 2] * keypoints[:, 5] - keypoints[:, 3] * keypoints[:, 4]))
    if keypoints.shape[1] >= 3:
        return np.abs(keypoints[:, 2])
    return None


def feature_subset(keypoints: np.ndarray, n: int | None, how: str = SUBSET) -> np.ndarray | slice:
    """The rows of an image's keypoints (rows x cols, COLMAP's order: finest octave first) that a subset of `n`
    keeps, in their stored order: "largest", the `n` largest scales (what COLMAP's vocab-tree verification keeps,
    `ExtractTopScaleFeatures`); "spread", `n` rows evenly spaced over the whole list; "first", the first `n` rows
    (the finest scales). All rows when `n` is None or not smaller; keypoints without a scale column keep their first
    `n`."""
    num_rows = len(keypoints)
    if n is None or num_rows <= n:
        return slice(None)
    n = max(int(n), 0)
    if how == "spread":
        return np.round(np.linspace(0, num_rows - 1, n)).astype(np.int64)
    if how == "first":
        return np.arange(n)
    if how != "largest":
        raise ValueError(f"unknown feature subset {how!r}: {', '.join(SUBSETS)}")
    scales = keypoint_scales(keypoints)
    if scales is None:
        return np.arange(n)
    return np.sort(np.argsort(-scales, kind="stable")[:n])


@dataclass
class ImageFeatures:
    """One image's SIFT features (all, or a subset: `feature_subset`) and its camera."""

    name: str
    keypoints: np.ndarray  # (n, 2) float64 pixel coordinates
    descriptors: np.ndarray  # (n, 128) uint8
    camera: pycolmap.Camera


class FeatureDatabase:
    """Read-only access to the SIFT features of a COLMAP database (a context manager).

    `lock_timeout`: seconds to wait while another program (COLMAP writing matches) holds the database locked.
    """

    def __init__(self, path: str | Path, lock_timeout: float = 10.0):
        self.path = Path(path)
        self._timeout = lock_timeout
        if not self.path.is_file():
            raise MirrorError(f"COLMAP database not found: {self.path}")
        try:
            self._con = sqlite3.connect(_read_only_uri(self.path), uri=True, timeout=lock_timeout)
        except sqlite3.DatabaseError as exc:
            raise MirrorError(f"cannot read COLMAP database {self.path}: {exc}") from None
        rows = self._query_all("SELECT image_id, name, camera_id FROM images", ())
        self.image_ids = {name: (image_id, camera_id) for image_id, name, camera_id in rows}
        self._cameras: dict[int, pycolmap.Camera] = {}

    def __enter__(self) -> FeatureDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._con.close()

    def names_with_features(self) -> set[str]:
        """Names of the images that have both a keypoints and a descriptors row (what extraction finished)."""
        rows = self._query_all(
            "SELECT name FROM images WHERE image_id IN (SELECT image_id FROM keypoints)"
            " AND image_id IN (SELECT image_id FROM descriptors)",
            (),
        )
        return {name for (name,) in rows}

    def check_names(self, names: list[str]) -> None:
        """MirrorError naming one image of `names` that the database lacks (with how many are missing)."""
        missing = [n for n in names if n not in self.image_ids]
        if missing and len(missing) == len(names):
            some = next(iter(self.image_ids), None)
            raise MirrorError(
                f"COLMAP database {self.path} holds none of the {len(names)} images (e.g. {missing[0]}"
                + (f"; it has {some}" if some else "; it has no image")
                + "): was it made from another image folder? Names must be relative to the same folder"
            )
        if missing:
            raise MirrorError(
                f"COLMAP database {self.path} lacks {len(missing)} of the {len(names)} images, e.g. {missing[0]}: "
                "extract features for the same image folder (names relative to it), or leave out --database"
            )

    def camera(self, camera_id: int) -> pycolmap.Camera:
        if camera_id not in self._cameras:
            row = self._query(
                "SELECT model, width, height, params, prior_focal_length FROM cameras WHERE camera_id = ?", (camera_id,)
            )
            if row is None:
                raise MirrorError(f"COLMAP database {self.path}: camera {camera_id} is missing")
            model, width, height, params, prior = row
            camera = pycolmap.Camera(
                model=pycolmap.CameraModelId(model),
                width=width,
                height=height,
                params=np.frombuffer(params, dtype=np.float64).copy(),
            )
            camera.has_prior_focal_length = bool(prior)
            self._cameras[camera_id] = camera
        return self._cameras[camera_id]

    def read(self, name: str, max_features: int | None = None) -> ImageFeatures:
        """Image `name`'s keypoints and descriptors: all when `max_features` is None, else the `feature_subset` of
        that many (the largest scales)."""
        image_id, camera_id = self.image_ids[name]
        kp = self._query("SELECT rows, cols, data FROM keypoints WHERE image_id = ?", (image_id,))
        desc = self._query("SELECT rows, cols, data FROM descriptors WHERE image_id = ?", (image_id,))
        keypoints = _blob_array(kp, np.float32)
        descriptors = _blob_array(desc, np.uint8)
        if len(keypoints) != len(descriptors):
            raise MirrorError(
                f"COLMAP database {self.path}: image {name} has {len(keypoints)} keypoints but "
                f"{len(descriptors)} descriptors"
            )
        if len(descriptors) and descriptors.shape[1] != 128:
            raise MirrorError(
                f"COLMAP database {self.path}: image {name} has {descriptors.shape[1]}-d descriptors, not SIFT's 128"
            )
        rows = feature_subset(keypoints, max_features)
        xy, desc = keypoints[rows, :2].astype(np.float64), np.ascontiguousarray(descriptors[rows])
        return ImageFeatures(name, xy, desc, self.camera(camera_id))

    def _query(self, sql: str, args: tuple):
        rows = self._query_all(sql, args)
        return rows[0] if rows else None

    def _query_all(self, sql: str, args: tuple) -> list:
        try:
            return self._con.execute(sql, args).fetchall()  # fetchall: the statement ends, no read lock is kept
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise MirrorError(
                    f"COLMAP database {self.path} is locked by another program (COLMAP still "
                    f"writing?) for over {self._timeout:g} s; wait for it to finish and re-run"
                ) from None
            raise MirrorError(f"cannot read COLMAP database {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise MirrorError(f"cannot read COLMAP database {self.path}: {exc}") from None


def _read_only_uri(path: Path) -> str:
    """SQLite URI that reads `path` without writing anything beside it.

    `mode=ro` never writes the database, but on a WAL database (pycolmap 4 makes them) it creates -wal and -shm
    files next to it and leaves them. When no -wal file exists, nobody is writing: `immutable=1` then reads with
    no side file at all. While COLMAP writes (a -wal exists), `mode=ro` reads what it has committed.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise MirrorError(f"cannot read COLMAP database {path}: {exc.strerror}") from None
    wal = len(header) == 100 and header.startswith(b"SQLite format 3\0") and header[18] == 2
    if wal and not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return uri


def _blob_array(row, dtype) -> np.ndarray:
    if row is None or row[2] is None or row[0] == 0:
        return np.zeros((0, 128 if dtype == np.uint8 else 2), dtype)
    rows, cols, data = row
    return np.frombuffer(data, dtype=dtype).reshape(rows, cols)
