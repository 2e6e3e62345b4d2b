"""A PPKT checkpoint as a network again: the whole model (`load_pretrained`, for retrieval) or its 3D
network as a global shape descriptor (`build_embedder`, the `pointlift embed` / probes hook)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pointlift.engine.checkpoint import checkpoint_files, load_checkpoint, load_model_state
from pointlift.engine.config import load_config
from pointlift.methods.ppkt.config import PPKTLossConfig, PPKTModelConfig
from pointlift.methods.ppkt.model import PPKTModel, build_student, student_point_features


def load_pretrained(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[PPKTModel, dict]:
    """PPKTModel (teacher rebuilt from its config, trained parts from the checkpoint) and the spec config."""
    state, meta = load_checkpoint(checkpoint, expect_kind="ppkt")
    spec_config = meta["model_spec"]["config"]
    model_cfg = load_config(spec_config["model"], PPKTModelConfig)
    loss_cfg = load_config(spec_config["loss"], PPKTLossConfig)
    image_size = tuple(spec_config["data"]["image_size"])
    model = PPKTModel(model_cfg, loss_cfg, image_size)
    load_model_state(model, state, checkpoint_files(checkpoint)[0])
    return model.to(device).eval(), spec_config


class PPKTEmbedder(nn.Module):
    """The pretrained 3D network as a global descriptor: max and mean of the per-point embeddings.

    Point sets carry no colour, so RGB-input networks get a mid-grey (0.5) for every point.
    Parameter names match PPKTModel's `student.` so a PPKT checkpoint loads directly.
    """

    def __init__(self, model: PPKTModelConfig):
        super().__init__()
        self.model_config = model
        self.student = build_student(model)

    def embed(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, P, 3) -> (B, 2 * embed_dim)."""
        batch, count, _ = points.shape
        flat = points.reshape(-1, 3).float()
        batch_index = torch.arange(batch, device=points.device).repeat_interleave(count)
        features = student_point_features(self.student, self.model_config, flat, batch_index, None)
        features = features.view(batch, count, -1)
        return torch.cat([features.amax(1), features.mean(1)], dim=1)


def build_embedder(model_spec_config: dict) -> nn.Module:
    """`pointlift embed` hook: the PPKT 3D network from a checkpoint's model_spec config."""
    return PPKTEmbedder(load_config(model_spec_config.get("model", {}), PPKTModelConfig))
