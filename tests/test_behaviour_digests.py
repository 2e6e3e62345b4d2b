"""Behaviour pinned across restructurings: each method's tiny run ends in the checkpoint recorded on the code
before issue 24 (tests/behaviour_digests.json, made by tests/behaviour_runs.py).

The tensors must be bit-identical (same SHA-256) to those recorded on the same machine kind (CPU generation and
SIMD units, torch, Python). Another kind's kernels round differently, and a few AdamW steps on rounding-noise
gradients move weights by about the learning rate, so no tolerance pins a run across kinds: where no record was
made on this kind the tests are skipped, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import behaviour_runs

RECORDED = json.loads((Path(__file__).parent / "behaviour_digests.json").read_text())


def recorded_runs() -> dict:
    record = behaviour_runs.record_for_this_machine(RECORDED)
    if record is None:
        pytest.skip(f"no behaviour digests recorded on this machine kind ({behaviour_runs.machine()}); "
                    f"record them with tests/behaviour_runs.py on the code of a recorded kind's record")
    return record["runs"]


RUN_NAMES = sorted(RECORDED["records"][0]["runs"])


@pytest.mark.parametrize("name", RUN_NAMES)
def test_tiny_run_reproduces_the_recorded_checkpoint(name, tmp_path, shared):
    want = recorded_runs()[name]
    torch.set_num_threads(1)
    got = behaviour_runs.run_one(name, tmp_path, Path(shared(".")))
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    different = [key for key in want if got[key][0] != want[key][0]]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


@pytest.mark.parametrize("name", ["ppkt-lidar", "segmentation"])
def test_a_dataloader_worker_gives_the_same_checkpoint(name, tmp_path, shared):
    """Data preparation in a worker process (train.num_workers = 1) ends in the checkpoint recorded with none:
    each sample draws from its own (seed, epoch, index) stream, so where it is prepared changes nothing."""
    want = recorded_runs()[name]
    torch.set_num_threads(1)
    got = behaviour_runs.run_one(name, tmp_path, Path(shared(".")), workers=1)
    assert all(got[key][0] == want[key][0] for key in want)


@pytest.mark.parametrize("name", ["image2point", "ppkt-lidar", "ppkt-rgbd", "segmentation"])
def test_kernel_maps_built_in_a_dataloader_worker_give_the_same_checkpoint(name, tmp_path, shared):
    """`data.kernel_maps_in_loader`: the worker builds the maps the step would have built (sparse/prebuilt.py)."""
    want = recorded_runs()[name]
    torch.set_num_threads(1)
    got = behaviour_runs.run_one(name, tmp_path, Path(shared(".")), workers=1, data={"kernel_maps_in_loader": True})
    assert all(got[key][0] == want[key][0] for key in want)
