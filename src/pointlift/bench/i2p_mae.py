"""`pointlift bench i2p-mae`: I2P-MAE pretraining on ModelNet10, scored by linear SVM and few-shot.

Protocol: occupied voxel centres of ModelNet10 resampled to a fixed count per shape; pretraining on
training shapes without labels; linear SVM (C by CV on the training features only) fit on training
features and scored once on the test split. Variants, all from the same initial weights and the
same steps: I2P-MAE (2D-guided masking + 2D feature targets), the 3D-only Point-M2AE baseline
(random masking, no 2D target) and the random-init encoder; once per seed, SVM figures are means over
seeds (`_std` beside them) and `svm_gap_i2pmae_vs_3d_only` the mean of the per-seed differences.
Few-shot 10-way 10-shot (10 folds, 20 queries per class) on the first seed's I2P-MAE features.
`overhead_ratio` = one training step with the teacher run on the fly / (teacher forward + student
forward-backward, each timed alone in the same run).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from pointlift.bench import BenchResult, shared_path
from pointlift.engine.config import OptimConfig, TrainConfig, config_to_dict
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.methods.i2p_mae import (I2PMAE, DataConfig, I2PMAEConfig, I2PMAEExperiment, TeacherConfig,
                                       build_teacher, embed_array, prepare_point_sets, pretrain)
from pointlift.methods.i2p_mae_cache import teacher_maps
from pointlift.models.point_m2ae import PointM2AEConfig
from pointlift.tasks.fewshot import fewshot_eval
from pointlift.tasks.svm import svm_accuracy

DINO_WEIGHTS = "weights/vit_small_patch14_dinov2.imgfocus.fp16.safetensors"

PRESETS = {
    # seconds: a handful of steps on a ModelNet10 subset; checks the whole pipeline
    "smoke": dict(
        model=dict(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4), encoder_dims=(32, 64, 128),
                   encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=16, decoder_dims=(128, 64),
                   decoder_depths=(1, 1), drop_path=0.0),
        image_size=64, teacher=("tf_efficientnet_lite0", None, -2), pretrain_shapes=64, steps=8, batch_size=16,
        lr=1e-3, warmup=2, train_per_class=30, test_per_class=20, fewshot_folds=2, variants=("i2pmae", "3d_only"),
        seeds=(0,)),
    # under 60 minutes on 2 CPU cores (about 15 min on a quiet machine, one thread): a small backbone on
    # 256 voxel-centre points, 600 steps of 32 (20 epochs of 960 shapes), 3 seeds. The step count was
    # chosen on validation shapes carved from the training split (3 seeds, EfficientNet-Lite0 teacher):
    # at 120 steps no pretrained variant separated from random init; at 600 I2P-MAE led 3D-only in every
    # seed (BENCHMARKS.md).
    "cpu": dict(
        model=dict(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4), encoder_dims=(48, 96, 192),
                   encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=16, decoder_dims=(192, 96),
                   decoder_depths=(1, 1), drop_path=0.1),
        image_size=96, teacher=("tf_efficientnet_lite0", None, -2), pretrain_shapes=960, steps=600,
        batch_size=32, lr=1e-3, warmup=30, train_per_class=60, test_per_class=40, fewshot_folds=10,
        variants=("i2pmae", "3d_only"), seeds=(0, 1, 2)),
    # paper-sized backbone, DINOv2 ViT-S/14 teacher (the offline stand-in for CLIP ViT-B/16). Batch-
    # standardised 2D targets: with DINOv2 at 112 px on CPU, per-token LayerNorm targets scored 0.737 and
    # `layer_batch` 0.760 on validation shapes (3 seeds; BENCHMARKS.md). Not validated at 224 px (no GPU).
    "gpu": dict(method=dict(target_norm="layer_batch"),
        model={}, image_size=224, teacher=("vit_small_patch14_dinov2", DINO_WEIGHTS, -1), pretrain_shapes=None,
        steps=100 * 31, batch_size=128, lr=1e-3, warmup=310, train_per_class=None, test_per_class=None,
        fewshot_folds=10, variants=("i2pmae", "3d_only", "guided_only", "feature_only"), seeds=(0,)),
}

# variant -> (guided_masking, feature_target)
VARIANTS = {"i2pmae": (True, True), "3d_only": (False, False), "guided_only": (True, False),
            "feature_only": (False, True)}


def _stratified(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """All indices, or at most `per_class` per class."""
    from pointlift.tasks.shape_classification import few_shot_indices

    if per_class is None:
        return np.arange(len(labels))
    return few_shot_indices(labels, per_class, seed, allow_fewer=True)


def _median_seconds(function, repeats: int = 3) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure_overhead(model: I2PMAE, points: torch.Tensor, repeats: int = 3) -> dict:
    """Seconds of: a full step with the teacher on the fly, the teacher alone, the student alone."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    config = model.config

    def step():
        optimizer.zero_grad(set_to_none=True)
        model({"points": points})["loss"].backward()
        optimizer.step()

    features, saliency = teacher_maps(model.teacher, points, config.image_size, config.footprint)

    def student():
        model.zero_grad(set_to_none=True)
        model({"points": points, "teacher_features": features, "teacher_saliency": saliency})["loss"].backward()

    seconds = {"step_s": _median_seconds(step, repeats),
               "teacher_s": _median_seconds(lambda: teacher_maps(model.teacher, points, config.image_size,
                                                                 config.footprint), repeats),
               "student_s": _median_seconds(student, repeats)}
    seconds["overhead_ratio"] = seconds["step_s"] / (seconds["teacher_s"] + seconds["student_s"])
    return seconds


