"""One directory per run, holding its config, metrics and checkpoints, so runs never overwrite each other.

Under torchrun every process calls the same functions: `create_run_dir` makes one directory (rank 0
picks the name, the others receive it) and the `write_*` helpers write from rank 0 only, atomically,
so no file of a run is ever written by two processes or left half written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pointlift.engine import distributed as dist_utils
from pointlift.engine.config import config_to_dict, save_config


def create_run_dir(name: str = "run", root: str | Path = "runs", run_dir: str | Path | None = None,
                   config: Any = None) -> Path:
    """Make `run_dir`, or `<root>/<name>-<YYYYmmdd-HHMMSS>` (suffixed -2, -3... if taken),
    and save `config` (dataclass or dict) as `config.yaml` in it. Under torchrun: one directory,
    made by rank 0 and returned in every process."""
    dist_utils.init_distributed()  # the processes must agree on the name before anything is written
    made, failure = None, None
    if dist_utils.is_main_process():
        try:
            made = _make_run_dir(name, root, run_dir)
            if config is not None:
                save_config(config, made / "config.yaml")
        except OSError as error:
            if not dist_utils.is_distributed():
                raise
            failure = (error.errno, error.strerror or str(error), error.filename)
    made, failure = dist_utils.broadcast_object((str(made) if made is not None else None, failure))
    if failure is not None:  # every process reports rank 0's error instead of waiting for it
        raise OSError(*failure)
    return Path(made)


def _make_run_dir(name: str, root: str | Path, run_dir: str | Path | None) -> Path:
    if run_dir is not None:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, counter = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            counter += 1
            path = base.with_name(f"{base.name}-{counter}")


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically, from rank 0 only (a no-op elsewhere)."""
    path = Path(path)
    if dist_utils.is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as error:  # name the file the user asked for, not the temporary one
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        finally:
            tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, record: Any, **dumps) -> Path:
    """`record` as JSON (dataclasses and paths converted), atomically, from rank 0 only."""
    dumps.setdefault("indent", 2)
    dumps.setdefault("default", str)
    return write_text(path, json.dumps(config_to_dict(record), **dumps) + "\n")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: str | Path) -> Path:
    """The stem of the run's rolling checkpoint (`last.safetensors` + `last.json`)."""
    return checkpoint_dir(run_dir) / "last"
