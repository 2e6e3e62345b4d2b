"""The CLI layer's shared helper: `pointlift.commands.common.prepare_run`."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from pointlift.commands.common import prepare_run
from pointlift.errors import PointliftConfigError, PointliftError


@dataclass
class DemoConfig:
    name: str = "demo"
    run_root: str = "runs"
    lr: float = 0.1


@dataclass
class RootedConfig:  # spelled like PPKT's and segmentation's configs
    run_root: str = "runs"


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_prepare_run_loads_the_config_and_makes_a_named_run_dir(tmp_path):
    path = _write(tmp_path / "exp.yaml", {"lr": 0.5, "run_root": str(tmp_path / "runs")})
    config, run_dir = prepare_run(path, DemoConfig)
    assert config == DemoConfig(lr=0.5, run_root=str(tmp_path / "runs"))
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("demo-")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["lr"] == 0.5


def test_prepare_run_uses_run_root_name_and_the_given_directory(tmp_path):
    config, run_dir = prepare_run({"run_root": str(tmp_path / "r")}, RootedConfig, name="ppkt")
    assert run_dir.parent == tmp_path / "r" and run_dir.name.startswith("ppkt-")
    given = tmp_path / "mine"
    _, run_dir = prepare_run({}, DemoConfig, resume=True, run_dir=given)
    assert run_dir == given and (given / "config.yaml").is_file()


def test_resume_without_run_dir_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(PointliftConfigError, match=r"^--resume needs --run-dir \(the run to continue\)$"):
        prepare_run({"run_root": str(tmp_path / "runs")}, DemoConfig, resume=True)
    assert not (tmp_path / "runs").exists()


def test_a_bad_config_fails_first_and_check_runs_before_the_directory(tmp_path):
    with pytest.raises(PointliftConfigError, match="lr"):  # the config error wins over the resume error
        prepare_run({"lr": "fast"}, DemoConfig, resume=True)

    def refuse(config):
        raise PointliftError(f"bad checkpoint for {config.name}")

    with pytest.raises(PointliftError, match="bad checkpoint for demo"):
        prepare_run({"run_root": str(tmp_path / "runs")}, DemoConfig, check=refuse)
    assert not (tmp_path / "runs").exists()


def test_an_old_config_key_names_its_new_name():
    """`runs_root` (I2P-MAE configs before issue 24) is refused with the one name every config now uses."""
    from pointlift.engine.config import load_config
    from pointlift.methods.i2p_mae.config import I2PMAEExperiment

    with pytest.raises(PointliftConfigError, match="runs_root: was renamed 'run_root'"):
        load_config({"runs_root": "runs"}, I2PMAEExperiment)
    assert str(load_config({"run_root": "elsewhere"}, I2PMAEExperiment).run_root) == "elsewhere"
