"""Farthest point sampling: spread-out centres for grouping, as PointNet++ and Point-M2AE use."""

from __future__ import annotations

import torch

from pointlift.errors import PointliftConfigError


def farthest_point_sample(xyz: torch.Tensor, m: int, skip_radius2: float | None = None) -> torch.Tensor:
    """Indices (B, m) of m points chosen greedily, each the farthest from those already chosen.

    Starts at index 0 (as pointnet2_ops' CUDA kernel); distances are float32 (x1-x2)^2 + (y1-y2)^2 +
    (z1-z2)^2 like the kernel's; ties go to the lowest index (the kernel's block reduction can pick
    another one among exact ties). `skip_radius2`: points with x^2 + y^2 + z^2 <= skip_radius2 are
    never picked after the first (the kernel's rule with 1e-3, which Point-M2AE / I2P-MAE inherit;
    see `pointlift.models.point_m2ae.RELEASED_FPS_SKIP`).
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
        nearest_chosen = torch.full((batch, num_points), 1e10, dtype=points.dtype, device=xyz.device)
        if skip_radius2 is not None:
            skipped = (points * points).sum(-1) <= skip_radius2
        rows = torch.arange(batch, device=xyz.device)
        current = torch.zeros(batch, dtype=torch.long, device=xyz.device)
        for step in range(1, m):
            last = points[rows, current]  # (B, 3)
            diff = points - last[:, None, :]
            dist2 = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
            nearest_chosen = torch.minimum(nearest_chosen, dist2)
            score = nearest_chosen
            if skip_radius2 is not None:
                score = torch.where(skipped, torch.full_like(score, -1.0), score)
            current = score.argmax(dim=-1)
            chosen[:, step] = current
    return chosen
