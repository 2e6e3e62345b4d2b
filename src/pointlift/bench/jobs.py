"""Long benchmarks as a list of independent jobs: run in worker processes, each finished job's record kept in
`<out>/progress.json` at once, so a stopped benchmark keeps its figures and the same command started again
continues where it stopped. A progress file of other settings is refused, never mixed in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from pointlift.bench import worker_pool
from pointlift.engine.rundir import write_json
from pointlift.errors import PointliftDataError


def map_jobs(function: Callable[[dict], tuple[dict, dict]], jobs: list[dict], workers: int) -> Iterator:
    """`function(job) -> (job, record)` over `jobs` as they finish (in worker processes where `workers` > 1)."""
    from concurrent.futures import as_completed

    if workers <= 1:  # in this process, each reported as it ends
        yield from map(function, jobs)
        return
    with worker_pool(workers) as pool:
        yield from (future.result() for future in as_completed([pool.submit(function, job) for job in jobs]))


class ProgressFile:
    """Every finished job's record, by job name, in `path` (JSON) beside the settings that produced it."""

    def __init__(self, path: Path, settings: dict, label: str):
        self.path, self.label = Path(path), label
        self.settings = json.loads(json.dumps(settings))  # as JSON will read it back: tuples become lists
        self.finished: dict[str, dict] = {}
        if self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
            except ValueError:
                raise PointliftDataError(self.path, "progress file is not valid JSON; delete it to start afresh") from None
            if stored.pop("_settings", self.settings) != self.settings:
                raise PointliftDataError(self.path, "holds runs of other settings; use another --out or delete the "
                                                    "folder to start afresh")
            self.finished = stored
            print(f"[bench {label}] continuing: {len(stored)} runs already in {self.path}", flush=True)

    def results(self, jobs: list[dict], function: Callable[[dict], tuple[dict, dict]], workers: int,
                keep: Callable[[dict], dict] = dict) -> Iterator[tuple[dict, dict]]:
        """(job, record) for every job: stored ones first, then the rest as they end (`keep(result)` stored)."""
        for job in jobs:
            if job["name"] in self.finished:
                yield job, self.finished[job["name"]]
        todo = [job for job in jobs if job["name"] not in self.finished]
        for job, result in map_jobs(function, todo, workers):
            self.finished[job["name"]] = keep(result)
            write_json(self.path, {"_settings": self.settings, **self.finished}, indent=1)
            yield job, self.finished[job["name"]]
