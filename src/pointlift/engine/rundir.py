"""One directory per run, holding its config, metrics and checkpoints, so runs never overwrite each other.

Under torchrun every process calls the same functions: `create_run_dir` / `claimed_run_dir` make one
directory (rank 0 picks the name, the others receive it) and the `write_*` helpers write from rank 0
only, atomically, so no file of a run is ever written by two processes or left half written.

`claimed_run_dir` is what the training commands use: a directory that already holds a run is not
written into unless the user said `resume` (continue it) or `overwrite` (delete it first); the directory
is locked for the run's lifetime (`runlock`); and a run that fails before it wrote a checkpoint or a
metrics row leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pointlift.engine import distributed as dist_utils
from pointlift.engine import runlock
from pointlift.engine.config import config_to_dict, save_config
from pointlift.errors import PointliftConfigError, PointliftDataError, PointliftError


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


@dataclass
class _Claim:
    """Rank 0's hold on a run directory: the lock, and what to remove if the run fails before it wrote
    anything lasting (`made`: the top directory this run created; else the entries it added)."""

    path: Path
    made: Path | None = None
    before: set[str] = field(default_factory=set)

    def end(self, succeeded: bool) -> None:
        try:
            if not succeeded and not holds_run(self.path, progress_only=True) and not (self.before & RUN_MARKERS):
                self.remove_own_files()
        finally:
            runlock.release(self.path)

    def remove_own_files(self) -> None:
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)
            return
        _remove_entries(self.path, keep=self.before)


RUN_MARKERS = {"checkpoints", "metrics.csv"}  # what a started run leaves in its directory


def holds_run(path: str | Path, progress_only: bool = False) -> bool:
    """Whether `path` holds a run: a checkpoints/ folder or metrics.csv. `progress_only`: a checkpoint or
    at least one metrics row (what a run that failed at its start does not leave)."""
    path = Path(path)
    if not progress_only:
        return any((path / name).exists() for name in RUN_MARKERS)
    metrics = path / "metrics.csv"
    try:
        rows = metrics.read_text().count("\n") - 1 if metrics.is_file() else 0
    except OSError:
        rows = 1  # unreadable: keep it
    return _has_checkpoint(path) or rows > 0


def describe_run(path: str | Path) -> str:
    """The run found in `path`, for messages: its last checkpoint's step and time, else its metrics."""
    from pointlift.engine.checkpoint import read_checkpoint_meta

    sidecar = last_checkpoint(path).with_suffix(".json")
    if sidecar.is_file():
        try:
            meta = read_checkpoint_meta(sidecar)
            return f"last checkpoint at step {meta.get('step')}, written {meta.get('created')}"
        except PointliftError:
            return f"a checkpoint {sidecar} that does not read"
    return "no checkpoint yet, metrics.csv" if (Path(path) / "metrics.csv").exists() else "a checkpoints/ folder"


def _remove_entries(path: Path, keep: set[str]) -> None:
    """Delete everything in `path` but the names in `keep` and the lock."""
    for entry in path.iterdir():
        if entry.name in keep or entry.name == runlock.LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _has_checkpoint(path: str | Path) -> bool:
    return last_checkpoint(path).with_suffix(".json").is_file()


def _make_given_dir(path: Path) -> Path | None:
    """Make `path` (--run-dir) with its missing parents; returns the top directory made (None: it existed).
    A path under a regular file, or in an unwritable place, is one PointliftDataError naming the path."""
    if path.is_dir():
        return None
    if path.exists():
        raise PointliftDataError(path, "--run-dir exists and is not a directory")
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        path.mkdir(parents=True)
    except FileExistsError:  # another run made it this instant: the lock decides
        return None
    except OSError as error:
        raise PointliftDataError(path, f"--run-dir cannot be made ({error.strerror or error}"
                                       f"{f': {error.filename}' if error.filename and str(error.filename) != str(path) else ''})") from None
    return top


