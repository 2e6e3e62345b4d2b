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

    def _low_maps(self, feature_map: torch.Tensor) -> list[torch.Tensor]:
        """The maps the layer upsamples and adds: the projection, then (learned mode) the residual."""
        projected = self.projection(feature_map.to(self.projection.weight.dtype))
        maps = [projected]
        if self.refinements:
            residual = projected
            for index, step in enumerate(self.refinements):
                residual = step(residual if index == 0 else F.gelu(residual))
            maps.append(residual)
        return maps

    def forward(self, feature_map: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_dim, H, W) with unit L2 norm at every pixel."""
        maps = self._low_maps(feature_map)
        x = sum(F.interpolate(m, size=tuple(out_hw), mode="bilinear", align_corners=False) for m in maps)
        return F.normalize(x, dim=1)

    def sample(self, feature_map: torch.Tensor, out_hw: tuple[int, int], views: torch.Tensor,
               pixels: torch.Tensor) -> torch.Tensor:
        """`forward(feature_map, out_hw)[views, :, v, u]` for pixels (P, 2) long (u, v), as (P, out_dim),
        without making the full-resolution maps: a training step reads a few thousand pixels of maps
        with hundreds of thousands (same bilinear weights as `F.interpolate`; equal to float rounding)."""
        x = sum(bilinear_at(m, out_hw, views, pixels) for m in self._low_maps(feature_map))
        return F.normalize(x, dim=1)


def _source_taps(dst: torch.Tensor, in_size: int, out_size: int):
    """Per output index: the two source indices and their weights of `F.interpolate(mode="bilinear",
    align_corners=False)` along one axis (source = (dst + 0.5) * in/out - 0.5, clamped at 0)."""
    src = ((dst.float() + 0.5) * (in_size / out_size) - 0.5).clamp_(min=0)
    low = src.long().clamp_(max=in_size - 1)
    high = (low + 1).clamp_(max=in_size - 1)
    weight_high = src - low.float()
    return low, high, 1 - weight_high, weight_high


def bilinear_at(maps: torch.Tensor, out_hw: tuple[int, int], views: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of maps (B, C, h, w) to out_hw, read only at (views, pixels): (P, C)."""
    height, width = maps.shape[-2:]
    x0, x1, wx0, wx1 = _source_taps(pixels[:, 0], width, int(out_hw[1]))
    y0, y1, wy0, wy1 = _source_taps(pixels[:, 1], height, int(out_hw[0]))
    flat = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])  # (B*h*w, C)
    base = views * (height * width)

    def at(y, x):
        return flat[base + y * width + x]

    return (wy0[:, None] * (wx0[:, None] * at(y0, x0) + wx1[:, None] * at(y0, x1))
            + wy1[:, None] * (wx0[:, None] * at(y1, x0) + wx1[:, None] * at(y1, x1)))
