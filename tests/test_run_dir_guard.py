"""A run directory is never clobbered (issue 28): a rerun into a finished run is refused unless --resume or
--overwrite; one run at a time owns a directory (its lock), a dead owner's lock is taken over by --resume;
a run refused before training leaves no directory; under torchrun the refusal reaches every process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import run_configs
from pointlift.cli import main

HELPER = Path(__file__).with_name("run_dir_guard_helper.py")


def cli(*args) -> int:
    return main([str(a) for a in args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("pointlift")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("pointlift: error: "), err[-2000:]
    return lines[0]


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def launch(config: Path, run: Path, *extra) -> subprocess.Popen:
    """`pointlift pretrain ppkt` in a process of its own (the way a second terminal would start it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "pointlift", "pretrain", "ppkt", "--config", str(config),
                             "--run-dir", str(run), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    start = time.perf_counter()
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.perf_counter() - start < timeout, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step PPKT run (checkpoints at steps 2 and 4) and its config file."""
    root = tmp_path_factory.mktemp("guard")
    path = run_configs.write(run_configs.ppkt_config(root), root / "config.yaml")
    assert cli("pretrain", "ppkt", "--config", path, "--run-dir", root / "run") == 0
    return root / "run", path


def test_a_rerun_without_resume_is_refused_and_the_run_kept(finished, capsys):
    run, config = finished
    before = files(run)
    capsys.readouterr()
    assert cli("pretrain", "ppkt", "--config", config, "--run-dir", run) == 2
    line = one_line_error(capsys)
    assert f"--run-dir {run} already holds a run (last checkpoint at step 4" in line, line
    assert "--resume continues it" in line and "--overwrite" in line, line
    assert files(run) == before  # bit-identical, config.yaml and metrics.csv included; no lock left


def test_overwrite_replaces_the_run(finished, tmp_path, capsys):
    import shutil

    run, config = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "stale.txt").write_text("from the old run")
    less = run_configs.ppkt_config(config.parent, max_steps=2)
    capsys.readouterr()
    assert cli("pretrain", "ppkt", "--config", run_configs.write(less, tmp_path / "less.yaml"),
               "--run-dir", copy, "--overwrite") == 0
    assert "--overwrite: deleting the run in" in capsys.readouterr().err
    assert json.loads((copy / "checkpoints" / "last.json").read_text())["step"] == 2
    assert not (copy / "stale.txt").exists() and not (copy / ".lock").exists()
    assert [row.split(",")[0] for row in (copy / "metrics.csv").read_text().splitlines()[1:]] == ["2"]
    with pytest.raises(SystemExit) as refused:  # argparse: one or the other
        cli("pretrain", "ppkt", "--config", config, "--run-dir", copy, "--resume", "--overwrite")
    assert refused.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_a_second_run_into_a_busy_directory_is_refused_at_once(finished, tmp_path, capsys):
    _, config = finished
    longer = run_configs.write(run_configs.ppkt_config(config.parent, max_steps=8), tmp_path / "longer.yaml")
    first = launch(longer, tmp_path / "run")
    try:
        wait_for(tmp_path / "run" / ".lock", first)
        capsys.readouterr()
        assert cli("pretrain", "ppkt", "--config", longer, "--run-dir", tmp_path / "run") == 2
        line = one_line_error(capsys)
        assert f"is in use by another run (pid {first.pid}@{socket.gethostname()} since " in line, line
        assert cli("pretrain", "ppkt", "--config", longer, "--run-dir", tmp_path / "run", "--resume") == 2
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert cli("pretrain", "ppkt", "--config", longer, "--run-dir", tmp_path / "alone") == 0
    ran, alone = (load_file(str(tmp_path / d / "checkpoints" / "last.safetensors")) for d in ("run", "alone"))
    assert ran.keys() == alone.keys() and all(torch.equal(ran[k], alone[k]) for k in ran)  # bit for bit
    steps = [row.split(",")[0] for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6", "8"]  # no duplicated rows


def test_a_killed_runs_lock_is_taken_over_by_resume(finished, tmp_path, capsys):
    _, config = finished
    longer = run_configs.write(run_configs.ppkt_config(config.parent, max_steps=40, checkpoint_every=1),
                               tmp_path / "longer.yaml")
    run = tmp_path / "run"
    victim = launch(longer, run)
    wait_for(run / "checkpoints" / "last.json", victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert json.loads((run / ".lock").read_text())["pid"] == victim.pid  # left behind
    step = json.loads((run / "checkpoints" / "last.json").read_text())["step"]
    capsys.readouterr()
    assert cli("pretrain", "ppkt", "--config", longer, "--run-dir", run) == 2
    line = one_line_error(capsys)
    assert f"left locked by pid {victim.pid}@" in line and "no longer runs" in line and "--resume" in line, line
    shorter = run_configs.write(run_configs.ppkt_config(config.parent, max_steps=step + 2, checkpoint_every=1),
                                tmp_path / "shorter.yaml")
    assert cli("pretrain", "ppkt", "--config", shorter, "--run-dir", run, "--resume") == 0
    assert f"taking over the lock of {run}: pid {victim.pid}@" in capsys.readouterr().err
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == step + 2
    assert not (run / ".lock").exists()


def test_runs_refused_before_training_leave_no_directory(finished, tmp_path, capsys, shared):
    run, config = finished
    # refused by the trainer (a batch larger than the data set), after the directory was claimed
    image2point = run_configs.image2point_config(tmp_path, shared("data/modelnet10_vox32.npz"), batch_size=100)
    path = run_configs.write(image2point, tmp_path / "big.yaml")
    assert cli("finetune", "image2point", "--config", path, "--run-dir", tmp_path / "a" / "run") == 2
    assert "larger than the dataset" in one_line_error(capsys)
    assert not (tmp_path / "a").exists()
    # --resume of a directory that does not exist
    assert cli("pretrain", "ppkt", "--config", config, "--run-dir", tmp_path / "none", "--resume") == 2
    assert "has no checkpoint to continue" in one_line_error(capsys)
    assert not (tmp_path / "none").exists()
    # a --run-dir under a regular file, and in a folder nobody may write
    (tmp_path / "file").write_text("x")
    assert cli("pretrain", "ppkt", "--config", config, "--run-dir", tmp_path / "file" / "run") == 2
    line = one_line_error(capsys)
    assert f"{tmp_path / 'file' / 'run'}: --run-dir cannot be made (Not a directory" in line, line
    assert cli("pretrain", "ppkt", "--config", config, "--run-dir", tmp_path / "file") == 2
    assert "exists and is not a directory" in one_line_error(capsys)


def test_a_failed_first_checkpoint_does_not_promise_a_previous_one(tmp_path, monkeypatch):
    from pointlift.engine import checkpoint as checkpoint_module
    from pointlift.errors import PointliftDataError

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "_replace", full_disk)
    state = {"w": torch.ones(3)}
    with pytest.raises(PointliftDataError, match=r"No space left on device\); there is no earlier checkpoint$"):
        checkpoint_module.save_checkpoint(tmp_path / "last", state, step=1)
    monkeypatch.undo()
    checkpoint_module.save_checkpoint(tmp_path / "last", state, step=1)
    monkeypatch.setattr(checkpoint_module, "_replace", full_disk)
    with pytest.raises(PointliftDataError, match=r"No space left on device\); the previous checkpoint is kept$"):
        checkpoint_module.save_checkpoint(tmp_path / "last", state, step=2)


def test_under_torchrun_every_process_gets_the_refusal_and_no_directory_is_left(finished, tmp_path):
    run, config = finished
    import shutil

    held = shutil.copytree(run, tmp_path / "held")
    before = files(held)
    odd = run_configs.write(run_configs.ppkt_config(config.parent, batch_size=3), tmp_path / "odd.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(HELPER), str(tmp_path), str(config), str(held),
                           str(odd), str(tmp_path / "fresh")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for rank in (0, 1):
        (refused_held, refused_odd) = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert refused_held["code"] == 2 and "already holds a run" in refused_held["stderr"], refused_held
        assert refused_odd["code"] == 2 and "not divisible by the 2 processes" in refused_odd["stderr"], refused_odd
        assert "Traceback" not in refused_held["stderr"] + refused_odd["stderr"]
    assert files(held) == before
    assert not (tmp_path / "fresh").exists()
