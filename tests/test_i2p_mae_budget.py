"""`bench i2p-mae-budget`: probes at several budgets of one run per (seed, arm); the untrained arm is the
official run's own starting network, and probing leaves the training run unchanged."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pointlift.bench import i2p_mae_budget as bench
from pointlift.errors import PointliftConfigError, PointliftDataError


def _job(arm: str, seed: int, out_dir, settings=None) -> dict:
    return {"settings": settings or bench.PRESETS["smoke"], "seed": seed, "arm": arm, "name": f"{arm}_seed{seed}",
            "out_dir": str(out_dir), "threads": 1}


def test_budgets_must_be_whole_epochs_and_increase():
    with pytest.raises(PointliftConfigError, match="whole epochs of 4 steps"):
        dataclasses.replace(bench.PRESETS["smoke"], budgets=(4, 6))
    with pytest.raises(PointliftConfigError, match="must increase"):
        dataclasses.replace(bench.PRESETS["smoke"], budgets=(8, 4))
    with pytest.raises(PointliftConfigError, match="unknown i2p-mae preset"):
        dataclasses.replace(bench.PRESETS["smoke"], base="nope")
    assert bench.PRESETS["cpu-long"].budgets == (300, 900, 2100) and bench.PRESETS["cpu-long"].seeds == (0, 1, 2)
    with pytest.raises(PointliftConfigError, match="must include 'random'"):
        dataclasses.replace(bench.PRESETS["smoke"], arms=("official_i2pmae",))
    with pytest.raises(PointliftConfigError, match="must include 'random'"):
        dataclasses.replace(bench.PRESETS["smoke"], arms=("official_i2pmae", "clip", "random"))


def test_comparisons_pair_each_run_with_the_untrained_network_and_its_own_ablation():
    assert bench.comparisons(("official_i2pmae", "official_3d_only", "random")) == [
        ("official_i2pmae", "random"), ("official_3d_only", "random"), ("official_i2pmae", "official_3d_only")]
    assert bench.comparisons(bench.PRESETS["cpu-recipes"].arms) == [
        ("pointlift_i2pmae", "random"), ("pointlift_i2pmae_dinov2", "random"),
        ("pointlift_i2pmae_dinov2", "pointlift_i2pmae")]


@pytest.mark.parametrize("arm", ["official_i2pmae", "pointlift_i2pmae"])
def test_untrained_arm_is_each_runs_starting_network(arm, shared, tmp_path, monkeypatch):
    """pretrain's model, captured as it reaches the trainer, equals the `random` arm's build for that seed."""
    import pointlift.methods.i2p_mae.pretrain as pretrain_module
    from pointlift.engine.seed import seed_everything
    from pointlift.methods.i2p_mae.model import I2PMAE

    shared("data/modelnet10_vox32.npz")
    captured = {}

    class Reached(Exception):
        pass

    def capture(model, *args, **kwargs):
        captured.update({k: v.clone() for k, v in model.state_dict().items()})
        raise Reached

    monkeypatch.setattr(pretrain_module, "train", capture)
    with pytest.raises(Reached):
        bench._run(_job(arm, 1, tmp_path))
    spec = bench.base_bench.PRESETS["smoke"]
    shared_parts = bench._shapes_and_teacher(spec, torch.device("cpu"))
    experiment = bench.base_bench.bench_experiment(spec, "official", "i2pmae", 1, 8, shared_parts["teacher_config"],
                                                   shared_parts["image_size"], torch.device("cpu"))
    seed_everything(1)
    untrained = I2PMAE(experiment.method, shared_parts["teacher"]).state_dict()
    assert captured.keys() == untrained.keys() and len(captured) > 10
    for name, value in untrained.items():
        assert torch.equal(captured[name], value), name


def test_dinov2_arm_starts_from_the_untrained_encoder(shared):
    """With DINOv2 only the 2D target head differs in shape (384 channels); every other weight is the
    `random` arm's, so the untrained network is the DINOv2 run's starting point for the frozen features."""
    from pointlift.engine.seed import seed_everything
    from pointlift.methods.i2p_mae.model import I2PMAE

    shared("data/modelnet10_vox32.npz")
    shared(bench.TEACHERS["dinov2"][1])
    spec = bench.base_bench.PRESETS["smoke"]
    built = {}
    for key, recipe in ((None, "official"), ("dinov2", "pointlift")):
        parts = bench._shapes_and_teacher(spec, torch.device("cpu"), key)
        experiment = bench.base_bench.bench_experiment(spec, recipe, "i2pmae", 3, 8, parts["teacher_config"],
                                                       parts["image_size"], torch.device("cpu"))
        seed_everything(3)
        built[key] = {name: value for name, value in I2PMAE(experiment.method, parts["teacher"]).state_dict().items()
                      if not name.startswith("teacher.")}
    assert parts["image_size"] == 98 and parts["teacher"].is_vit
    differing = [name for name in built[None] if built[None][name].shape != built["dinov2"][name].shape]
    assert differing == ["rec_head_2d.weight", "rec_head_2d.bias"]
    for name, value in built[None].items():
        if name not in differing:
            assert torch.equal(built["dinov2"][name], value), name


def test_probing_leaves_the_run_unchanged(shared, tmp_path):
    """A run probed at both budgets ends with the weights of the same run without probes."""
    from safetensors.torch import load_file

    from pointlift.engine.checkpoint import checkpoint_files
    from pointlift.methods.i2p_mae.pretrain import pretrain

    shared("data/modelnet10_vox32.npz")
    _, probes = bench._run(_job("official_i2pmae", 0, tmp_path / "probed"))
    assert sorted(probes, key=int) == ["4", "8"]
    for record in probes.values():
        assert set(bench.PROBES) <= set(record) and 0 < record["svm_acc"] <= 1
    assert probes["4"]["train_seconds"] < probes["8"]["train_seconds"]
    spec = bench.base_bench.PRESETS["smoke"]
    parts = bench._shapes_and_teacher(spec, torch.device("cpu"))
    experiment = bench.base_bench.bench_experiment(spec, "official", "i2pmae", 0, 8, parts["teacher_config"],
                                                   parts["image_size"], torch.device("cpu"))
    plain, _, _ = pretrain(experiment, tmp_path / "plain", progress=False, points=parts["data"].pretrain_points,
                           teacher=parts["teacher"])
    tensors = checkpoint_files(tmp_path / "probed" / "official_i2pmae_seed0" / "checkpoints" / "last")[0]
    with_probes = load_file(str(tensors))
    compared = 0
    for name, value in plain.state_dict().items():
        if name in with_probes:
            assert torch.equal(with_probes[name], value), name
            compared += 1
    assert compared > 10


def test_gains_pair_each_seed_with_its_own_untrained_network_and_the_bench_resumes(tmp_path, monkeypatch):
    """Figures from a stand-in `_run`: official minus step 0 of the same seed; progress.json continues a
    stopped bench and refuses other settings."""
    seen = []

    def fake_run(job):
        seen.append(job["name"])
        seed, arm = job["seed"], job["arm"]
        level = {"random": 0.5, "official_3d_only": 0.4, "official_i2pmae": 0.6, "pointlift_i2pmae": 0.55,
                 "pointlift_i2pmae_dinov2": 0.45}[arm] + 0.01 * seed
        steps = ["0"] if arm == "random" else [str(b) for b in job["settings"].budgets]
        return job, {step: {**{name: level + 0.001 * int(step) for name in bench.PROBES}, "train_seconds": 1.0}
                     for step in steps}

    monkeypatch.setattr(bench, "_run", fake_run)
    spec = dataclasses.replace(bench.PRESETS["smoke"], seeds=(0, 1, 2))
    result = bench.run(spec, tmp_path)
    assert len(seen) == 9
    # official at step 8: 0.6 + 0.01 seed + 0.008; untrained: 0.5 + 0.01 seed -> 0.108 on every seed
    assert result.metrics["gain_svm_acc_official_i2pmae_vs_random_8"] == pytest.approx(0.108)
    assert result.metrics["gain_svm_acc_official_i2pmae_vs_random_8_low"] == pytest.approx(0.108)
    assert result.metrics["gain_fewshot_10w1s_official_i2pmae_vs_official_3d_only_4"] == pytest.approx(0.2)
    assert result.metrics["svm_acc_random_4"] == result.metrics["svm_acc_random_8"] == pytest.approx(0.51)
    assert (tmp_path / "svm_accuracy_vs_budget.png").is_file()
    stored = json.loads((tmp_path / "progress.json").read_text())
    del stored["official_i2pmae_seed2"]
    (tmp_path / "progress.json").write_text(json.dumps(stored))
    seen.clear()
    again = bench.run(spec, tmp_path)
    assert seen == ["official_i2pmae_seed2"]
    assert again.metrics["gain_svm_acc_official_i2pmae_vs_random_8"] == result.metrics[
        "gain_svm_acc_official_i2pmae_vs_random_8"]
    with pytest.raises(PointliftDataError, match="other settings"):
        bench.run(dataclasses.replace(spec, seeds=(0, 1)), tmp_path)


def test_recipe_arms_are_compared_with_each_other_and_timed_side_by_side(tmp_path, monkeypatch):
    """cpu-recipes' arms: each vs untrained, DINOv2 vs the CNN teacher; the step timing lands in the metrics."""
    def fake_run(job):
        level = {"random": 0.5, "pointlift_i2pmae": 0.55, "pointlift_i2pmae_dinov2": 0.45}[job["arm"]]
        steps = ["0"] if job["arm"] == "random" else [str(b) for b in job["settings"].budgets]
        return job, {step: {**{name: level + 0.01 * job["seed"] for name in bench.PROBES}, "train_seconds": 2.0}
                     for step in steps}

    monkeypatch.setattr(bench, "_run", fake_run)
    monkeypatch.setattr(bench, "step_seconds", lambda spec: {"step_teacher_each_step_s": 1.0, "step_cached_s": 0.5})
    spec = dataclasses.replace(bench.PRESETS["smoke"], seeds=(0, 1, 2), arms=bench.PRESETS["cpu-recipes"].arms)
    result = bench.run(spec, tmp_path)
    assert result.metrics["gain_svm_acc_pointlift_i2pmae_dinov2_vs_pointlift_i2pmae_8"] == pytest.approx(-0.1)
    assert result.metrics["gain_fewshot_10w1s_pointlift_i2pmae_vs_random_4"] == pytest.approx(0.05)
    assert result.metrics["step_cached_s"] == 0.5 and result.metrics["train_seconds_pointlift_i2pmae_8"] == 2.0
    assert "official_i2pmae" not in json.dumps(result.config["teachers"])


