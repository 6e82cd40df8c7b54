"""A COLMAP database of mirror_sfm's own holding N SIFT features per image of another, for verification.

The source (a user's database, or mirror_sfm's light-SIFT cache) is attached read-only (``database_reader``'s
URI: its bytes never change and no file is left beside it). Every table is copied except matches and two-view
geometries; keypoints and descriptors are cut to the same N rows per image (``database_reader.feature_subset``:
the N largest scales; COLMAP stores the finest first, so its first N rows would drop the coarse octaves), so the
copy costs about N/total of the source's size. Works for COLMAP 3.8's schema and 4.x's (pycolmap
migrates the copy, never the source). Written atomically; a sidecar JSON names the source file (size, mtime) and N,
so a stale copy is rebuilt and a fresh one reused (its matches then resume).

With `images` (a Ray verification worker's part of the pairs touches only some images) the copy holds only those
images and what they refer to: their keypoints, descriptors, cameras, and in COLMAP 4.x's schema their frames,
rigs and pose priors, under their source ids (so pair ids and scores are those of a full copy). Its size then grows
with the images of the part, not with the whole database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .database_reader import SUBSET, _read_only_uri, feature_subset
from .errors import MirrorError
from .io_utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

NOT_COPIED = {"matches", "two_view_geometries", "sqlite_sequence"}
ROW_DTYPES = {"keypoints": np.float32, "descriptors": np.uint8}  # the tables cut to a subset of their rows


CAMERA = 0  # COLMAP's SensorType::CAMERA in frame_data, rigs, rig_sensors and pose_priors (4.x schema)
# With an image subset: the rows each table keeps (the columns the condition needs; other tables are copied whole;
# any other table with an image_id column keeps the subset's rows)
SUBSET_ROWS = {
    "images": ({"image_id"}, "image_id IN temp.keep_images"),
    "cameras": ({"camera_id"}, "camera_id IN temp.keep_cameras"),
    "frames": ({"frame_id"}, "frame_id IN temp.keep_frames"),
    "frame_data": (
        {"frame_id", "data_id", "sensor_type"},
        f"frame_id IN temp.keep_frames AND (sensor_type != {CAMERA} OR data_id IN temp.keep_images)",
    ),
    "rigs": ({"rig_id"}, "rig_id IN temp.keep_rigs"),
    "rig_sensors": ({"rig_id"}, "rig_id IN temp.keep_rigs"),
    "pose_priors": (
        {"corr_data_id", "corr_sensor_type"},
        f"corr_sensor_type != {CAMERA} OR corr_data_id IN temp.keep_images",
    ),
}


def _source_key(
    source: Path, num_features: int, matching: dict | None, images: list[str] | None, feature_subset: str
) -> dict:
    st = source.stat()
    image_set = {}
    if images is not None:
        digest = hashlib.sha1("\n".join(images).encode()).hexdigest()
        image_set = {"images": {"count": len(images), "sha1": digest}}
    return {
        "source": str(source.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "num_features": num_features,
        "feature_subset": feature_subset,
        **({"matching": matching} if matching else {}),
        **image_set,
    }


def working_database(
    source: str | Path,
    target: str | Path,
    num_features: int,
    matching: dict | None = None,
    images: Iterable[str] | None = None,
    subset: str = SUBSET,
) -> Path:
    """Make (or reuse) `target`: `source` cut to `num_features` features per image (`subset`: which ones, see
    `database_reader.feature_subset`; the largest scales by default), no matches.

    `matching`: the settings the matches stored in `target` are made with (e.g. the ratio test); a copy made for
    other settings is made again, so no pair keeps a match decided by another rule. `images`: only these images
    (names; those the source lacks are ignored) and what they refer to are copied; None: every image. A copy made
    for another subset is made again.
    """
    source, target = Path(source), Path(target)
    names = sorted(set(images)) if images is not None else None
    sidecar = target.with_name(target.name + ".json")
    key = _source_key(source, num_features, matching, names, subset)
    if target.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()) == key:
                return target
        except ValueError:
            pass
        logger.info(
            "%s was made from another database, feature count or subset, matching rule or image set; making it again",
            target,
        )
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            _copy_subset_database(source, tmp, num_features, names, subset)
        except sqlite3.DatabaseError as exc:
            raise MirrorError(f"cannot read COLMAP database {source}: {exc}") from None
    write_text_atomic(sidecar, json.dumps(key, indent=2) + "\n")
    return target


def _copy_subset_database(source: Path, target: Path, num_features: int, images: list[str] | None, subset: str) -> None:
    con = sqlite3.connect(f"{target.resolve().as_uri()}?mode=rwc", uri=True, isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS src", (_read_only_uri(source),))
        schema = con.execute("SELECT type, name, sql FROM src.sqlite_master WHERE sql IS NOT NULL").fetchall()
        tables = [(name, sql) for kind, name, sql in schema if kind == "table" and name not in {"sqlite_sequence"}]
        if not any(name == "keypoints" for name, _ in tables):
            raise MirrorError(f"{source} is not a COLMAP database (no keypoints table)")
        columns = {name: [row[1] for row in con.execute(f"PRAGMA src.table_info({name})")] for name, _ in tables}
        if images is not None:
            _select_subset(con, images, columns)
        con.execute("BEGIN")
        for name, sql in tables:
            con.execute(sql)
            if name in NOT_COPIED or name in ROW_DTYPES:
                continue
            where = f" WHERE {_subset_rows(name, columns[name])}" if images is not None else ""
            names = ", ".join(columns[name])
            con.execute(f"INSERT INTO main.{name} ({names}) SELECT {names} FROM src.{name}" + where)
        _copy_features(con, columns, num_features, subset, images is not None)
        for kind, _name, sql in schema:
            if kind == "index":
                con.execute(sql)
        con.execute("COMMIT")
        con.execute("DETACH DATABASE src")
    finally:
        con.close()


def _select_subset(con: sqlite3.Connection, images: list[str], columns: dict[str, list[str]]) -> None:
    """Temporary tables (never in the target file) of the ids to keep: the images named, their frames and rigs
    (COLMAP 4.x), and the cameras the kept images and rigs use."""
    con.execute("CREATE TEMP TABLE keep_names (name TEXT PRIMARY KEY)")
    con.executemany("INSERT OR IGNORE INTO temp.keep_names VALUES (?)", ((n,) for n in images))
    con.execute("CREATE TEMP TABLE keep_images AS SELECT image_id FROM src.images WHERE name IN temp.keep_names")
    frames = {"frame_id", "data_id", "sensor_type"} <= set(columns.get("frame_data", ()))
    frames = frames and {"frame_id", "rig_id"} <= set(columns.get("frames", ()))
    con.execute(
        "CREATE TEMP TABLE keep_frames AS SELECT DISTINCT frame_id FROM src.frame_data"
        f" WHERE sensor_type = {CAMERA} AND data_id IN temp.keep_images"
        if frames
        else "CREATE TEMP TABLE keep_frames (frame_id INTEGER)"
    )
    con.execute(
        "CREATE TEMP TABLE keep_rigs AS SELECT DISTINCT rig_id FROM src.frames WHERE frame_id IN temp.keep_frames"
        if frames
        else "CREATE TEMP TABLE keep_rigs (rig_id INTEGER)"
    )
    cameras = ["SELECT camera_id FROM src.images WHERE image_id IN temp.keep_images"]
    if {"rig_id", "ref_sensor_id", "ref_sensor_type"} <= set(columns.get("rigs", ())):
        cameras.append(
            f"SELECT ref_sensor_id FROM src.rigs WHERE ref_sensor_type = {CAMERA} AND rig_id IN temp.keep_rigs"
        )
    if {"rig_id", "sensor_id", "sensor_type"} <= set(columns.get("rig_sensors", ())):
        cameras.append(
            f"SELECT sensor_id FROM src.rig_sensors WHERE sensor_type = {CAMERA} AND rig_id IN temp.keep_rigs"
        )
    con.execute(f"CREATE TEMP TABLE keep_cameras AS {' UNION '.join(cameras)}")


def _subset_rows(table: str, columns: list[str]) -> str:
    """The WHERE condition of `table`'s rows kept with an image subset ("1": all of them)."""
    needs, condition = SUBSET_ROWS.get(table, ({"image_id"}, "image_id IN temp.keep_images"))
    return condition if needs <= set(columns) else "1"


