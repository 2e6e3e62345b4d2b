"""`pointlift finetune image2point` and `pointlift inflate`: config loading, run-directory checks, printing.

CLI layer; moves to pointlift/commands in phase 2.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pointlift.engine.checkpoint import model_state_for_checkpoint, save_checkpoint
from pointlift.engine.config import load_config
from pointlift.engine.distributed import is_main_process
from pointlift.engine.rundir import create_run_dir
from pointlift.errors import PointliftConfigError
from pointlift.methods.image2point.config import Image2PointConfig
from pointlift.methods.image2point.finetune import finetune
from pointlift.models.image2point_net import build_network
from pointlift.models.inflate import format_report
from pointlift.tasks.shape_classification.train import SparseShapeClassifier


def finetune_command(config_path, resume: bool = False, run_dir=None) -> dict:
    """`pointlift finetune image2point --config FILE [--resume] [--run-dir DIR]`."""
    config = load_config(config_path, Image2PointConfig)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    run_dir = create_run_dir(config.name, run_dir=run_dir, config=config)
    summary = finetune(config, run_dir, resume=resume)
    if is_main_process():
        print(f"[image2point] overall accuracy {summary['overall_acc']:.4f}, "
              f"mean-class {summary['mean_class_acc']:.4f} (last epoch) -> {run_dir}")
    return summary


def inflate_command(teacher: str, weights=None, mode: str = "copy", axis: str = "z-axis", out=None,
                    design: str = "released") -> Path:
    """`pointlift inflate`: save the inflated network as a checkpoint (design `imagenet-stem` keeps the
    ImageNet classifier; the released design has a fresh 1000-way Linear + BatchNorm1d head)."""
    net, report = build_network(teacher, str(weights) if weights is not None else None, mode, axis, None, design)
    print(format_report(report))
    model = SparseShapeClassifier(net)
    head = net.get_classifier()
    linear = head[0] if isinstance(head, nn.Sequential) else head
    spec = {"kind": "image2point", "config": {"teacher": teacher, "mode": mode, "axis": axis, "design": design,
                                              "num_classes": int(linear.out_features),
                                              "voxel_size": 0.05, "input_scale": 1.0, "pipeline": "released",
                                              "normalize": True}}
    path = save_checkpoint(out, model_state_for_checkpoint(model), config={"teacher": teacher,
                           "weights": str(weights) if weights else None, "mode": mode, "axis": axis},
                           step=0, model_spec=spec,
                           extra={"report": [[r.name_2d, r.name_3d, list(r.shape_2d), list(r.shape_3d), r.mode]
                                             for r in report]})
    print(f"[image2point] inflated {len(report)} layers of {teacher} ({mode}, axis {axis}) -> {path}")
    return path