def test_equal_time_pairs_each_cached_budget_with_the_official_budget_nearest_in_cost(tmp_path, monkeypatch):
    """bench/i2p_mae_equal_time.py: a cached step at half an official step's price, no cache cost -> 600 cached
    steps cost what 300 official steps do; differences are paired by seed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import i2p_mae_equal_time as equal_time
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(equal_time, "cache_seconds", lambda spec, key: 0.0)
    seeds = [0, 1, 2]

    def result(arms: dict, budgets: list[int], metrics: dict) -> dict:
        per_seed = {f"{arm}_seed{seed}": {str(b): {name: level + 0.01 * seed + 0.0001 * b for name in bench.PROBES}
                                          for b in budgets} for arm, level in arms.items() for seed in seeds}
        return {"metrics": metrics, "config": {"seeds": seeds, "base": "cpu", "budgets": budgets, "per_seed": per_seed}}

    official = tmp_path / "official.json"
    recipes = tmp_path / "recipes.json"
    official.write_text(json.dumps(result({"official_i2pmae": 0.7}, [300, 900], {})))
    recipes.write_text(json.dumps(result({"pointlift_i2pmae": 0.6, "pointlift_i2pmae_dinov2": 0.5}, [600, 1800],
                                         {"step_teacher_each_step_s": 1.0, "step_cached_s": 0.5})))
    out = tmp_path / "equal.json"
    assert equal_time.main(["--official", str(official), "--recipes", str(recipes), "--out", str(out)]) == 0
    rows = {(row["arm"], row["steps"]): row for row in json.loads(out.read_text())["rows"]}
    row = rows[("pointlift_i2pmae", 600)]
    assert row["paired_with_official_steps"] == 300 and row["official_steps_same_seconds"] == 300
    # 0.6 + 0.06 - (0.7 + 0.03) on every seed
    assert row["svm_acc"]["mean"] == pytest.approx(-0.07) and row["svm_acc"]["low"] == pytest.approx(-0.07)
    assert rows[("pointlift_i2pmae_dinov2", 1800)]["paired_with_official_steps"] == 900