def _copy_features(con: sqlite3.Connection, columns: dict[str, list[str]], n: int, subset: str, some: bool) -> None:
    """Copy keypoints and descriptors keeping each image's `feature_subset` of `n` rows (chosen on its keypoints; an
    image's keypoints and descriptors have the same rows); `some`: only the images of temp.keep_images."""
    specs = {}
    for table in ROW_DTYPES:
        cols = columns[table]
        insert = f"INSERT INTO main.{table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        specs[table] = (insert, {c: i for i, c in enumerate(cols)})
    where = f" WHERE {_subset_rows('keypoints', columns['keypoints'])}" if some else ""
    descriptors_of = f"SELECT {', '.join(columns['descriptors'])} FROM src.descriptors WHERE image_id = ?"
    at = specs["keypoints"][1]
    source = con.cursor()  # row by row (a large database's blobs are never all in memory) while inserting
    for row in source.execute(f"SELECT {', '.join(columns['keypoints'])} FROM src.keypoints" + where):
        rows, cols, data = row[at["rows"]], row[at["cols"]], row[at["data"]]
        keep = slice(None)
        if data is not None and rows > n:
            keep = feature_subset(np.frombuffer(data, np.float32).reshape(rows, cols), n, subset)
        _insert_rows(con, "keypoints", specs["keypoints"], list(row), keep)
        desc = con.execute(descriptors_of, (row[at["image_id"]],)).fetchone()
        if desc is not None:
            _insert_rows(con, "descriptors", specs["descriptors"], list(desc), keep)
    orphans = f"SELECT {', '.join(columns['descriptors'])} FROM src.descriptors"
    orphans += " WHERE image_id NOT IN (SELECT image_id FROM src.keypoints)"
    orphans += f" AND {_subset_rows('descriptors', columns['descriptors'])}" if some else ""
    for desc in con.execute(orphans).fetchall():
        _insert_rows(con, "descriptors", specs["descriptors"], list(desc), slice(None))


def _insert_rows(con: sqlite3.Connection, table: str, spec: tuple, row: list, keep) -> None:
    insert, at = spec
    rows, cols, data = row[at["rows"]], row[at["cols"]], row[at["data"]]
    if data is not None and not isinstance(keep, slice):
        kept = np.frombuffer(data, ROW_DTYPES[table]).reshape(rows, cols)[keep]
        row[at["data"]], row[at["rows"]] = kept.tobytes(), len(kept)
    con.execute(insert, row)
