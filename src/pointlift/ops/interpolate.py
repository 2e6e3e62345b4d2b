"""3-NN inverse-distance interpolation: PointNet++ feature propagation from coarse to fine points."""

from __future__ import annotations

import torch

from pointlift.ops.gather import gather
from pointlift.ops.neighbors import knn


def three_nn_interpolate(target: torch.Tensor, source: torch.Tensor, source_feats: torch.Tensor,
                         eps: float = 1e-8) -> torch.Tensor:
    """Features (B, N, C) at target points (B, N, 3) blended from the 3 nearest source points (B, M, 3).

    Weights are 1 / (squared distance + eps), normalised to sum to one (the PointNet++ PyTorch
    convention). With fewer than 3 source points, all of them are used.
    Differentiable in source_feats and in both point sets.
    """
    k = min(3, source.shape[1])
    dist2, idx = knn(target, source, k)
    # At least float32: a target on a source point gives 1 / eps, which overflows half precision.
    dist2 = dist2.to(torch.promote_types(dist2.dtype, torch.float32))
    weights = 1.0 / (dist2 + eps)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    blended = (gather(source_feats, idx) * weights[..., None]).sum(dim=-2)
    return blended.to(source_feats.dtype)
