"""A COLMAP database of mirror_sfm's own holding the first N SIFT features of another, for verification.

The source (a user's database, or mirror_sfm's light-SIFT cache) is attached read-only (``database_reader``'s
URI: its bytes never change and no file is left beside it). Every table is copied except matches and two-view
geometries; keypoints and descriptors are cut to their first N rows (COLMAP stores the largest scales first),
in SQL, so the copy costs about N/total of the source's size. Works for COLMAP 3.8's schema and 4.x's (pycolmap
migrates the copy, never the source). Written atomically; a sidecar JSON names the source file (size, mtime) and N,
so a stale copy is rebuilt and a fresh one reused (its matches then resume).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from .database_reader import _read_only_uri
from .errors import MirrorError
from .io_utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

NOT_COPIED = {"matches", "two_view_geometries", "sqlite_sequence"}
ROW_BYTES = {"keypoints": 4, "descriptors": 1}  # float32 keypoint rows, uint8 descriptor rows


def _source_key(source: Path, num_features: int, matching: dict | None = None) -> dict:
    st = source.stat()
    return {
        "source": str(source.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "num_features": num_features,
        **({"matching": matching} if matching else {}),
    }


def working_database(source: str | Path, target: str | Path, num_features: int, matching: dict | None = None) -> Path:
    """Make (or reuse) `target`: `source` cut to its first `num_features` features per image, no matches.

    `matching`: the settings the matches stored in `target` are made with (e.g. the ratio test); a copy made for
    other settings is made again, so no pair keeps a match decided by another rule.
    """
    source, target = Path(source), Path(target)
    sidecar = target.with_name(target.name + ".json")
    key = _source_key(source, num_features, matching)
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
            _copy_truncated(source, tmp, num_features)
        except sqlite3.DatabaseError as exc:
            raise MirrorError(f"cannot read COLMAP database {source}: {exc}") from None
    write_text_atomic(sidecar, json.dumps(key, indent=2) + "\n")
    return target


def _copy_truncated(source: Path, target: Path, num_features: int) -> None:
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
            if name in NOT_COPIED:
                continue
            columns = [row[1] for row in con.execute(f"PRAGMA src.table_info({name})")]
            select = [_truncated(c, name, num_features) for c in columns]
            con.execute(f"INSERT INTO main.{name} ({', '.join(columns)}) SELECT {', '.join(select)} FROM src.{name}")
        for kind, _name, sql in schema:
            if kind == "index":
                con.execute(sql)
        con.execute("COMMIT")
        con.execute("DETACH DATABASE src")
    finally:
        con.close()


def _truncated(column: str, table: str, n: int) -> str:
    if table not in ROW_BYTES:
        return column
    if column == "rows":
        return f"min(rows, {int(n)})"
    if column == "data":
        return f"substr(data, 1, min(rows, {int(n)}) * cols * {ROW_BYTES[table]})"
    return column
