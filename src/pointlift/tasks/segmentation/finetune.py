"""`finetune(config, run_dir)`: train a segmentation network on the (label-efficient) training scans, score
every point of the test scans at the last step, and write results.json, prediction PLYs, pictures and
report.md. Nothing here selects a model by its test score."""

from __future__ import annotations

import time
from pathlib import Path

from pointlift.data.scenes import IGNORE, LABEL_SETS, Scene, label_set_of
from pointlift.engine.config import config_to_dict
from pointlift.engine.device import resolve_device
from pointlift.engine.distributed import is_main_process
from pointlift.engine.rundir import write_json
from pointlift.errors import PointliftConfigError
from pointlift.sparse.prebuilt import WithKernelMaps, plan_for_loader
from pointlift.tasks.segmentation.config import SegmentationConfig
from pointlift.tasks.segmentation.data import SceneCollate, SceneDataset, label_efficient_subset, load_split
from pointlift.tasks.segmentation.evaluate import evaluate_scenes
from pointlift.tasks.segmentation.model import build_model
from pointlift.tasks.segmentation.outputs import plot_prediction, write_prediction_ply


def model_spec(config: SegmentationConfig, num_classes: int, label_set: str, train_scans: list[str]) -> dict:
    """What `eval segmentation` needs to rebuild the network, and the scans it trained on (to warn when
    they are scored again)."""
    return {"kind": "segmentation", "config": {"model": config_to_dict(config.model),
                                               "data": config_to_dict(config.data),
                                               "num_classes": num_classes, "label_set": label_set,
                                               "train_scans": list(train_scans)}}


def finetune(config: SegmentationConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
             scenes: dict[str, list[Scene]] | None = None) -> dict:
    """Fine-tune on the training scans and score the test scans (last step); writes results.json,
    predictions (PLY), a picture and report.md into `run_dir`. `scenes` ({"train", "test", "val"}) may be
    passed pre-read (the benchmark reuses them)."""
    from pointlift.engine.trainer import train

    run_dir, data = Path(run_dir), config.data
    scenes = scenes if scenes is not None else _read_scenes(config)
    label_set = label_set_of(data.layout)
    class_names = LABEL_SETS[label_set]
    num_classes = len(class_names)
    train_scenes = label_efficient_subset(scenes["train"], data.scene_fraction, data.point_fraction,
                                          data.subset_seed, data.points_per_scene)
    device = resolve_device(config.device)
    model = build_model(config, num_classes).to(device)
    summary: dict = {"train_scans": [s.name for s in train_scenes], "test_scans": [s.name for s in scenes["test"]],
                     "labelled_train_points": int(sum((s.labels != IGNORE).sum() for s in train_scenes)),
                     "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                     "class_names": list(class_names)}
    if config.eval_untrained and not resume:
        untrained, _ = evaluate_scenes(model, scenes["test"], data, num_classes, class_names)
        summary["untrained"] = {k: untrained[k] for k in ("miou", "overall_acc", "mean_acc")}
    curve: list[dict] = []

    def eval_fn(module, epoch):
        metrics, _ = evaluate_scenes(module, scenes["val"], data, num_classes, class_names)
        curve.append({"epoch": epoch, "miou": metrics["miou"], "overall_acc": metrics["overall_acc"]})
        return {"val_miou": metrics["miou"], "val_overall_acc": metrics["overall_acc"]}

    collate = SceneCollate(data.voxel_size)
    if data.kernel_maps_in_loader:
        collate = WithKernelMaps(collate, plan_for_loader(model.backbone, model.input_channels(data), device,
                                                          config.train.num_workers))
    start = time.perf_counter()
    result = train(model, SceneDataset(train_scenes, data, config.augment), config.train, run_dir,
                   collate_fn=collate, resume=resume, device=device, progress=progress,
                   eval_fn=eval_fn if scenes["val"] else None, config_for_checkpoint=config_to_dict(config),
                   model_spec=model_spec(config, num_classes, label_set, summary["train_scans"]))
    summary["train_seconds"] = time.perf_counter() - start
    summary["steps"] = result.step
    losses = [row["loss"] for row in result.history if "loss" in row]
    summary["loss_first"], summary["loss_last"] = (losses[0], losses[-1]) if losses else (None, None)
    metrics, predictions = evaluate_scenes(model, scenes["test"], data, num_classes, class_names)
    summary["test"] = metrics
    summary["val_curve"] = curve
    summary["checkpoint"] = str(result.checkpoint_path) if result.checkpoint_path else None
    if is_main_process():  # under torchrun every process scored the same scans; one writes them
        _write_outputs(config, run_dir, scenes["test"], predictions, class_names, summary, len(train_scenes))
    return summary


def _read_scenes(config: SegmentationConfig) -> dict[str, list[Scene]]:
    data = config.data
    if not data.train or not data.test:
        raise PointliftConfigError("data.train and data.test: list at least one split unit each")
    return {"train": load_split(data, data.train), "test": load_split(data, data.test),
            "val": load_split(data, data.val) if data.val else []}


def _write_outputs(config: SegmentationConfig, run_dir: Path, test_scenes: list[Scene], predictions: list,
                   class_names, summary: dict, train_count: int) -> None:
    """Prediction PLYs, the ground truth vs prediction picture, the loss curve, results.json and report.md
    (rank 0 only; each file written atomically)."""
    from pointlift.report import plot_curves, read_metrics_csv, write_report

    figures = []
    if config.write_predictions:
        for scene, pred in zip(test_scenes, predictions):
            write_prediction_ply(run_dir / "predictions" / f"{scene.name.replace('/', '_')}.ply", scene.points, pred,
                                 scene.labels, len(class_names))
        picture = plot_prediction(test_scenes[0], predictions[0], class_names, run_dir / "prediction_vs_gt.png")
        figures.append((f"{test_scenes[0].name}: ground truth vs prediction (top view)", picture))
        curves = {"training loss": read_metrics_csv(run_dir / "metrics.csv").get("loss", [])}
        if curves["training loss"]:
            figures.append(("training loss", plot_curves(curves, run_dir / "loss.png", title="segmentation")))
    write_json(run_dir / "results.json", summary, indent=2, default=str, allow_nan=True)
    metrics = summary["test"]
    per_class = [{"class": k, "iou": v} for k, v in metrics["per_class_iou"].items() if v is not None]
    headline = {"test mIoU": metrics["miou"], "test overall accuracy": metrics["overall_acc"],
                "test mean accuracy": metrics["mean_acc"]}
    if "untrained" in summary:
        headline["untrained test mIoU"] = summary["untrained"]["miou"]
    write_report(run_dir, f"Segmentation: {config.name}", figures=figures,
                 summary=f"init {config.model.init}, arch {config.model.arch}, {train_count} training scans, "
                         f"{len(test_scenes)} test scans (every point scored).",
                 tables={"per-class IoU (test)": per_class}, metrics=headline, config=config_to_dict(config))


def summary_line(summary: dict, run_dir: Path) -> str:
    """What `pointlift finetune segmentation` prints when the run ends."""
    test = summary["test"]
    return f"[segmentation] test mIoU {test['miou']:.4f}, overall accuracy {test['overall_acc']:.4f} -> {run_dir}"
