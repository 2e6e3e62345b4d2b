"""Offline, a timm teacher without local weights fails at once with one line naming the model and
`--weights` (the hub client alone retries for ~55 s and names no file)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pointlift.errors import PointliftConfigError
from pointlift.teachers.weights import create_pretrained_timm, hub_reachable, hub_weights_cached

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Offline, with empty torch-hub and Hugging Face caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    yield tmp_path
    torch.hub.set_dir(old)


def test_offline_switch_means_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()


def test_probe_of_a_closed_port_is_fast(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    assert not hub_reachable("127.0.0.1", timeout=1.0)  # nothing listens on 443 here
    assert time.perf_counter() - start < 2.0


def test_fails_fast_naming_model_and_weights_option(empty_caches):
    if hub_weights_cached("resnet18"):
        pytest.skip("resnet18 weights are cached on this machine")
    start = time.perf_counter()
    with pytest.raises(PointliftConfigError) as error:
        create_pretrained_timm("resnet18")
    assert time.perf_counter() - start < 5.0
    message = str(error.value)
    assert "'resnet18'" in message and "--weights" in message and "\n" not in message


def test_unknown_name_is_not_a_weights_problem(empty_caches):
    with pytest.raises(PointliftConfigError, match="unknown timm model 'resnet_nonexistent'"):
        create_pretrained_timm("resnet_nonexistent")


def test_torch_hub_cache_counts_as_local(empty_caches):
    import timm.models

    url = timm.models.get_pretrained_cfg("resnet18").url
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert hub_weights_cached("resnet18")


def test_teacher_and_cli_fail_fast(empty_caches):
    from pointlift.teachers.teacher import Teacher

    with pytest.raises(PointliftConfigError, match="--weights"):
        Teacher("resnet18")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(empty_caches / "torch-home"),
               PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "pointlift.cli", "inflate", "--teacher", "resnet18", "--out",
                          str(empty_caches / "inflated")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet18" in lines[0] and "--weights" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    # (the time bound is asserted in-process above: interpreter start-up dominates a subprocess's wall time)
