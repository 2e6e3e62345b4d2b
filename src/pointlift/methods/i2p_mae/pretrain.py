"""`pretrain(experiment, run_dir)`: I2P-MAE pretraining as named steps - the shapes, the frozen teacher
(and its cached maps when the recipe caches them), the model, the dataset, then the shared trainer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pointlift.engine.config import config_to_dict
from pointlift.engine.device import resolve_device
from pointlift.engine.seed import seed_everything
from pointlift.engine.trainer import train
from pointlift.errors import PointliftConfigError
from pointlift.methods.i2p_mae.cache import TeacherMaps, build_teacher_cache
from pointlift.methods.i2p_mae.config import I2PMAEExperiment, TeacherConfig, model_spec
from pointlift.methods.i2p_mae.data import PretrainShapes, TeacherInLoader, load_pretrain_points
from pointlift.methods.i2p_mae.model import I2PMAE


def build_teacher(config: TeacherConfig, image_size: int):
    """The frozen 2D network of `config` at the render size."""
    from pointlift.teachers.teacher import Teacher

    return Teacher(config.name, weights=config.weights, stage=config.stage, half=config.half, img_size=image_size,
                   project=config.project)


def prepare_teacher(experiment: I2PMAEExperiment, points: np.ndarray, teacher, device: torch.device,
                    progress: bool, info: dict) -> tuple[torch.nn.Module, TeacherMaps | None]:
    """The teacher on `device` and, with `data.cache_teacher`, its maps of every shape (built once, or read
    from the cache); build times and the teacher's identity go to `info`."""
    method, data = experiment.method, experiment.data
    teacher = teacher if teacher is not None else build_teacher(experiment.teacher, method.image_size)
    teacher = teacher.to(device)
    info["teacher"] = teacher.identity()
    maps = None
    if data.cache_teacher:
        start = time.perf_counter()
        maps = build_teacher_cache(teacher, points, method.image_size, method.footprint,
                                   cache_dir=data.cache_dir, batch_size=32,
                                   storage_dtype=data.cache_dtype, progress=progress)
        info["cache_seconds"] = time.perf_counter() - start
        info["cache_built"] = maps.built
    return teacher, maps


def pretrain(experiment: I2PMAEExperiment, run_dir: str | Path, resume: bool = False, progress: bool = True,
             points: np.ndarray | None = None, teacher=None, eval_fn=None):
    """Pretrain on the configured shapes (or `points` (S, P, 3) if given). Returns (model, TrainResult, info).
    `eval_fn(model, epoch) -> dict` runs at every epoch end (the trainer's hook; benchmarks probe with it).

    With `data.cache_teacher` the teacher runs once per shape before training (pointlift's option);
    otherwise it runs inside every training step on the augmented batch (the released recipe)."""
    seed_everything(experiment.train.seed)  # before anything random is built: runs repeat exactly
    method, data = experiment.method, experiment.data
    device = resolve_device(experiment.device)
    if data.teacher_in_loader and device.type != "cpu":
        raise PointliftConfigError(f"data.teacher_in_loader runs the teacher in DataLoader workers on the CPU; "
                                   f"this run is on {device} (set device: cpu, or leave the option off)")
    if points is None:
        points, _, _ = load_pretrain_points(data, "train")
    info = {"num_shapes": int(len(points)), "recipe": method.recipe}
    needs_teacher = method.guided_masking or method.feature_target
    maps = None
    if needs_teacher:
        teacher, maps = prepare_teacher(experiment, points, teacher, device, progress, info)
    model = I2PMAE(method, teacher if needs_teacher else None)
    dataset = PretrainShapes(points, maps, data.scale_range, data.translate, data.augment,
                             mask_tokens=method.model.num_centers[-1],
                             drop_layers=len(model.drop_path_layers()) if method.ddp_equivalent else 0)
    collate = (TeacherInLoader(teacher, method.image_size, method.footprint, method.guided_masking)
               if data.teacher_in_loader else None)
    start = time.perf_counter()
    result = train(model, dataset, experiment.train, run_dir, collate_fn=collate, resume=resume, device=device,
                   progress=progress, config_for_checkpoint=config_to_dict(experiment), model_spec=model_spec(method),
                   eval_fn=eval_fn)
    info["train_seconds"] = time.perf_counter() - start
    return model, result, info


def pretrain_with_summary(experiment: I2PMAEExperiment, run_dir: str | Path, resume: bool = False,
                          progress: bool = True) -> dict:
    """`pretrain`, then the run's `summary.json` (rank 0): steps, why it stopped, checkpoint, timings."""
    from pointlift.engine.rundir import write_json

    _, result, info = pretrain(experiment, run_dir, resume=resume, progress=progress)
    summary = {"step": result.step, "stop_reason": result.stop_reason,
               "checkpoint": str(result.checkpoint_path), **info}
    write_json(Path(run_dir) / "summary.json", summary)
    return summary


def summary_line(summary: dict, run_dir: Path) -> str:
    """What `pointlift pretrain i2p-mae` prints when the run ends."""
    return f"i2p-mae: {summary['step']} steps, checkpoint {summary['checkpoint']}"
