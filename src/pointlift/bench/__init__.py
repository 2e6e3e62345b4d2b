"""Benchmarks behind `pointlift bench NAME --preset {smoke,cpu,gpu}`.

Each benchmark lives in its own module `pointlift.bench.<name>` with a function
`run(preset: str, out_dir: pathlib.Path) -> BenchResult`. Presets: `smoke` (seconds, CI-sized),
`cpu` (a real measurement on 2 CPU cores), `cpu-full` (image2point only: full ModelNet10 on CPU),
`gpu` (paper-sized, on one GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS = ("smoke", "cpu", "cpu-full", "cpu-full-long", "gpu")


def shared_path(relative: str) -> Path:
    """A path under the shared data folder: $POINTLIFT_SHARED, or ../shared beside the repository."""
    root = Path(os.environ.get("POINTLIFT_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
    return root / relative


@dataclass
class BenchResult:
    """What a benchmark measured: flat metric name -> number, and the exact settings used."""

    metrics: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)


# Benchmark name (as typed on the command line) -> module that implements it.
BENCHMARKS = {
    "sparse": "pointlift.bench.sparse",
    "image2point": "pointlift.bench.image2point",
    "ppkt": "pointlift.bench.ppkt",
    "i2p-mae": "pointlift.bench.i2p_mae",
    "segmentation": "pointlift.bench.segmentation",
}


def load_benchmark(name: str):
    """The `run(preset, out_dir) -> BenchResult` function of a benchmark."""
    import importlib

    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[name]).run
