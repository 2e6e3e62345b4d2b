"""Scene segmentation: metrics against a hand-computed confusion matrix, label efficiency, augmentation,
outputs, initialisation (scratch / PPKT / Image2Point) and the CLI end to end on real scans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pointlift.data.augment import augment_scene, color_jitter, flip_axes, jitter, rotate_about_up, scale
from pointlift.data.scenes import IGNORE, Scene
from pointlift.engine.config import load_config
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.metrics import confusion_matrix, segmentation_metrics
from pointlift.quickstart.segmentation import quickstart
from pointlift.tasks.segmentation.config import SegAugmentConfig, SegDataConfig, SegmentationConfig, SegModelConfig
from pointlift.tasks.segmentation.data import SceneCollate, SceneDataset, label_efficient_subset
from pointlift.tasks.segmentation.finetune import finetune
from pointlift.tasks.segmentation.model import build_backbone
from pointlift.tasks.segmentation.outputs import palette, write_prediction_ply

REPO = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------------------------- metrics


def test_confusion_and_miou_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, -1, -1, 3])
    preds = np.array([0, 0, 1, 1, 0, 2, 2, 0, 2, 1, 0])
    # rows = truth, cols = prediction; the two IGNORE points and class 3 (out of range, C = 3) left out
    confusion = confusion_matrix(preds, labels, 3)
    assert confusion.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 2]]
    m = segmentation_metrics(confusion, ("a", "b", "c"))
    # IoU a = 2 / (3 + 4 - 2) = 0.4, b = 1 / (2 + 2 - 1) = 1/3, c = 2 / (3 + 2 - 2) = 2/3
    assert m["per_class_iou"] == pytest.approx({"a": 0.4, "b": 1 / 3, "c": 2 / 3})
    assert m["miou"] == pytest.approx((0.4 + 1 / 3 + 2 / 3) / 3)
    assert m["overall_acc"] == pytest.approx(5 / 8)
    assert m["mean_acc"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["labelled_points"] == 8


def test_miou_absent_class_and_false_positive_class():
    # class 2 never labelled but predicted once: its IoU is 0 but it is not in the mean;
    # class 3 neither labelled nor predicted: no IoU at all
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 2, 1, 1])
    m = segmentation_metrics(confusion_matrix(preds, labels, 4), ("a", "b", "c", "d"))
    assert m["per_class_iou"] == {"a": 0.5, "b": 1.0, "c": 0.0, "d": None}
    assert m["miou"] == pytest.approx(0.75) and m["classes_present"] == 2
    with pytest.raises(PointliftDataError):
        confusion_matrix(np.array([5]), np.array([0]), 4)


# ------------------------------------------------------------------------------------------------ data


def _scene(name, n=200, seed=0, classes=3) -> Scene:
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 2, (n, 3)).astype(np.float32)
    labels = rng.integers(-1, classes, n)
    return Scene(name, points, labels, "s3dis13", colors=rng.uniform(0, 1, (n, 3)).astype(np.float32))


def test_label_efficiency_subsets():
    scenes = [_scene(f"scene{i:04d}_00", seed=i) for i in range(10)]
    chosen = label_efficient_subset(scenes, 0.2, 1.0, seed=3)
    assert len(chosen) == 2 and chosen == label_efficient_subset(scenes, 0.2, 1.0, seed=3)
    assert [s.name for s in chosen] != [s.name for s in label_efficient_subset(scenes, 0.2, 1.0, seed=4)]
    assert len(label_efficient_subset(scenes, 0.01, 1.0, seed=0)) == 1
    sparse = label_efficient_subset(scenes, 1.0, 0.1, seed=0)
    for before, after in zip(scenes, sparse):
        labelled = (before.labels != IGNORE).sum()
        kept = after.labels != IGNORE
        assert kept.sum() == int(np.ceil(0.1 * labelled))
        assert np.array_equal(after.labels[kept], before.labels[kept])  # kept labels are unchanged
        assert (before.labels != IGNORE).sum() == labelled  # the original is not modified
    again = label_efficient_subset(scenes, 1.0, 0.1, seed=0)
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(sparse, again))


def test_augmentation_is_rigid_up_to_scale_and_jitter():
    rng = np.random.default_rng(0)
    points = rng.uniform(-3, 3, (500, 3)).astype(np.float32)
    config = SegAugmentConfig(scale=(1.0, 1.0), jitter_sigma=0.0)
    out, _ = augment_scene(points, np.ones((500, 1), np.float32), config, "constant", rng)
    centred = points - points.mean(0)
    # rotation about z and mirrors keep heights and pairwise distances
    assert np.allclose(out[:, 2], centred[:, 2], atol=1e-5)
    d_in = np.linalg.norm(centred[:50, None] - centred[None, :50], axis=-1)
    d_out = np.linalg.norm(out[:50, None] - out[None, :50], axis=-1)
    assert np.allclose(d_in, d_out, atol=1e-4)
    elastic = SegAugmentConfig(rotate_up=False, flip=False, scale=(1.0, 1.0), jitter_sigma=0.0, elastic=True)
    moved, _ = augment_scene(points, np.ones((500, 1), np.float32), elastic, "constant", rng)
    shift = np.linalg.norm(moved - centred, axis=1)
    assert 0 < shift.mean() < 1.0  # a smooth displacement of decimetres, not a scramble


def test_scene_augmentations_one_by_one():
    """Each transform draws from the generator it is given and leaves its input as it was."""
    rng = np.random.default_rng(1)
    points = rng.uniform(-3, 3, (200, 3)).astype(np.float32)
    before = points.copy()
    rotated = rotate_about_up(points, rng)
    assert np.allclose(rotated[:, 2], points[:, 2]) and np.allclose(np.linalg.norm(rotated[:, :2], axis=1),
                                                                   np.linalg.norm(points[:, :2], axis=1), atol=1e-5)
    flipped = [flip_axes(points, np.random.default_rng(seed)) for seed in range(8)]
    assert all(np.array_equal(np.abs(f), np.abs(points)) and np.array_equal(f[:, 2], points[:, 2]) for f in flipped)
    assert any(not np.array_equal(f, points) for f in flipped)
    factor = scale(points, 0.5, 2.0, np.random.default_rng(2)) / points
    assert np.allclose(factor, factor[0, 0]) and 0.5 <= factor[0, 0] <= 2.0
    assert np.abs(jitter(points, 1.0, 0.02, rng) - points).max() <= 0.02 + 1e-6
    colors = color_jitter(np.full((50, 3), 0.99, np.float32), 0.5, rng)
    assert colors.min() >= 0 and colors.max() <= 1
    assert np.array_equal(points, before)


def test_collate_inverse_map_reads_voxels_back_per_point():
    scene = _scene("a", n=300)
    data = SegDataConfig(train=["a"], test=["b"], voxel_size=0.5, features="rgb")
    item = SceneDataset([scene], data)[0]
    batch = SceneCollate(0.5)([item, item])
    assert batch["inverse"].shape == (600,) and batch["coords"].shape[0] == 2 * int(batch["coords"][:, 0].eq(0).sum())
    voxel_of_point = batch["coords"][batch["inverse"]]
    assert torch.equal(voxel_of_point[:300, 1:], torch.floor(torch.from_numpy(scene.points) / 0.5).long()
                       - torch.floor(torch.from_numpy(scene.points) / 0.5).long().amin(0))


def test_prediction_ply_round_trip(tmp_path):
    from pointlift.data.points import read_point_file

    scene = _scene("a", n=50)
    predictions = np.random.default_rng(0).integers(0, 13, 50)
    path = write_prediction_ply(tmp_path / "a.ply", scene.points, predictions, scene.labels, 13)
    back = read_point_file(path)
    assert np.allclose(back.xyz, scene.points)
    assert back.fields["label"].tolist() == predictions.tolist() and back.fields["gt"].tolist() == scene.labels.tolist()
    assert np.allclose(back.fields["rgb"] * 255, palette(13)[predictions], atol=1e-3)


def test_config_rejects_room_on_both_sides():
    with pytest.raises(PointliftConfigError, match="scene0001"):
        load_config({"data": {"train": ["scene0000", "scene0001"], "test": ["scene0001"]}}, SegmentationConfig)
    with pytest.raises(PointliftConfigError, match="checkpoint"):
        load_config({"model": {"init": "ppkt"}}, SegmentationConfig)


# ------------------------------------------------------------------------------------- initialisation


def test_ppkt_checkpoint_initialises_the_unet(tmp_path):
    from pointlift.engine.checkpoint import model_state_for_checkpoint, save_checkpoint
    from pointlift.methods.ppkt.config import PPKTConfig, PPKTDataConfig, PPKTLossConfig, PPKTModelConfig
    from pointlift.methods.ppkt.model import PPKTModel
    from pointlift.methods.ppkt.pretrain import model_spec

    model_cfg = load_config({"student": "spunet-tiny", "voxel_size": 0.1, "in_features": "rgb",
                             "teacher_weights": "random", "teacher_stage": 3}, PPKTModelConfig)
    torch.manual_seed(5)
    pretrained = PPKTModel(model_cfg, PPKTLossConfig(), (32, 32))
    config = PPKTConfig(model=model_cfg, data=PPKTDataConfig(kind="synthetic"))
    path = save_checkpoint(tmp_path / "ppkt", model_state_for_checkpoint(pretrained), step=1,
                           model_spec=model_spec(config))
    data = SegDataConfig(train=["x"], test=["y"], voxel_size=0.1)
    net = build_backbone(SegModelConfig(unet="spunet-tiny", init="ppkt", checkpoint=path), data, 20)
    for name, tensor in net.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(tensor, pretrained.student.state_dict()[name]), name
    assert net.head.out_channels == 20
    scratch = build_backbone(SegModelConfig(unet="spunet-tiny"), data, 20)
    assert not torch.equal(scratch.stem[0].weight, net.stem[0].weight)
    with pytest.raises(PointliftConfigError, match="voxel_size"):
        build_backbone(SegModelConfig(unet="spunet-tiny", init="ppkt", checkpoint=path),
                           SegDataConfig(train=["x"], test=["y"], voxel_size=0.05), 20)
    with pytest.raises(PointliftConfigError, match="spunet-small"):
        build_backbone(SegModelConfig(unet="spunet-small", init="ppkt", checkpoint=path), data, 20)


def test_image2point_inflation_initialises_the_encoder():
    from pointlift.models.inflate import create_2d_network, inflate_kernel

    model = SegModelConfig(arch="inflated", init="image2point", teacher="tf_efficientnet_lite0")
    net = build_backbone(model, SegDataConfig(train=["x"], test=["y"]), 20)
    net_2d = create_2d_network("tf_efficientnet_lite0")
    stem_3d = net.encoder[0].weight
    expected = inflate_kernel(net_2d.conv_stem.weight.detach(), "copy", "z-axis")
    assert torch.equal(stem_3d.detach(), expected)
    assert torch.allclose(net.encoder[1].running_mean, net_2d.bn1.running_mean)
    # the scratch arm: the same architecture, not the ImageNet weights
    scratch = build_backbone(SegModelConfig(arch="inflated", teacher="tf_efficientnet_lite0"),
                                 SegDataConfig(train=["x"], test=["y"]), 20)
    assert scratch.encoder[0].weight.shape == stem_3d.shape
    assert not torch.allclose(scratch.encoder[0].weight, stem_3d)
    assert torch.equal(scratch.encoder[1].running_mean, torch.zeros_like(net_2d.bn1.running_mean))


# ----------------------------------------------------------------------------------- end to end (real)


def _tiny_config(tmp_path: Path, root: Path, **over) -> dict:
    config = {
        "name": "tiny",
        "data": {"layout": "scannet-votenet", "root": str(root), "train": ["scene0000"], "test": ["scene0010_00"],
                 "voxel_size": 0.15, "max_points": 10000},
        "model": {"unet": "spunet-tiny"},
        "train": {"max_steps": 16, "batch_size": 1, "log_every": 1, "checkpoint_every": 0,
                  "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0001}},
        "run_root": str(tmp_path / "runs"),
    }
    for key, value in over.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def test_finetune_on_real_scans_loss_falls_and_beats_untrained(tmp_path, shared):
    """16 steps on the three scans of room scene0000: training loss falls and the mIoU on a scan of
    another room clears the untrained network's (measured on every point of scene0010_00)."""
    config = load_config(_tiny_config(tmp_path, shared("data/scannet-votenet")), SegmentationConfig)
    summary = finetune(config, tmp_path / "run", progress=False)
    from pointlift.report import read_metrics_csv

    losses = [v for _, v in read_metrics_csv(tmp_path / "run" / "metrics.csv")["loss"]]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3])
    assert summary["test"]["miou"] > summary["untrained"]["miou"] + 0.02
    assert summary["test"]["labelled_points"] == sum(
        int((np.load(shared("data/scannet-votenet") / f"scene0010_0{i}_sem_label.npy")[:, None]
             == np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])).any(1).sum())
        for i in (0,))
    assert (tmp_path / "run" / "predictions" / "scene0010_00.ply").is_file()
    assert (tmp_path / "run" / "prediction_vs_gt.png").stat().st_size > 10000
    assert "prediction_vs_gt.png" in (tmp_path / "run" / "report.md").read_text()


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real command line in a fresh process (used once: imports cost seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pointlift", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=600)


class _Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def main(capsys):
    """`pointlift ARGS` in this process: (exit code, stdout, stderr) like a subprocess."""
    from pointlift.cli import main as cli_main

    def run(*args):
        capsys.readouterr()
        try:
            code = cli_main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
        out = capsys.readouterr()
        return _Done(code, out.out, out.err)

    return run


def test_cli_finetune_resume_and_eval_segmentation(tmp_path, shared, main):
    root = shared("data/scannet-votenet")
    config = _tiny_config(tmp_path, root, train={"max_steps": 4, "checkpoint_every": 2},
                          eval_untrained=False, write_predictions=False)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    done = main("finetune", "segmentation", "--config", str(tmp_path / "tiny.yaml"), "--run-dir", str(run))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test mIoU" in done.stdout
    first = json.loads((run / "results.json").read_text())
    again = main("finetune", "segmentation", "--config", str(tmp_path / "tiny.yaml"), "--run-dir", str(run),
                 "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["steps"] == first["steps"] == 4
    # held-out scans in their own directory (one scan of room scene0010)
    held = tmp_path / "held"
    held.mkdir()
    for suffix in ("vert", "sem_label"):
        (held / f"scene0010_00_{suffix}.npy").symlink_to(root / f"scene0010_00_{suffix}.npy")
    out = tmp_path / "eval.json"
    done = main("eval", "segmentation", "--checkpoint", str(run / "checkpoints" / "last"), "--data", str(held),
                "--out", str(out), "--predictions", str(tmp_path / "pred"))
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["scans"] == ["scene0010_00"] and 0 <= record["miou"] <= 1
    assert record["miou"] == pytest.approx(first["test"]["miou"], abs=1e-9)  # the same network, the same scan
    assert (tmp_path / "pred" / "scene0010_00.ply").is_file()
    assert record["training_scans_scored"] == []
    # the run directory is accepted, and a training scan scored again is named in one warning line
    train_scan = first["train_scans"][0]
    for suffix in ("vert", "sem_label"):
        (held / f"{train_scan}_{suffix}.npy").symlink_to(root / f"{train_scan}_{suffix}.npy")
    with pytest.warns(UserWarning, match=f"1 of 2 scans are training scans of this checkpoint \\({train_scan}\\)"):
        done = main("eval", "segmentation", "--checkpoint", str(run), "--data", str(held), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["training_scans_scored"] == [train_scan]


@pytest.mark.parametrize("args, message", [
    (["finetune", "segmentation"], "--config"),
    (["finetune", "segmentation", "--config", "/nonexistent.yaml"], "no such file"),
    (["eval", "segmentation", "--checkpoint", "x", "--out", "o.json"], "--data"),
    (["eval", "segmentation", "--checkpoint", "/nonexistent", "--data", ".", "--out", "/tmp/o.json"], "nonexistent"),
])
def test_cli_bad_arguments_one_line_exit_2(args, message, main):
    done = main(*args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cli_bad_config_one_line_exit_2(tmp_path, shared, main):
    config = _tiny_config(tmp_path, shared("data/scannet-votenet"), data={"test": ["scene0000"]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = main("finetune", "segmentation", "--config", str(tmp_path / "bad.yaml"))
    assert done.returncode == 2 and "stay on one side" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    config = _tiny_config(tmp_path, shared("data/scannet-votenet"), data={"test": ["scene0099"]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = main("finetune", "segmentation", "--config", str(tmp_path / "bad.yaml"))
    assert done.returncode == 2 and "scene0099" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_cli_subprocess_bad_data_directory(tmp_path):
    """The installed entry point: a bad --data directory is one line on stderr and exit code 2."""
    done = _cli("eval", "segmentation", "--checkpoint", "x", "--data", str(tmp_path / "nope"), "--out", "o.json")
    assert done.returncode == 2 and "no such directory" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("segmentation_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path, SegmentationConfig)
    assert config.data.train and config.data.test


def test_bench_segmentation_is_registered_with_every_preset():
    from pointlift.bench import PRESETS
    from pointlift.bench import segmentation as bench
    from pointlift.registry import BENCHMARKS

    assert BENCHMARKS["segmentation"] is bench
    assert {"smoke", "cpu", "gpu"} <= set(bench.PRESETS) <= set(PRESETS)
    for spec in bench.PRESETS.values():
        # rooms / sequences never on both sides of the split
        assert not set(bench.SCANNET_TRAIN) & {t.split("_")[0] for t in spec.scannet["test"]}
        assert not set(bench.KITTI_TRAIN) & set(spec.kitti["test"])


# ------------------------------------------------------------------------------ quickstart demo (synthetic rooms)


def test_synthetic_rooms_are_seeded_and_labelled():
    from pointlift.data.synthetic import ROOM_CLASSES, make_labelled_room

    a, b, c = make_labelled_room(3), make_labelled_room(3), make_labelled_room(4)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels)
    assert len(a) != len(c) or not np.array_equal(a.points, c.points)
    assert a.points.dtype == np.float32 and a.colors.shape == a.points.shape
    assert 0 <= a.colors.min() and a.colors.max() <= 1
    assert set(np.unique(a.labels).tolist()) == set(ROOM_CLASSES.values())  # every class in every room
    names = a.class_names
    assert all(names[i] == name for name, i in ROOM_CLASSES.items())
    # floor points lie on z = 0, wall points on the room's bounding box sides
    floor = a.points[a.labels == ROOM_CLASSES["floor"]]
    assert np.allclose(floor[:, 2], 0)
    wall = a.points[a.labels == ROOM_CLASSES["wall"]]
    low, high = a.points[:, :2].min(0), a.points[:, :2].max(0)
    on_side = np.isclose(wall[:, :2], low, atol=1e-5) | np.isclose(wall[:, :2], high, atol=1e-5)
    assert on_side.any(1).all()


def test_quickstart_demo_learns(tmp_path):
    torch.set_num_threads(1)
    result = quickstart(tmp_path / "segmentation", progress=False, steps=16, train_rooms=2, test_rooms=1)
    f = result["figures"]
    assert f["loss_last"] < 0.7 * f["loss_first"]
    assert f["test_miou_finetuned"] > f["test_miou_untrained"] + 0.15
    assert f["test_overall_acc_finetuned"] > f["test_overall_acc_untrained"]
    assert [Path(png).exists() for _, png in result["plots"]] == [True, True]
    assert (tmp_path / "segmentation" / "report.md").exists()
