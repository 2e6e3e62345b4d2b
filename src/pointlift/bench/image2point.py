"""Image2Point benchmark on ModelNet10: inflated ImageNet CNN vs the same network from scratch.

Runs (every accuracy is the *last* epoch's on the test split; nothing is selected by test score):
- FIP `io` and `all`, inflated vs random: acc_inflated_io, acc_random_io, acc_inflated_all, acc_random_all;
- few-shot (K = 10 shapes per class, 3 subset seeds, fip `all` for both, as "training from scratch"
  trains everything): fewshot10_{inflated,random}_{mean,std};
- time to accuracy: from the per-epoch test curve of the `all` runs, the first epoch reaching the
  preset's `target_accuracy` (fixed in the preset before running), and their ratio.
The teacher is torchvision's ImageNet MobileNetV2 from ../shared/weights (timm mobilenetv2_100).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pointlift.bench import BenchResult
from pointlift.engine.config import OptimConfig, TrainConfig
from pointlift.errors import PointliftConfigError
from pointlift.tasks.shape_classification import ShapeDataConfig, epochs_to_target, load_shape_split

MOBILENET_WEIGHTS = "weights/mobilenet_v2.torchvision_in1k.safetensors"

PRESETS = {
    # seconds: CI-sized, checks that every piece runs
    "smoke": dict(voxel_size=0.25, train_per_class=3, test_per_class=2, epochs=2, batch_size=10,
                  fewshot_k=2, fewshot_epochs=1, fewshot_batch=10, seeds=(0,), target_accuracy=0.2, lr=0.05),
    # 2 shared CPU cores, < 45 min: 16^3 voxels (voxel 0.125 on the unit sphere), 25 shapes per class
    # for the main runs, a class-balanced test subset of 10 per class, 5 epochs (cosine over them).
    # lr 0.02: the official 0.1 diverged in full fine-tuning with only 50 steps of batch 25 (measured).
    "cpu": dict(voxel_size=0.125, train_per_class=25, test_per_class=10, epochs=5, batch_size=25,
                fewshot_k=10, fewshot_epochs=5, fewshot_batch=25, seeds=(0, 1, 2), target_accuracy=0.5, lr=0.02),
    # one GPU, the official ModelNet setting: voxel 0.05, every shape, 100 epochs, batch 32
    "gpu": dict(voxel_size=0.05, train_per_class=None, test_per_class=None, epochs=100, batch_size=32,
                fewshot_k=10, fewshot_epochs=100, fewshot_batch=20, seeds=(0, 1, 2), target_accuracy=0.85, lr=0.1),
}


def shared_path(relative: str) -> Path:
    root = Path(os.environ.get("POINTLIFT_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
    return root / relative


def _config(preset: dict, weights: str | None, fip: str, epochs: int, batch: int, train_per_class, seed: int,
            eval_every_epoch: bool, data_path: Path):
    from pointlift.methods.image2point import Image2PointConfig, InflationConfig

    return Image2PointConfig(
        name="bench", inflation=InflationConfig(teacher="mobilenetv2_100", weights=weights, mode="copy", axis="z"),
        fip=fip,
        data=ShapeDataConfig(dataset="modelnet10", path=str(data_path), voxel_size=preset["voxel_size"],
                             augment=True, train_per_class=train_per_class, subset_seed=seed,
                             test_per_class=preset["test_per_class"]),
        train=TrainConfig(epochs=epochs, batch_size=batch, seed=seed, log_every=5, checkpoint_every=0,
                          optim=OptimConfig(name="sgd", lr=preset["lr"], momentum=0.9, weight_decay=1e-4,
                                            schedule="cosine")),
        eval_every_epoch=eval_every_epoch, eval_batch_size=100, target_accuracy=preset["target_accuracy"])


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

    for label, weights in (("inflated", str(weights_path)), ("random", "random")):
        for fip in ("io", "all"):
            config = _config(settings, weights, fip, settings["epochs"], settings["batch_size"],
                             settings["train_per_class"], 0, eval_every_epoch=fip == "all", data_path=data_path)
            summary = finetune(config, out_dir / f"{label}_{fip}", progress=False, train_split=train_split,
                               test_split=test_split)
            metrics[f"acc_{label}_{fip}"] = summary["overall_acc"]
            metrics[f"mean_class_acc_{label}_{fip}"] = summary["mean_class_acc"]
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

    target = settings["target_accuracy"]
    inflated_epochs = epochs_to_target(curves["inflated_all"], target)
    random_epochs = epochs_to_target(curves["random_all"], target)
    metrics["epochs_to_target_inflated"] = inflated_epochs
    metrics["epochs_to_target_random"] = random_epochs
    metrics["speedup_to_target"] = random_epochs / inflated_epochs if inflated_epochs == inflated_epochs else float("nan")
    metrics["wall_s"] = time.perf_counter() - start

    config = {"preset": preset, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
              "teacher": "mobilenetv2_100", "weights": str(weights_path), "inflation": "copy, axis z",
              "dataset": str(data_path), "features": "mean xyz per voxel (unit-sphere normalised)",
              "augmentation": "scale U(0.9,1.1) per axis, shift U(-0.2,0.2), jitter N(0,0.01) clipped 0.025",
              "optimizer": "SGD momentum 0.9, wd 1e-4, cosine, no warm-up",
              "fewshot_fip": "all", "main_runs_subset_seed": 0,
              "test_subset": "class-balanced, seed 12345" if settings["test_per_class"] else "full test split",
              "accuracy": "last epoch on the test (sub)set; per-epoch test curve only for epochs_to_target",
              "curves": curves, "run_seconds": timings, "cpu_threads": _threads()}
    return BenchResult(metrics=metrics, config=config)


def _threads() -> int:
    import torch

    return torch.get_num_threads()
