"""Descriptor store in hloc's layout: an h5 group per image name holding `global_descriptor`.

Each group also holds `regional_descriptors` (R x C, for PR-MAC re-ranking), `image_size` (W, H) and, as
attributes, the source file's size and mtime so a re-run can skip unchanged images. The file's root
attribute `extractor` records the extraction settings; a file made with other settings is not reused.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from .errors import MirrorError

logger = logging.getLogger(__name__)


def list_h5_names(path: str | Path) -> list[str]:
    """Names of all image groups (those holding a `global_descriptor`), nested names joined by '/'."""
    names = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.endswith("/global_descriptor"):
                names.append(name[: -len("/global_descriptor")])
        f.visititems(visit)
    return sorted(names)


def file_signature(path: Path) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a file: how a re-run decides an image is unchanged."""
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def open_work_file(path: Path, extractor: dict) -> h5py.File:
    """Open `path`.partial for appending: resume a partial run, else start from a copy of `path`.

    A partial or final file made with other extractor settings is set aside (not reused).
    """
    partial = partial_path(path)
    for candidate in (partial, path):
        if not candidate.exists():
            continue
        try:
            with h5py.File(candidate, "r") as f:
                same = json.loads(f.attrs.get("extractor", "{}")) == extractor
        except Exception:
            logger.warning("ignoring unreadable descriptor file %s", candidate)
            same = False
        if same:
            if candidate == path:
                shutil.copyfile(path, partial)
            break
        if candidate == partial:
            partial.unlink()
        else:
            logger.info("%s was made with other settings; its descriptors are recomputed", path)
    f = h5py.File(partial, "a")
    f.attrs["extractor"] = json.dumps(extractor, sort_keys=True)
    return f


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def finish_work_file(path: Path) -> None:
    """Move the completed work file over the final path (atomic rename)."""
    os.replace(partial_path(path), path)


def is_fresh(f: h5py.File, name: str, signature: tuple[int, int]) -> bool:
    """Whether `name` is stored with the same file size and mtime."""
    if name not in f or "global_descriptor" not in f[name]:
        return False
    grp = f[name]
    return (int(grp.attrs.get("file_size", -1)), int(grp.attrs.get("file_mtime_ns", -1))) == signature


def write_image(f: h5py.File, name: str, global_desc: np.ndarray, regional: np.ndarray | None,
                image_size: tuple[int, int], signature: tuple[int, int]) -> None:
    if name in f:
        del f[name]
    grp = f.create_group(name)
    grp.create_dataset("global_descriptor", data=global_desc.astype(np.float16))
    if regional is not None:
        grp.create_dataset("regional_descriptors", data=regional.astype(np.float16))
    grp.create_dataset("image_size", data=np.asarray(image_size, dtype=np.int32))
    grp.attrs["file_size"], grp.attrs["file_mtime_ns"] = signature


def read_descriptors(path: str | Path, names: list[str] | None = None, regional: bool = False
                     ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Load global (N, D) float32 descriptors, and regional (N, R, C) float16 ones when asked, for `names`."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"descriptor file not found: {path}")
    if names is None:
        names = list_h5_names(path)
    if not names:
        raise MirrorError(f"no descriptors in {path}")
    with h5py.File(path, "r") as f:
        missing = [n for n in names if n not in f or "global_descriptor" not in f[n]]
        if missing:
            raise MirrorError(f"{path} has no descriptor for image {missing[0]} ({len(missing)} missing)")
        glob = np.stack([f[n]["global_descriptor"][()] for n in names]).astype(np.float32)
        reg = None
        if regional:
            if any("regional_descriptors" not in f[n] for n in names):
                raise MirrorError(f"{path} holds no regional descriptors (needed for PR-MAC re-ranking)")
            reg = np.stack([f[n]["regional_descriptors"][()] for n in names])
    return names, glob, reg
