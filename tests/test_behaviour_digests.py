"""Behaviour pinned across restructurings: each method's tiny run ends in the checkpoint recorded on the code
before issue 24 (tests/behaviour_digests.json, made by tests/behaviour_runs.py).

On the machine kind and torch that recorded them the tensors must be bit-identical (same SHA-256). Elsewhere
float rounding may differ (another CPU's kernels), so there each tensor's sum is compared to 1e-4 relative."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import behaviour_runs

RECORDED = json.loads((Path(__file__).parent / "behaviour_digests.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDED["runs"]))
def test_tiny_run_reproduces_the_recorded_checkpoint(name, tmp_path, shared):
    torch.set_num_threads(1)
    root = shared(".")
    got = behaviour_runs.run_one(name, tmp_path, Path(root))
    want = RECORDED["runs"][name]
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    if behaviour_runs.machine() == RECORDED["machine"]:
        different = [key for key in want if got[key][0] != want[key][0]]
        assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    else:
        far = [key for key in want
               if not math.isclose(got[key][1], want[key][1], rel_tol=1e-4, abs_tol=1e-6)]
        assert not far, f"{len(far)} tensor sums differ, e.g. {far[:5]}"


@pytest.mark.parametrize("name", ["ppkt-lidar", "segmentation"])
def test_a_dataloader_worker_gives_the_same_checkpoint(name, tmp_path, shared):
    """Data preparation in a worker process (train.num_workers = 1) ends in the checkpoint recorded with none:
    each sample draws from its own (seed, epoch, index) stream, so where it is prepared changes nothing."""
    torch.set_num_threads(1)
    got = behaviour_runs.run_one(name, tmp_path, Path(shared(".")), workers=1)
    want = RECORDED["runs"][name]
    if behaviour_runs.machine() == RECORDED["machine"]:
        assert all(got[key][0] == want[key][0] for key in want)
    else:
        assert all(math.isclose(got[key][1], want[key][1], rel_tol=1e-4, abs_tol=1e-6) for key in want)
