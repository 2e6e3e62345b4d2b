"""DDP: 2 CPU processes under torchrun (gloo) take the same steps as 1 process with the same global
batch, and a 2-process run interrupted mid-epoch and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

HELPER = Path(__file__).with_name("ddp_train_helper.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_helper(run_dir, out, processes, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if processes == 1:
        command = [sys.executable, str(HELPER)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(HELPER)]
    done = subprocess.run(command + [str(run_dir), str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
    return load_file(str(out)), meta


def test_two_processes_match_one_and_resume(tmp_path):
    single, single_meta = run_helper(tmp_path / "one", tmp_path / "one.safetensors", 1)
    double, double_meta = run_helper(tmp_path / "two", tmp_path / "two.safetensors", 2)
    assert single_meta == {"step": "18", "world_size": "1"}  # 52 samples // 8 = 6 steps x 3 epochs
    assert double_meta == {"step": "18", "world_size": "2"}
    torch.manual_seed(0)
    initial = torch.nn.Linear(5, 32).weight
    assert not torch.allclose(single["net.0.weight"], initial, atol=1e-3)  # it did train
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=0, atol=1e-5, msg=key)

    run_helper(tmp_path / "cut", tmp_path / "cut.safetensors", 2, "--interrupt-after", "8")
    resumed, resumed_meta = run_helper(tmp_path / "cut", tmp_path / "resumed.safetensors", 2, "--resume")
    assert resumed_meta["step"] == "18"
    for key in double:
        torch.testing.assert_close(resumed[key], double[key], rtol=0, atol=1e-7, msg=key)
