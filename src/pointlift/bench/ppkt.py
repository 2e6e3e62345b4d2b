"""`pointlift bench ppkt --preset {smoke,cpu,gpu}`: PPKT on 7-Scenes redkitchen.

Pretrain on frames numbered below 560, then measure on the rest:
- retrieval_top1_{pretrained,untrained}: held-out pixel <-> point top-1 (chance in retrieval_chance);
- frames_per_s_{cached,uncached}, cache_speedup: training throughput (data + step) with teacher maps
  read from the cache vs the teacher run on every image, measured side by side on the same frames;
- downstream_acc_{ppkt,scratch}_{1,5,10}pct (+ _std over 3 seeds): ModelNet10 classification
  fine-tuned from the PPKT network vs the same network from scratch, with a class-balanced 1/5/10 %
  of the training labels.

Domain gap: the student learned on 5 cm voxels of room scans. ModelNet shapes are normalised to the
unit sphere; we read one unit as 0.75 m (a typical piece of furniture is ~1.5 m across) so the shape
voxel size 0.05 m / 0.75 = 0.0667 keeps the pretraining scale. Point sets have no colour, so the
RGB stem gets a constant mid-grey (0.5) for both the pretrained and the scratch network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pointlift.bench import BenchResult, Preset, shared_path
from pointlift.engine import load_config
from pointlift.engine.config import TrainConfig, config_to_dict
from pointlift.methods.ppkt.config import PPKTConfig, PPKTModelConfig
from pointlift.methods.ppkt.dataset import PPKTDataset, collate_ppkt
from pointlift.methods.ppkt.model import PPKTModel, build_student
from pointlift.methods.ppkt.pretrain import build_setup, pretrain


@dataclass(frozen=True)
class PPKTPreset(Preset):
    pretrain: dict  # the PPKTConfig of the pretraining (load_config), less data root, run root and cache
    throughput_steps: int  # timed steps per side of the cached / uncached throughput measurement
    fractions: list  # downstream label fractions (%) of ModelNet10
    seeds: list  # downstream fine-tuning seeds
    finetune: dict  # downstream fine-tune: max_steps, batch_size, test_per_class, max_points[, max_per_class]


PRESETS = PPKTPreset.table({
    "smoke": {
        "pretrain": {
            "data": {"frame_stride": 10, "pixel_stride": 16, "image_size": [60, 80], "max_eval_frames": 3},
            "model": {"student": "spunet-tiny", "teacher_stage": 3, "voxel_size": 0.1},
            "loss": {"num_pairs": 256},
            "train": {"max_steps": 6, "batch_size": 2, "log_every": 2, "checkpoint_every": 0,
                      "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0001}},
            "eval_points_per_frame": 64,
        },
        "throughput_steps": 2, "fractions": [1, 5, 10], "seeds": [0],
        "finetune": {"max_steps": 4, "batch_size": 8, "test_per_class": 2, "max_points": 512, "max_per_class": 2},
    },
    "cpu": {
        "pretrain": {
            "data": {"frame_stride": 2, "pixel_stride": 8, "image_size": [120, 160], "max_eval_frames": 12},
            "model": {"student": "spunet-small", "teacher_stage": 3, "voxel_size": 0.05},
            "loss": {"num_pairs": 2048},
            "train": {"max_steps": 100, "batch_size": 2, "log_every": 10, "checkpoint_every": 0,
                      "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001, "warmup_steps": 10}},
            "eval_points_per_frame": 256,
        },
        "throughput_steps": 8, "fractions": [1, 5, 10], "seeds": [0, 1, 2],
        "finetune": {"max_steps": 25, "batch_size": 16, "test_per_class": 10, "max_points": 1024},
    },
    "gpu": {
        "pretrain": {
            "data": {"frame_stride": 1, "pixel_stride": 2, "image_size": [240, 320], "max_eval_frames": 0},
            "model": {"student": "spunet-v1m1", "teacher_stage": -1, "voxel_size": 0.02},
            "loss": {"num_pairs": 4096},
            "train": {"epochs": 30, "batch_size": 8, "log_every": 10, "checkpoint_every": 500,
                      "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0001,
                                "warmup_epochs": 1.0}},
            "eval_points_per_frame": 256,
        },
        "throughput_steps": 10, "fractions": [1, 5, 10], "seeds": [0, 1, 2],
        "finetune": {"max_steps": 1000, "batch_size": 32, "test_per_class": None, "max_points": None},
    },
})

SHAPE_UNIT_METRES = 0.75  # one unit-sphere unit read as 0.75 m (see the module docstring)


def pretrain_config(preset: str, out_dir: Path) -> PPKTConfig:
    spec = PRESETS[preset].pretrain
    data = {"kind": "rgbd", "root": str(shared_path("data/7scenes-redkitchen")), "train_below": 560, **spec["data"]}
    return load_config({**spec, "data": data, "run_root": str(out_dir), "cache_dir": str(out_dir / "teacher_cache")},
                       PPKTConfig)


def measure_throughput(model: PPKTModel, dataset: PPKTDataset, cache, steps: int, batch_size: int,
                       device) -> tuple[float, float]:
    """(frames/s with cached teacher maps, frames/s running the teacher), same frames, same model.

    Each timed step loads its frames (reading files, building pairs), collates, and runs a training
    step (forward, backward, update of a throw-away zero-lr optimiser). Cached and uncached steps
    alternate on the same frames with the same random state (same augmentations, same sampled pairs),
    so the only difference is where the teacher maps come from, and load from other processes hits
    both alike; one untimed warm-up step each.
    """
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    model.train().to(device)
    indices = [i % len(dataset) for i in range((steps + 1) * batch_size)]
    elapsed = {"cached": 0.0, "uncached": 0.0}
    for step in range(steps + 1):
        frames = indices[step * batch_size:(step + 1) * batch_size]
        for name, use in (("cached", cache), ("uncached", None)):
            dataset.cache = use
            torch.manual_seed(1000 + step)  # identical augmentations and sampled pairs in both arms
            start = time.perf_counter()
            batch = collate_ppkt([dataset[i] for i in frames])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step:  # the first step warms up allocators and kernels
                elapsed[name] += time.perf_counter() - start
    dataset.cache = cache
    frames_timed = steps * batch_size
    return frames_timed / elapsed["cached"], frames_timed / elapsed["uncached"]


class PPKTShapeClassifierBackbone(nn.Module):
    """PPKT's 3D network as a shape classifier: U-Net -> max and mean pool -> linear.

    The point sets carry no colour: RGB-input networks get a constant mid-grey, constant-input
    networks a 1 (as in pretraining). Parameter names keep PPKT's `student.` prefix.
    """

    def __init__(self, model_config: PPKTModelConfig, num_classes: int):
        super().__init__()
        self.model_config = model_config
        self.student = build_student(model_config)
        self.classifier = nn.Linear(2 * model_config.embed_dim, num_classes)

    def forward(self, x):
        from pointlift.sparse import global_pool

        value = 0.5 if self.model_config.in_features == "rgb" else 1.0
        channels = 3 if self.model_config.in_features == "rgb" else 1
        inputs = torch.full((len(x), channels), value, dtype=x.features.dtype, device=x.features.device)
        out = self.student(x.replace(inputs))
        return self.classifier(torch.cat([global_pool(out, "max"), global_pool(out, "mean")], dim=1))


def downstream(model_config: PPKTModelConfig, pretrained_state: dict | None, fraction: int, seed: int,
               spec: dict, run_dir: Path, splits, device) -> float:
    """Overall test accuracy after fine-tuning with `fraction` % of the labels (class-balanced)."""
    from pointlift.tasks.shape_classification.data import ShapeDataConfig, build_datasets
    from pointlift.tasks.shape_classification.train import SparseShapeClassifier, train_classifier

    train_split, test_split = splits
    per_class = max(1, int(round(fraction / 100 * len(train_split.labels) / len(train_split.class_names))))
    per_class = min(per_class, spec.get("max_per_class") or per_class)  # smoke: a few shapes only
    data = ShapeDataConfig(path=str(shared_path("data/modelnet10_vox32.npz")), voxel_size=0.05 / SHAPE_UNIT_METRES, augment=True,
                           train_per_class=per_class, subset_seed=seed, test_per_class=spec["test_per_class"],
                           max_points=spec["max_points"])
    train_set, test_set, names = build_datasets(data, train_split, test_split)
    torch.manual_seed(seed)
    backbone = PPKTShapeClassifierBackbone(model_config, len(names))
    if pretrained_state is not None:
        student = {k[len("student."):]: v for k, v in pretrained_state.items() if k.startswith("student.")}
        backbone.student.load_state_dict(student)
    # Whole epochs (about max_steps steps): train_classifier then evaluates once, after the last epoch.
    batch_size = min(spec["batch_size"], len(train_set))
    epochs = max(1, -(-spec["max_steps"] // (len(train_set) // batch_size)))
    config = load_config({"epochs": epochs, "batch_size": batch_size,
                          "seed": seed, "log_every": 10, "checkpoint_every": 0,
                          "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.01}}, TrainConfig)
    result = train_classifier(SparseShapeClassifier(backbone), train_set, test_set, data, config, run_dir,
                              eval_every_epoch=False, progress=False, device=device)
    return float(result["final"]["overall_acc"])


def run(preset: str, out_dir: Path) -> BenchResult:
    from pointlift.data.shapes import load_modelnet10_vox
    from pointlift.engine.checkpoint import load_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    options = PRESETS[preset]
    config = pretrain_config(preset, out_dir)
    timings = {}

    start = time.perf_counter()
    results = pretrain(config, out_dir / "pretrain", progress=False, device=str(device))
    timings["pretrain_total_s"] = time.perf_counter() - start
    metrics = {
        "retrieval_top1_pretrained": results["retrieval_pretrained"]["top1"],
        "retrieval_top1_untrained": results["retrieval_untrained"]["top1"],
        "retrieval_top5_pretrained": results["retrieval_pretrained"]["top5"],
        "retrieval_top5_untrained": results["retrieval_untrained"]["top5"],
        "retrieval_chance": results["retrieval_chance"],
        "retrieval_queries": results["retrieval_pretrained"]["queries"],
        "pretrain_loss_first": results["history"][0]["loss"],
        "pretrain_loss_last": results["history"][-1]["loss"],
        "pretrain_train_s": results["train_seconds"],
        "cache_build_s": results["cache"]["build_seconds"],
    }

    # cache speed-up, side by side on the same training frames and model
    setup = build_setup(config, out_dir / "teacher_cache", device)
    model = PPKTModel(config.model, config.loss, config.data.image_size, setup.teacher)
    cached, uncached = measure_throughput(model, setup.train_set, setup.cache, options.throughput_steps,
                                          config.train.batch_size, device)
    metrics.update(frames_per_s_cached=cached, frames_per_s_uncached=uncached, cache_speedup=cached / uncached)

    # downstream label efficiency on ModelNet10
    state, _ = load_checkpoint(results["checkpoint"])
    modelnet = shared_path("data/modelnet10_vox32.npz")
    splits = (load_modelnet10_vox(modelnet, "train"), load_modelnet10_vox(modelnet, "test"))
    start = time.perf_counter()
    for fraction in options.fractions:
        for name, pretrained in (("ppkt", state), ("scratch", None)):
            scores = [downstream(config.model, pretrained, fraction, seed, options.finetune,
                                 out_dir / f"finetune-{name}-{fraction}pct-seed{seed}", splits, device)
                      for seed in options.seeds]
            metrics[f"downstream_acc_{name}_{fraction}pct"] = float(np.mean(scores))
            metrics[f"downstream_acc_{name}_{fraction}pct_std"] = float(np.std(scores))
    timings["downstream_s"] = time.perf_counter() - start
    metrics.update({f"{k}": v for k, v in timings.items()})
    recorded = {"pretrain": config_to_dict(config), "finetune": options.finetune, "seeds": options.seeds,
                "fractions_pct": options.fractions, "label_subsets": "class-balanced: round(pct% * 3964 / 10) per class",
                "shape_voxel_size": 0.05 / SHAPE_UNIT_METRES, "shape_unit_metres": SHAPE_UNIT_METRES,
                "shape_input_features": "constant mid-grey into the RGB stem",
                "retrieval_candidates_per_frame": config.eval_points_per_frame,
                "device": str(device), "torch_threads": torch.get_num_threads()}
    return BenchResult(metrics=metrics, config=recorded)
