"""Descriptor store in hloc's layout: an h5 group per image name holding `global_descriptor`.

Each group also holds `regional_descriptors` (R x C, for PR-MAC re-ranking), `image_size` (W, H) and, as
attributes, the source file's size and mtime so a re-run can skip unchanged images. The file's root
attribute `extractor` records the extraction settings, and marks the file as mirror_sfm's: a file made
with other settings is recomputed, but an HDF5 file without that attribute (e.g. hloc's `global-feats`)
was not written by mirror_sfm and is never overwritten (`is_foreign`, `read_foreign_descriptors`).
A run writes `FILE.partial` and renames it to FILE when complete; write failures are one MirrorError line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
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


EXTRACTOR_ATTR = "extractor"


def is_foreign(path: str | Path) -> bool:
    """Whether `path` is a readable HDF5 file that mirror_sfm did not write (no root `extractor` attribute),
    such as hloc's `global-feats` file. Missing or unreadable files are not foreign."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return EXTRACTOR_ATTR not in f.attrs
    except Exception:  # not HDF5, truncated, ...: treated as a damaged cache of ours
        return False


def foreign_file_error(path: Path, what: str) -> MirrorError:
    return MirrorError(
        f"{path} was not written by mirror_sfm (no '{EXTRACTOR_ATTR}' attribute, e.g. hloc's global-feats): {what}"
    )


