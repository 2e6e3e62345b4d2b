"""Bring your own data, end to end through the command line on tiny data:
pretrain I2P-MAE on a point-file folder -> eval svm -> eval fewshot -> finetune i2p-mae -> embed,
and the same evaluation commands on the other methods' checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pointlift.cli import main
from shape_layouts import write_ascii_ply, write_point_folder

TINY_MODEL = dict(num_points=128, num_centers=[32, 16, 8], group_sizes=[8, 4, 4], encoder_dims=[24, 48, 96],
                  encoder_depths=[1, 1, 1], num_heads=4, embed_hidden=8, decoder_dims=[96, 48],
                  decoder_depths=[1, 1], drop_path=0.0)


def _one_line_exit_2(capsys, argv, *needles):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejects before main's handler
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A point folder and a tiny I2P-MAE pretrained on it (with the bundled 2D teacher)."""
    root = tmp_path_factory.mktemp("byod")
    data = write_point_folder(root / "my_shapes", per_class=6, test_per_class=5, points=200)
    config = {
        "name": "byod",
        "method": {"model": TINY_MODEL, "image_size": 64, "footprint": 3},
        "teacher": {"name": "tf_efficientnet_lite0", "stage": -2},
        "data": {"format": "auto", "path": str(data), "num_points": 128, "cache_dir": None},
        "train": {"epochs": 4, "batch_size": 8, "checkpoint_every": 0, "log_every": 1,
                  "optim": {"name": "adamw", "lr": 0.001}},
        "device": "cpu",
    }
    (root / "pretrain.yaml").write_text(yaml.safe_dump(config))
    run = root / "pretrain"
    assert main(["pretrain", "i2p-mae", "--config", str(root / "pretrain.yaml"), "--run-dir", str(run)]) == 0
    return root, data, run


def test_pretrain_on_a_point_folder(chain):
    root, _, run = chain
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_shapes"] == 24 and summary["step"] == 12
    assert (run / "checkpoints" / "last.safetensors").is_file()
    _assert_training_report(run, "I2P-MAE: byod", summary["step"])


def _assert_training_report(run, title: str, steps: int) -> None:
    """Every training command writes report.md: its curves (a PNG) and the summary's figures."""
    report = (run / "report.md").read_text()
    assert report.startswith(f"# {title}\n")
    assert "![training curves](curves.png)" in report and (run / "curves.png").stat().st_size > 1000
    assert f"| step | {steps} |" in report
    for line in report.splitlines():  # a | inside a value (teacher identities) must not split the table
        if line.startswith("| teacher |"):
            assert line.count(" | ") == 1 and "\\|" in line


