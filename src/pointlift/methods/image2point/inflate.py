"""Step 1 of Image2Point on its own: a 2D ConvNet inflated into the 3D network and saved as a checkpoint
(`pointlift inflate`), which `finetune` can start from (`init_checkpoint`)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pointlift.engine.checkpoint import model_state_for_checkpoint, save_checkpoint
from pointlift.models.image2point_net import build_network
from pointlift.tasks.shape_classification.train import SparseShapeClassifier


def inflate_to_checkpoint(teacher: str, weights=None, mode: str = "copy", axis: str = "z-axis", out=None,
                          design: str = "released") -> tuple[Path, list]:
    """(checkpoint path, inflation report). Design `imagenet-stem` keeps the ImageNet classifier; the
    released design has a fresh 1000-way Linear + BatchNorm1d head."""
    net, report = build_network(teacher, str(weights) if weights is not None else None, mode, axis, None, design)
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
    return path, report
