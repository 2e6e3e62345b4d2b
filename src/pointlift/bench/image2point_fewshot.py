"""`pointlift bench image2point-fewshot --preset {smoke,cpu-long}`: Image2Point K-shot fine-tuning as the paper
measures it - N-way over every class, K training shapes per class, the inflated ImageNet network vs the same
network from scratch. The paper's gain is largest at 1 shot (ModelNet40, ResNet18: +10 points at 1-shot,
+1 at 10-shot).

Data: ModelNet10 (../shared), the released point pipeline, the network and inflation of `bench image2point`
(torchvision ImageNet MobileNetV2 on the released design). A *draw* is a subset seed: K shapes per class
drawn from the training split, the same for both arms, which also see them in the same order (train
seed = draw). Validation: `val_per_class` shapes per class carved from the training split before any draw,
so never in a support set.

Two phases, so that no choice looks at a test shape:
1. selection - for each (K, FIP mode, arm), every rate of `lrs` on the `selection_draws` (support sets of
   their own, not the measured draws), scored on the validation shapes; the rate with the best mean
   validation accuracy wins (the first listed on ties). These runs are given a 1-shape-per-class test
   subset to keep them cheap; its figure is never read.
2. measurement - each (K, FIP mode, arm) at its chosen rate on every draw of `draws`, test accuracy on the
   whole test split at the last epoch. The figure is inflated minus scratch paired by draw, with its 95 %
   paired-t interval (`pointlift.bench.stats`).
FIP `all` at every K; `extra_fips` (e.g. `io`, `iobn`: few trainable parameters) at the smallest K.
Epochs per K are fixed by the preset (not selected).

Through the CLI, one K-shot fine-tune of one draw is `pointlift finetune image2point --config FILE
data.train_per_class=K data.subset_seed=DRAW data.val_per_class=10`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pointlift.bench import BenchResult, Preset, shared_path
from pointlift.bench.image2point import MOBILENET_WEIGHTS, finetune_config
from pointlift.bench.jobs import ProgressFile
from pointlift.bench.stats import paired_difference
from pointlift.errors import PointliftConfigError

ARMS = ("inflated", "random")
NUM_CLASSES = 10  # ModelNet10: a K-shot support set holds 10 K shapes


@dataclass(frozen=True)
class FewShotPreset(Preset):
    shots: tuple[int, ...]  # K: training shapes per class
    epochs: tuple[int, ...]  # fine-tuning epochs for each K (same order as `shots`)
    batch_size: int  # shapes per step (at most the support set)
    draws: tuple[int, ...]  # measured support-set draws (subset seeds), shared by both arms
    selection_draws: tuple[int, ...]  # draws of the rate selection (disjoint from `draws`)
    lrs: tuple[float, ...]  # rate grid, per (K, FIP mode, arm)
    extra_fips: tuple[str, ...]  # FIP modes besides `all`, at the smallest K
    voxel_size: float  # on the unit sphere
    val_per_class: int  # validation shapes per class, carved from the training split
    test_per_class: int | None  # class-balanced test subset of the measured runs (None: the whole test split)
    max_points: int | None  # points per shape (None: every one)
    warmup_epochs: float
    precise_bn: bool  # re-estimate BN statistics on the training shapes before each evaluation
    workers: int = 1  # runs in this many processes of one torch thread each

    def __post_init__(self):
        if len(self.shots) != len(self.epochs):
            raise PointliftConfigError(f"FewShotPreset: {len(self.shots)} shots but {len(self.epochs)} epoch budgets")
        if set(self.draws) & set(self.selection_draws):
            raise PointliftConfigError("FewShotPreset: selection draws must differ from the measured draws")


PRESETS = FewShotPreset.table({
    # seconds: CI-sized, checks that every piece runs
    "smoke": dict(shots=(1, 2), epochs=(2, 1), batch_size=10, draws=(0, 1), selection_draws=(100,),
                  lrs=(0.05, 0.01), extra_fips=("io",), voxel_size=0.25, val_per_class=1, test_per_class=2,
                  max_points=None, warmup_epochs=0.0, precise_bn=True),
    # <= 2 h on 2 CPU cores (two workers of one thread): the `cpu` resolution of `bench image2point` (16^3
    # voxels), 1/5/10 shots with a step budget that grows with K (40 / 20 / 15 epochs = 40 / 40 / 60 steps),
    # 10 measured draws, rates from (0.01, 0.03, 0.1) chosen on 2 selection draws, io and iobn at 1 shot.
    "cpu-long": dict(shots=(1, 5, 10), epochs=(40, 20, 15), batch_size=25, draws=tuple(range(10)),
                     selection_draws=(1000, 1001), lrs=(0.01, 0.03, 0.1), extra_fips=("io", "iobn"),
                     voxel_size=0.125, val_per_class=10, test_per_class=None, max_points=None,
                     warmup_epochs=1.0, precise_bn=True, workers=2),
})

_SPLITS: dict = {}  # per process: the loaded ModelNet10 splits


def _run(job: dict) -> tuple[dict, dict]:
    """One fine-tune (in this process or a worker process); returns (job, its summary)."""
    import torch

    from pointlift.methods.image2point.finetune import finetune
    from pointlift.tasks.shape_classification.data import ShapeDataConfig, load_shape_split

    torch.set_num_threads(job["threads"])  # a worker runs as its parent would: same results
    config = job_config(job)
    if not _SPLITS:
        probe = ShapeDataConfig(path=config.data.path)
        _SPLITS.update(train=load_shape_split(probe, "train"), test=load_shape_split(probe, "test"))
    summary = finetune(config, Path(job["out_dir"]) / job["name"], progress=False, train_split=_SPLITS["train"],
                       test_split=_SPLITS["test"])
    return job, summary


def _kept(summary: dict) -> dict:
    """What progress.json keeps of a fine-tune's summary."""
    return {"validation": summary["val_overall_acc"], "test": summary["overall_acc"], "seconds": summary["seconds"]}


