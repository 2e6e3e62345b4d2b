"""DDP: 2 CPU processes under torchrun (gloo) take the same steps as 1 process with the same global
batch, and a 2-process run interrupted mid-epoch and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

HELPER = Path(__file__).with_name("ddp_train_helper.py")


def load_helper():
    spec = importlib.util.spec_from_file_location("ddp_train_helper", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read(path):
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    return load_file(str(path)), meta


def test_two_processes_match_one_and_resume(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(HELPER), str(tmp_path)]
    launched = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    helper = load_helper()  # the 1-process reference runs here meanwhile
    single, single_steps = helper.train_once(tmp_path / "single")
    assert single_steps == 18  # 52 // 8 = 6 steps x 3 epochs
    torch.manual_seed(0)
    assert not torch.allclose(single["net.0.weight"], helper.MLP().net[0].weight, atol=1e-3)  # it trained

    output, _ = launched.communicate(timeout=240)
    assert launched.returncode == 0, output[-4000:]
    double, meta = read(tmp_path / "straight.safetensors")
    assert meta == {"step": "18", "world_size": "2"}
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=0, atol=1e-5, msg=key)

    _, meta = read(tmp_path / "interrupted.safetensors")
    assert meta["step"] == "8"
    resumed, meta = read(tmp_path / "resumed.safetensors")
    assert meta["step"] == "18"
    for key in double:
        torch.testing.assert_close(resumed[key], double[key], rtol=0, atol=1e-7, msg=key)
