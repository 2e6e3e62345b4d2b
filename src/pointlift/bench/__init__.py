"""Benchmarks behind `pointlift bench NAME --preset {smoke,cpu,gpu}`.

Each benchmark lives in its own module `pointlift.bench.<name>` with a function
`run(preset: str, out_dir: pathlib.Path) -> BenchResult`; `pointlift.registry.BENCHMARKS` lists them. Presets: `smoke` (seconds, CI-sized),
`cpu` (a real measurement on 2 CPU cores, <= 60 min), `cpu-long` (segmentation: the label-scarce protocols,
<= 2 h on 2 cores), `cpu-full` (image2point only: full ModelNet10 on CPU),
`gpu` (paper-sized, on one GPU).

Naming rule for presets: `PRESETS` here is the tuple of every preset name (the CLI's choices); in a
benchmark module `PRESETS` is its table, preset name -> a frozen `Preset` subclass instance, built with
`<Subclass>.table({...})` so that a misspelt key or an unknown preset name fails when the module is
imported, not halfway through a long run. Every benchmark module's table is typed this way (issue 24);
nested sub-configs handed on to `load_config` stay dicts inside a field. A variant of a preset is
`dataclasses.replace(PRESETS[name], key=value)`; the config record stores `dataclasses.asdict` of it.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pointlift.errors import PointliftConfigError

PRESETS = ("smoke", "cpu", "cpu-long", "cpu-recipes", "cpu-full", "cpu-full-long", "gpu")


def shared_path(relative: str) -> Path:
    """A path under the shared data folder: $POINTLIFT_SHARED, or ../shared beside the repository."""
    root = Path(os.environ.get("POINTLIFT_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
    return root / relative


P = TypeVar("P", bound="Preset")


@dataclass(frozen=True)
class Preset:
    """Base of a benchmark's typed settings: subclass with `@dataclass(frozen=True)`, one field per setting.

    Read settings as attributes (`settings.repeats`); derive a variant with `dataclasses.replace`, which
    also refuses unknown keys.
    """

    @classmethod
    def table(cls: type[P], presets: dict[str, dict[str, Any]]) -> dict[str, P]:
        """{preset name: cls(**values)}; unknown preset names, unknown or missing keys raise at load."""
        known = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        table = {}
        for name, values in presets.items():
            if name not in PRESETS:
                raise PointliftConfigError(f"{cls.__name__}: unknown preset {name!r}; presets are {', '.join(PRESETS)}")
            unknown = sorted(set(values) - set(known))
            missing = [key for key in required if key not in values]
            if unknown or missing:
                raise PointliftConfigError(f"{cls.__name__} preset {name!r}: "
                                           + "; ".join(part for part in (
                                               f"unknown keys {', '.join(unknown)}" if unknown else "",
                                               f"missing keys {', '.join(missing)}" if missing else "") if part)
                                           + f" (known: {', '.join(known)})")
            table[name] = cls(**values)
        return table


@dataclass
class BenchResult:
    """What a benchmark measured: flat metric name -> number, and the exact settings used."""

    metrics: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)


def worker_pool(workers: int):
    """An executor for a benchmark's runs: `workers` spawned processes (one torch thread each, as
    OMP_NUM_THREADS is inherited) when `workers` > 1, otherwise each job run in this process when submitted."""
    from concurrent.futures import Future, ProcessPoolExecutor

    if workers > 1:
        import multiprocessing

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    class InProcess:
        def submit(self, function, *args):
            future = Future()
            future.set_result(function(*args))
            return future

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    return InProcess()
