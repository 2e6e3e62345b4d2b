"""Scoring every original point of held-out scans (voxel logits read back through the inverse map), and a
saved segmentation checkpoint scored on any folder of scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pointlift.data.scenes import LABEL_SETS, Scene, detect_layout, label_set_of, list_scenes, read_scene
from pointlift.engine.config import load_config
from pointlift.engine.device import resolve_device
from pointlift.engine.distributed import is_main_process
from pointlift.errors import PointliftDataError
from pointlift.metrics import confusion_matrix, segmentation_metrics
from pointlift.tasks.segmentation.config import SegDataConfig, SegmentationConfig, SegModelConfig
from pointlift.tasks.segmentation.data import SceneCollate, SceneDataset
from pointlift.tasks.segmentation.model import SegmentationModel, build_model
from pointlift.tasks.segmentation.outputs import write_prediction_ply


@torch.no_grad()
def predict_scene(model: SegmentationModel, scene: Scene, data: SegDataConfig,
                  device: torch.device | None = None) -> np.ndarray:
    """Per-point predicted ids for every original point of `scene` (voxel logits through the inverse map)."""
    device = device or next(model.parameters()).device
    item = SceneDataset([scene], data)[0]
    batch = SceneCollate(data.voxel_size)([item])
    batch = {k: v.to(device) for k, v in batch.items()}
    return model.logits(batch).argmax(1).cpu().numpy()


@torch.no_grad()
def evaluate_scenes(model: SegmentationModel, scenes: list[Scene], data: SegDataConfig,
                    num_classes: int, class_names) -> tuple[dict, list[np.ndarray]]:
    """(metrics over every point of every scan, per-scan predictions); eval mode restored after."""
    was = model.training
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    predictions = []
    from pointlift.progress import bar

    for scene in bar(scenes, desc="segment", unit="scan", leave=False):
        pred = predict_scene(model, scene, data)
        confusion += confusion_matrix(pred, scene.labels, num_classes)
        predictions.append(pred)
    model.train(was)
    metrics = segmentation_metrics(confusion, class_names)
    metrics["confusion"] = confusion.tolist()
    return metrics, predictions


def load_segmentation_checkpoint(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """(model, spec config) of a `finetune segmentation` checkpoint."""
    from pointlift.engine.checkpoint import checkpoint_files, load_checkpoint, load_model_state

    state, meta = load_checkpoint(checkpoint, expect_kind="segmentation")
    cfg = meta["model_spec"]["config"]
    model_cfg = load_config({**cfg["model"], "init": "scratch", "checkpoint": None}, SegModelConfig)
    if model_cfg.arch == "inflated":
        model_cfg.teacher_weights = "random"  # the checkpoint supplies every weight
    data = load_config(cfg["data"], SegDataConfig)
    config = SegmentationConfig(model=model_cfg, data=data)
    model = build_model(config, int(cfg["num_classes"]))
    load_model_state(model, state, checkpoint_files(checkpoint)[0])
    return model.to(device).eval(), cfg


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path,
                        predictions_dir: str | Path | None = None) -> dict:
    """`pointlift eval segmentation`: every scan of `data_dir` (any supported layout with the checkpoint's
    label set), every point scored; per-scan prediction PLYs into `predictions_dir` if given. `checkpoint`
    may be a run directory. Scans the checkpoint trained on are scored too, with a warning naming them."""
    import warnings

    from pointlift.engine.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    device = resolve_device(None)
    model, cfg = load_segmentation_checkpoint(checkpoint, device)
    layout = detect_layout(data_dir)
    if label_set_of(layout) != cfg["label_set"]:
        raise PointliftDataError(data_dir, f"holds {layout} scans ({label_set_of(layout)}), the checkpoint "
                                 f"predicts {cfg['label_set']}")
    data = load_config({**cfg["data"], "layout": layout, "root": str(data_dir), "train": [], "test": [], "val": []},
                       SegDataConfig)
    names = list_scenes(layout, data_dir)
    seen = _training_scans(cfg, layout, names)
    if seen:
        warnings.warn(f"{data_dir}: {len(seen)} of {len(names)} scans are training scans of this checkpoint "
                      f"({', '.join(seen[:4])}{', ...' if len(seen) > 4 else ''}); their scores are not held-out "
                      f"figures (list only test scans with --data)")
    scenes = [read_scene(layout, data_dir, n) for n in names]
    class_names = LABEL_SETS[cfg["label_set"]]
    metrics, predictions = evaluate_scenes(model, scenes, data, int(cfg["num_classes"]), class_names)
    if predictions_dir is not None and is_main_process():
        for scene, pred in zip(scenes, predictions):
            write_prediction_ply(Path(predictions_dir) / f"{scene.name.replace('/', '_')}.ply", scene.points, pred,
                                 scene.labels, int(cfg["num_classes"]))
    record = {"checkpoint": str(checkpoint), "data": str(data_dir), "layout": layout,
              "scans": [s.name for s in scenes], "training_scans_scored": seen, **metrics}
    return record


def _training_scans(cfg: dict, layout: str, names: list[str]) -> list[str]:
    """The scans in `names` the checkpoint trained on: recorded in its spec, or (older checkpoints) those
    of its training split units when the layout is the one it trained on."""
    from pointlift.data.scenes import select_scenes

    if "train_scans" in cfg:
        trained = set(cfg["train_scans"])
        return [n for n in names if n in trained]
    if cfg["data"].get("layout") != layout:
        return []
    return select_scenes(names, list(cfg["data"].get("train") or []))
