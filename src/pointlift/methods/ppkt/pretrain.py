"""`pretrain(config, run_dir)`: build the data, teacher and cache, train PPKTModel, measure retrieval."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pointlift.engine import seed_everything, train
from pointlift.engine.config import config_to_dict
from pointlift.engine.device import resolve_device
from pointlift.engine.rundir import write_json
from pointlift.errors import PointliftConfigError
from pointlift.methods.ppkt.cache import open_teacher_cache
from pointlift.methods.ppkt.config import PPKTConfig
from pointlift.methods.ppkt.dataset import (CollateWithKernelMaps, PPKTDataset, collate_ppkt, lidar_dataset,
                                            rgbd_dataset)
from pointlift.methods.ppkt.model import PPKTModel, student_in_channels, build_teacher
from pointlift.methods.ppkt.pairs import resize_image
from pointlift.methods.ppkt.retrieval import retrieval_accuracy
from pointlift.methods.ppkt.sources import open_lidar_frames, open_rgbd_source, split_frames
from pointlift.sparse.prebuilt import plan_for_loader


def model_spec(config: PPKTConfig) -> dict:
    """The checkpoint's model_spec: what `load_pretrained` and `build_embedder` rebuild the network from."""
    return {"kind": "ppkt", "config": {"model": config_to_dict(config.model), "loss": config_to_dict(config.loss),
                                       "data": config_to_dict(config.data)}}


@dataclass
class PPKTSetup:
    """Everything `pretrain` builds before training: datasets (train with augmentation, held-out
    without), the teacher, and the cache (None when disabled)."""

    train_set: PPKTDataset
    eval_set: PPKTDataset
    teacher: object
    cache: object


def build_setup(config: PPKTConfig, cache_dir: Path | None, device: torch.device, progress: bool = False,
                use_cache: bool | None = None) -> PPKTSetup:
    data = config.data
    teacher = build_teacher(config.model, data.image_size)
    use_cache = config.cache if use_cache is None else use_cache
    if data.kind in ("rgbd", "synthetic"):
        train_set, eval_set, names, load_view = _rgbd_sets(config)
    else:
        train_set, eval_set, names, load_view = _lidar_sets(config)
    cache = None
    if use_cache:
        cache = open_teacher_cache(cache_dir, teacher, data.image_size, names, load_view, device=device,
                                   progress=progress)
        train_set.cache = eval_set.cache = cache
    return PPKTSetup(train_set, eval_set, teacher, cache)


def _rgbd_sets(config: PPKTConfig) -> tuple[PPKTDataset, PPKTDataset, list[str], Callable]:
    """Train and held-out frame datasets over one view numbering (train frames first), the views' names
    and their teacher input, for the cache."""
    data = config.data
    sequence = open_rgbd_source(data)
    train_frames, eval_frames = split_frames(sequence, data)
    if not train_frames or not eval_frames:
        raise PointliftConfigError(f"data: {len(train_frames)} training and {len(eval_frames)} held-out frames; "
                                   "both must be non-empty (check train_below / holdout_fraction)")
    all_frames = train_frames + eval_frames
    position = {f: i for i, f in enumerate(all_frames)}
    train_set = rgbd_dataset(sequence, train_frames, data, config.augment, config.model.up_axis,
                             data.frames_per_sample, view_offset=position)
    eval_set = rgbd_dataset(sequence, eval_frames, data, None, config.model.up_axis, 1, view_offset=position)
    all_names = sequence.names
    names = [all_names[f] for f in all_frames]
    load_view = lambda v: resize_image(sequence[all_frames[v]].color, data.image_size)  # noqa: E731
    return train_set, eval_set, names, load_view