def job_config(job: dict):
    """The Image2Point config of one run: the arm decides the weights only; the draw decides the support set
    (`subset_seed`) and the data order (`train.seed`) of both arms alike."""
    settings = job["settings"]
    if job["phase"] == "selection":
        settings = replace(settings, test_per_class=1)  # never read: selection looks at validation only
    k = job["shots"]
    weights = str(shared_path(MOBILENET_WEIGHTS)) if job["arm"] == "inflated" else "random"
    return finetune_config(settings, weights, job["fip"], job["epochs"], min(settings.batch_size, NUM_CLASSES * k),
                           k, job["draw"], eval_every_epoch=False, data_path=shared_path("data/modelnet10_vox32.npz"),
                           lr=job["lr"])


def _settings_list(spec: FewShotPreset) -> list[tuple[int, int, str]]:
    """(K, epochs, FIP mode) of every comparison: `all` at every K, the extra modes at the smallest K."""
    comparisons = [(k, epochs, "all") for k, epochs in zip(spec.shots, spec.epochs)]
    smallest = min(spec.shots)
    comparisons += [(smallest, spec.epochs[spec.shots.index(smallest)], fip) for fip in spec.extra_fips]
    return comparisons


def _name(phase: str, k: int, fip: str, arm: str, lr: float, draw: int) -> str:
    return f"{phase}-{k}shot-{fip}-{arm}-lr{lr:g}-draw{draw}"


