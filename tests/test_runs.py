"""Runs a user can trust, through the CLI on tiny configs: two identical runs are bit-identical; a
damaged checkpoint, a non-finite run, a wrong init checkpoint or an unwritable run directory each end
with one line and a non-zero exit, never with figures of a failed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import run_configs
from pointlift.cli import main

MODELNET10 = "data/modelnet10_vox32.npz"


def cli(*args) -> int:
    return main([str(a) for a in args])


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def command_and_config(method: str, root: Path, shared, **train) -> tuple[list[str], dict]:
    if method == "ppkt":
        return ["pretrain", "ppkt"], run_configs.ppkt_config(root, **train)
    if method == "i2p-mae":
        return ["pretrain", "i2p-mae"], run_configs.i2p_mae_config(root, **train)
    return ["finetune", "image2point"], run_configs.image2point_config(root, shared(MODELNET10), **train)


# ------------------------------------------------------------------------------------ reproducibility


@pytest.mark.parametrize("method", ["ppkt", "i2p-mae", "image2point"])
def test_two_identical_runs_are_bit_identical(method, tmp_path, shared):
    command, config = command_and_config(method, tmp_path, shared)
    path = run_configs.write(config, tmp_path / "config.yaml")
    for name in ("a", "b"):
        assert cli(*command, "--config", path, "--run-dir", tmp_path / name) == 0
    first, second = final_tensors(tmp_path / "a"), final_tensors(tmp_path / "b")
    assert_bit_identical(first, second)
    assert any(k.startswith("optimizer/") for k in first)  # optimiser state compared too
    # and the seed matters: another seed gives other weights
    command, config = command_and_config(method, tmp_path, shared, seed=1)
    path = run_configs.write(config, tmp_path / "config1.yaml")
    assert cli(*command, "--config", path, "--run-dir", tmp_path / "c") == 0
    other = final_tensors(tmp_path / "c")
    assert any(not torch.equal(first[k], other[k]) for k in first if not k.startswith(("optimizer/", "scheduler/")))
