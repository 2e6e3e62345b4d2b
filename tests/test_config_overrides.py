"""Config overrides from the command line, paths relative to the config file, `epochs: null` with
`max_steps`, one key vocabulary, and the generated key reference (`pointlift config show`, docs/CONFIG.md)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

import run_configs
from pointlift.cli import CONFIG_KINDS, main
from pointlift.engine.config import load_config
from pointlift.errors import PointliftConfigError
from pointlift.methods.i2p_mae.config import I2PMAEExperiment
from pointlift.methods.image2point.config import Image2PointConfig
from pointlift.tasks.segmentation.config import SegmentationConfig

REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------------- overrides


def test_overrides_are_typed_and_checked_like_the_file(tmp_path):
    config_file = write_yaml(tmp_path / "c.yaml", {"train": {"max_steps": 2, "optim": {"lr": 0.5}}})
    config = load_config(config_file, I2PMAEExperiment,
                         ["train.max_steps=4", "train.optim.betas=[0.8, 0.9]", "device=null",
                          "method.model.num_centers=[64, 32, 16]", "data.format=synthetic"])
    assert config.train.max_steps == 4 and isinstance(config.train.max_steps, int)
    assert config.train.optim.lr == 0.5  # the file's value where no override sets it
    assert config.train.optim.betas == (0.8, 0.9) and config.device is None
    assert config.method.model.num_centers == (64, 32, 16) and config.data.format == "synthetic"
    for item, message in (("train.max_steps=0", "command line: train.max_steps: must be >= 1"),
                          ("train.max_steps=four", "command line: train.max_steps: expected int, got 'four'"),
                          ("train.optim.lr=true", "command line: train.optim.lr: expected float")):
        with pytest.raises(PointliftConfigError, match=message) as error:
            load_config(config_file, I2PMAEExperiment, [item])
        assert item in str(error.value)  # the override is quoted


def test_unknown_and_misplaced_override_keys_name_the_command_line(tmp_path):
    config_file = write_yaml(tmp_path / "c.yaml", {"train": {"max_steps": 2}})
    with pytest.raises(PointliftConfigError, match=r"command line: train.max_stepz: unknown key \(known keys: .*max_steps"):
        load_config(config_file, I2PMAEExperiment, ["train.max_stepz=4"])
    with pytest.raises(PointliftConfigError, match="train.max_steps is 2, not a mapping, so it has no key 'x'"):
        load_config(config_file, I2PMAEExperiment, ["train.max_steps.x=1"])
    with pytest.raises(PointliftConfigError, match="command line: data.source: was renamed 'format'"):
        load_config(config_file, I2PMAEExperiment, ["data.source=synthetic"])
    with pytest.raises(PointliftConfigError, match="expected KEY=VALUE"):
        load_config(config_file, I2PMAEExperiment, ["train..x=1"])
    old_file = write_yaml(tmp_path / "old.yaml", {"data": {"source": "synthetic"}})
    with pytest.raises(PointliftConfigError, match="old.yaml: data.source: was renamed 'format'"):
        load_config(old_file, I2PMAEExperiment)
    # the same unknown key in the file names the file, not the command line
    bad_file = write_yaml(tmp_path / "bad.yaml", {"train": {"max_stepz": 4}})
    with pytest.raises(PointliftConfigError, match=r"bad.yaml: train.max_stepz: unknown key"):
        load_config(bad_file, I2PMAEExperiment, ["train.max_steps=4"])


def test_cli_override_errors_are_one_line_exit_2_and_make_no_run_dir(tmp_path, capsys):
    config_file = write_yaml(tmp_path / "c.yaml", run_configs.i2p_mae_config(tmp_path))
    for items, message in ((["train.max_stepz=4"], "command line: train.max_stepz: unknown key"),
                           (["max_steps"], "is not KEY=VALUE"),
                           (["train.max_steps=4", "--bogus"], "unrecognized arguments: --bogus")):
        code, _, err = run_cli(capsys, "pretrain", "i2p-mae", "--config", config_file,
                               "--run-dir", tmp_path / "run", *items)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "run").exists()


def test_pretrain_with_overrides_runs_and_saves_the_overridden_config(tmp_path, capsys, monkeypatch):
    """`pointlift pretrain i2p-mae --config C train.max_steps=4 data.path=DIR` (DIR relative to the current
    directory), with `epochs: null`: the run takes 4 steps and its config.yaml holds what was used."""
    from shape_layouts import write_point_folder

    monkeypatch.chdir(tmp_path)
    write_point_folder(tmp_path / "shapes", per_class=2, test_per_class=1, points=160)
    config = run_configs.i2p_mae_config(tmp_path)
    config["data"].update({"format": "point_folder", "path": "/nonexistent/elsewhere"})
    config["train"].update({"max_steps": 2, "epochs": None})
    write_yaml(tmp_path / "configs" / "c.yaml", config)
    code, out, err = run_cli(capsys, "pretrain", "i2p-mae", "--config", "configs/c.yaml", "train.max_steps=4",
                             "--run-dir", "run", "data.path=shapes")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 4 and saved["train"]["epochs"] is None
    assert saved["data"]["path"] == str(tmp_path / "shapes")  # resolved against the current directory
    steps = [int(row.split(",")[0]) for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
             if row.split(",")[0].isdigit()]
    assert max(steps) == 4


# ----------------------------------------------------------------------------------------------- paths


def test_paths_in_a_file_resolve_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shapes.npz").write_bytes(b"")
    config_file = write_yaml(tmp_path / "configs" / "c.yaml", {
        "data": {"path": "../data/shapes.npz", "cache_dir": "cache"},
        "teacher": {"weights": "random"}, "run_root": "runs"})
    elsewhere = tmp_path / "elsewhere"  # the file's folder decides, not the current one
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(config_file, I2PMAEExperiment)
    assert config.data.path == str(tmp_path / "data" / "shapes.npz")
    assert config.teacher.weights == "random"  # a choice, not a file
    assert config.data.cache_dir == "cache" and config.run_root == "runs"  # outputs: the current directory
    # a dict config (no file) keeps paths relative to the current directory
    assert load_config({"data": {"path": "x.npz"}}, I2PMAEExperiment).data.path == "x.npz"
    segmentation = load_config(write_yaml(tmp_path / "configs" / "s.yaml", {"data": {"root": "../data"}}),
                               SegmentationConfig)
    assert segmentation.data.root == tmp_path / "data" and isinstance(segmentation.data.root, Path)


def test_a_missing_relative_path_says_what_it_was_resolved_against(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = run_configs.i2p_mae_config(tmp_path)
    config["data"].update({"format": "auto", "path": "../nowhere/shapes"})
    config_file = write_yaml(tmp_path / "configs" / "c.yaml", config)
    code, _, err = run_cli(capsys, "pretrain", "i2p-mae", "--config", config_file, "--run-dir", tmp_path / "run")
    assert code == 2 and "data.path: ../nowhere/shapes not found" in err, err
    assert f"resolved against the config file's folder {tmp_path / 'configs'}" in err
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "pretrain", "i2p-mae", "--config", config_file, "--run-dir", tmp_path / "run",
                           "data.path=nothing_here")
    assert code == 2 and f"resolved against the current directory {tmp_path}" in err, err


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_point_at_the_shared_data_from_their_folder(name):
    """configs/ use paths relative to themselves: `../../shared/...` is the repository's `../shared/...`."""
    text = (REPO / "configs" / name).read_text()
    assert "../shared/" not in text.replace("../../shared/", "")
    assert "source:" not in text  # one vocabulary: data.format


