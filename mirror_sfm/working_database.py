"""A COLMAP database of mirror_sfm's own holding N SIFT features per image of another, for verification.

The source (a user's database, or mirror_sfm's light-SIFT cache) is attached read-only (``database_reader``'s
URI: its bytes never change and no file is left beside it). Every table is copied except matches and two-view
geometries; keypoints and descriptors are cut to the same N rows per image (``database_reader.feature_subset``:
the N largest scales; COLMAP stores the finest first, so its first N rows would drop the coarse octaves), so the
copy costs about N/total of the source's size. Works for COLMAP 3.8's schema and 4.x's (pycolmap
migrates the copy, never the source). Written atomically; a sidecar JSON names the source file (size, mtime) and N,
so a stale copy is rebuilt and a fresh one reused (its matches then resume).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np

from .database_reader import SUBSET, _read_only_uri, feature_subset
from .errors import MirrorError
from .io_utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

NOT_COPIED = {"matches", "two_view_geometries", "sqlite_sequence"}
ROW_DTYPES = {"keypoints": np.float32, "descriptors": np.uint8}  # the tables cut to a subset of their rows


def _source_key(source: Path, num_features: int, matching: dict | None, subset: str) -> dict:
    st = source.stat()
    return {
        "source": str(source.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "num_features": num_features,
        "subset": subset,
        **({"matching": matching} if matching else {}),
    }


def working_database(
    source: str | Path, target: str | Path, num_features: int, matching: dict | None = None, subset: str = SUBSET
) -> Path:
    """Make (or reuse) `target`: `source` cut to `num_features` features per image (`subset`: which ones, see
    `database_reader.feature_subset`; the largest scales by default), no matches.

    `matching`: the settings the matches stored in `target` are made with (e.g. the ratio test); a copy made for
    other settings is made again, so no pair keeps a match decided by another rule.
    """
    source, target = Path(source), Path(target)
    sidecar = target.with_name(target.name + ".json")
    key = _source_key(source, num_features, matching, subset)
    if target.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()) == key:
                return target
        except ValueError:
            pass
        logger.info("%s was made from another database, feature count or matching rule; making it again", target)
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            _copy_subset_database(source, tmp, num_features, subset)
        except sqlite3.DatabaseError as exc:
            raise MirrorError(f"cannot read COLMAP database {source}: {exc}") from None
    write_text_atomic(sidecar, json.dumps(key, indent=2) + "\n")
    return target


def _copy_subset_database(source: Path, target: Path, num_features: int, subset: str) -> None:
    con = sqlite3.connect(f"{target.resolve().as_uri()}?mode=rwc", uri=True, isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS src", (_read_only_uri(source),))
        schema = con.execute("SELECT type, name, sql FROM src.sqlite_master WHERE sql IS NOT NULL").fetchall()
        tables = [(name, sql) for kind, name, sql in schema if kind == "table" and name not in {"sqlite_sequence"}]
        if not any(name == "keypoints" for name, _ in tables):
            raise MirrorError(f"{source} is not a COLMAP database (no keypoints table)")
        con.execute("BEGIN")
        for name, sql in tables:
            con.execute(sql)
            if name in NOT_COPIED or name in ROW_DTYPES:
                continue
            columns = ", ".join(row[1] for row in con.execute(f"PRAGMA src.table_info({name})"))
            con.execute(f"INSERT INTO main.{name} ({columns}) SELECT {columns} FROM src.{name}")
        _copy_subset(con, num_features, subset)
        for kind, _name, sql in schema:
            if kind == "index":
                con.execute(sql)
        con.execute("COMMIT")
        con.execute("DETACH DATABASE src")
    finally:
        con.close()


def _copy_subset(con: sqlite3.Connection, n: int, subset: str) -> None:
    """Copy keypoints and descriptors keeping each image's `feature_subset` of `n` rows (chosen on its keypoints; an
    image's keypoints and descriptors have the same rows)."""
    tables = {}
    for table in ROW_DTYPES:
        columns = [row[1] for row in con.execute(f"PRAGMA src.table_info({table})")]
        insert = f"INSERT INTO main.{table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        tables[table] = (columns, insert, {c: i for i, c in enumerate(columns)})
    keypoints_columns, _, at = tables["keypoints"]
    descriptors_of = f"SELECT {', '.join(tables['descriptors'][0])} FROM src.descriptors WHERE image_id = ?"
    source = con.cursor()  # row by row (a large database's blobs are never all in memory) while inserting
    for row in source.execute(f"SELECT {', '.join(keypoints_columns)} FROM src.keypoints"):
        image_id, rows, cols, data = row[at["image_id"]], row[at["rows"]], row[at["cols"]], row[at["data"]]
        keep = slice(None)
        if data is not None and rows > n:
            keep = feature_subset(np.frombuffer(data, np.float32).reshape(rows, cols), n, subset)
        _insert_rows(con, "keypoints", tables["keypoints"], list(row), keep)
        desc = con.execute(descriptors_of, (image_id,)).fetchone()
        if desc is not None:
            _insert_rows(con, "descriptors", tables["descriptors"], list(desc), keep)
    orphans = "SELECT {} FROM src.descriptors WHERE image_id NOT IN (SELECT image_id FROM src.keypoints)"
    for desc in con.execute(orphans.format(", ".join(tables["descriptors"][0]))).fetchall():
        _insert_rows(con, "descriptors", tables["descriptors"], list(desc), slice(None))


def _insert_rows(con: sqlite3.Connection, table: str, spec: tuple, row: list, keep) -> None:
    columns, insert, at = spec
    rows, cols, data = row[at["rows"]], row[at["cols"]], row[at["data"]]
    if data is not None and not isinstance(keep, slice):
        kept = np.frombuffer(data, ROW_DTYPES[table]).reshape(rows, cols)[keep]
        row[at["data"]], row[at["rows"]] = kept.tobytes(), len(kept)
    con.execute(insert, row)