def run(preset: str | FewShotPreset, out_dir: Path) -> BenchResult:
    """Selection on validation, then the measured draws at the chosen rates; per-draw figures, paired
    differences and the accuracy-vs-shots plot."""
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = {"settings": spec, "out_dir": str(out_dir), "threads": _threads()}
    comparisons = _settings_list(spec)

    # 1. selection: every rate on the selection draws, validation accuracy only
    validation: dict[tuple, list[float]] = {}
    jobs = [{**base, "phase": "selection", "shots": k, "epochs": epochs, "fip": fip, "arm": arm, "lr": lr,
             "draw": draw, "name": _name("select", k, fip, arm, lr, draw)}
            for k, epochs, fip in comparisons for arm in ARMS for lr in spec.lrs for draw in spec.selection_draws]
    runs = ProgressFile(out_dir / "progress.json", asdict(spec), "image2point-fewshot")
    for job, result in runs.results(jobs, _run, spec.workers, _kept):
        validation.setdefault((job["shots"], job["fip"], job["arm"], job["lr"]), []).append(result["validation"])
        print(f"[bench image2point-fewshot] {job['name']}: validation {result['validation']:.3f}", flush=True)
    chosen = {}
    for k, _, fip in comparisons:
        for arm in ARMS:
            means = [float(np.mean(validation[(k, fip, arm, lr)])) for lr in spec.lrs]
            chosen[(k, fip, arm)] = spec.lrs[int(np.argmax(means))]  # argmax: the first listed on ties

    # 2. measurement: every draw at the chosen rate, test accuracy
    test: dict[tuple, dict[int, float]] = {}
    jobs = [{**base, "phase": "measure", "shots": k, "epochs": epochs, "fip": fip, "arm": arm,
             "lr": chosen[(k, fip, arm)], "draw": draw,
             "name": _name("measure", k, fip, arm, chosen[(k, fip, arm)], draw)}
            for draw in spec.draws for k, epochs, fip in comparisons for arm in ARMS]
    for job, result in runs.results(jobs, _run, spec.workers, _kept):
        test.setdefault((job["shots"], job["fip"], job["arm"]), {})[job["draw"]] = result["test"]
        print(f"[bench image2point-fewshot] {job['name']}: test {result['test']:.3f}", flush=True)

    metrics: dict[str, float] = {}
    record: dict[str, dict] = {}
    for k, epochs, fip in comparisons:
        key = f"{k}shot_{fip}"
        per_draw = {arm: [test[(k, fip, arm)][draw] for draw in spec.draws] for arm in ARMS}
        difference = paired_difference(per_draw["inflated"], per_draw["random"])
        for arm in ARMS:
            metrics[f"acc_{key}_{arm}"] = float(np.mean(per_draw[arm]))
            metrics[f"acc_{key}_{arm}_std"] = float(np.std(per_draw[arm], ddof=1)) if len(spec.draws) > 1 else 0.0
            metrics[f"lr_{key}_{arm}"] = chosen[(k, fip, arm)]
        metrics[f"gain_{key}"] = difference["mean"]
        if difference["low"] is not None:
            metrics[f"gain_{key}_low"], metrics[f"gain_{key}_high"] = difference["low"], difference["high"]
        record[key] = {"epochs": epochs, "test_per_draw": per_draw, "difference": difference,
                       "validation_by_lr": {arm: {f"{lr:g}": float(np.mean(validation[(k, fip, arm, lr)]))
                                                  for lr in spec.lrs} for arm in ARMS}}
    metrics["wall_s"] = time.perf_counter() - start
    plot = _plot(record, spec, out_dir) if len(spec.draws) > 1 else None
    return BenchResult(metrics, {"preset": preset if isinstance(preset, str) else "custom", **asdict(spec),
                                 "comparisons": record, "plot": str(plot) if plot else None,
                                 "teacher": "mobilenetv2_100", "weights": MOBILENET_WEIGHTS,
                                 "selection": "per (K, FIP mode, arm): the rate of `lrs` with the best mean "
                                              "validation accuracy over `selection_draws`; test never read",
                                 "cpu_threads": _threads()})


def _plot(record: dict, spec: FewShotPreset, out_dir: Path) -> Path:
    """Test accuracy vs K (FIP `all`): each arm's mean over draws with its 95 % band, and the paired gain."""
    from pointlift.report import plot_paired_arms

    shots = list(spec.shots)
    values = {arm: [record[f"{k}shot_all"]["test_per_draw"][arm] for k in shots] for arm in ARMS}
    return plot_paired_arms(shots, {"scratch": (values["random"], "tab:gray"),
                                    "inflated ImageNet": (values["inflated"], "tab:orange")},
                            [record[f"{k}shot_all"]["difference"] for k in shots],
                            out_dir / "fewshot_accuracy_vs_shots.png", "training shapes per class (K)",
                            "test accuracy", f"ModelNet10 K-shot, FIP all, {len(spec.draws)} draws, 95 % band",
                            "inflated - scratch, paired by draw, 95 % interval")


def _threads() -> int:
    import torch

    return torch.get_num_threads()
