"""The fine-tuned (or inflated) Image2Point network as a feature extractor, rebuilt from a checkpoint's
`model_spec` (`pointlift.registry`): `.embed(points (B, P, 3)) -> (B, F)` pooled features."""

from __future__ import annotations

import torch
from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.models.image2point_net import build_network
from pointlift.tasks.shape_classification.data import points_to_batch
from pointlift.tasks.shape_classification.train import SparseShapeClassifier, batch_to_sparse


class Image2PointEmbedder(SparseShapeClassifier):
    """The inflated network as a feature extractor: `.embed(points (B,P,3)) -> (B, F)` pooled features."""

    def __init__(self, backbone: nn.Module, voxel_size: float, input_scale: float, pipeline: str = "voxel_mean",
                 normalize: bool = True):
        super().__init__(backbone)
        self.voxel_size = voxel_size
        self.input_scale = input_scale
        self.pipeline, self.normalize = pipeline, normalize

    def embed(self, points: torch.Tensor) -> torch.Tensor:
        batch = points_to_batch(points.float(), self.voxel_size, self.input_scale, self.pipeline, self.normalize)
        features = self.backbone.forward_features(batch_to_sparse(batch))
        return self.backbone.forward_head(features, pre_logits=True)


# What an Image2Point model_spec config may hold.
SPEC_KEYS = {"teacher", "weights", "mode", "axis", "design", "num_classes", "voxel_size", "input_scale", "pipeline",
             "normalize"}


def build_embedder(model_spec_config: dict) -> Image2PointEmbedder:
    """Architecture from a checkpoint's model_spec config (weights are loaded by the caller)."""
    cfg = dict(model_spec_config)
    unknown = sorted(set(cfg) - SPEC_KEYS)
    if unknown:
        raise PointliftConfigError(f"image2point: unknown settings {unknown}; known: {sorted(SPEC_KEYS)}")
    # Checkpoints written before the released design carry no "design"/"pipeline": the earlier ones.
    # "weights": 2D weights to inflate (`pointlift.create_model`); checkpoints carry none, theirs load after.
    weights = cfg.get("weights", "random")
    net, _ = build_network(cfg.get("teacher", "tf_efficientnet_lite0"), weights, cfg.get("mode", "copy"),
                           _legacy_axis(cfg.get("axis", "z-axis")), cfg.get("num_classes"),
                           cfg.get("design", "imagenet-stem"))
    return Image2PointEmbedder(net, float(cfg.get("voxel_size", 0.05)), float(cfg.get("input_scale", 1.0)),
                               cfg.get("pipeline", "voxel_mean"), bool(cfg.get("normalize", True))).eval()


def _legacy_axis(axis: str) -> str:
    """Axis names of older checkpoints ("x"/"y"/"z") -> the released option with the same copy axis (the
    architecture, which is all build_embedder needs, does not depend on the rows/columns placement)."""
    return {"x": "x-axis", "y": "z-axis", "z": "y-axis"}.get(axis, axis)
