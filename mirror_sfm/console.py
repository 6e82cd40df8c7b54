"""Console plumbing shared by the `mirror_sfm` and `gtgen` commands: logging to stderr, one-line errors."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import MirrorError

LOG_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


class StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr (not the one at import), so redirection and capture work."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def add_stderr_handler(logger: logging.Logger) -> None:
    """Give `logger` one stderr handler (idempotent)."""
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)


def run_command(prog: str, func: Callable[[], None], interrupted: str) -> int:
    """Run a command: MirrorError -> one `prog: error: ...` line and exit 2; Ctrl-C -> `interrupted`, 130."""
    try:
        func()
    except MirrorError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted ({interrupted})", file=sys.stderr)
        return 130
    return 0
