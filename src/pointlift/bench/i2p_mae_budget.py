"""`pointlift bench i2p-mae-budget --preset {smoke,cpu-long,cpu-recipes}`: what longer I2P-MAE pretraining buys -
linear-SVM and few-shot accuracy of frozen features at several step budgets, official I2P-MAE vs the same network
pretrained with the 3D target alone vs the untrained network, paired by seed (`cpu-long`); pointlift's cached
recipe with the bundled CNN teacher and with DINOv2 at the same budgets (`cpu-recipes`).

The paper's gains come from long pretraining (300 epochs); `bench i2p-mae` measures one short budget. Here
each (seed, arm) is one pretraining run of the longest budget, probed at the end of the epoch where each
budget is reached (the trainer's `eval_fn`). So a budget's figure is a checkpoint of the longest run, whose
cosine rate has not yet decayed there - not a separate run of that many steps. The evaluation leaves every
random generator as it found it, so the training run is the same with or without it (tested).

Arms, for every seed (a preset names its own): `official_i2pmae` (the released recipe, teacher on every step),
`official_3d_only` (random masking, no 2D target), `pointlift_i2pmae` (pointlift's recipe: teacher maps cached
once per shape), `pointlift_i2pmae_dinov2` (the same with the DINOv2 ViT-S/14 of the shared folder at 98 px) and
`random`: the official run's network *before* its first step (same seed, same build), so every arm starts from
the same weights (tested). Training seconds to each budget are recorded per run, and `step_seconds` times one
official and one cached step side by side in one process, so recipes can be compared at equal wall time
(bench/i2p_mae_equal_time.py). Probes, all on the same shapes for every arm (network, data and teacher of
`bench i2p-mae`'s base preset): pointlift's SVM (scaler + LinearSVC, C by 5-fold CV on the training features),
the paper's SVM (SVC linear, C = 0.01), and 10-way K-shot episodes (the same episodes for every arm of a seed).
Budgets are fixed by the preset, nothing is chosen on the test split. Gains are paired differences over seeds
with 95 % intervals (`pointlift.bench.stats`).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pointlift.bench import BenchResult, Preset, shared_path
from pointlift.bench import i2p_mae as base_bench
from pointlift.bench.jobs import ProgressFile
from pointlift.bench.stats import paired_difference
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.methods.i2p_mae.config import TeacherConfig

# arm -> (recipe, variant, teacher); teacher None: the base preset's. `random` is no run (see the docstring).
ARM_RUNS = {"official_i2pmae": ("official", "i2pmae", None), "official_3d_only": ("official", "3d_only", None),
            "pointlift_i2pmae": ("pointlift", "i2pmae", None),
            "pointlift_i2pmae_dinov2": ("pointlift", "i2pmae", "dinov2")}
ARM_LABELS = {"random": "untrained (step 0)", "official_i2pmae": "official I2P-MAE", "official_3d_only": "3D-only",
              "pointlift_i2pmae": "pointlift recipe, EfficientNet-Lite0",
              "pointlift_i2pmae_dinov2": "pointlift recipe, DINOv2 ViT-S/14"}
# teacher key -> (timm name, weights under the shared folder, feature stage, render size)
TEACHERS = {"dinov2": ("vit_small_patch14_dinov2", base_bench.DINO_WEIGHTS, -1, 98)}
PROBES = ("svm_acc", "svm_paper_acc", "fewshot_10w1s", "fewshot_10w10s")


@dataclass(frozen=True)
class BudgetPreset(Preset):
    base: str  # the `bench i2p-mae` preset whose network, data, teacher, batch and rate every run uses
    budgets: tuple[int, ...]  # pretraining steps at which the frozen features are probed (the last: run length)
    seeds: tuple[int, ...]
    fewshot_folds: int  # episodes per few-shot figure
    workers: int = 1  # runs in this many processes of one torch thread each
    arms: tuple[str, ...] = ("official_i2pmae", "official_3d_only", "random")  # `random` must be one

    def __post_init__(self):
        unknown = [arm for arm in self.arms if arm != "random" and arm not in ARM_RUNS]
        if unknown or "random" not in self.arms or len(self.arms) < 2:
            raise PointliftConfigError(f"BudgetPreset: arms {self.arms} must include 'random' and runs from "
                                       f"{sorted(ARM_RUNS)}")
        spec = base_bench.PRESETS.get(self.base)
        if spec is None:
            raise PointliftConfigError(f"BudgetPreset: unknown i2p-mae preset {self.base!r}")
        steps_per_epoch = (spec.pretrain_shapes or 0) // spec.batch_size
        if not steps_per_epoch or any(b <= 0 or b % steps_per_epoch for b in self.budgets):
            raise PointliftConfigError(f"BudgetPreset: budgets {self.budgets} must be whole epochs of "
                                       f"{steps_per_epoch} steps (preset {self.base!r}: "
                                       f"{spec.pretrain_shapes} shapes, batch {spec.batch_size})")
        if list(self.budgets) != sorted(set(self.budgets)):
            raise PointliftConfigError(f"BudgetPreset: budgets must increase, got {self.budgets}")


PRESETS = BudgetPreset.table({
    # seconds: the `smoke` network on 64 shapes (4 steps per epoch), probed after 4 and 8 steps
    "smoke": dict(base="smoke", budgets=(4, 8), seeds=(0, 1), fewshot_folds=2),
    # <= 2 h on 2 CPU cores (two workers of one thread): `bench i2p-mae`'s `cpu` network and data (960
    # shapes, batch 32 = 30 steps per epoch), probed after 300 / 900 / 2,100 steps (10 / 30 / 70 epochs;
    # `bench i2p-mae --preset cpu` measures 600 steps), 3 seeds
    "cpu-long": dict(base="cpu", budgets=(300, 900, 2100), seeds=(0, 1, 2), fewshot_folds=10, workers=2),
    # <= 2 h on 2 CPU cores (1 h 53 min measured, cores shared for its first hour): pointlift's cached recipe at
    # cpu-long's budgets, with the bundled CNN teacher and with DINOv2 ViT-S/14 (the official recipe with DINOv2
    # runs the ViT on every step: ~7 s per CPU step)
    "cpu-recipes": dict(base="cpu", budgets=(300, 900, 2100), seeds=(0, 1, 2), fewshot_folds=10, workers=2,
                        arms=("pointlift_i2pmae", "pointlift_i2pmae_dinov2", "random")),
})

_PROCESS: dict = {}  # per process: the loaded shapes and the teacher, shared by its jobs


def _shapes_and_teacher(spec, device, teacher_key: str | None = None) -> dict:
    """The probe data and one teacher (the base preset's, or TEACHERS[teacher_key]), loaded once per process."""
    if "data" not in _PROCESS:
        _PROCESS["data"] = base_bench.load_probe_data(spec)
    if teacher_key not in _PROCESS:
        if teacher_key is None:
            teacher_config, image_size = base_bench.resolve_teacher(spec, device)
        else:
            name, weights, stage, image_size = TEACHERS[teacher_key]
            path = shared_path(weights)
            if not path.is_file():
                raise PointliftDataError(path, f"weights of the {teacher_key} teacher not found (set POINTLIFT_SHARED)")
            teacher_config = TeacherConfig(name=name, weights=str(path), stage=stage, half=device.type == "cuda")
        _PROCESS[teacher_key] = dict(teacher_config=teacher_config, image_size=image_size,
                                     teacher=base_bench.build_teacher(teacher_config, image_size).to(device))
    return {"data": _PROCESS["data"], **_PROCESS[teacher_key]}


def probe(model, data: base_bench.ProbeData, seed: int, folds: int) -> dict:
    """Every probe of one frozen network; random generators are left as they were (the run goes on alike)."""
    from pointlift.methods.i2p_mae.embedder import embed_array
    from pointlift.tasks.fewshot import fewshot_eval
    from pointlift.tasks.svm import paper_svm_accuracy, svm_accuracy

    python_state, numpy_state = random.getstate(), np.random.get_state()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        fit, scored = embed_array(model, data.train_points), embed_array(model, data.test_points)
    accuracy, C = svm_accuracy(fit, data.train_labels, scored, data.test_labels, seed=seed)
    record = {"svm_acc": accuracy, "svm_C": C,
              "svm_paper_acc": paper_svm_accuracy(fit, data.train_labels, scored, data.test_labels)}
    for shots in (1, 10):
        episodes = fewshot_eval(fit, data.train_labels, scored, data.test_labels, n_way=10, k_shot=shots,
                                folds=folds, test_per_class=20, seed=seed)
        record[f"fewshot_10w{shots}s"] = episodes.mean
    record["probe_seconds"] = time.perf_counter() - start
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    return record


def _run(job: dict) -> tuple[dict, dict]:
    """One (seed, arm): its probes at every budget ({str(step): record}); step 0 for the untrained network."""
    from pointlift.engine.seed import seed_everything
    from pointlift.methods.i2p_mae.model import I2PMAE
    from pointlift.methods.i2p_mae.pretrain import pretrain

    torch.set_num_threads(job["threads"])  # a worker runs as its parent would
    settings: BudgetPreset = job["settings"]
    spec = base_bench.PRESETS[settings.base]
    device = torch.device("cpu")
    seed, arm = job["seed"], job["arm"]
    recipe, variant, teacher_key = ARM_RUNS.get(arm, ("official", "i2pmae", None))
    shared = _shapes_and_teacher(spec, device, teacher_key)
    experiment = base_bench.bench_experiment(spec, recipe, variant, seed, max(settings.budgets),
                                             shared["teacher_config"], shared["image_size"], device)
    if arm == "random":  # the official run's network before its first step: pretrain's own build order
        seed_everything(seed)
        model = I2PMAE(experiment.method, shared["teacher"])
        return job, {"0": probe(model, shared["data"], seed, settings.fewshot_folds)}
    steps_per_epoch = len(shared["data"].pretrain_points) // spec.batch_size
    probes, clock = {}, {"start": time.perf_counter(), "probing": 0.0}

    def at_epoch_end(module, epoch: int) -> dict:
        step = (epoch + 1) * steps_per_epoch
        if step not in settings.budgets:
            return {}
        trained = time.perf_counter() - clock["start"] - clock["probing"]  # set-up and steps, no probing
        record = dict(probe(module, shared["data"], seed, settings.fewshot_folds), train_seconds=trained)
        clock["probing"] += record["probe_seconds"]
        probes[str(step)] = record
        return {key: record[key] for key in PROBES}

    pretrain(experiment, Path(job["out_dir"]) / job["name"], progress=False, points=shared["data"].pretrain_points,
             teacher=shared["teacher"], eval_fn=at_epoch_end)
    return job, probes


def comparisons(arms: tuple[str, ...]) -> list[tuple[str, str]]:
    """(treated, baseline) pairs of a preset's arms: every run vs the untrained network, the 2D target vs the
    3D target alone, and DINOv2 vs the CNN teacher."""
    pairs = [(arm, "random") for arm in arms if arm != "random"]
    for treated, baseline in (("official_i2pmae", "official_3d_only"),
                              ("pointlift_i2pmae_dinov2", "pointlift_i2pmae")):
        if treated in arms and baseline in arms:
            pairs.append((treated, baseline))
    return pairs


def step_seconds(spec: BudgetPreset) -> dict:
    """One official step (render + teacher + student) and one step on cached maps, side by side in this process
    on the first batch of the base preset's data: the per-step price of each recipe, for equal-wall-time reading."""
    from pointlift.engine.seed import seed_everything
    from pointlift.methods.i2p_mae.model import I2PMAE

    base = base_bench.PRESETS[spec.base]
    device = torch.device("cpu")
    shared = _shapes_and_teacher(base, device)
    experiment = base_bench.bench_experiment(base, "official", "i2pmae", 0, 1, shared["teacher_config"],
                                             shared["image_size"], device)
    seed_everything(0)
    model = I2PMAE(experiment.method, shared["teacher"])
    with torch.random.fork_rng(devices=[]):
        return base_bench.measure_cache_speed(model, torch.from_numpy(shared["data"].pretrain_points[:base.batch_size]))


def run(preset: str | BudgetPreset, out_dir: Path) -> BenchResult:
    """Every (seed, arm) run, then per budget each arm's mean probe figures and the paired gains."""
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = {"settings": spec, "out_dir": str(out_dir), "threads": torch.get_num_threads()}
    # the longest runs first, so that two workers finish together
    jobs = [{**base, "seed": seed, "arm": arm, "name": f"{arm}_seed{seed}"} for arm in spec.arms for seed in spec.seeds]
    runs = ProgressFile(out_dir / "progress.json", asdict(spec), "i2p-mae-budget")
    probes: dict[tuple[str, int], dict] = {}
    for job, record in runs.results(jobs, _run, spec.workers):
        probes[(job["arm"], job["seed"])] = record
        last = record[max(record, key=int)]
        print(f"[bench i2p-mae-budget] {job['name']}: SVM {last['svm_acc']:.3f} at step {max(record, key=int)}",
              flush=True)

    def figure(arm: str, budget: int, name: str) -> list[float]:
        step = "0" if arm == "random" else str(budget)
        return [probes[(arm, seed)][step][name] for seed in spec.seeds]

    metrics: dict[str, float] = {}
    curves: dict[str, dict] = {}
    trained_arms = [arm for arm in spec.arms if arm != "random"]
    for budget in spec.budgets:
        for name in PROBES:
            for arm in spec.arms:
                values = figure(arm, budget, name)
                metrics[f"{name}_{arm}_{budget}"] = float(np.mean(values))
                metrics[f"{name}_{arm}_{budget}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            for treated, baseline in comparisons(spec.arms):
                difference = paired_difference(figure(treated, budget, name), figure(baseline, budget, name))
                key = f"gain_{name}_{treated}_vs_{baseline}_{budget}"
                curves[key] = difference
                metrics[key] = difference["mean"]
                if difference["low"] is not None:
                    metrics[f"{key}_low"], metrics[f"{key}_high"] = difference["low"], difference["high"]
        for arm in trained_arms:
            metrics[f"train_seconds_{arm}_{budget}"] = float(np.mean(
                [probes[(arm, seed)][str(budget)]["train_seconds"] for seed in spec.seeds]))
    timing = step_seconds(spec) if any(ARM_RUNS[arm][0] == "pointlift" for arm in trained_arms) else {}
    metrics.update({key: value for key, value in timing.items() if key.startswith("step_")})
    metrics["wall_s"] = time.perf_counter() - start
    plot = _plot(probes, spec, curves, out_dir) if len(spec.seeds) > 1 else None
    spec_base = base_bench.PRESETS[spec.base]
    return BenchResult(metrics, {
        "preset": preset if isinstance(preset, str) else "custom", **asdict(spec),
        "base_preset": asdict(spec_base), "per_seed": {f"{arm}_seed{seed}": record
                                                      for (arm, seed), record in probes.items()},
        "differences": curves, "plot": str(plot) if plot else None, "cpu_threads": torch.get_num_threads(),
        "step_timing": timing,
        "teachers": {arm: "base preset's" if ARM_RUNS[arm][2] is None else TEACHERS[ARM_RUNS[arm][2]]
                     for arm in trained_arms},
        "budget_figures": "a checkpoint of the longest run at that step (its rate not decayed), not a run of "
                          "that length; `random` is the official run's network before step 1"})


def _plot(probes: dict, spec: BudgetPreset, curves: dict, out_dir: Path) -> Path:
    """Linear-SVM accuracy vs pretraining steps: each arm's mean over seeds with its 95 % band, and official
    I2P-MAE minus the untrained network, paired by seed."""
    from pointlift.report import plot_paired_arms

    budgets = list(spec.budgets)
    colours = {"random": "tab:gray", "official_3d_only": "tab:blue", "official_i2pmae": "tab:orange",
               "pointlift_i2pmae": "tab:green", "pointlift_i2pmae_dinov2": "tab:purple"}

    def values(arm):
        step = (lambda b: "0") if arm == "random" else str
        return [[probes[(arm, seed)][step(b)]["svm_acc"] for seed in spec.seeds] for b in budgets]

    headline = next(arm for arm in spec.arms if arm != "random")
    return plot_paired_arms(budgets, {ARM_LABELS[arm]: (values(arm), colours[arm]) for arm in spec.arms},
                            [curves[f"gain_svm_acc_{headline}_vs_random_{b}"] for b in budgets],
                            out_dir / "svm_accuracy_vs_budget.png", "pretraining steps (batch 32)",
                            "linear-SVM accuracy", f"ModelNet10, frozen features, {len(spec.seeds)} seeds, 95 % band",
                            f"{ARM_LABELS[headline]} - untrained, paired by seed", log_x=True)
