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


# ------------------------------------------------------------------------------------ failures


@pytest.fixture(scope="module")
def ppkt_run(tmp_path_factory):
    """A finished 4-step PPKT run (checkpoints at steps 2 and 4) and its config file."""
    root = tmp_path_factory.mktemp("ppkt")
    path = run_configs.write(run_configs.ppkt_config(root), root / "config.yaml")
    assert cli("pretrain", "ppkt", "--config", path, "--run-dir", root / "run") == 0
    return root / "run", path


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def one_line_error(capsys) -> str:
    """The error line (the last line on stderr; progress bars may come before it), with no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("pointlift")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("pointlift: error: "), err[-2000:]
    assert err.rstrip().endswith(lines[0])
    return lines[0]


def test_resume_cleans_what_a_killed_save_left(ppkt_run, tmp_path, capsys):
    run, config = ppkt_run
    run = copy_run(run, tmp_path / "run")
    folder = run / "checkpoints"
    # what `kill -9` during a save leaves: our temporaries and safetensors' hidden one, half written
    tensors = (folder / "last.safetensors").read_bytes()
    debris = {"last.safetensors.tmp-4242-0badc0de": tensors[: len(tensors) // 2],
              "last.json.tmp-4242-0badc0de": b'{"format": "pointl', ".tmpQ1w2E3": tensors[:1000]}
    for name, data in debris.items():
        (folder / name).write_bytes(data)
    more = run_configs.ppkt_config(tmp_path, max_steps=6)
    more["cache_dir"] = run_configs.ppkt_config(config.parent)["cache_dir"]
    assert cli("pretrain", "ppkt", "--config", run_configs.write(more, tmp_path / "more.yaml"),
               "--run-dir", run, "--resume") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["last.json", "last.safetensors"]
    assert json.loads((folder / "last.json").read_text())["step"] == 6


@pytest.mark.parametrize("damage", ["flip_tensor_bytes", "edit_sidecar_step", "truncate"])
def test_damaged_checkpoints_are_refused_with_exit_2(damage, ppkt_run, tmp_path, capsys):
    run, config = ppkt_run
    run = copy_run(run, tmp_path / "run")
    tensors, sidecar = run / "checkpoints" / "last.safetensors", run / "checkpoints" / "last.json"
    data = tensors.read_bytes()
    if damage == "flip_tensor_bytes":
        tensors.write_bytes(data[:-4096] + b"\xff" * 4096)
    elif damage == "edit_sidecar_step":
        sidecar.write_text(sidecar.read_text().replace('"step": 4', '"step": 2'))
    else:
        tensors.write_bytes(data[: len(data) - 100])
    capsys.readouterr()
    assert cli("pretrain", "ppkt", "--config", config, "--run-dir", run, "--resume") == 2
    line = one_line_error(capsys)
    assert "last" in line and ("sidecar" in line or "corrupt" in line), line


def test_image2point_divergence_exits_3_keeps_a_finite_checkpoint_and_writes_no_results(tmp_path, shared, capsys):
    config = run_configs.image2point_config(tmp_path, shared(MODELNET10), checkpoint_every=1, max_nonfinite=2,
                                            optim={"name": "sgd", "lr": 1e6, "momentum": 0.9, "weight_decay": 1e-4})
    path = run_configs.write(config, tmp_path / "config.yaml")
    capsys.readouterr()
    assert cli("finetune", "image2point", "--config", path, "--run-dir", tmp_path / "run") == 3
    line = one_line_error(capsys)
    assert "training stopped" in line and "non-finite" in line, line
    assert not (tmp_path / "run" / "results.json").exists()
    from pointlift.engine.checkpoint import load_checkpoint

    state, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")  # saved every step until the stop
    assert f"checkpoint (step {meta['step']}) is kept" in line
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_image2point_refuses_an_init_checkpoint_of_another_method(ppkt_run, tmp_path, shared, capsys):
    run, _ = ppkt_run
    config = run_configs.image2point_config(tmp_path, shared(MODELNET10))
    config["init_checkpoint"] = str(run / "checkpoints" / "last")
    path = run_configs.write(config, tmp_path / "config.yaml")
    capsys.readouterr()
    assert cli("finetune", "image2point", "--config", path, "--run-dir", tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "'ppkt' checkpoint" in line and "'image2point' model" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()


def _read_only(folder: Path):
    """Make `folder` really read-only: chmod for a normal user; a read-only tmpfs for root."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return lambda: [p.chmod(0o755) for p in [folder, *folder.rglob("*")] if p.is_dir()]
    saved = folder.with_name(folder.name + ".orig")
    shutil.copytree(folder, saved)
    shutil.rmtree(folder)
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a read-only file system")
    shutil.copytree(saved, folder, dirs_exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    return lambda: subprocess.run(["umount", str(folder)], check=True)


def test_read_only_run_directory_gives_one_line_and_exit_2(ppkt_run, tmp_path, capsys):
    run, config = ppkt_run
    run = copy_run(run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    undo = _read_only(run)
    try:
        capsys.readouterr()
        more = run_configs.ppkt_config(config.parent, max_steps=6)
        assert cli("pretrain", "ppkt", "--config", run_configs.write(more, tmp_path / "more.yaml"),
                   "--run-dir", run, "--resume") == 2
        line = one_line_error(capsys)
        assert "Read-only file system" in line or "Permission denied" in line, line
        assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    finally:
        undo()


def test_full_disk_gives_one_line_and_exit_2_and_keeps_the_checkpoint(ppkt_run, tmp_path, capsys):
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("filling a small file system needs root (to mount a tmpfs)")
    run, config = ppkt_run
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("no permission to mount a tmpfs")
    try:
        shutil.copytree(run, disk / "run")
        before = {p.name: p.read_bytes() for p in (disk / "run" / "checkpoints").iterdir()}
        with open(disk / "filler", "wb", buffering=0) as handle:  # fill the disk...
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        # ...then leave a few KiB, enough for metrics.csv and config writes but not for a checkpoint
        (disk / "filler").write_bytes((disk / "filler").read_bytes()[:-16384])
        more = run_configs.ppkt_config(config.parent, max_steps=6)
        capsys.readouterr()
        assert cli("pretrain", "ppkt", "--config", run_configs.write(more, tmp_path / "more.yaml"),
                   "--run-dir", disk / "run", "--resume") == 2
        line = one_line_error(capsys)
        assert "No space left on device" in line, line
        assert {p.name: p.read_bytes() for p in (disk / "run" / "checkpoints").iterdir()} == before
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_image2point_results_after_a_resume_cover_every_epoch(tmp_path, shared):
    config = run_configs.image2point_config(tmp_path, shared(MODELNET10), epochs=1)
    config["fip"] = "io"
    assert cli("finetune", "image2point", "--config", run_configs.write(config, tmp_path / "one.yaml"),
               "--run-dir", tmp_path / "run") == 0
    config["train"]["epochs"] = 2
    assert cli("finetune", "image2point", "--config", run_configs.write(config, tmp_path / "two.yaml"),
               "--run-dir", tmp_path / "run", "--resume") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [row["epoch"] for row in results["curve"]] == [0, 1]
