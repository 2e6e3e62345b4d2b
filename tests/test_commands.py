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
    with prepare_run(path, DemoConfig) as (config, run_dir):
        assert config == DemoConfig(lr=0.5, run_root=str(tmp_path / "runs"))
        assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("demo-")
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["lr"] == 0.5
        assert (run_dir / ".lock").is_file()  # held while the run goes on
        (run_dir / "metrics.csv").write_text("step,loss\n1,0.5\n")  # the run started: its directory stays
    assert not (run_dir / ".lock").exists() and (run_dir / "config.yaml").is_file()


def test_prepare_run_uses_run_root_name_and_the_given_directory(tmp_path):
    with prepare_run({"run_root": str(tmp_path / "r")}, RootedConfig, name="ppkt") as (config, run_dir):
        assert run_dir.parent == tmp_path / "r" and run_dir.name.startswith("ppkt-")
    given = tmp_path / "mine"
    with prepare_run({}, DemoConfig, run_dir=given) as (_, run_dir):
        assert run_dir == given and (given / "config.yaml").is_file()


def test_a_run_that_fails_before_writing_anything_leaves_no_directory(tmp_path):
    given = tmp_path / "a" / "b"
    with pytest.raises(PointliftError, match="no data"):
        with prepare_run({}, DemoConfig, run_dir=given) as (_, run_dir):
            assert (run_dir / "config.yaml").is_file()
            raise PointliftError("no data")  # as a method refusing its data would
    assert not (tmp_path / "a").exists()  # the parents it made go too
    with pytest.raises(PointliftError, match="no data"):
        with prepare_run({"run_root": str(tmp_path / "runs")}, DemoConfig) as _:
            raise PointliftError("no data")
    assert list((tmp_path / "runs").iterdir()) == []


def test_resume_without_run_dir_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(PointliftConfigError, match=r"^--resume needs --run-dir \(the run to continue\)$"):
        with prepare_run({"run_root": str(tmp_path / "runs")}, DemoConfig, resume=True):
            pass
    assert not (tmp_path / "runs").exists()
    with pytest.raises(PointliftConfigError, match="--resume: .*mine has no checkpoint to continue"):
        with prepare_run({}, DemoConfig, resume=True, run_dir=tmp_path / "mine"):
            pass
    assert not (tmp_path / "mine").exists()


def test_a_bad_config_fails_first_and_check_runs_before_the_directory(tmp_path):
    with pytest.raises(PointliftConfigError, match="lr"):  # the config error wins over the resume error
        with prepare_run({"lr": "fast"}, DemoConfig, resume=True):
            pass

    def refuse(config):
        raise PointliftError(f"bad checkpoint for {config.name}")

    with pytest.raises(PointliftError, match="bad checkpoint for demo"):
        with prepare_run({"run_root": str(tmp_path / "runs")}, DemoConfig, check=refuse):
            pass
    assert not (tmp_path / "runs").exists()


def test_an_old_config_key_names_its_new_name():
    """`runs_root` (I2P-MAE configs before issue 24) is refused with the one name every config now uses."""
    from pointlift.engine.config import load_config
    from pointlift.methods.i2p_mae.config import I2PMAEExperiment

    with pytest.raises(PointliftConfigError, match="runs_root: was renamed 'run_root'"):
        load_config({"runs_root": "runs"}, I2PMAEExperiment)
    assert str(load_config({"run_root": "elsewhere"}, I2PMAEExperiment).run_root) == "elsewhere"