def test_eval_svm_and_fewshot(chain, capsys):
    root, data, run = chain
    out = root / "svm.json"
    assert main(["eval", "svm", "--checkpoint", str(run), "--data", str(data), "--out", str(out),
                 "--compare-untrained", "--cv-folds", "3", "--device", "cpu"]) == 0
    assert "svm: test accuracy" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["kind"] == "i2p_mae" and record["data"]["format"] == "point_folder"
    assert record["data"]["num_points"] == 128  # the checkpoint's training point count
    assert (record["train_shapes"], record["test_shapes"], record["num_classes"]) == (24, 20, 4)
    assert record["feature_dim"] == 96
    for arm in (record, record["untrained"]):
        assert 0.0 <= arm["accuracy"] <= 1.0 and arm["C"] in record["Cs"]
    assert record["accuracy"] > 0.25  # four well-separated classes: above chance

    out = root / "fewshot.json"
    assert main(["eval", "fewshot", "--checkpoint", str(run / "checkpoints" / "last"), "--data", str(data),
                 "--way", "3", "--shot", "2", "--folds", "4", "--test-per-class", "3", "--out", str(out),
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert (record["way"], record["shot"], record["folds"]) == (3, 2, 4)
    assert len(record["accuracies"]) == 4
    assert record["mean"] == pytest.approx(np.mean(record["accuracies"]))
    assert record["std"] == pytest.approx(np.std(record["accuracies"]))
    assert "±" in record["summary"] and record["summary"] in line


def test_finetune_then_embed(chain, capsys):
    root, data, run = chain
    config = {"name": "ft", "checkpoint": str(run), "data": {"path": str(data), "num_points": 128},
              "val_per_class": 1, "head": {"hidden": 32, "dropout": 0.0},
              "train": {"epochs": 8, "batch_size": 8, "checkpoint_every": 0, "log_every": 1,
                        "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.05}},
              "device": "cpu"}
    (root / "ft.yaml").write_text(yaml.safe_dump(config))
    ft_run = root / "finetune"
    assert main(["finetune", "i2p-mae", "--config", str(root / "ft.yaml"), "--run-dir", str(ft_run)]) == 0
    results = json.loads((ft_run / "results.json").read_text())
    assert (ft_run / "report.md").read_text().startswith("# I2P-MAE fine-tuned classifier: ft\n")
    assert (results["train_shapes"], results["val_shapes"], results["test_shapes"]) == (20, 4, 20)
    assert results["loss_last"] < results["loss_first"]  # it learns
    assert 0.0 <= results["overall_acc"] <= 1.0 and results["steps"] == 16

    # embed a shape set (both splits, labels saved), a folder of files, and one file
    out = root / "features.npy"
    assert main(["embed", "--checkpoint", str(ft_run), "--points", str(data), "--out", str(out),
                 "--device", "cpu"]) == 0
    features = np.load(out)
    meta = json.loads((root / "features.npy.json").read_text())
    assert features.shape == (44, 96) and meta["kind"] == "i2p_mae_classifier"
    assert np.load(root / "features.labels.npy").shape == (44,) and len(meta["rows"]) == 44
    loose = root / "loose"
    loose.mkdir()
    rng = np.random.default_rng(0)
    write_ascii_ply(loose / "a.ply", rng.normal(size=(90, 3)))
    np.save(loose / "b.npy", rng.normal(size=(300, 3)).astype(np.float32))
    assert main(["embed", "--checkpoint", str(run), "--points", str(loose), "--out", str(root / "loose.npy"),
                 "--device", "cpu"]) == 0
    assert np.load(root / "loose.npy").shape == (2, 96)
    assert main(["embed", "--checkpoint", str(run), "--points", str(loose / "a.ply"), "--out",
                 str(root / "one.npy"), "--device", "cpu"]) == 0
    one = np.load(root / "one.npy")
    np.testing.assert_allclose(one[0], np.load(root / "loose.npy")[0], rtol=1e-4, atol=1e-5)
    # the fine-tuned classifier is itself a checkpoint the probes accept
    assert main(["eval", "svm", "--checkpoint", str(ft_run), "--data", str(data), "--cv-folds", "2",
                 "--device", "cpu"]) == 0


def test_other_methods_checkpoints(chain, tmp_path, capsys):
    """Image2Point and PPKT checkpoints: the probes work; `finetune i2p-mae` says why it cannot."""
    import torch

    from pointlift.engine.checkpoint import model_state_for_checkpoint, save_checkpoint
    from pointlift.methods.ppkt.embedder import build_embedder as ppkt_embedder

    _, data, _ = chain
    inflated = tmp_path / "inflated"
    assert main(["inflate", "--teacher", "tf_efficientnet_lite0", "--out", str(inflated)]) == 0
    capsys.readouterr()
    assert main(["eval", "svm", "--checkpoint", str(inflated), "--data", str(data), "--cv-folds", "2",
                 "--num-points", "128", "--out", str(tmp_path / "i2p.json"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "i2p.json").read_text())["kind"] == "image2point"

    spec = {"kind": "ppkt", "config": {"model": {"student": "spunet-tiny", "teacher_weights": "random",
                                                 "voxel_size": 0.1}}}
    torch.manual_seed(0)
    ppkt = tmp_path / "ppkt"
    save_checkpoint(ppkt, model_state_for_checkpoint(ppkt_embedder(spec["config"])), model_spec=spec)
    assert main(["eval", "fewshot", "--checkpoint", str(ppkt), "--data", str(data), "--way", "2", "--shot", "2",
                 "--folds", "2", "--test-per-class", "2", "--num-points", "128", "--device", "cpu"]) == 0
    capsys.readouterr()

    _, _, run = chain
    config = tmp_path / "i2p.yaml"
    config.write_text(yaml.safe_dump({"init_checkpoint": str(run / "checkpoints" / "last"),
                                      "inflation": {"teacher": "tf_efficientnet_lite0"},
                                      "data": {"dataset": "auto", "path": str(data)}}))
    _one_line_exit_2(capsys, ["finetune", "image2point", "--config", str(config)], "'i2p_mae'",
                     "finetune i2p-mae")
    _one_line_exit_2(capsys, ["eval", "ppkt", "--checkpoint", str(run), "--frames", str(tmp_path), "--out",
                              str(tmp_path / "r.json")], "'i2p_mae'", "not a 'ppkt' one")
    for checkpoint, needle in ((inflated, "finetune image2point"), (ppkt, "scene-level")):
        config = tmp_path / "ft.yaml"
        config.write_text(yaml.safe_dump({"checkpoint": str(checkpoint), "data": {"path": str(data)}}))
        _one_line_exit_2(capsys, ["finetune", "i2p-mae", "--config", str(config)], "I2P-MAE pretraining", needle)


def test_bad_data_is_one_line_exit_2(chain, tmp_path, capsys):
    _, data, run = chain
    _one_line_exit_2(capsys, ["eval", "svm", "--checkpoint", str(run), "--data", str(tmp_path / "nope")], "nope")
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(capsys, ["eval", "svm", "--checkpoint", str(run), "--data", str(tmp_path / "empty")],
                     "not a known shape-set layout")
    broken = write_point_folder(tmp_path / "broken", per_class=2, test_per_class=1, points=20)
    (broken / "train" / "rod" / "rod_0000.ply").write_text("ply\nformat ascii 1.0\nend_header\n")
    _one_line_exit_2(capsys, ["eval", "fewshot", "--checkpoint", str(run), "--data", str(broken)], "rod_0000.ply")
    _one_line_exit_2(capsys, ["eval", "fewshot", "--checkpoint", str(run), "--data", str(data), "--way", "9"],
                     "cannot draw 9 ways")
    _one_line_exit_2(capsys, ["eval", "svm", "--checkpoint", str(tmp_path / "missing"), "--data", str(data)],
                     "missing")
    _one_line_exit_2(capsys, ["embed", "--checkpoint", str(run), "--points", str(tmp_path / "empty"),
                              "--out", str(tmp_path / "x.npy")], "not a known shape-set layout")
    bad_yaml = tmp_path / "data.yaml"
    bad_yaml.write_text(yaml.safe_dump({"path": str(data), "num_points": 0}))
    _one_line_exit_2(capsys, ["eval", "svm", "--checkpoint", str(run), "--data", str(bad_yaml)], "num_points")


def test_probe_options_and_a_one_class_folder_are_one_line_exit_2(chain, tmp_path, capsys):
    """Issue 29's crashes: a folder of one class (sklearn's ValueError before), a zero batch size (range()
    with step 0), negative CV folds (accepted silently before)."""
    _, data, run = chain
    one = write_point_folder(tmp_path / "one_class", per_class=3, test_per_class=2, points=50, classes=("box",))
    _one_line_exit_2(capsys, ["eval", "svm", "--checkpoint", str(run), "--data", str(one)], "one_class",
                     "needs at least 2")
    for option, value, needle in (("--batch-size", "0", "must be >= 1"), ("--cv-folds", "-1", "must be >= 2"),
                                  ("--cv-folds", "1", "must be >= 2")):
        _one_line_exit_2(capsys, ["eval", "svm", "--checkpoint", str(run), "--data", str(data), option, value],
                         option, needle)
    for option, value in (("--way", "1"), ("--shot", "0"), ("--folds", "-3"), ("--test-per-class", "0"),
                          ("--batch-size", "-1")):
        _one_line_exit_2(capsys, ["eval", "fewshot", "--checkpoint", str(run), "--data", str(data), option, value],
                         option)
    _one_line_exit_2(capsys, ["embed", "--checkpoint", str(run), "--points", str(data), "--out",
                              str(tmp_path / "x.npy"), "--batch-size", "0"], "--batch-size")


def test_shipped_finetune_config_loads():
    from pathlib import Path

    from pointlift.engine.config import load_config
    from pointlift.methods.i2p_mae.finetune import PointFinetuneConfig

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "i2p_mae_finetune.yaml",
                         PointFinetuneConfig)
    assert config.train.epochs == 300 and config.train.optim.lr == 5e-4 and config.head.hidden == 256


def test_embed_inputs_of_every_kind(tmp_path):
    """`embed --points` accepts stored point sets, one file, a folder of files and any shape set."""
    from pointlift.data.shape_sets import ShapeSetConfig
    from pointlift.errors import PointliftDataError
    from pointlift.features.embed import read_inputs
    from shape_layouts import write_modelnet10_vox, write_scanobjectnn

    data = ShapeSetConfig(num_points=64)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sets.npz", points=rng.normal(size=(3, 50, 3)).astype(np.float32))
    stored = read_inputs(tmp_path / "sets.npz", data)
    assert stored.kind == "npz" and stored.points.shape == (3, 50, 3)  # as stored, not resampled
    np.savez(tmp_path / "one.npz", points=rng.normal(size=(500, 3)).astype(np.float32))
    one = read_inputs(tmp_path / "one.npz", data)
    assert one.kind == "file" and one.points.shape == (1, 64, 3)
    vox = read_inputs(write_modelnet10_vox(tmp_path / "modelnet10_vox32.npz", per_class=1), data, split="test")
    assert vox.kind == "modelnet10_vox" and vox.points.shape == (10, 64, 3) and list(vox.labels) == list(range(10))
    h5 = write_scanobjectnn(tmp_path / "h5_files") / "main_split" / "test_objectdataset_augmentedrot_scale75.h5"
    single = read_inputs(h5, data, split="test")
    assert single.kind == "scanobjectnn_h5" and single.points.shape == (15, 64, 3)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PointliftDataError, match="notes.txt"):
        read_inputs(tmp_path / "notes.txt", data)


def test_image2point_finetunes_on_a_point_folder(chain, tmp_path):
    """Image2Point's fine-tuning takes the same user folder (`data.dataset: auto`), end to end."""
    _, data, _ = chain
    config = {"name": "i2p-folder", "fip": "ioms", "precise_bn": True, "eval_every_epoch": False,
              "inflation": {"teacher": "tf_efficientnet_lite0"},  # offline: the bundled ImageNet weights
              "data": {"dataset": "auto", "path": str(data), "voxel_size": 0.125, "augment": False},
              "train": {"epochs": 1, "batch_size": 8, "checkpoint_every": 0, "log_every": 1,
                        "optim": {"name": "adamw", "lr": 0.01}}}
    (tmp_path / "i2p.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["finetune", "image2point", "--config", str(tmp_path / "i2p.yaml"), "--run-dir", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert (results["train_shapes"], results["test_shapes"]) == (24, 20)
    assert "![training curves](curves.png)" in (run / "report.md").read_text()
    assert 0.0 <= results["overall_acc"] <= 1.0


def _numeric_options(parser, path=()):
    """(subcommand path, option) for every option of every subcommand whose type turns "1" into a number."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _numeric_options(sub, (*path, name))
        elif action.option_strings and callable(action.type):
            try:
                numeric = isinstance(action.type("1"), (int, float))
            except Exception:  # noqa: BLE001 - a type that refuses "1" is no numeric option
                numeric = False
            if numeric:
                found.append((path, action.option_strings[-1]))
    return found


def test_cli_fuzz_numeric_options_never_trace(chain, tmp_path, capsys):
    """Issue 29: every numeric option of every command, at 0, -1 and 10**9: exit 0, or one line with exit 2,
    never a traceback (huge point counts and seeds are refused before anything is allocated)."""
    from pointlift.cli import build_parser

    _, data, run = chain
    base = {("eval", "svm"): ["eval", "svm", "--checkpoint", str(run), "--data", str(data)],
            ("eval", "fewshot"): ["eval", "fewshot", "--checkpoint", str(run), "--data", str(data), "--shot", "2",
                                  "--test-per-class", "2", "--way", "2", "--folds", "2"],
            ("embed",): ["embed", "--checkpoint", str(run), "--points", str(data), "--out", str(tmp_path / "e.npy")]}
    options = _numeric_options(build_parser())
    assert {path for path, _ in options} <= set(base), "a command with numeric options needs a base command here"
    assert len(options) >= 12
    for path, option in options:
        for value in ("0", "-1", str(10**9)):
            argv = [*base[path], option, value]
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code
            err = capsys.readouterr().err
            assert "Traceback" not in err, (argv, err)
            assert code in (0, 2), (argv, code, err)
            if code == 2:
                lines = [line for line in err.splitlines() if line.strip()]
                assert len(lines) == 1 and "error" in lines[0], (argv, err)


def test_misleading_messages_of_issue_29(chain, tmp_path, capsys):
    """Each names what is true, in one line, exit 2, before any work."""
    import warnings

    from pointlift import cli

    _, data, run = chain
    svm = ["eval", "svm", "--checkpoint", str(run), "--data", str(data)]
    _one_line_exit_2(capsys, [*svm, "--out", "/proc/x.json"], "--out", "/proc/x.json", "cannot write in /proc")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _one_line_exit_2(capsys, [*svm, "--out", str(blocker / "x.json")], str(blocker), "is a file, not a directory")
    _one_line_exit_2(capsys, [*svm, "--out", str(tmp_path)], "is a directory")
    # another command's config: named as such, with the command that takes it
    _one_line_exit_2(capsys, ["finetune", "segmentation", "--config", str(chain[0] / "pretrain.yaml")],
                     "pretrain.yaml", "is a `pointlift pretrain i2p-mae` config", "pointlift pretrain i2p-mae --config")
    # a raw .bin needs its column count, named as the option a user can give
    raw = tmp_path / "raw" / "scan.bin"
    raw.parent.mkdir()
    np.zeros((64, 4), np.float32).tofile(raw)
    _one_line_exit_2(capsys, ["embed", "--checkpoint", str(run), "--points", str(raw), "--out", str(tmp_path / "e.npy")],
                     "scan.bin", "--columns N")
    # warnings in the project's voice, one line, no source line
    assert main(["config", "show", "ppkt"]) == 0
    assert warnings.formatwarning is cli._format_warning
    assert warnings.formatwarning("two\nlines", UserWarning, "x.py", 3, "source") == "pointlift: warning: two lines\n"


def test_svm_record_holds_only_the_settings_of_its_layout(chain, tmp_path, capsys):
    _, data, run = chain
    out = tmp_path / "svm.json"
    assert main(["eval", "svm", "--checkpoint", str(run), "--data", str(data), "--out", str(out), "--cv-folds", "2"]) == 0
    record = json.loads(out.read_text())["data"]
    assert record["format"] == "point_folder" and "variant" not in record and "columns" in record


def test_a_file_embeds_the_same_alone_in_a_flat_folder_and_in_a_labelled_folder(chain, tmp_path):
    """Resampling is seeded by a shape's points, not its place in a list (issue 29); rows are named by file."""
    import shutil

    _, data, run = chain
    source = sorted((data / "train" / "disc").iterdir())[2]
    flat = tmp_path / "flat"
    flat.mkdir()
    for file in sorted((data / "train" / "box").iterdir())[:3] + [source]:
        shutil.copy(file, flat / file.name)
    rows = {}
    for name, points in (("alone", source), ("flat", flat), ("labelled", data)):
        out = tmp_path / f"{name}.npy"
        # batch size 1: the same kernels for every row (batches of other sizes round differently, ~1e-7)
        assert main(["embed", "--checkpoint", str(run), "--points", str(points), "--out", str(out),
                     "--batch-size", "1"]) == 0
        names = json.loads((tmp_path / f"{name}.npy.json").read_text())["rows"]
        wanted = {"alone": source.name, "flat": source.name, "labelled": f"train/disc/{source.name}"}[name]
        assert wanted in names, names
        rows[name] = np.load(out)[names.index(wanted)]
    assert np.array_equal(rows["alone"], rows["flat"]) and np.array_equal(rows["alone"], rows["labelled"])
    assert (tmp_path / "labelled.labels.npy").is_file() and not (tmp_path / "flat.labels.npy").exists()


@pytest.mark.parametrize("layout", ["flat", "train-only"])
def test_pretraining_on_an_unlabelled_folder(chain, tmp_path, layout):
    import shutil

    root, data, _ = chain
    folder = tmp_path / "unlabelled"
    if layout == "flat":
        folder.mkdir()
        for file in sorted((data / "train").rglob("*_000[0-4].*"))[:10]:
            shutil.copy(file, folder / f"{file.parent.name}_{file.name}")
    else:
        shutil.copytree(data / "train", folder / "train")
    run = tmp_path / "run"
    assert main(["pretrain", "i2p-mae", "--config", str(root / "pretrain.yaml"), "--run-dir", str(run),
                 f"data.path={folder}", "train.max_steps=2", "train.epochs=null"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 2 and summary["num_shapes"] == (10 if layout == "flat" else 24)
