"""PPKT's Upsampling Projection Layer (UPL): low-resolution teacher features -> per-pixel embeddings.

The frozen teacher's map is 8-32x coarser than the image, but PPKT pairs every 3D point with one
pixel. The UPL (the only trainable part of PPKT's 2D branch) projects the channels to the shared
embedding size D, brings the map to image resolution and L2-normalises, so the contrastive dot
products are cosine similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pointlift.errors import PointliftConfigError

UPL_MODES = ("bilinear", "learned")


class UpsamplingProjection(nn.Module):
    """1x1 conv to `out_dim`, upsample to `out_hw`, L2-normalise over channels.

    mode="bilinear": the paper's layer (projection + bilinear upsampling).
    mode="learned": adds a learned residual to the bilinear output: `learned_steps` transposed
    convolutions (x2 each, GELU between) whose result is resized to `out_hw`. The last one starts at
    zero, so training starts from exactly the paper's layer and only learns what bilinear misses.
    """

    def __init__(self, in_channels: int, out_dim: int = 64, mode: str = "bilinear", learned_steps: int = 2):
        super().__init__()
        if mode not in UPL_MODES:
            raise PointliftConfigError(f"UpsamplingProjection mode must be one of {UPL_MODES}, got '{mode}'")
        if mode == "learned" and learned_steps < 1:
            raise PointliftConfigError(f"learned UpsamplingProjection needs learned_steps >= 1, got {learned_steps}")
        if in_channels < 1 or out_dim < 1:
            raise PointliftConfigError(f"UpsamplingProjection needs positive sizes, got {in_channels} -> {out_dim}")
        self.mode = mode
        self.out_dim = out_dim
        self.projection = nn.Conv2d(in_channels, out_dim, kernel_size=1)
        self.refinements = nn.ModuleList()
        if mode == "learned":
            for _ in range(learned_steps):
                self.refinements.append(nn.ConvTranspose2d(out_dim, out_dim, kernel_size=4, stride=2, padding=1))
            nn.init.zeros_(self.refinements[-1].weight)
            nn.init.zeros_(self.refinements[-1].bias)

    def forward(self, feature_map: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_dim, H, W) with unit L2 norm at every pixel."""
        projected = self.projection(feature_map.to(self.projection.weight.dtype))
        x = F.interpolate(projected, size=tuple(out_hw), mode="bilinear", align_corners=False)
        if self.refinements:
            residual = projected
            for index, step in enumerate(self.refinements):
                residual = step(residual if index == 0 else F.gelu(residual))
            x = x + F.interpolate(residual, size=tuple(out_hw), mode="bilinear", align_corners=False)
        return F.normalize(x, dim=1)
