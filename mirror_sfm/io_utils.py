"""Safe output: atomic writes (a temporary file renamed over the target), a writability check made before any
work, and an exclusive lock so two runs never write the same output at once."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import MirrorError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to `path` only on success.

    On any exception the temporary file is removed and an existing `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(path: str | os.PathLike) -> None:
    """Raise MirrorError, before any work is done, when the file `path` could not be written.

    The path must not be an existing folder, and its folder (or, when that does not exist yet, the
    nearest existing folder above it, where it will be created) must accept new files: a probe file
    is created and removed there, which also catches read-only file systems, where permission bits
    (and, for root, chmod) say nothing. Nothing is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise MirrorError(
            f"output {path} is an existing folder, not a file: give a file path "
            f"(e.g. {path / 'NAME'}) or remove the folder"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise MirrorError(f"cannot write {path}: {folder} is a file, not a folder; choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        why = {
            errno.EROFS: "is on a read-only file system",
            errno.ENOSPC: "is on a full disk",
            errno.EDQUOT: "is on a disk over its quota",
        }.get(exc.errno, "is read-only")
        raise MirrorError(
            f"cannot write {path}: folder {folder} {why} ({exc.strerror}); make it writable or choose another output"
        ) from None
    os.close(fd)
    os.unlink(probe)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: `path`.lock beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output `path` for the whole block; refuse (do not wait) if another run holds it.

    Two runs writing the same output would share its work file (`FILE.partial`) and delete each other's work,
    so the second one stops at once with MirrorError naming the file and the holder's pid, rather than
    waiting an unknown time behind it. The lock is `fcntl.flock` on `FILE.lock` (its text is the holder's
    pid): the kernel releases it when the holder exits, even when killed, so a lock file left behind by a
    crash never blocks a later run. The lock file is removed on release. Without fcntl (Windows) no lock.
    """
    if fcntl is None:
        yield
        return
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MirrorError(
                f"{path} is being written by another mirror_sfm run (pid {holder}); "
                f"wait for it or choose another output"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us may have removed the file between our open and flock: lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still locked, so no other run can be holding this file
        os.close(fd)
