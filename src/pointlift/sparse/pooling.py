"""Global pooling per sample of a batch: (M, C) sparse features -> (B, C)."""

from __future__ import annotations

import torch

from pointlift.errors import PointliftConfigError
from pointlift.sparse.tensor import SparseTensor


def global_pool(x: SparseTensor, mode: str = "max") -> torch.Tensor:
    """Max or mean over each sample's active sites; samples without sites get zeros."""
    batch = x.batch_index
    index = batch.unsqueeze(1).expand_as(x.features)
    out = x.features.new_zeros(x.batch_size, x.num_channels)
    if mode == "max":
        return out.scatter_reduce(0, index, x.features, reduce="amax", include_self=False)
    if mode == "mean":
        total = out.index_add(0, batch, x.features)
        counts = torch.bincount(batch, minlength=x.batch_size).clamp_(min=1).to(total.dtype)
        return total / counts.unsqueeze(1)
    raise PointliftConfigError(f"global_pool mode must be 'max' or 'mean', got {mode!r}")


def broadcast_to_sites(x: SparseTensor, per_sample: torch.Tensor) -> torch.Tensor:
    """(B, C) per-sample values -> (M, C) per site (e.g. squeeze-excite gates)."""
    return per_sample.index_select(0, x.batch_index)