# ----------------------------------------------------------------------------------------------- epochs


def test_epochs_null_needs_max_steps():
    config = load_config({"train": {"epochs": None, "max_steps": 3}}, I2PMAEExperiment)
    assert config.train.epochs is None and config.train.max_steps == 3
    with pytest.raises(PointliftConfigError, match="train.epochs: null needs train.max_steps"):
        load_config({"train": {"epochs": None}}, I2PMAEExperiment)
    with pytest.raises(PointliftConfigError, match="train.epochs: must be >= 1 or null"):
        load_config({"train": {"epochs": 0}}, I2PMAEExperiment)


def test_image2point_runs_with_epochs_null(tmp_path, shared, capsys):
    """The shape-classification loop's end-of-run evaluation does not need `epochs` when max_steps ends it."""
    config = run_configs.image2point_config(tmp_path, shared("data/modelnet10_vox32.npz"))
    config_file = write_yaml(tmp_path / "c.yaml", config)
    code, out, err = run_cli(capsys, "finetune", "image2point", "--config", config_file, "--run-dir",
                             tmp_path / "run", "train.epochs=null", "train.max_steps=3")
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["epochs"] is None


# ----------------------------------------------------------------------------------------------- reference


def every_key(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, from the dataclass fields themselves."""
    keys = []
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        key = f"{prefix}{spec.name}"
        keys.append(key)
        if dataclasses.is_dataclass(hints[spec.name]):
            keys += every_key(hints[spec.name], key + ".")
    return keys


def test_config_kinds_match_the_registry():
    from pointlift.registry import METHODS, config_kinds

    assert tuple(config_kinds()) == CONFIG_KINDS
    assert {m.config for m in config_kinds().values()} == {m.config for m in METHODS if m.config is not None}


@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_the_reference_lists_every_key_with_a_meaning(kind, capsys):
    from pointlift.engine.config_reference import reference
    from pointlift.registry import config_kinds

    cls = config_kinds()[kind].config
    rows = reference(cls)
    assert [row.key for row in rows] == every_key(cls)
    assert not [row.key for row in rows if not row.meaning], "keys without a meaning (a comment on the field)"
    code, out, _ = run_cli(capsys, "config", "show", kind)
    assert code == 0 and all(row.key in out for row in rows)
    assert "train.max_steps" in out and "input path" in out


@pytest.mark.parametrize("kind, cls", [("image2point", Image2PointConfig), ("i2p-mae-pretrain", I2PMAEExperiment),
                                       ("segmentation", SegmentationConfig)])
def test_show_yaml_is_the_default_config(kind, cls, capsys):
    code, out, _ = run_cli(capsys, "config", "show", kind, "--yaml")
    assert code == 0
    assert load_config(yaml.safe_load(out), cls) == cls()


def test_docs_config_md_is_generated_and_current(capsys):
    from pointlift.commands.config import docs_markdown

    text = docs_markdown()
    assert (REPO / "docs" / "CONFIG.md").read_text() == text, \
        "docs/CONFIG.md is stale: regenerate with `pointlift config docs > docs/CONFIG.md`"
    for kind in CONFIG_KINDS:
        assert f"## `{kind}`" in text
    assert "| `train.max_steps` |" in text
    code, out, _ = run_cli(capsys, "config", "docs")
    assert code == 0 and out == text


def test_a_list_of_input_paths_resolves_item_by_item(tmp_path, monkeypatch):
    """PPKT's data.roots: each item against the file's folder, or the current directory for an override;
    an empty list stays empty (it once became one path named '[]')."""
    from pointlift.methods.ppkt.config import PPKTConfig

    config_file = write_yaml(tmp_path / "configs" / "p.yaml", {"data": {"root": "../a", "roots": ["../b", "/abs/c"]}})
    monkeypatch.chdir(tmp_path)
    config = load_config(config_file, PPKTConfig)
    assert config.data.roots == [tmp_path / "b", Path("/abs/c")]
    assert load_config(config_file, PPKTConfig, ["data.roots=[d]"]).data.roots == [tmp_path / "d"]
    empty = load_config(write_yaml(tmp_path / "configs" / "e.yaml", {"data": {"kind": "synthetic", "roots": []}}),
                        PPKTConfig)
    assert empty.data.roots == []
