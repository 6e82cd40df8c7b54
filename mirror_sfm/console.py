"""Console plumbing shared by the `mirror_sfm` and `gtgen` commands: logging to stderr, one-line errors."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable

from tqdm import tqdm

from .errors import MirrorError

LOG_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


class StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr (not the one at import), so redirection and capture work.

    Records go through `tqdm.write`, which clears the progress bars first and draws them again after,
    so a warning printed while a bar runs gets its own line instead of continuing the bar's.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def add_stderr_handler(logger: logging.Logger) -> None:
    """Give `logger` one stderr handler (idempotent)."""
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)


def _print_line(text: str) -> None:
    """Print `text` on its own stderr line even when a progress bar was left unfinished on the current one."""
    tqdm.write(text, file=sys.stderr)


def run_command(prog: str, func: Callable[[], None], interrupted: str) -> int:
    """Run a command: MirrorError -> one `prog: error: ...` line and exit 2; Ctrl-C -> `interrupted`, 130."""
    try:
        func()
    except MirrorError as exc:
        _print_line(f"{prog}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _print_line(f"{prog}: interrupted ({interrupted})")
        return 130
    except OSError as exc:
        if exc.errno not in _USER_FIXABLE:
            raise
        _print_line(f"{prog}: error: {os_error_line(exc)}")
        return 2
    return 0


# File-system faults the user fixes (space, permissions, a read-only disk): one line, never a traceback.
_USER_FIXABLE = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_line(exc: OSError) -> str:
    """One line for a file-system fault: what failed, on which file, and the fix."""
    fix = {
        errno.ENOSPC: "free some space (finished work is kept; run again to resume)",
        errno.EDQUOT: "free some space (finished work is kept; run again to resume)",
        errno.EROFS: "choose an output on a writable disk",
    }.get(exc.errno, "check its permissions")
    where = f" {exc.filename}" if exc.filename else ""
    return f"file-system error on{where}: {exc.strerror or exc}; {fix}"