def _lidar_sets(config: PPKTConfig) -> tuple[PPKTDataset, PPKTDataset, list[str], Callable]:
    """Train and held-out sweep datasets (the last `holdout_fraction` of sweeps held out), the views'
    names and their teacher input, for the cache."""
    data = config.data
    frames = open_lidar_frames(data)
    cut = max(1, int(round(len(frames) * (1 - data.holdout_fraction))))
    held_out = list(range(cut, len(frames))) or [len(frames) - 1]  # a single sweep evaluates on itself
    train_set = lidar_dataset(frames, data, config.augment, config.model.up_axis, sample_frames=list(range(cut)))
    eval_set = lidar_dataset(frames, data, None, config.model.up_axis, sample_frames=held_out)
    names = [train_set.view_names[v] for v in range(len(train_set.view_names))]
    return train_set, eval_set, names, train_set.load_view


def pretrain(config: PPKTConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
             device: str | None = None) -> dict:
    """Pretrain the 3D network; returns (and writes to run_dir/ppkt_results.json) the retrieval results."""
    seed_everything(config.train.seed)  # before anything random is built: runs repeat exactly
    run_dir = Path(run_dir)
    device = resolve_device(device or config.device)
    cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "teacher_cache"
    setup = build_setup(config, cache_dir, device, progress)
    seed_everything(config.train.seed)  # the cache build may have drawn numbers (it does not when reused)
    model = PPKTModel(config.model, config.loss, config.data.image_size, setup.teacher)
    results = {"retrieval_chance": None}
    if config.eval_untrained:
        untrained = retrieval_accuracy(model, setup.eval_set, config.eval_points_per_frame, device=device)
        results["retrieval_untrained"] = untrained
    results.update(_train(model, setup, config, run_dir, resume, device, progress))
    results["retrieval_pretrained"] = retrieval_accuracy(model, setup.eval_set, config.eval_points_per_frame,
                                                         device=device)
    results["retrieval_chance"] = results["retrieval_pretrained"]["chance"]
    results["cache"] = _cache_record(setup.cache)
    if config.data.frame == "world":
        results["world_up"] = _world_up_record(setup.train_set)
    write_json(run_dir / "ppkt_results.json", results, indent=1)  # rank 0 only
    return results


def _train(model: PPKTModel, setup: PPKTSetup, config: PPKTConfig, run_dir: Path, resume: bool,
           device: torch.device, progress: bool) -> dict:
    """The engine's training loop on the train set; its time, steps, checkpoint and loss history."""
    collate = collate_ppkt
    if config.data.kernel_maps_in_loader:
        collate = CollateWithKernelMaps(config.model.voxel_size, plan_for_loader(
            model.student, student_in_channels(config.model), device, config.train.num_workers))
    start = time.perf_counter()
    outcome = train(model, setup.train_set, config.train, run_dir, collate_fn=collate, resume=resume,
                    device=device, progress=progress, config_for_checkpoint=config, model_spec=model_spec(config))
    return {"train_seconds": time.perf_counter() - start, "steps": outcome.step,
            "checkpoint": str(outcome.checkpoint_path) if outcome.checkpoint_path else None,
            "history": [row for row in outcome.history if "loss" in row]}


def _world_up_record(dataset: PPKTDataset) -> dict:
    """Each sequence's measured (or given) up direction, by sequence label."""
    sequence = dataset.sequence
    parts = getattr(sequence, "sequences", [sequence])
    labels = getattr(sequence, "labels", [str(dataset.source)])
    return {label: part.record for label, part in zip(labels, parts)}


def _cache_record(cache) -> dict | None:
    """Where the teacher cache is, its key and whether this run built it (None: no cache)."""
    if cache is None:
        return None
    return {"dir": str(cache.directory), "key": cache.key, "built_now": cache.built_now,
            "build_seconds": cache.build_seconds}


def summary_line(results: dict, run_dir: Path) -> str:
    """What `pointlift pretrain ppkt` prints when the run ends."""
    import json

    summary = {k: results[k] for k in ("retrieval_pretrained", "retrieval_untrained", "checkpoint") if k in results}
    return json.dumps({"run_dir": str(run_dir), **summary}, indent=1, default=str)
