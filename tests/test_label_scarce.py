"""Limited annotations (`data.points_per_scene`): exact labelled counts per scan, one draw per seed that does
not depend on the training order, scarce labels never subsampled away, the loss over labelled points only,
and bad values refused at load (one line, exit 2 from the CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from pointlift.data.scenes import IGNORE, Scene
from pointlift.engine.config import load_config
from pointlift.errors import PointliftConfigError
from pointlift.tasks.segmentation.config import SegDataConfig, SegmentationConfig
from pointlift.tasks.segmentation.data import SceneCollate, SceneDataset, label_efficient_subset, load_split
from pointlift.tasks.segmentation.model import build_model


def _real_scans(shared, layout: str) -> list[Scene]:
    if layout == "semantickitti":
        data = load_config({"layout": layout, "root": str(shared("data/semantickitti-mini"))}, SegDataConfig)
        return load_split(data, ["00", "01"])
    data = load_config({"layout": layout, "root": str(shared("data/scannet-votenet"))}, SegDataConfig)
    return load_split(data, ["scene0000", "scene0001"])


@pytest.mark.parametrize("layout", ["scannet-votenet", "semantickitti"])
@pytest.mark.parametrize("budget", [20, 200])
def test_exactly_n_labelled_points_per_scan_and_the_same_draw_per_seed(shared, layout, budget):
    scans = _real_scans(shared, layout)
    chosen = label_efficient_subset(scans, 1.0, 1.0, seed=0, points_per_scene=budget)
    for before, after in zip(scans, chosen):
        kept = after.labels != IGNORE
        assert kept.sum() == budget
        assert np.array_equal(after.labels[kept], before.labels[kept])  # a kept label is the scan's own
        assert (before.labels[kept] != IGNORE).all()  # only labelled points are drawn
        assert (after.labels[~kept] == IGNORE).all()
    again = label_efficient_subset(scans, 1.0, 1.0, seed=0, points_per_scene=budget)
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(chosen, again))  # the same for both arms
    shuffled = label_efficient_subset(scans[::-1], 1.0, 1.0, seed=0, points_per_scene=budget)
    by_name = {s.name: s.labels for s in shuffled}
    assert all(np.array_equal(s.labels, by_name[s.name]) for s in chosen)  # independent of the order
    other = label_efficient_subset(scans, 1.0, 1.0, seed=1, points_per_scene=budget)
    assert all(not np.array_equal(a.labels, b.labels) for a, b in zip(chosen, other))  # another seed, another draw


def test_fewer_labelled_points_than_the_budget_keeps_them_all_and_fractions_combine():
    rng = np.random.default_rng(0)
    labels = np.full(500, IGNORE)
    labels[rng.choice(500, 7, replace=False)] = 2
    scans = [Scene(f"scene{i:04d}_00", rng.uniform(0, 2, (500, 3)).astype(np.float32),
                   labels if i == 0 else rng.integers(0, 3, 500), "s3dis13") for i in range(10)]
    chosen = label_efficient_subset(scans, 1.0, 1.0, seed=0, points_per_scene=20)
    assert (chosen[0].labels != IGNORE).sum() == 7 and all((s.labels != IGNORE).sum() == 20 for s in chosen[1:])
    few = label_efficient_subset(scans, 0.2, 1.0, seed=3, points_per_scene=20)  # limited scenes and annotations
    assert len(few) == 2 and [s.name for s in few] == [s.name for s in label_efficient_subset(scans, 0.2, 1.0, 3)]


def test_subsampling_keeps_every_scarce_label(shared):
    scans = _real_scans(shared, "scannet-votenet")
    data = load_config({"layout": "scannet-votenet", "root": str(shared("data/scannet-votenet")),
                        "max_points": 2000, "points_per_scene": 50}, SegDataConfig)
    chosen = label_efficient_subset(scans, 1.0, 1.0, seed=0, points_per_scene=50)
    from pointlift.tasks.segmentation.config import SegAugmentConfig

    torch.manual_seed(0)
    dataset = SceneDataset(chosen, data, SegAugmentConfig())
    for index in range(len(dataset)):
        item = dataset[index]
        assert len(item["points"]) == 2000 and int((item["labels"] != IGNORE).sum()) == 50
    # without the option the same subsampling is the old uniform draw, which loses most of them
    plain = SceneDataset(chosen, load_config({**{"layout": "scannet-votenet", "root": str(data.root)},
                                              "max_points": 2000}, SegDataConfig), SegAugmentConfig())
    assert int((plain[0]["labels"] != IGNORE).sum()) < 50


def test_loss_is_over_labelled_points_only(shared):
    scans = _real_scans(shared, "scannet-votenet")[:1]
    scarce = label_efficient_subset(scans, 1.0, 1.0, seed=0, points_per_scene=20)
    config = load_config({"data": {"root": str(shared("data/scannet-votenet")), "voxel_size": 0.2,
                                   "points_per_scene": 20}, "model": {"unet": "spunet-tiny"}}, SegmentationConfig)
    torch.manual_seed(0)
    model = build_model(config, 20).eval()
    dataset = SceneDataset(scarce, config.data)
    batch = SceneCollate(config.data.voxel_size)([dataset[0]])
    loss = model(batch)["loss"]
    logits = model.logits(batch).float()
    labelled = batch["labels"] != IGNORE
    assert int(labelled.sum()) == 20
    assert loss.item() == pytest.approx(F.cross_entropy(logits[labelled], batch["labels"][labelled]).item(), rel=1e-6)
    full = SceneCollate(config.data.voxel_size)([SceneDataset(scans, config.data)[0]])
    assert model(full)["loss"].item() != pytest.approx(loss.item(), rel=1e-3)  # other labels, another loss


@pytest.mark.parametrize("data, message", [
    ({"points_per_scene": 0}, "points_per_scene"),
    ({"points_per_scene": 20, "point_fraction": 0.5}, "not both"),
])
def test_bad_budgets_refused_at_load(data, message):
    with pytest.raises(PointliftConfigError, match=message):
        load_config(data, SegDataConfig)


def test_cli_refuses_a_bad_budget_in_one_line(tmp_path, capsys):
    from pointlift.cli import main

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"train": ["scene0000"], "test": ["scene0010"],
                                                                "points_per_scene": -5}}))
    try:
        code = main(["finetune", "segmentation", "--config", str(tmp_path / "bad.yaml")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "points_per_scene" in err and len(err.splitlines()) == 1, err
