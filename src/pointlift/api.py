"""pointlift's Python API, in timm's shape: `create_model(name, ...)`, `load(checkpoint)`, `list_models()`.

Every method's 3D network comes back as a `PointModel`: `forward_features(points (B, P, 3)) -> (B, F)`
per-shape features, and `reset_classifier(num_classes)` to put a linear head on top (then `forward` gives
logits). The networks are the ones the CLI trains and `pointlift embed` reads; this module only wraps them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pointlift.features.embed import load_embedder
from pointlift.registry import build_embedder

# `create_model` name -> (checkpoint kind, its model_spec config from the caller's keyword arguments).
_MODELS = {
    "ppkt": ("ppkt", lambda kw: {"model": kw}),
    "image2point": ("image2point", lambda kw: {"design": "released", "pipeline": "released", **kw}),
    # teacher_channels: the width of the 2D-feature head (CLIP ViT-B/16: 512)
    "i2p-mae": ("i2p_mae", lambda kw: {"teacher_channels": 512, **kw}),
}


class PointModel(nn.Module):
    """A pointlift 3D network as a feature extractor, with an optional linear head."""

    def __init__(self, network: nn.Module, kind: str, num_classes: int = 0, probe_points: int = 1024):
        super().__init__()
        self.network, self.kind, self.probe_points = network, kind, probe_points
        self.num_features = self._count_features()
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, P, 3) -> (B, num_features): the method's per-shape descriptor."""
        return self.network.embed(points)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Logits when a head is attached, else the features."""
        return self.head(self.forward_features(points))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Linear(num_features, num_classes) head; 0 removes it (forward returns features)."""
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def _count_features(self) -> int:
        was_training = self.network.training
        self.network.eval()
        probe = torch.rand(2, self.probe_points, 3, generator=torch.Generator().manual_seed(0)) - 0.5
        width = int(self.network.embed(probe).shape[-1])
        self.network.train(was_training)
        return width


def list_models() -> list[str]:
    """Names `create_model` accepts."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 0, **config) -> PointModel:
    """A freshly initialised network of method `name` ("ppkt", "image2point", "i2p-mae").

    Keyword arguments are that method's model settings (as in its config file / checkpoint `model_spec`):
    PPKT's `student`, `voxel_size`, `embed_dim`...; Image2Point's `teacher` (a timm name) and `weights`
    (a 2D checkpoint to inflate: local file, or None for the bundled/hub ImageNet weights, "random" for
    none), `axis`, `mode`; I2P-MAE's `model` ({"num_points", "encoder_dims", ...}). Unknown settings fail."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list_models()}")
    kind, spec_config = _MODELS[name]
    network = build_embedder({"kind": kind, "config": spec_config(dict(config))}, source=name)
    return PointModel(network, kind, num_classes)


def load(checkpoint: str | Path, num_classes: int = 0) -> PointModel:
    """The network of a pointlift checkpoint (a `.safetensors`/`.json` pair, or a run directory), with its
    trained weights; `num_classes` > 0 attaches a new linear head."""
    network, meta = load_embedder(checkpoint)
    return PointModel(network, (meta.get("model_spec") or {}).get("kind", "?"), num_classes)
