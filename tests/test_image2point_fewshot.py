"""`bench image2point-fewshot`: K-shot fine-tuning, inflated vs scratch paired by draw, rates chosen on
validation shapes only."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pointlift.bench import image2point_fewshot as bench
from pointlift.errors import PointliftConfigError, PointliftDataError


def _job(arm: str, draw: int, phase: str = "measure", shots: int = 1) -> dict:
    return {"settings": bench.PRESETS["cpu-long"], "phase": phase, "shots": shots, "epochs": 2, "fip": "all",
            "arm": arm, "lr": 0.03, "draw": draw, "name": "x", "out_dir": "unused", "threads": 1}


def test_both_arms_of_a_draw_train_on_the_same_shapes_in_the_same_order(shared):
    from pointlift.tasks.shape_classification.data import build_datasets_with_validation, load_shape_split

    shared("data/modelnet10_vox32.npz")
    splits = {}

    def support(arm, draw, shots=1):
        config = bench.job_config(_job(arm, draw, phase="selection", shots=shots))  # 1 test shape per class
        splits.setdefault("train", load_shape_split(config.data, "train"))
        train, val, _, _ = build_datasets_with_validation(config.data, splits["train"], splits["train"])
        return config, train, val

    inflated, train_a, val_a = support("inflated", 3)
    scratch, train_b, val_b = support("random", 3)
    assert inflated.inflation.weights.endswith(bench.MOBILENET_WEIGHTS) and scratch.inflation.weights == "random"
    assert dataclasses.replace(inflated, inflation=scratch.inflation) == scratch  # nothing else differs
    assert inflated.data.test_per_class == 1  # selection runs: test figure never read, kept cheap
    assert inflated.train.seed == 3 and inflated.data.subset_seed == 3
    assert len(train_a) == bench.NUM_CLASSES and sorted(train_a.labels.tolist()) == list(range(bench.NUM_CLASSES))
    for a, b in zip(train_a.points, train_b.points):
        np.testing.assert_array_equal(a, b)
    _, other, _ = support("inflated", 4)
    assert any(not np.array_equal(a, b) for a, b in zip(train_a.points, other.points))
    validation = {p.tobytes() for p in val_a.points}  # the validation shapes are never in a support set
    for draw in (3, 4, 1000):
        assert not validation & {p.tobytes() for p in support("inflated", draw, shots=10)[1].points}


def test_rates_are_chosen_on_validation_never_on_test(tmp_path, monkeypatch):
    """A fake run whose validation prefers 0.01 and whose test prefers 0.1: the bench reports 0.01, runs the
    selection on the selection draws only and the measurement on the measured draws only."""
    seen = []

    def fake_run(job):
        seen.append((job["phase"], job["draw"], job["arm"], job["lr"]))
        val = {0.01: 0.6, 0.03: 0.5, 0.1: 0.4}[job["lr"]]
        test = {0.01: 0.3, 0.03: 0.5, 0.1: 0.9}[job["lr"]] + (0.05 if job["arm"] == "inflated" else 0.0)
        return job, {"val_overall_acc": val, "overall_acc": test + 0.01 * job["draw"], "seconds": 1.0}

    monkeypatch.setattr(bench, "_run", fake_run)
    spec = dataclasses.replace(bench.PRESETS["cpu-long"], draws=(0, 1, 2), workers=1, extra_fips=("io",))
    result = bench.run(spec, tmp_path)
    assert {draw for phase, draw, *_ in seen if phase == "selection"} == set(spec.selection_draws)
    assert {draw for phase, draw, *_ in seen if phase == "measure"} == set(spec.draws)
    assert {lr for phase, *_, lr in seen if phase == "measure"} == {0.01}
    for key in ("1shot_all", "5shot_all", "10shot_all", "1shot_io"):
        assert result.metrics[f"lr_{key}_inflated"] == 0.01 and result.metrics[f"lr_{key}_random"] == 0.01
        assert result.metrics[f"gain_{key}"] == pytest.approx(0.05)
    assert "5shot_io" not in result.config["comparisons"]  # extra modes at the smallest K only
    assert (tmp_path / "fewshot_accuracy_vs_shots.png").is_file()
    stored = json.loads((tmp_path / "progress.json").read_text())
    assert len(stored) == len(seen) + 1 and "_settings" in stored

    # the same command again continues from progress.json: nothing reruns, the same figures come out
    seen.clear()
    again = bench.run(spec, tmp_path)
    assert seen == [] and again.metrics["gain_1shot_all"] == result.metrics["gain_1shot_all"]
    # a stopped run (its last measured run lost) reruns only that one
    name = next(key for key in stored if key.startswith("measure-"))
    del stored[name]
    (tmp_path / "progress.json").write_text(json.dumps(stored))
    bench.run(spec, tmp_path)
    assert seen == [("measure", 0, "inflated", 0.01)] and name == "measure-1shot-all-inflated-lr0.01-draw0"
    # other settings never mix with these runs
    with pytest.raises(PointliftDataError, match="other settings"):
        bench.run(dataclasses.replace(spec, draws=(0, 1)), tmp_path)


def test_preset_refuses_measured_draws_among_the_selection_draws():
    with pytest.raises(PointliftConfigError, match="selection draws"):
        dataclasses.replace(bench.PRESETS["smoke"], selection_draws=(0,))


def test_tiny_run_end_to_end(tmp_path, shared):
    shared("data/modelnet10_vox32.npz")
    spec = dataclasses.replace(bench.PRESETS["smoke"], shots=(1,), epochs=(2,), lrs=(0.05,), extra_fips=())
    result = bench.run(spec, tmp_path)
    per_draw = result.config["comparisons"]["1shot_all"]["test_per_draw"]
    assert len(per_draw["inflated"]) == len(spec.draws) and all(0 <= a <= 1 for a in per_draw["inflated"])
    assert result.metrics["gain_1shot_all"] == pytest.approx(np.mean(per_draw["inflated"]) - np.mean(per_draw["random"]))
    assert "gain_1shot_all_low" in result.metrics
