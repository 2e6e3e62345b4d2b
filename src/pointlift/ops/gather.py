"""Batched gather: the grouping step that turns neighbour indices into neighbour features."""

from __future__ import annotations

import torch


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of x picked per batch element: x (B, N, C) or (B, N), idx (B, ...) -> (B, ..., C) or (B, ...).

    Differentiable in x (backward scatters into the picked rows).
    """
    batch = x.shape[0]
    flat = idx.reshape(batch, -1)
    rows = torch.arange(batch, device=x.device)[:, None]
    picked = x[rows, flat]  # (B, L, C) or (B, L)
    return picked.reshape(*idx.shape, *x.shape[2:])
