"""Image2Point fine-tuning: the FIP-configured classifier of a config, then voxelised shape classification
(`pointlift.tasks.shape_classification`) with the engine's trainer.

Seeding: `build_classifier` seeds every RNG before the network is built (so the random stem and head
repeat exactly), and the trainer reseeds for training. Building the datasets draws from no global RNG
(few-shot subsets and point orders use their own seeded generators), so `finetune` does not seed again.
"""

from __future__ import annotations

import time
from pathlib import Path

from pointlift.engine.checkpoint import check_kind, checkpoint_kind, load_init_checkpoint, read_checkpoint_meta
from pointlift.engine.config import config_to_dict
from pointlift.engine.rundir import write_json
from pointlift.engine.seed import seed_everything
from pointlift.methods.image2point.config import Image2PointConfig
from pointlift.methods.image2point.fip import apply_fip
from pointlift.models.image2point_net import build_network
from pointlift.tasks.shape_classification.data import build_datasets_with_validation
from pointlift.tasks.shape_classification.train import SparseShapeClassifier, train_classifier


def _load_init_checkpoint(model: SparseShapeClassifier, path: str) -> int:
    """Load an Image2Point (e.g. `pointlift inflate`) checkpoint of this architecture; only the classifier
    may differ (re-initialised for the new classes). Another method's or architecture's checkpoint is an error."""
    meta = read_checkpoint_meta(path)
    if checkpoint_kind(meta) == "i2p_mae":  # the one mix-up users make: say where such a checkpoint goes
        check_kind(path, meta, "image2point", hint="Image2Point starts from `pointlift inflate` output "
                   "(I2P-MAE checkpoints fine-tune with `pointlift finetune i2p-mae`)")
    net = model.backbone
    classifier = net.get_classifier()
    head = tuple(f"backbone.{name}." for name, module in net.named_modules() if module is classifier)
    return load_init_checkpoint(model, path, "image2point", reinit=head)


def build_classifier(config: Image2PointConfig, num_classes: int) -> tuple[SparseShapeClassifier, dict]:
    """The FIP-configured classifier and {trainable_params, total_params, ...}."""
    inflation = config.inflation
    seed_everything(config.train.seed)  # before anything random is built: runs repeat exactly
    net, _ = build_network(inflation.teacher, inflation.weights, inflation.mode, inflation.axis, num_classes,
                           inflation.design)
    model = SparseShapeClassifier(net)
    if config.init_checkpoint:
        _load_init_checkpoint(model, config.init_checkpoint)
    counts = apply_fip(model, config.fip)
    return model, counts


def model_spec(config: Image2PointConfig, num_classes: int) -> dict:
    """The `model_spec` a checkpoint carries: what `build_embedder` needs to rebuild the network."""
    return {"kind": "image2point", "config": {
        "teacher": config.inflation.teacher, "mode": config.inflation.mode, "axis": config.inflation.axis,
        "design": config.inflation.design, "num_classes": num_classes, "voxel_size": config.data.voxel_size,
        "input_scale": config.data.input_scale, "pipeline": config.data.pipeline,
        "normalize": config.data.normalize if config.data.normalize is not None else
        config.data.dataset == "modelnet10"}}


def finetune(config: Image2PointConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
             train_split=None, test_split=None) -> dict:
    """Fine-tune on shape classification; returns last-epoch metrics, the per-epoch curve and counts."""
    train_set, val_set, test_set, class_names = build_datasets_with_validation(config.data, train_split, test_split)
    num_classes = len(class_names)
    model, counts = build_classifier(config, num_classes)
    print(f"[image2point] fip={config.fip} teacher={config.inflation.teacher} weights={config.inflation.weights} "
          f"trainable parameters {counts['trainable_params']:,} of {counts['total_params']:,}")
    start = time.perf_counter()
    result = train_classifier(model, train_set, test_set, config.data, config.train, run_dir,
                              eval_every_epoch=config.eval_every_epoch, eval_batch_size=config.eval_batch_size,
                              resume=resume, progress=progress, config_for_checkpoint=config_to_dict(config),
                              model_spec=model_spec(config, num_classes), device=config.device, val_set=val_set,
                              precise_bn=config.precise_bn)
    curve = _curve_from_history(result["history"], val_set is not None) or result["curve"]
    summary = {"overall_acc": result["final"]["overall_acc"], "mean_class_acc": result["final"]["mean_class_acc"],
               "curve": curve, "curve_split": result["curve_split"],
               "val_overall_acc": curve[-1]["overall_acc"] if val_set is not None and curve else float("nan"),
               "train_shapes": len(train_set), "val_shapes": len(val_set) if val_set is not None else 0,
               "test_shapes": len(test_set),
               "seconds": time.perf_counter() - start, **counts}
    write_json(Path(run_dir) / "results.json", summary)  # rank 0 only: its evaluation is the run's
    return summary


def _curve_from_history(history: list[dict], validation: bool) -> list[dict]:
    """Per-epoch accuracy rows from the run's logged evaluations - on resume these include the epochs
    before the interruption, which the evaluation callback of this process never saw."""
    prefix = "eval/val_" if validation else "eval/"
    return [{"epoch": int(row["epoch"]), "overall_acc": row[prefix + "overall_acc"],
             "mean_class_acc": row.get(prefix + "mean_class_acc", float("nan"))}
            for row in history if prefix + "overall_acc" in row]


def summary_line(summary: dict, run_dir: Path) -> str:
    """What `pointlift finetune image2point` prints when the run ends."""
    return (f"[image2point] overall accuracy {summary['overall_acc']:.4f}, "
            f"mean-class {summary['mean_class_acc']:.4f} (last epoch) -> {run_dir}")
