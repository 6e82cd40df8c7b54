"""Training logs: CSV files (one row per logged step) that a resumed run continues without duplicates,
and optional TensorBoard scalars."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..io_utils import write_text_atomic

logger = logging.getLogger(__name__)


class CSVLog:
    """Append rows with fixed columns; on opening, rows past `resume_step` (work lost with a kill) are dropped."""

    def __init__(self, path: str | Path, fields: list[str], resume_step: int = 0):
        self.path, self.fields = Path(path), list(fields)
        kept: list[dict] = []
        if self.path.is_file() and resume_step > 0:
            with self.path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(float(r.get("step") or 0)) <= resume_step]
        lines = [",".join(self.fields)]
        with_rows = _rows_text(kept, self.fields)
        write_text_atomic(self.path, "\n".join(lines) + "\n" + with_rows)
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _rows_text(rows: list[dict], fields: list[str]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


class TensorBoard:
    """Scalars to TensorBoard when asked for and installed; otherwise a no-op."""

    def __init__(self, log_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))
            except Exception as exc:  # tensorboard not installed
                logger.warning("TensorBoard logging off: %s", exc)

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