def evaluation_split(train_labels: np.ndarray, test_labels: np.ndarray, fit_per_class: int | None,
                     score_per_class: int | None, validation: bool, seed: int = 0):
    """Indices (fit from train, score from `"train"` or `"test"`, score split name) for the SVM probes.

    validation=True carves the scored shapes from the *training* split, disjoint from the fitted
    ones, so settings can be compared without ever looking at the test split."""
    fit = _stratified(train_labels, fit_per_class, seed)
    if not validation:
        return fit, _stratified(test_labels, score_per_class, seed + 1), "test"
    rest = np.setdiff1d(np.arange(len(train_labels)), fit)
    if score_per_class is None:
        return fit, rest, "train"
    return fit, rest[_stratified(train_labels[rest], score_per_class, seed + 1)], "train"


def run(preset: str, out_dir, validation: bool = False, seeds: tuple[int, ...] | None = None,
        method_overrides: dict | None = None, spec_overrides: dict | None = None,
        measure_timing: bool = True) -> BenchResult:
    """Pretrain every variant of the preset once per seed and probe it; SVM figures are means over the
    seeds (`_std` beside them). `validation=True` scores on held-out training shapes instead of the test
    split (for choosing settings); a seed seeds initialisation, masking and batches (the shape picks stay
    fixed); overrides replace I2PMAEConfig fields / preset entries."""
    if preset not in PRESETS:
        raise PointliftConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    spec = {**PRESETS[preset], **(spec_overrides or {})}
    seeds = tuple(seeds if seeds is not None else spec.get("seeds", (0,)))
    method_overrides = dict(spec.get("method", {}), **(method_overrides or {}))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = shared_path("data/modelnet10_vox32.npz")
    if not data_path.is_file():
        raise PointliftDataError(data_path, "ModelNet10 voxel file not found (set POINTLIFT_SHARED)")
    from pointlift.data.shapes import load_modelnet10_vox

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_seed = 0
    wall_start = time.perf_counter()
    model_config = PointM2AEConfig(**spec["model"])
    num_points = model_config.num_points
    train_set = load_modelnet10_vox(data_path, "train")
    test_set = load_modelnet10_vox(data_path, "test")
    train_pick, test_pick, scored_split = evaluation_split(train_set.labels, test_set.labels,
                                                          spec["train_per_class"], spec["test_per_class"],
                                                          validation, data_seed)
    scored_set = train_set if scored_split == "train" else test_set
    train_points = prepare_point_sets([train_set.points[i] for i in train_pick], num_points, data_seed)
    train_labels = train_set.labels[train_pick]
    test_points = prepare_point_sets([scored_set.points[i] for i in test_pick], num_points, data_seed)
    test_labels = scored_set.labels[test_pick]
    pretrain_count = spec["pretrain_shapes"] or len(train_set)
    pretrain_pick = np.random.default_rng(data_seed).permutation(len(train_set))[:pretrain_count]
    pretrain_points = prepare_point_sets([train_set.points[i] for i in pretrain_pick], num_points, data_seed)

    teacher_name, weights, stage = spec["teacher"]
    image_size = spec["image_size"]
    if weights is not None:
        weights = str(shared_path(weights)) if shared_path(weights).is_file() else None
        if weights is None:  # no DINOv2 file: the bundled CNN teacher
            teacher_name, stage = "tf_efficientnet_lite0", -2
            image_size = spec.get("fallback_image_size", image_size)
    teacher_config = TeacherConfig(name=teacher_name, weights=weights, stage=stage, half=device.type == "cuda")
    teacher = build_teacher(teacher_config, image_size).to(device)

    def pretrain_variant(variant: str, seed: int):
        guided, feature = VARIANTS[variant]
        experiment = I2PMAEExperiment(
            name=f"bench_{variant}",
            method=I2PMAEConfig(**{**method_overrides, "model": copy.deepcopy(model_config),
                                   "guided_masking": guided, "feature_target": feature, "image_size": image_size}),
            teacher=teacher_config,
            data=DataConfig(num_points=num_points, cache_dir="~/.cache/pointlift/i2p_mae"),
            train=TrainConfig(max_steps=spec["steps"], batch_size=spec["batch_size"], seed=seed, log_every=10,
                              checkpoint_every=0, grad_clip=10.0, amp=device.type == "cuda",
                              optim=OptimConfig(lr=spec["lr"], weight_decay=0.05, warmup_steps=spec["warmup"])),
            device=str(device))
        torch.manual_seed(seed)  # every variant starts from the same backbone weights
        model, result, info = pretrain(experiment, out_dir / f"{variant}_seed{seed}", progress=False,
                                       points=pretrain_points, teacher=teacher)
        rows = [row for row in result.history if "loss" in row]
        info["loss_first"], info["loss_last"] = rows[0]["loss"], rows[-1]["loss"]
        info["samples_per_s"] = result.step * spec["batch_size"] / info["train_seconds"]
        return model, info

    accuracies: dict[str, list[float]] = {}
    details: dict[str, dict] = {}
    shots = first_model = None
    for seed in seeds:
        models: dict[str, torch.nn.Module] = {}
        for variant in spec["variants"]:
            models[variant], details[f"{variant}_seed{seed}"] = pretrain_variant(variant, seed)
        torch.manual_seed(seed)
        if spec.get("with_random", True):
            models["random"] = I2PMAE(I2PMAEConfig(model=copy.deepcopy(model_config), guided_masking=False,
                                                   feature_target=False)).to(device)
        for name, model in models.items():
            start = time.perf_counter()
            features = (embed_array(model, train_points), embed_array(model, test_points))
            accuracy, C = svm_accuracy(features[0], train_labels, features[1], test_labels, seed=seed)
            accuracies.setdefault(name, []).append(accuracy)
            details.setdefault(f"{name}_seed{seed}", {}).update(
                {"svm_acc": accuracy, "svm_C": C, "embed_svm_seconds": time.perf_counter() - start})
            if seed == seeds[0] and name == spec["variants"][0]:  # few-shot on I2P-MAE ("i2pmae" in every preset)
                shots = fewshot_eval(features[0], train_labels, features[1], test_labels, n_way=10, k_shot=10,
                                     folds=spec["fewshot_folds"], test_per_class=20, seed=seed)
                first_model = model

    metrics: dict[str, float] = {}
    for name, values in accuracies.items():
        key = f"svm_acc_{name}"
        metrics[key] = float(np.mean(values))
        metrics[f"{key}_std"] = float(np.std(values))
    if "i2pmae" in accuracies and "3d_only" in accuracies:  # paired by seed: same initial weights
        gaps = np.array(accuracies["i2pmae"]) - np.array(accuracies["3d_only"])
        metrics["svm_gap_i2pmae_vs_3d_only"] = float(gaps.mean())
    metrics["fewshot_10w10s_mean"] = shots.mean
    metrics["fewshot_10w10s_std"] = shots.std
    first = spec["variants"][0]
    metrics["samples_per_s"] = details[f"{first}_seed{seeds[0]}"]["samples_per_s"]
    timing = {}
    if measure_timing:
        batch = torch.from_numpy(pretrain_points[:spec["batch_size"]]).to(device)
        timing = measure_overhead(first_model, batch)
        metrics["overhead_ratio"] = timing["overhead_ratio"]
    metrics["wall_seconds"] = time.perf_counter() - wall_start

    config = {
        "preset": preset, "device": str(device), "teacher": teacher.identity(),
        "teacher_saliency": "ViT CLS->patch attention" if teacher.is_vit else "CNN feature L2 norm",
        "model": config_to_dict(model_config), "image_size": image_size,
        "method": config_to_dict(first_model.config), "seeds": list(seeds),
        "svm_acc_per_seed": accuracies,
        "scored_split": scored_split + (" (held-out validation shapes)" if validation else ""),
        "pretrain_shapes": int(len(pretrain_points)), "steps": spec["steps"], "batch_size": spec["batch_size"],
        "svm_train_shapes": int(len(train_points)), "svm_test_shapes": int(len(test_points)),
        "fewshot_folds": spec["fewshot_folds"], "fewshot_on": f"{first}, seed {seeds[0]}",
        "fewshot_accuracies": shots.accuracies, "timing": timing, "runs": details,
        "torch_threads": torch.get_num_threads(),
    }
    return BenchResult(metrics=metrics, config=config)
