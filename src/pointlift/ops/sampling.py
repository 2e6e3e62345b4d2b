"""Farthest point sampling: spread-out centres for grouping, as PointNet++ and Point-M2AE use."""

from __future__ import annotations

import torch

from pointlift.errors import PointliftConfigError


def farthest_point_sample(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """Indices (B, m) of m points chosen greedily, each the farthest from those already chosen.

    Starts at index 0 (deterministic, like the reference CUDA kernels); ties go to the lowest index.
    Vectorised over the batch; the only Python loop is over the m picks.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise PointliftConfigError(f"farthest_point_sample expects (B, N, 3) points, got {tuple(xyz.shape)}")
    batch, num_points, _ = xyz.shape
    if not 0 < m <= num_points:
        raise PointliftConfigError(f"farthest_point_sample: cannot pick m={m} of {num_points} points")
    with torch.no_grad():
        points = xyz.detach().to(torch.promote_types(xyz.dtype, torch.float32))
        chosen = torch.zeros(batch, m, dtype=torch.long, device=xyz.device)
        nearest_chosen = torch.full((batch, num_points), float("inf"), dtype=points.dtype, device=xyz.device)
        rows = torch.arange(batch, device=xyz.device)
        current = torch.zeros(batch, dtype=torch.long, device=xyz.device)
        for step in range(1, m):
            last = points[rows, current]  # (B, 3)
            dist2 = (points - last[:, None, :]).pow(2).sum(-1)
            nearest_chosen = torch.minimum(nearest_chosen, dist2)
            current = nearest_chosen.argmax(dim=-1)
            chosen[:, step] = current
    return chosen
