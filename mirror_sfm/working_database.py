"""A COLMAP database of mirror_sfm's own holding the first N SIFT features of another, for verification.

The source (a user's database, or mirror_sfm's light-SIFT cache) is attached read-only (``database_reader``'s
URI: its bytes never change and no file is left beside it). Every table is copied except matches and two-view
geometries; keypoints and descriptors are cut to their first N rows (COLMAP stores the largest scales first),
in SQL, so the copy costs about N/total of the source's size. Works for COLMAP 3.8's schema and 4.x's (pycolmap
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

from .database_reader import _read_only_uri
from .errors import MirrorError
from .io_utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

NOT_COPIED = {"matches", "two_view_geometries", "sqlite_sequence"}
ROW_BYTES = {"keypoints": 4, "descriptors": 1}  # float32 keypoint rows, uint8 descriptor rows


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


def _source_key(source: Path, num_features: int, matching: dict | None = None, images: list[str] | None = None) -> dict:
    st = source.stat()
    subset = {}
    if images is not None:
        digest = hashlib.sha1("\n".join(images).encode()).hexdigest()
        subset = {"images": {"count": len(images), "sha1": digest}}
    return {
        "source": str(source.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "num_features": num_features,
        **({"matching": matching} if matching else {}),
        **subset,
    }


def working_database(
    source: str | Path,
    target: str | Path,
    num_features: int,
    matching: dict | None = None,
    images: Iterable[str] | None = None,
) -> Path:
    """Make (or reuse) `target`: `source` cut to its first `num_features` features per image, no matches.

    `matching`: the settings the matches stored in `target` are made with (e.g. the ratio test); a copy made for
    other settings is made again, so no pair keeps a match decided by another rule. `images`: only these images
    (names; those the source lacks are ignored) and what they refer to are copied; None: every image. A copy made
    for another subset is made again.
    """
    source, target = Path(source), Path(target)
    subset = sorted(set(images)) if images is not None else None
    sidecar = target.with_name(target.name + ".json")
    key = _source_key(source, num_features, matching, subset)
    if target.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()) == key:
                return target
        except ValueError:
            pass
        logger.info(
            "%s was made from another database, feature count, matching rule or image set; making it again", target
        )
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            _copy_truncated(source, tmp, num_features, subset)
        except sqlite3.DatabaseError as exc:
            raise MirrorError(f"cannot read COLMAP database {source}: {exc}") from None
    write_text_atomic(sidecar, json.dumps(key, indent=2) + "\n")
    return target


def _copy_truncated(source: Path, target: Path, num_features: int, images: list[str] | None = None) -> None:
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
            if name in NOT_COPIED:
                continue
            select = [_truncated(c, name, num_features) for c in columns[name]]
            where = f" WHERE {_subset_rows(name, columns[name])}" if images is not None else ""
            con.execute(
                f"INSERT INTO main.{name} ({', '.join(columns[name])}) SELECT {', '.join(select)} FROM src.{name}"
                + where
            )
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


def _truncated(column: str, table: str, n: int) -> str:
    if table not in ROW_BYTES:
        return column
    if column == "rows":
        return f"min(rows, {int(n)})"
    if column == "data":
        return f"substr(data, 1, min(rows, {int(n)}) * cols * {ROW_BYTES[table]})"
    return column
