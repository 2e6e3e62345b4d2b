"""Chamfer-L2 distance between point sets, chunked so large sets fit in memory."""

from __future__ import annotations

import torch

from pointlift.ops.neighbors import knn


def chamfer_l2(a: torch.Tensor, b: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Per batch element (B,): mean over a of the squared distance to the nearest b, plus the reverse.

    Nearest neighbours are found without gradient; the distances are then recomputed from the
    matched points, so the gradient is the usual Chamfer gradient at the current matching.
    """
    a_to_b, _ = knn(a, b, 1, chunk_size)
    b_to_a, _ = knn(b, a, 1, chunk_size)
    return a_to_b[..., 0].mean(dim=-1) + b_to_a[..., 0].mean(dim=-1)
