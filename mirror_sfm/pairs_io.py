"""Read and write COLMAP/hloc pair files: one `name1 name2` line a pair, queries in rank order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import MirrorError
from .io_utils import atomic_path

Pair = tuple[str, str]


def write_pairs(path: str | Path, pairs: Iterable[Pair], scores: Sequence | None = None) -> None:
    """Write pairs atomically, one `name1 name2` line each, `name1 name2 score` when scores are given.

    A score may be a float (the CNN score) or a (CNN score, geometric score) tuple: `name1 name2 cnn inliers`,
    where inliers is the verified inlier count (0: the pair failed verification, -1: not verified, e.g. a
    sequential pair). COLMAP and hloc read the first two fields only.
    """
    pairs = list(pairs)
    if scores is not None and len(scores) != len(pairs):
        raise ValueError("scores must have one value per pair")
    for a, b in pairs:
        for name in (a, b):
            if not name or any(c.isspace() for c in name):
                raise MirrorError(f"image name cannot go into a pair file (empty or contains whitespace): {name!r}")
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            if scores is None:
                f.writelines(f"{a} {b}\n" for a, b in pairs)
            else:
                f.writelines(f"{a} {b} {_format_score(s)}\n" for (a, b), s in zip(pairs, scores))


def _format_score(score) -> str:
    if isinstance(score, tuple):
        cnn, geometric = score
        return f"{cnn:.6f} {-1 if geometric is None else int(geometric)}"
    if isinstance(score, int):  # a geometric score alone (inliers)
        return str(score)
    return f"{score:.6f}"


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pair file as COLMAP does: skip blank and `#` lines, take the first two fields."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"pair file not found: {path}")
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            raise MirrorError(f"{path}:{lineno}: expected 'name1 name2', got {line!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def unique_pairs(pairs: Iterable[Pair], symmetric: bool = True) -> list[Pair]:
    """Drop self pairs and repeats, keeping first occurrence order; with `symmetric`, (b, a) repeats (a, b)."""
    seen: set[Pair] = set()
    out = []
    for a, b in pairs:
        if a == b:
            continue
        key = (min(a, b), max(a, b)) if symmetric else (a, b)
        if key in seen:
            continue
        seen.add(key)
        out.append((a, b))
    return out
