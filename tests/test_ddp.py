"""DDP: 2 CPU processes under torchrun (gloo) take the same steps as 1 process with the same global
batch (an MLP exactly; the three methods and segmentation through the CLI within measured tolerances), make one run
directory that only rank 0 writes, resume exactly, and end with one line when a process freezes."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_a_frozen_process_ends_the_run_with_one_line_after_the_collective_timeout(tmp_path):
    """Rank 1 stops itself (SIGSTOP) mid-training; rank 0 must not wait for torch's default 30 minutes."""
    import signal
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), POINTLIFT_COLLECTIVE_TIMEOUT="4")
    ranks = [subprocess.Popen([sys.executable, str(HELPER), str(tmp_path), "freeze"],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        start = time.perf_counter()
        _, err = ranks[0].communicate(timeout=120)
        waited = time.perf_counter() - start
    finally:
        ranks[1].send_signal(signal.SIGKILL)  # works on a stopped process
        ranks[1].communicate()
    assert ranks[0].returncode == 3, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("pointlift:")]
    assert len(lines) == 1 and "collective wait failed" in lines[0] and "died or froze" in lines[0], err[-3000:]
    assert "Traceback" not in err
    assert waited < 90


# ------------------------------------------------------------------------------------ the three methods

METHODS_HELPER = Path(__file__).with_name("ddp_methods_helper.py")
# Largest |2 processes - 1 process| over the model tensors at the end, allowed. Measured on CPU (gloo):
# image2point 2.5e-6 (released stride-1-stem design; 1.5e-8 with the earlier stride-32 design), 1.08e-5
# once the sparse forward multiplied by contiguous weights (issue 17: MKL picks other kernels, which round
# differently for the half and the whole batch; the same test passes at 1e-5 with the old operand), and ppkt
# 1.8e-7 after 4 steps (see run_configs.ddp_config). Without SyncBatchNorm: image2point 9.8e-3, ppkt 0.11.
# I2P-MAE cannot be equal: its released losses average over the masked (3D) and visible (2D) middle-scale
# tokens of the local batch, whose counts differ between processes, so N processes weight the rows
# differently from one (and the released "first cloud's token 0" quirk is per process: off here).
# Measured 2.4e-3 after 2 steps with the released network.
# Segmentation cannot be equal either: its cross-entropy is a mean over the labelled points of the local
# batch (as Pointcept's), and the two scans of a step hold different numbers of labelled points, so 2
# processes (one scan each, gradients averaged) weight the points differently from 1 process. Measured
# 4.8e-4 after 4 SGD steps (tiny ScanNet config of run_configs, batch 2, weights of magnitude ~1).
TOLERANCE = {"image2point": 3e-5, "ppkt": 2e-6, "i2p-mae": 1e-2, "segmentation": 2e-3}


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    """One torchrun launch (2 processes) running all three commands without --run-dir; the 1-process
    references run here meanwhile, with --run-dir."""
    import run_configs
    from conftest import require_shared
    from pointlift.cli import main

    modelnet10 = require_shared("data/modelnet10_vox32.npz")
    root = tmp_path_factory.mktemp("ddp_methods")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launched = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(METHODS_HELPER), str(root / "double"), str(modelnet10),
         *TOLERANCE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for method in TOLERANCE:
        words, config = run_configs.ddp_config(method, root / "single" / method, modelnet10)
        path = run_configs.write(config, root / "single" / method / "config.yaml")
        assert main([*words, "--config", str(path), "--run-dir", str(root / "single" / method / "run")]) == 0
    output, _ = launched.communicate(timeout=600)
    assert launched.returncode == 0, output[-4000:]
    return root


@pytest.mark.parametrize("method", list(TOLERANCE))
def test_two_processes_match_one_with_one_run_dir_written_by_rank_0(method, method_runs):
    import json

    from pointlift.engine.metrics import read_metrics

    double = method_runs / "double" / method
    runs = list((double / "runs").iterdir())
    assert len(runs) == 1, runs  # the processes agreed on one directory
    run = runs[0]
    for rank in (0, 1):
        result = json.loads((double / f"result-rank{rank}.json").read_text())
        assert result["code"] == 0
        if rank == 1:
            assert result["writes"] == []  # rank 1 opened nothing for writing in the run directory
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()

    single, _ = read(method_runs / "single" / method / "run" / "checkpoints" / "last.safetensors")
    both, _ = read(run / "checkpoints" / "last.safetensors")
    model_keys = [k for k in single if "/" not in k and single[k].is_floating_point()]
    assert model_keys and set(model_keys) <= set(both)
    worst = max((both[k] - single[k]).abs().max().item() for k in model_keys)
    assert worst <= TOLERANCE[method], (method, worst)
    scale = max(single[k].abs().max().item() for k in model_keys)
    assert scale > 100 * TOLERANCE[method]  # the tolerance is small next to the weights themselves

    if method == "image2point":  # rank 0's evaluation is the one written: a full curve equal to metrics.csv
        results = json.loads((run / "results.json").read_text())
        logged = [row["eval/overall_acc"] for row in read_metrics(run / "metrics.csv") if "eval/overall_acc" in row]
        assert [row["overall_acc"] for row in results["curve"]] == logged and len(logged) == 2
    elif method == "segmentation":  # rank 0 alone wrote the predictions, pictures and report
        assert {"results.json", "report.md", "prediction_vs_gt.png"} <= {p.name for p in run.iterdir()}
        assert [p.name for p in (run / "predictions").iterdir()] == ["scene0010_00.ply"]
    else:
        assert (run / ("ppkt_results.json" if method == "ppkt" else "summary.json")).is_file()
