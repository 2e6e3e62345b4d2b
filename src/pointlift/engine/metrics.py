"""Metric logging: always a CSV file (readable anywhere), TensorBoard as well when it is installed."""

from __future__ import annotations

import csv
import math
import numbers
from pathlib import Path


class MetricsLogger:
    """Appends rows (dicts of scalars) to `path`. Columns are the union of all keys seen; when a
    new key appears the file is rewritten with the wider header (rows are few, so this is cheap).

    `keep_rows`: keep the first `keep_rows` rows of an existing file (resume); None starts afresh.
    `tensorboard_dir`: also write scalars there if `torch.utils.tensorboard` is importable.
    """

    def __init__(self, path: str | Path, keep_rows: int | None = None, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.columns: list[str] = []
        if keep_rows is not None and self.path.is_file():
            with open(self.path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or [])
                for row in reader:
                    if len(self.rows) >= keep_rows:
                        break
                    self.rows.append({k: _parse(v) for k, v in row.items() if v not in ("", None)})
        self._rewrite()
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(tensorboard_dir))

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def log(self, row: dict) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self.columns).writerow(row)
        if self.writer is not None:
            step = int(row.get("step", len(self.rows)))
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, numbers.Number) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _parse(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics CSV with numbers parsed (empty cells left out)."""
    with open(path, newline="") as handle:
        return [{k: _parse(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
