"""Paired comparisons over seeds (`pointlift.bench.stats`) and the segmentation bench's use of them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pointlift.bench.stats import paired_difference, per_class_differences


def test_paired_t_interval_by_hand_and_against_scipy():
    record = paired_difference([0.5, 0.7, 0.9], [0.4, 0.5, 0.6])  # differences 0.1, 0.2, 0.3
    assert record["per_seed"] == pytest.approx([0.1, 0.2, 0.3])
    assert record["mean"] == pytest.approx(0.2) and record["std"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof), from a t table
    assert (record["low"], record["high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert record["excludes_zero"] is False  # 0.2 +- 0.248: three seeds cannot tell
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 0.05, 7), rng.normal(0.2, 0.05, 7)
    record = paired_difference(a, b, confidence=0.9)
    interval = scipy_stats.ttest_rel(a, b).confidence_interval(0.9)
    assert (record["low"], record["high"]) == pytest.approx((interval.low, interval.high))
    assert record["excludes_zero"] is bool(interval.low > 0 or interval.high < 0)


def test_one_seed_has_no_interval_and_bad_input_is_refused():
    record = paired_difference([0.3], [0.1])
    assert record["mean"] == pytest.approx(0.2) and record["low"] is None and not record["excludes_zero"]
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


def test_per_class_differences_pair_only_seeds_where_both_scored_the_class():
    treated = [{"wall": 0.5, "door": None}, {"wall": 0.6, "door": 0.2}]
    baseline = [{"wall": 0.4, "door": 0.1}, {"wall": 0.4, "door": 0.1}]
    out = per_class_differences(treated, baseline)
    assert out["wall"]["per_seed"] == pytest.approx([0.1, 0.2]) and out["wall"]["n"] == 2
    assert out["door"]["per_seed"] == pytest.approx([0.1]) and out["door"]["low"] is None


def test_bench_compare_records_gain_interval_and_per_class():
    from pointlift.bench.segmentation import _compare

    treated = [{"miou": m, "per_class_iou": {"wall": m}} for m in (0.30, 0.34, 0.32)]
    baseline = [{"miou": m, "per_class_iou": {"wall": m - 0.1}} for m in (0.20, 0.25, 0.21)]  # wall: +0.2 ...
    metrics, paired = {}, {}
    _compare(metrics, paired, "scannet_ppkt_20pts", treated, baseline)
    assert metrics["scannet_ppkt_20pts_gain"] == pytest.approx(np.mean([0.10, 0.09, 0.11]))
    assert metrics["scannet_ppkt_20pts_gain_low"] < metrics["scannet_ppkt_20pts_gain"] < \
        metrics["scannet_ppkt_20pts_gain_high"]
    assert paired["scannet_ppkt_20pts"]["miou"]["per_seed"] == pytest.approx([0.10, 0.09, 0.11])
    assert paired["scannet_ppkt_20pts"]["per_class_iou"]["wall"]["per_seed"] == pytest.approx([0.20, 0.19, 0.21])


def test_bench_budgets_in_epochs_or_steps():
    from pointlift.bench.segmentation import PRESETS, _finetune_train
    from pointlift.engine.config import TrainConfig, load_config

    by_steps = load_config(_finetune_train({"steps": 40, "batch_size": 2}, 0.01, 0, False), TrainConfig)
    assert by_steps.max_steps == 40
    by_epochs = load_config(_finetune_train({"epochs": 6, "batch_size": 2}, 0.01, 1, True), TrainConfig)
    assert by_epochs.max_steps is None and by_epochs.epochs == 6 and by_epochs.seed == 1
    assert PRESETS["smoke"].points_per_scene and PRESETS["cpu"].points_per_scene == ()


def test_bench_ppkt_pretraining_options_reach_the_config(tmp_path, monkeypatch):
    """The segmentation bench's PPKT arm can pretrain on every sequence, in the world frame, with another
    teacher; without those keys it is the released redkitchen camera-frame run."""
    import dataclasses

    from pointlift.bench import segmentation as bench

    seen = {}

    def fake_pretrain(config, run_dir, progress=False):
        seen["config"] = config
        return {"checkpoint": str(tmp_path / "ckpt")}

    monkeypatch.setattr("pointlift.methods.ppkt.pretrain.pretrain", fake_pretrain)
    smoke = bench.PRESETS["smoke"]
    bench.pretrain_ppkt_7scenes(smoke, "spunet-tiny", 0.1, tmp_path)
    released = seen["config"]
    assert released.data.frame == "camera" and released.data.train_below == 560 and released.model.up_axis == "y"
    variant = dataclasses.replace(smoke, ppkt_7scenes={**smoke.ppkt_7scenes, "root": "data", "frame": "world",
                                                       "teacher": "vit_small_patch14_dinov2",
                                                       "teacher_weights": "weights/dinov2.safetensors"})
    bench.pretrain_ppkt_7scenes(variant, "spunet-tiny", 0.1, tmp_path)
    world = seen["config"]
    assert world.data.frame == "world" and world.model.up_axis == "z" and world.data.train_below is None
    assert world.data.root.name == "data" and world.model.teacher == "vit_small_patch14_dinov2"
    assert world.model.teacher_weights.endswith("weights/dinov2.safetensors")


def test_bench_runs_a_tiny_label_budget_plan_in_two_workers(tmp_path, shared):
    """The bench's worker pool end to end on real scans: PPKT pretraining, then both arms of each seed at
    each budget (every run lands, paired by seed whatever order the workers finish in), the gain interval
    and the mIoU-vs-labels plot; no SemanticKITTI pretraining when no KITTI arm is asked for."""
    import dataclasses

    from pointlift.bench import segmentation as bench

    smoke = bench.PRESETS["smoke"]
    tiny = dataclasses.replace(smoke, seeds=[0, 1], fractions=[], points_per_scene=(20, 50),
                               kitti_points_per_scene=(), kitti_full_labels=False, workers=2,
                               scannet={**smoke.scannet, "steps": 2})
    result = bench.run(tiny, tmp_path)
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert sorted(runs) == sorted(f"scannet_miou_{arm}_{b}pts" for arm in ("scratch", "ppkt") for b in (20, 50))
    for key, seeds in runs.items():
        assert [r["seed"] for r in seeds] == [0, 1]
        assert [r["name"] for r in seeds] == [f"scannet-{key.split('_')[2]}-{key.split('_')[3]}-seed{s}"
                                              for s in (0, 1)]
    metrics = result.metrics
    for budget in (20, 50):
        differences = [p - s for p, s in zip(result.config["miou_per_seed"][f"scannet_miou_ppkt_{budget}pts"],
                                             result.config["miou_per_seed"][f"scannet_miou_scratch_{budget}pts"])]
        assert metrics[f"scannet_ppkt_{budget}pts_gain"] == pytest.approx(np.mean(differences))
        assert metrics[f"scannet_ppkt_{budget}pts_gain_low"] <= metrics[f"scannet_ppkt_{budget}pts_gain_high"]
    assert "kitti_ppkt_pretrain_s" not in metrics and not (tmp_path / "ppkt_kitti").exists()
    assert (tmp_path / "scannet_miou_vs_labels.png").stat().st_size > 10_000