def read_foreign_descriptors(
    path: str | Path, names: list[str], regional: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Global (N, D) float32 descriptors, L2-normalised, of `names` from a descriptor file mirror_sfm did not
    write (hloc's layout, any dimension D), and the regional ones (N, R, D) float16 when asked and stored for
    every image (else None). A missing name or mixed dimensions is one MirrorError naming the file."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        missing = [n for n in names if n not in f or "global_descriptor" not in f[n]]
        if missing:
            raise foreign_file_error(
                path,
                f"it has no descriptor for image {missing[0]} ({len(missing)} of "
                f"{len(names)} missing); it is never overwritten, so describe the "
                f"images into another --features file",
            )
        try:
            glob = np.stack([np.asarray(f[n]["global_descriptor"][()], np.float32).reshape(-1) for n in names])
            reg = None
            if regional and all("regional_descriptors" in f[n] for n in names):
                reg = np.stack([f[n]["regional_descriptors"][()] for n in names]).astype(np.float16)
        except ValueError as exc:
            raise foreign_file_error(path, f"its descriptors differ in shape ({exc})") from None
    glob /= np.linalg.norm(glob, axis=1, keepdims=True) + 1e-12
    return glob, reg


def open_work_file(path: Path, extractor: dict) -> h5py.File:
    """Open `path`.partial for appending: resume a partial run, else start from a copy of `path`.

    A file mirror_sfm did not write (`is_foreign`) is a MirrorError: it is never overwritten.
    A partial or final file made with other extractor settings is set aside (not reused); so is one that
    cannot be read (corrupt), with a warning that names it. A work file left shorter than HDF5 recorded
    by a disk that filled up is first extended back (see `_repair_truncated`) so its finished images count.
    """
    if is_foreign(path):
        raise foreign_file_error(path, "it is not overwritten; choose another output")
    partial = partial_path(path)
    for candidate in (partial, path):
        if not candidate.exists():
            continue
        try:
            same = _read_extractor(candidate, repair=candidate == partial) == extractor
        except Exception as exc:  # h5py raises OSError, KeyError, ... for corrupt files
            if candidate == partial:
                logger.warning(
                    "unfinished descriptor file %s is corrupt or unreadable (%s); starting it again",
                    candidate,
                    _short(exc),
                )
                _remove(candidate, path)
            else:
                logger.warning(
                    "descriptor cache %s is corrupt or unreadable (%s); it is rebuilt", candidate, _short(exc)
                )
            continue
        if same:
            if candidate == path:
                with write_errors(path):
                    shutil.copyfile(path, partial)
            break
        if candidate == partial:
            _remove(partial, path)
        else:
            logger.info("%s was made with other settings; its descriptors are recomputed", path)
    with write_errors(path):
        f = h5py.File(partial, "a")
        f.attrs[EXTRACTOR_ATTR] = json.dumps(extractor, sort_keys=True)
    return f


def read_extractor(path: str | Path) -> dict:
    """The extraction settings a descriptor file records (its root `extractor` attribute); {} when it records
    none (a foreign file) or cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(EXTRACTOR_ATTR)
            return json.loads(value) if value else {}
    except Exception:
        return {}


def _read_extractor(path: Path, repair: bool) -> dict:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        if not (repair and _repair_truncated(path, exc)):
            raise
        f = h5py.File(path, "r")
    with f:
        return json.loads(f.attrs.get(EXTRACTOR_ATTR, "{}"))


def _repair_truncated(path: Path, exc: OSError) -> bool:
    """Extend a work file cut short by a failed write (disk full) to the length HDF5 recorded; True if done.

    What was flushed before the failure is intact below that length; the bytes added are zeros (sparse,
    so this needs no free space), and the images whose write failed have no file signature, so they are
    described again (`write_batch` writes descriptors, flushes, and only then marks images done).
    """
    m = re.search(r"truncated file: eof = (\d+), sblock->base_addr = \d+, stored_eof = (\d+)", str(exc))
    if not m:
        return False
    eof, stored_eof = int(m.group(1)), int(m.group(2))
    if stored_eof <= eof or path.stat().st_size != eof:
        return False
    try:
        os.truncate(path, stored_eof)
    except OSError:
        return False
    logger.info("%s was cut short by a failed write; resuming from what it holds", path)
    return True


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _remove(partial: Path, path: Path) -> None:
    with write_errors(path):
        partial.unlink()


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@contextlib.contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Turn a failed write of `path`'s work file (disk full, quota, file size limit, I/O error) into one MirrorError.

    h5py reports them as OSError (errno set, or only named in the text) and, when closing, RuntimeError.
    """
    try:
        yield
    except MirrorError:
        raise
    except (OSError, RuntimeError) as exc:
        raise write_error(path, exc) from None


def write_error(path: Path, exc: BaseException) -> MirrorError:
    partial = partial_path(path)
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code is None:
        m = re.search(r"errno = (\d+)", text)
        code = int(m.group(1)) if m else None
    kept = f"finished images are kept in {partial}" if partial.exists() else "nothing was kept"
    if code in DISK_FULL_ERRNOS:
        return MirrorError(f"disk full while writing {path} ({os.strerror(code)}): free space and re-run; {kept}")
    return MirrorError(f"cannot write {path} ({_short(exc)}): check the disk and re-run; {kept}")


def write_batch(
    f: h5py.File, path: Path, items: list[tuple[str, np.ndarray, np.ndarray | None, tuple[int, int], tuple[int, int]]]
) -> None:
    """Store (name, global, regional, image size, file signature) records, crash-safely for a resume.

    The descriptors are written and flushed first; only then are the images marked done (their file
    signature attributes), so an image whose write failed halfway is never taken for finished.
    Write failures become MirrorError (`write_errors`).
    """
    with write_errors(path):
        for name, glob, reg, size, _ in items:
            write_image(f, name, glob, reg, size, None)
        f.flush()
        for name, _, _, _, signature in items:
            mark_done(f, name, signature)
        f.flush()


def close_work_file(f: h5py.File, path: Path, failed: bool) -> None:
    """Close the work file; after a failure (`failed`) a second error while closing is not raised over the first."""
    try:
        with write_errors(path):
            f.close()
    except MirrorError:
        if not failed:
            raise


def finish_work_file(path: Path) -> None:
    """Move the completed work file over the final path (atomic rename)."""
    with write_errors(path):
        os.replace(partial_path(path), path)


def is_fresh(f: h5py.File, name: str, signature: tuple[int, int]) -> bool:
    """Whether `name` is stored with the same file size and mtime."""
    if name not in f or "global_descriptor" not in f[name]:
        return False
    grp = f[name]
    return (int(grp.attrs.get("file_size", -1)), int(grp.attrs.get("file_mtime_ns", -1))) == signature


def write_image(
    f: h5py.File,
    name: str,
    global_desc: np.ndarray,
    regional: np.ndarray | None,
    image_size: tuple[int, int],
    signature: tuple[int, int] | None,
) -> None:
    """Store one image's descriptors; `signature` (size, mtime) marks it done (None: leave that to `mark_done`)."""
    if name in f:
        del f[name]
    grp = f.create_group(name)
    grp.create_dataset("global_descriptor", data=global_desc.astype(np.float16))
    if regional is not None:
        grp.create_dataset("regional_descriptors", data=regional.astype(np.float16))
    grp.create_dataset("image_size", data=np.asarray(image_size, dtype=np.int32))
    if signature is not None:
        mark_done(f, name, signature)


def mark_done(f: h5py.File, name: str, signature: tuple[int, int]) -> None:
    """Record the source file's size and mtime: `is_fresh` then takes the stored descriptors as current."""
    f[name].attrs["file_size"], f[name].attrs["file_mtime_ns"] = signature


def read_descriptors(
    path: str | Path, names: list[str] | None = None, regional: bool = False
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