def _claim(name: str, root: str | Path, run_dir: str | Path | None, config: Any, resume: bool,
           overwrite: bool) -> _Claim:
    """Rank 0: make or check the directory, lock it, apply --resume / --overwrite, save config.yaml."""
    if resume and overwrite:
        raise PointliftConfigError("--resume and --overwrite: choose one (continue the run, or replace it)")
    if run_dir is None:  # a new timestamped directory: nothing to check
        path = _make_run_dir(name, root, None)
        try:
            if runlock.try_acquire(path) is not None:
                raise PointliftDataError(path, "was locked by another run the moment it was made")
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        claim = _Claim(path, made=path)
    else:
        path = Path(run_dir)
        if resume and not _has_checkpoint(path):
            found = " (it holds a run: --overwrite replaces it)" if holds_run(path) else ""
            raise PointliftConfigError(f"--resume: {path} has no checkpoint to continue "
                                       f"({last_checkpoint(path).name}.json in {path / 'checkpoints'}){found}")
        claim = _Claim(path, made=_make_given_dir(path))
        _lock_given_dir(claim, resume, overwrite)
        claim.before = {entry.name for entry in path.iterdir()} - {runlock.LOCK_NAME}
    try:
        if run_dir is not None and holds_run(path) and not resume:
            if not overwrite:
                raise PointliftConfigError(f"--run-dir {path} already holds a run ({describe_run(path)}): --resume "
                                           "continues it, --overwrite deletes it and starts a new one")
            print(f"pointlift: --overwrite: deleting the run in {path} ({describe_run(path)})", file=sys.stderr)
            _remove_entries(path, keep=set())
            claim.before = set()
        if config is not None:
            save_config(config, path / "config.yaml")
    except BaseException:
        claim.end(succeeded=False)
        raise
    return claim


def _lock_given_dir(claim: _Claim, resume: bool, overwrite: bool) -> None:
    """Lock `claim.path`, taking over a dead owner's lock when the user asked to resume or overwrite."""
    path = claim.path
    owner = runlock.try_acquire(path)
    if owner is not None and owner.is_dead() and (resume or overwrite):
        print(f"pointlift: taking over the lock of {path}: {owner.describe()} no longer runs", file=sys.stderr)
        owner = runlock.take_over(path, owner)
    if owner is None:
        return
    if owner.is_dead():
        raise PointliftConfigError(f"--run-dir {path} was left locked by {owner.describe()}, which no longer runs: "
                                   "--resume continues its run (--overwrite deletes it)")
    raise PointliftConfigError(f"--run-dir {path} is in use by another run ({owner.describe()}): wait for it to "
                               "end or choose another --run-dir")


@contextmanager
def claimed_run_dir(name: str = "run", root: str | Path = "runs", run_dir: str | Path | None = None, *,
                    config: Any = None, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """The run directory of one training run, held for the `with` block (see the module docstring).

    `run_dir=None`: a new `<root>/<name>-<time>`. A given `run_dir` that already holds a run (checkpoints/ or
    metrics.csv) is refused unless `resume` (it must hold a checkpoint) or `overwrite` (its contents are
    deleted first); one locked by a live run is refused; a dead run's lock is taken over on `resume` or
    `overwrite`. Every refusal is one PointliftError raised before anything is written. On leaving the
    block the lock is released; if the block raised before the run wrote a checkpoint or a metrics row,
    what this run made is removed. Under torchrun rank 0 does all of this and every process gets the same
    path, or the same error (so no process waits for another that gave up)."""
    dist_utils.init_distributed()
    claim, error, failure = None, None, None
    if dist_utils.is_main_process():
        try:
            claim = _claim(name, root, run_dir, config, resume, overwrite)
        except (PointliftError, OSError) as caught:
            error = caught
            failure = str(caught) if isinstance(caught, PointliftError) else \
                f"{caught.filename + ': ' if caught.filename else ''}{caught.strerror or caught}"
        if error is not None and not dist_utils.is_distributed():
            raise error
    path, failure = dist_utils.broadcast_object((str(claim.path) if claim is not None else None, failure))
    if failure is not None:
        if error is not None:
            raise error
        raise PointliftConfigError(failure)
    succeeded = False
    try:
        yield Path(path)
        succeeded = True
    finally:
        if claim is not None:
            claim.end(succeeded)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path of this process's own (pid + random suffix) beside `path` to write into; moved
    onto `path` when the block ends without error, removed otherwise. Readers never see a half file,
    and two writers never share a temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if error.filename in (str(tmp), tmp):  # name the file the user asked for, not the temporary one
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically, from rank 0 only (a no-op elsewhere)."""
    path = Path(path)
    if dist_utils.is_main_process():
        with atomic_file(path) as tmp:
            tmp.write_text(text)
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
