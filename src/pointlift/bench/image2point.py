"""Image2Point benchmark on ModelNet10: inflated ImageNet CNN vs the same network from scratch.

Runs (test accuracies are the *last* epoch's; nothing is selected by test score):
- FIP `io` and `all`, inflated vs random: acc_inflated_io, acc_random_io, acc_inflated_all, acc_random_all;
- few-shot (K = 10 shapes per class, 3 subset seeds, fip `all` for both, as "training from scratch"
  trains everything): fewshot10_{inflated,random}_{mean,std};
- time to accuracy: from the per-epoch *validation* curve of the `all` runs (validation shapes carved
  from the training split), the first epoch reaching the target, and their ratio. The target is a rule
  fixed in the preset: `target_fraction` x the inflated `all` run's last-epoch validation accuracy.
The teacher is torchvision's ImageNet MobileNetV2 from ../shared/weights (timm mobilenetv2_100).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pointlift.bench import BenchResult, shared_path
from pointlift.engine.config import OptimConfig, TrainConfig
from pointlift.errors import PointliftConfigError
from pointlift.tasks.shape_classification import ShapeDataConfig, epochs_to_target, load_shape_split

MOBILENET_WEIGHTS = "weights/mobilenet_v2.torchvision_in1k.safetensors"

PRESETS = {
    # seconds: CI-sized, checks that every piece runs
    "smoke": dict(voxel_size=0.25, train_per_class=3, val_per_class=1, test_per_class=2, epochs=2, batch_size=10,
                  io_epochs=2, fewshot_k=2, fewshot_epochs=1, fewshot_batch=10, seeds=(0,), target_fraction=0.8, lr=0.05,
                  warmup_epochs=0.0),
    # 2 shared CPU cores, < 45 min: 16^3 voxels (voxel 0.125 on the unit sphere), 25 shapes per class
    # for the main runs, 10 validation shapes per class carved from the training split (fixed seed),
    # a class-balanced test subset of 10 per class; `all` runs 12 epochs (cosine, 1 warm-up epoch; 5 epochs
    # left the from-scratch arm near validation chance even after its initialisation was fixed: 0.10..0.22,
    # measured), `io` runs 6 epochs (the slowest runs: budget), few-shot 8 epochs of 4 steps.
    # lr 0.02: the official 0.1 diverged (training loss 2.3 -> 17) in full fine-tuning of the inflated net.
    "cpu": dict(voxel_size=0.125, train_per_class=25, val_per_class=10, test_per_class=10, epochs=12, io_epochs=6,
                batch_size=25, fewshot_k=10, fewshot_epochs=8, fewshot_batch=25, seeds=(0, 1, 2),
                target_fraction=0.8, lr=0.02, warmup_epochs=1.0),
    # one GPU, the official ModelNet setting: voxel 0.05, every shape, 100 epochs, batch 32
    "gpu": dict(voxel_size=0.05, train_per_class=None, val_per_class=20, test_per_class=None, epochs=100, io_epochs=100,
                batch_size=32, fewshot_k=10, fewshot_epochs=100, fewshot_batch=20, seeds=(0, 1, 2),
                target_fraction=0.8, lr=0.1, warmup_epochs=0.0),
}


def _config(preset: dict, weights: str | None, fip: str, epochs: int, batch: int, train_per_class, seed: int,
            eval_every_epoch: bool, data_path: Path, mode: str = "copy", lr: float | None = None):
    from pointlift.methods.image2point import Image2PointConfig, InflationConfig

    return Image2PointConfig(
        name="bench", inflation=InflationConfig(teacher="mobilenetv2_100", weights=weights, mode=mode, axis="z"),
        fip=fip,
        data=ShapeDataConfig(dataset="modelnet10", path=str(data_path), voxel_size=preset["voxel_size"],
                             augment=True, train_per_class=train_per_class, subset_seed=seed,
                             test_per_class=preset["test_per_class"], val_per_class=preset["val_per_class"]),
        train=TrainConfig(epochs=epochs, batch_size=batch, seed=seed, log_every=5, checkpoint_every=0,
                          optim=OptimConfig(name="sgd", lr=lr if lr is not None else preset["lr"], momentum=0.9,
                                            weight_decay=1e-4, schedule="cosine",
                                            warmup_epochs=preset["warmup_epochs"])),
        eval_every_epoch=eval_every_epoch, eval_batch_size=100)


def run(preset: str, out_dir: Path) -> BenchResult:
    from pointlift.methods.image2point import finetune

    if preset not in PRESETS:
        raise PointliftConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    settings = PRESETS[preset]
    out_dir = Path(out_dir)
    data_path = shared_path("data/modelnet10_vox32.npz")
    weights_path = shared_path(MOBILENET_WEIGHTS)
    from pointlift.tasks.shape_classification import ShapeDataConfig as _D

    probe = _D(path=str(data_path))
    train_split, test_split = load_shape_split(probe, "train"), load_shape_split(probe, "test")
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    curves: dict[str, list] = {}
    timings: dict[str, float] = {}

    # `all` first: the time-to-accuracy comparison is the first result when a shared machine runs slow
    for fip in ("all", "io"):
        for label, weights in (("inflated", str(weights_path)), ("random", "random")):
            epochs = settings["epochs"] if fip == "all" else settings["io_epochs"]
            config = _config(settings, weights, fip, epochs, settings["batch_size"],
                             settings["train_per_class"], 0, eval_every_epoch=fip == "all", data_path=data_path)
            summary = finetune(config, out_dir / f"{label}_{fip}", progress=False, train_split=train_split,
                               test_split=test_split)
            metrics[f"acc_{label}_{fip}"] = summary["overall_acc"]
            metrics[f"mean_class_acc_{label}_{fip}"] = summary["mean_class_acc"]
            metrics[f"val_acc_{label}_{fip}"] = summary["val_overall_acc"]
            metrics[f"trainable_params_{fip}"] = summary["trainable_params"]
            curves[f"{label}_{fip}"] = summary["curve"]
            timings[f"{label}_{fip}"] = summary["seconds"]

    for label, weights in (("inflated", str(weights_path)), ("random", "random")):
        scores = []
        for seed in settings["seeds"]:
            config = _config(settings, weights, "all", settings["fewshot_epochs"], settings["fewshot_batch"],
                             settings["fewshot_k"], seed, eval_every_epoch=False, data_path=data_path)
            summary = finetune(config, out_dir / f"fewshot_{label}_seed{seed}", progress=False,
                               train_split=train_split, test_split=test_split)
            scores.append(summary["overall_acc"])
            timings[f"fewshot_{label}_seed{seed}"] = summary["seconds"]
        metrics[f"fewshot{settings['fewshot_k']}_{label}_mean"] = float(np.mean(scores))
        metrics[f"fewshot{settings['fewshot_k']}_{label}_std"] = float(np.std(scores))

    # time to accuracy on the *validation* curves; the target is fixed by a rule, not by a test score
    target = settings["target_fraction"] * curves["inflated_all"][-1]["overall_acc"]
    inflated_epochs = epochs_to_target(curves["inflated_all"], target)
    random_epochs = epochs_to_target(curves["random_all"], target)
    metrics["target_accuracy"] = target
    metrics["epochs_to_target_inflated"] = inflated_epochs
    metrics["epochs_to_target_random"] = random_epochs
    metrics["speedup_to_target"] = random_epochs / inflated_epochs  # NaN when random never gets there
    metrics["wall_s"] = time.perf_counter() - start

    config = {"preset": preset, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
              "teacher": "mobilenetv2_100", "weights": str(weights_path), "inflation": "copy, axis z",
              "random_init": "same architecture, He-normal (3D fan-out) convs, BN reset",
              "dataset": str(data_path), "features": "mean xyz per voxel (unit-sphere normalised), input_scale 1",
              "augmentation": "scale U(0.9,1.1) per axis, shift U(-0.2,0.2), jitter N(0,0.01) clipped 0.025",
              "optimizer": f"SGD momentum 0.9, wd 1e-4, cosine, warm-up {settings['warmup_epochs']} epoch(s)",
              "fewshot_fip": "all", "main_runs_subset_seed": 0,
              "validation": f"{settings['val_per_class']} shapes/class of the training split (seed 54321), "
                            "disjoint from every training subset",
              "target_rule": f"target_accuracy = target_fraction ({settings['target_fraction']}) x the inflated "
                             "`all` run's last-epoch validation accuracy; epochs_to_target on validation curves",
              "test_subset": "class-balanced, seed 12345" if settings["test_per_class"] else "full test split",
              "accuracy": "test accuracies are last-epoch; curves are validation (nothing selected on test)",
              "curves": curves, "run_seconds": timings, "cpu_threads": _threads()}
    return BenchResult(metrics=metrics, config=config)


def _threads() -> int:
    import torch

    return torch.get_num_threads()
