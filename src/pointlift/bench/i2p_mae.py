"""`pointlift bench i2p-mae`: I2P-MAE pretraining on ModelNet10, scored by linear SVM and few-shot.

Protocol: occupied voxel centres of ModelNet10 resampled to a fixed count per shape; pretraining on
training shapes without labels, then frozen features of the last checkpoint (never a test-selected
one) probed by two linear-SVM protocols, both fit on training features and scored once on the test
split: the paper's (`svm_paper_acc_*`: SVC linear, C = 0.01, raw features) and pointlift's
(`svm_acc_*`: StandardScaler + LinearSVC, C by 5-fold CV on the training features).
Runs, all from the same initial weights (per seed) and the same steps: for each recipe (`official`:
the released method, teacher run every step; `pointlift`: cached teacher, standardised saliency,
normalised targets) its I2P-MAE and, where the preset asks, its 3D-only Point-M2AE baseline (random
masking, no 2D target); plus the random-init encoder. Names: `{recipe}_{variant}`. SVM figures are
means over seeds (`_std` beside them); `svm_gap_{recipe}_vs_3d_only` is the mean per-seed difference
to the official 3D-only run. Few-shot 10-way 10-shot (10 folds, 20 queries per class) on the first
seed's official I2P-MAE features. Timing, one process, same batch: `samples_per_s_teacher_each_step`
(official step: render, teacher, student) and `samples_per_s_cached` (student step on cached maps).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pointlift.bench import BenchResult, Preset, shared_path
from pointlift.data.shape_sets import prepare_point_sets
from pointlift.engine.config import OptimConfig, TrainConfig, config_to_dict
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.methods.i2p_mae.cache import teacher_maps
from pointlift.methods.i2p_mae.config import DataConfig, I2PMAEConfig, I2PMAEExperiment, TeacherConfig
from pointlift.methods.i2p_mae.embedder import embed_array
from pointlift.methods.i2p_mae.model import I2PMAE
from pointlift.methods.i2p_mae.pretrain import build_teacher, pretrain
from pointlift.models.point_m2ae.config import PointM2AEConfig
from pointlift.tasks.fewshot import fewshot_eval
from pointlift.tasks.svm import paper_svm_accuracy, svm_accuracy

DINO_WEIGHTS = "weights/vit_small_patch14_dinov2.imgfocus.fp16.safetensors"


@dataclass(frozen=True)
class I2PMAEPreset(Preset):
    model: dict  # PointM2AEConfig fields of the backbone ({}: the paper-sized defaults)
    image_size: int  # rendered depth-map side
    teacher: tuple  # (timm name, weights under the shared folder or None, feature stage)
    pretrain_shapes: int | None  # pretraining shapes (None: every training shape)
    steps: int  # pretraining steps per run
    batch_size: int
    lr: float
    warmup: int  # warm-up steps
    train_per_class: int | None  # SVM training shapes per class (None: all)
    test_per_class: int | None  # SVM scored shapes per class (None: all)
    fewshot_folds: int
    runs: tuple  # (recipe, variant) pretraining runs per seed
    seeds: tuple
    method: dict = field(default_factory=dict)  # I2PMAEConfig overrides for every run
    fallback_image_size: int | None = None  # image size with the CNN teacher when the ViT weights are absent
    with_random: bool = True  # also probe the random-init encoder


PRESETS = I2PMAEPreset.table({
    # seconds: a handful of steps on a ModelNet10 subset; checks the whole pipeline
    "smoke": dict(
        model=dict(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4), encoder_dims=(32, 64, 128),
                   encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=16, decoder_dims=(128, 64),
                   decoder_depths=(1, 1), drop_path=0.0),
        image_size=64, teacher=("tf_efficientnet_lite0", None, -2), pretrain_shapes=64, steps=8, batch_size=16,
        lr=1e-3, warmup=2, train_per_class=30, test_per_class=20, fewshot_folds=2,
        runs=(("official", "i2pmae"), ("official", "3d_only"), ("pointlift", "i2pmae")), seeds=(0,)),
    # a small backbone on 256 voxel-centre points, 600 steps of 32 (20 epochs of 960 shapes), 3 seeds,
    # 3 pretraining runs per seed (official I2P-MAE with the teacher every step, official 3D-only,
    # pointlift I2P-MAE from the cache). The step count was chosen on validation shapes carved from the
    # training split before this change (BENCHMARKS.md); not re-tuned for the official recipe.
    "cpu": dict(
        model=dict(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4), encoder_dims=(48, 96, 192),
                   encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=16, decoder_dims=(192, 96),
                   decoder_depths=(1, 1), drop_path=0.1),
        image_size=96, teacher=("tf_efficientnet_lite0", None, -2), pretrain_shapes=960, steps=600,
        batch_size=32, lr=1e-3, warmup=30, train_per_class=60, test_per_class=40, fewshot_folds=10,
        runs=(("official", "i2pmae"), ("official", "3d_only"), ("pointlift", "i2pmae")), seeds=(0, 1, 2)),
    # paper-sized backbone, DINOv2 ViT-S/14 teacher (the offline stand-in for CLIP ViT-B/16). Not run
    # in this project yet (no GPU session had the time).
    "gpu": dict(
        model={}, image_size=224, teacher=("vit_small_patch14_dinov2", DINO_WEIGHTS, -1), pretrain_shapes=None,
        steps=100 * 31, batch_size=128, lr=1e-3, warmup=310, train_per_class=None, test_per_class=None,
        fewshot_folds=10, runs=(("official", "i2pmae"), ("official", "3d_only"), ("pointlift", "i2pmae"),
                                ("official", "guided_only"), ("official", "feature_only")), seeds=(0,)),
})

# variant -> (guided_masking, feature_target)
VARIANTS = {"i2pmae": (True, True), "3d_only": (False, False), "guided_only": (True, False),
            "feature_only": (False, True)}


def _stratified(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """All indices, or at most `per_class` per class."""
    from pointlift.tasks.shape_classification.data import few_shot_indices

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


def measure_cache_speed(official: I2PMAE, points: torch.Tensor, repeats: int = 3) -> dict:
    """Seconds per training step on one batch, side by side in one process: the official step (render,
    teacher, student forward-backward) vs the same student fed cached teacher maps (pointlift's cache)."""
    model = copy.deepcopy(official).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    config = model.config
    features, saliency = teacher_maps(model.teacher, points, config.image_size, config.footprint)
    cached_config = copy.deepcopy(config)
    cached_config.renderer = "invariant"
    cached = copy.deepcopy(model)
    cached.config = cached.method = cached_config
    cached_optimizer = torch.optim.AdamW([p for p in cached.parameters() if p.requires_grad], lr=1e-6)

    def step(network, opt, batch):
        opt.zero_grad(set_to_none=True)
        network(batch)["loss"].backward()
        opt.step()

    every_step = _median_seconds(lambda: step(model, optimizer, {"points": points}), repeats)
    from_cache = _median_seconds(lambda: step(cached, cached_optimizer, {
        "points": points, "teacher_features": features, "teacher_saliency": saliency}), repeats)
    return {"step_teacher_each_step_s": every_step, "step_cached_s": from_cache,
            "samples_per_s_teacher_each_step": len(points) / every_step,
            "samples_per_s_cached": len(points) / from_cache}


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


@dataclass
class ProbeData:
    """The shapes of one benchmark run: pretraining point sets (no labels), and the SVM probes' fitted and
    scored point sets with labels (`scored_split`: "test", or "train" for held-out validation shapes)."""

    pretrain_points: np.ndarray
    train_points: np.ndarray
    train_labels: np.ndarray
    test_points: np.ndarray
    test_labels: np.ndarray
    scored_split: str


def load_probe_data(spec: I2PMAEPreset, validation: bool = False, data_seed: int = 0) -> ProbeData:
    """ModelNet10 (../shared) resampled to the preset's point count; the picks depend on `data_seed` only."""
    from pointlift.data.shapes import load_modelnet10_vox

    data_path = shared_path("data/modelnet10_vox32.npz")
    if not data_path.is_file():
        raise PointliftDataError(data_path, "ModelNet10 voxel file not found (set POINTLIFT_SHARED)")
    num_points = PointM2AEConfig(**spec.model).num_points
    train_set = load_modelnet10_vox(data_path, "train")
    test_set = load_modelnet10_vox(data_path, "test")
    train_pick, test_pick, scored_split = evaluation_split(train_set.labels, test_set.labels,
                                                          spec.train_per_class, spec.test_per_class,
                                                          validation, data_seed)
    scored_set = train_set if scored_split == "train" else test_set
    pretrain_count = spec.pretrain_shapes or len(train_set)
    pretrain_pick = np.random.default_rng(data_seed).permutation(len(train_set))[:pretrain_count]
    return ProbeData(
        pretrain_points=prepare_point_sets([train_set.points[i] for i in pretrain_pick], num_points, data_seed),
        train_points=prepare_point_sets([train_set.points[i] for i in train_pick], num_points, data_seed),
        train_labels=train_set.labels[train_pick],
        test_points=prepare_point_sets([scored_set.points[i] for i in test_pick], num_points, data_seed),
        test_labels=scored_set.labels[test_pick], scored_split=scored_split)


def resolve_teacher(spec: I2PMAEPreset, device: torch.device) -> tuple[TeacherConfig, int]:
    """(teacher config, render size) of the preset: its teacher, or the bundled CNN teacher when the preset's
    weights file is absent from the shared folder."""
    teacher_name, weights, stage = spec.teacher
    image_size = spec.image_size
    if weights is not None:
        weights = str(shared_path(weights)) if shared_path(weights).is_file() else None
        if weights is None:  # no DINOv2 file: the bundled CNN teacher
            teacher_name, stage = "tf_efficientnet_lite0", -2
            image_size = spec.fallback_image_size if spec.fallback_image_size is not None else image_size
    return TeacherConfig(name=teacher_name, weights=weights, stage=stage, half=device.type == "cuda"), image_size


def bench_experiment(spec: I2PMAEPreset, recipe: str, variant: str, seed: int, steps: int,
                     teacher: TeacherConfig, image_size: int, device: torch.device,
                     method_overrides: dict | None = None) -> I2PMAEExperiment:
    """The pretraining run of one (recipe, variant, seed) at the preset's network, batch and rate."""
    guided, feature = VARIANTS[variant]
    model_config = PointM2AEConfig(**spec.model)
    return I2PMAEExperiment(
        name=f"bench_{recipe}_{variant}",
        method=I2PMAEConfig(**{**dict(spec.method, **(method_overrides or {})), "model": model_config,
                               "recipe": recipe, "guided_masking": guided, "feature_target": feature,
                               "image_size": image_size}),
        teacher=teacher,
        data=DataConfig(num_points=model_config.num_points, cache_dir="~/.cache/pointlift/i2p_mae"),
        train=TrainConfig(max_steps=steps, batch_size=spec.batch_size, seed=seed, log_every=10,
                          checkpoint_every=0, grad_clip=10.0, amp=device.type == "cuda",
                          optim=OptimConfig(lr=spec.lr, weight_decay=0.05, warmup_steps=spec.warmup)),
        device=str(device))


def run(preset: str, out_dir, validation: bool = False, seeds: tuple[int, ...] | None = None,
        method_overrides: dict | None = None, spec_overrides: dict | None = None,
        measure_timing: bool = True) -> BenchResult:
    """Pretrain every variant of the preset once per seed and probe it; SVM figures are means over the
    seeds (`_std` beside them). `validation=True` scores on held-out training shapes instead of the test
    split (for choosing settings); a seed seeds initialisation, masking and batches (the shape picks stay
    fixed); overrides replace I2PMAEConfig fields / preset entries."""
    if preset not in PRESETS:
        raise PointliftConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    spec = replace(PRESETS[preset], **(spec_overrides or {}))
    seeds = tuple(seeds if seeds is not None else spec.seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wall_start = time.perf_counter()
    model_config = PointM2AEConfig(**spec.model)
    data = load_probe_data(spec, validation)
    train_points, train_labels, test_points, test_labels = (data.train_points, data.train_labels,
                                                            data.test_points, data.test_labels)
    pretrain_points, scored_split = data.pretrain_points, data.scored_split
    teacher_config, image_size = resolve_teacher(spec, device)
    teacher = build_teacher(teacher_config, image_size).to(device)

    def pretrain_run(recipe: str, variant: str, seed: int):
        experiment = bench_experiment(spec, recipe, variant, seed, spec.steps, teacher_config, image_size, device,
                                      method_overrides)
        torch.manual_seed(seed)  # every run starts from the same backbone weights
        model, result, info = pretrain(experiment, out_dir / f"{recipe}_{variant}_seed{seed}", progress=False,
                                       points=pretrain_points, teacher=teacher)
        rows = [row for row in result.history if "loss" in row]
        info["loss_first"], info["loss_last"] = rows[0]["loss"], rows[-1]["loss"]
        info["samples_per_s"] = result.step * spec.batch_size / info["train_seconds"]
        return model, info

    accuracies: dict[str, list[float]] = {}
    paper_accuracies: dict[str, list[float]] = {}
    details: dict[str, dict] = {}
    shots = official_model = None
    first_run = "_".join(spec.runs[0])
    for seed in seeds:
        models: dict[str, torch.nn.Module] = {}
        for recipe, variant in spec.runs:
            name = f"{recipe}_{variant}"
            models[name], details[f"{name}_seed{seed}"] = pretrain_run(recipe, variant, seed)
        torch.manual_seed(seed)
        if spec.with_random:
            models["random"] = I2PMAE(I2PMAEConfig(model=copy.deepcopy(model_config), guided_masking=False,
                                                   feature_target=False)).to(device)
        for name, model in models.items():
            start = time.perf_counter()
            features = (embed_array(model, train_points), embed_array(model, test_points))
            accuracy, C = svm_accuracy(features[0], train_labels, features[1], test_labels, seed=seed)
            paper = paper_svm_accuracy(features[0], train_labels, features[1], test_labels)
            accuracies.setdefault(name, []).append(accuracy)
            paper_accuracies.setdefault(name, []).append(paper)
            details.setdefault(f"{name}_seed{seed}", {}).update(
                {"svm_acc": accuracy, "svm_C": C, "svm_paper_acc": paper,
                 "embed_svm_seconds": time.perf_counter() - start})
            if seed == seeds[0] and name == first_run:
                shots = fewshot_eval(features[0], train_labels, features[1], test_labels, n_way=10, k_shot=10,
                                     folds=spec.fewshot_folds, test_per_class=20, seed=seed)
                official_model = model

    metrics: dict[str, float] = {}
    for prefix, table in (("svm_acc", accuracies), ("svm_paper_acc", paper_accuracies)):
        for name, values in table.items():
            metrics[f"{prefix}_{name}"] = float(np.mean(values))
            metrics[f"{prefix}_{name}_std"] = float(np.std(values))
    baseline = "official_3d_only"
    if baseline in accuracies:  # paired by seed: same initial weights
        for name in accuracies:
            if name.endswith("_i2pmae"):
                recipe = name[:-len("_i2pmae")]
                metrics[f"svm_gap_{recipe}_vs_3d_only"] = float(np.mean(
                    np.array(accuracies[name]) - np.array(accuracies[baseline])))
                metrics[f"svm_paper_gap_{recipe}_vs_3d_only"] = float(np.mean(
                    np.array(paper_accuracies[name]) - np.array(paper_accuracies[baseline])))
    metrics["fewshot_10w10s_mean"] = shots.mean
    metrics["fewshot_10w10s_std"] = shots.std
    for recipe, variant in spec.runs:
        if variant == "i2pmae":
            metrics[f"samples_per_s_{recipe}"] = details[f"{recipe}_{variant}_seed{seeds[0]}"]["samples_per_s"]
    timing = {}
    if measure_timing and official_model is not None and official_model.teacher is not None:
        batch = torch.from_numpy(pretrain_points[:spec.batch_size]).to(device)
        timing = measure_cache_speed(official_model, batch)
        metrics["samples_per_s_teacher_each_step"] = timing["samples_per_s_teacher_each_step"]
        metrics["samples_per_s_cached"] = timing["samples_per_s_cached"]
    metrics["wall_seconds"] = time.perf_counter() - wall_start

    config = {
        "preset": preset, "device": str(device), "teacher": teacher.identity(),
        "teacher_saliency": "ViT CLS->patch attention" if teacher.is_vit else "CNN feature L2 norm",
        "model": config_to_dict(model_config), "image_size": image_size,
        "methods": {name: config_to_dict(details_model.config) for name, details_model in models.items()},
        "seeds": list(seeds), "runs": [list(run) for run in spec.runs],
        "svm_acc_per_seed": accuracies, "svm_paper_acc_per_seed": paper_accuracies,
        "scored_split": scored_split + (" (held-out validation shapes)" if validation else ""),
        "pretrain_shapes": int(len(pretrain_points)), "steps": spec.steps, "batch_size": spec.batch_size,
        "svm_train_shapes": int(len(train_points)), "svm_test_shapes": int(len(test_points)),
        "fewshot_folds": spec.fewshot_folds, "fewshot_on": f"{first_run}, seed {seeds[0]}",
        "fewshot_accuracies": shots.accuracies, "timing": timing, "details": details,
        "torch_threads": torch.get_num_threads(),
    }
    return BenchResult(metrics=metrics, config=config)
