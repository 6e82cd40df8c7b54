"""Where COLMAP's own log (glog) goes: a file in the run's folder, on stderr only when asked for.

pycolmap logs through glog, which by default also copies every INFO line to stderr (hundreds of lines per
reconstruction). Inside `colmap_log(out_dir)` glog writes INFO and above to ``OUT/colmap.log`` only; errors
still reach stderr, and with `verbose` everything does. glog is process-wide: the settings are restored on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pycolmap

logger = logging.getLogger(__name__)

LOG_NAME = "colmap.log"


@contextlib.contextmanager
def colmap_log(out_dir: str | Path, verbose: bool = False, name: str = LOG_NAME) -> Iterator[Path]:
    """Send COLMAP's log to `out_dir/name` (replaced) while the block runs; yield that path.

    glog names its files ``<prefix><date>-<time>.<pid>``, so it writes to a hidden prefix in `out_dir` that is
    gathered into `name` on exit (also when the block raises).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    glog = pycolmap.logging
    level = glog.Level
    saved = (glog.logtostderr, glog.alsologtostderr, glog.stderrthreshold, glog.minloglevel)
    prefix = f".{name}.{os.getpid()}."
    for stale in out_dir.glob(prefix + "*"):
        stale.unlink()
    glog.logtostderr = False
    glog.alsologtostderr = bool(verbose)
    glog.stderrthreshold = int(level.ERROR)
    glog.minloglevel = int(level.INFO)
    for severity in (level.WARNING, level.ERROR, level.FATAL):  # the INFO file holds every severity
        glog.set_log_destination(severity, "")
    glog.set_log_destination(level.INFO, str(out_dir / prefix))
    target = out_dir / name
    try:
        yield target
    finally:
        glog.set_log_destination(level.INFO, "")  # closes (and flushes) glog's file
        glog.logtostderr, glog.alsologtostderr, glog.stderrthreshold, glog.minloglevel = saved
        _gather(sorted(out_dir.glob(prefix + "*")), target)


def _gather(parts: list[Path], target: Path) -> None:
    """Concatenate glog's file(s) into `target` and remove them; an empty log file when COLMAP said nothing."""
    try:
        with open(target, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
    except OSError as exc:
        logger.warning("cannot write COLMAP's log %s: %s", target, exc)
    finally:
        for part in parts:
            with contextlib.suppress(OSError):
                part.unlink()
