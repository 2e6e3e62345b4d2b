"""One directory per run, holding its config, metrics and checkpoints, so runs never overwrite each other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pointlift.engine.config import save_config


def create_run_dir(name: str = "run", root: str | Path = "runs", run_dir: str | Path | None = None,
                   config: Any = None) -> Path:
    """Make `run_dir`, or `<root>/<name>-<YYYYmmdd-HHMMSS>` (suffixed -2, -3... if taken),
    and save `config` (dataclass or dict) as `config.yaml` in it."""
    if run_dir is not None:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, counter = base, 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                counter += 1
                path = base.with_name(f"{base.name}-{counter}")
    if config is not None:
        save_config(config, path / "config.yaml")
    return path


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: str | Path) -> Path:
    """The stem of the run's rolling checkpoint (`last.safetensors` + `last.json`)."""
    return checkpoint_dir(run_dir) / "last"
