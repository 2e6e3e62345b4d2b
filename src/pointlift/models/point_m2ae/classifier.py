"""The released fine-tuning network (`I2P_MAE_ModelNet40`'s parameter names), for released fine-tuned
weights; pointlift's own fine-tuning task is `pointlift.methods.i2p_mae.finetune`."""

from __future__ import annotations

import torch
import torch.nn as nn

from pointlift.models.point_m2ae.config import PointM2AEConfig
from pointlift.models.point_m2ae.model import PointM2AEEncoder, global_feature


class PointM2AEClassifier(nn.Module):
    """Fine-tuning network laid out as I2P-MAE's `I2P_MAE_ModelNet40` (its parameter names; the head is not
    checked against reference outputs): every token encoded, top tokens (before `encoder_norms`) ->
    `norm` -> mean + max -> `cls_head_finetune` MLP."""

    def __init__(self, num_classes: int, config: PointM2AEConfig | None = None, hidden: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.config = config or PointM2AEConfig()
        self.h_encoder = PointM2AEEncoder(self.config)
        width = self.config.encoder_dims[-1]
        self.norm = nn.LayerNorm(width)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    @property
    def encoder(self) -> PointM2AEEncoder:
        return self.h_encoder

    def top_tokens(self, points: torch.Tensor) -> torch.Tensor:
        return self.norm(self.h_encoder(self.h_encoder.group(points)).pre_norm[-1])

    def embed(self, points: torch.Tensor, pooling: str = "max") -> torch.Tensor:
        """Frozen-feature embedding (B, F) of points (B, P, 3)."""
        return global_feature(self.top_tokens(points), pooling)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.cls_head_finetune(global_feature(self.top_tokens(points), "mean_plus_max"))
