"""Official I2P-MAE vs pointlift's cached recipe at equal wall time, from the two `bench i2p-mae-budget` results.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/i2p_mae_equal_time.py \
        --official bench/results/i2p-mae-budget-cpu-long.json --recipes bench/results/i2p-mae-budget-cpu-recipes.json \
        --out bench/results/i2p-mae-equal-time.json

The two runs used the same seeds, data and starting weights (each seed's untrained network is the same in both;
tested), so a pointlift checkpoint and an official one of the same seed pair up. Their wall times are not
comparable as recorded (other jobs shared the cores differently), so the price of a step comes from
`cpu-recipes`' side-by-side timing in one process (`step_timing`: one official step - render, teacher,
student - and one step on cached maps), and the one-off teacher cache of the pointlift recipe is timed here on
one batch of the pretraining shapes per teacher and scaled to all of them. A pointlift budget then costs
(steps x cached step + cache) seconds, which this many official steps would take; each is paired with the
official budget nearest in cost, and the costs are printed beside the differences.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pointlift.bench import i2p_mae as base_bench
from pointlift.bench import i2p_mae_budget as budget_bench
from pointlift.bench.stats import paired_difference
from pointlift.methods.i2p_mae.cache import teacher_maps

ARMS = ("pointlift_i2pmae", "pointlift_i2pmae_dinov2")


def cache_seconds(spec, teacher_key: str | None) -> float:
    """Seconds to build the teacher cache of every pretraining shape: one batch timed (after a warm-up), scaled."""
    parts = budget_bench._shapes_and_teacher(spec, torch.device("cpu"), teacher_key)
    points = parts["data"].pretrain_points
    batch = torch.from_numpy(points[: spec.batch_size])
    footprint = base_bench.bench_experiment(spec, "pointlift", "i2pmae", 0, 1, parts["teacher_config"],
                                            parts["image_size"], torch.device("cpu")).method.footprint
    teacher_maps(parts["teacher"], batch, parts["image_size"], footprint)
    start = time.perf_counter()
    teacher_maps(parts["teacher"], batch, parts["image_size"], footprint)
    return (time.perf_counter() - start) * len(points) / len(batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--recipes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    official, recipes = (json.loads(path.read_text()) for path in (args.official, args.recipes))
    seeds = recipes["config"]["seeds"]
    assert official["config"]["seeds"] == seeds and official["config"]["base"] == recipes["config"]["base"]
    spec = base_bench.PRESETS[recipes["config"]["base"]]
    step_official = recipes["metrics"]["step_teacher_each_step_s"]
    step_cached = recipes["metrics"]["step_cached_s"]
    caches = {arm: cache_seconds(spec, budget_bench.ARM_RUNS[arm][2]) for arm in ARMS}
    official_budgets = official["config"]["budgets"]

    def figures(record: dict, arm: str, budget: int, probe: str) -> list[float]:
        return [record["config"]["per_seed"][f"{arm}_seed{seed}"][str(budget)][probe] for seed in seeds]

    rows = []
    for arm in ARMS:
        for budget in recipes["config"]["budgets"]:
            cost = budget * step_cached + caches[arm]
            equivalent = cost / step_official  # official steps in the same seconds
            nearest = min(official_budgets, key=lambda b: abs(b - equivalent))
            row = {"arm": arm, "steps": budget, "seconds": cost, "official_steps_same_seconds": equivalent,
                   "paired_with_official_steps": nearest, "official_seconds": nearest * step_official}
            for probe in budget_bench.PROBES:
                row[probe] = paired_difference(figures(recipes, arm, budget, probe),
                                               figures(official, "official_i2pmae", nearest, probe))
            rows.append(row)
            svm = row["svm_acc"]
            print(f"{arm} {budget} steps ({cost:.0f} s = {equivalent:.0f} official steps) vs official {nearest} "
                  f"({row['official_seconds']:.0f} s): SVM {100 * svm['mean']:+.1f} [{100 * svm['low']:+.1f}, "
                  f"{100 * svm['high']:+.1f}]", flush=True)
    record = {"what": __doc__.split("\n\n")[0], "step_official_s": step_official, "step_cached_s": step_cached,
              "cache_seconds": caches, "seeds": seeds, "rows": rows,
              "inputs": [str(args.official), str(args.recipes)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
