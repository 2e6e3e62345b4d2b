"""Neighbour search (kNN and ball query) in pure PyTorch, chunked over queries to bound memory."""

from __future__ import annotations

import torch

from pointlift.errors import PointliftConfigError
from pointlift.ops.gather import gather

# Upper bound on elements of one (B, chunk, N) distance block (~64 MB in float32).
_BLOCK_ELEMENTS = 1 << 24


def _check_pair(query: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    if query.dim() != 3 or ref.dim() != 3 or query.shape[-1] != 3 or ref.shape[-1] != 3:
        raise PointliftConfigError(f"{name} expects (B, M, 3) and (B, N, 3), got {tuple(query.shape)}, {tuple(ref.shape)}")
    if query.shape[0] != ref.shape[0]:
        raise PointliftConfigError(f"{name}: batch sizes differ ({query.shape[0]} vs {ref.shape[0]})")


def _query_chunks(batch: int, num_queries: int, num_ref: int, chunk_size: int | None):
    """Slices over the query axis so each distance block stays below _BLOCK_ELEMENTS."""
    rows = chunk_size or max(1, _BLOCK_ELEMENTS // max(1, batch * num_ref))
    for start in range(0, num_queries, rows):
        yield slice(start, min(num_queries, start + rows))


def _pairwise_dist2(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared distances (B, M, N) as (x1-x2)^2 + (y1-y2)^2 + (z1-z2)^2 in at least float32 (half has
    too little precision to rank neighbours); no matmul shortcut, so no cancellation error."""
    dtype = torch.promote_types(query.dtype, torch.float32)
    query, ref = query.to(dtype), ref.to(dtype)
    dist2 = (query[:, :, None, 0] - ref[:, None, :, 0]).pow(2)
    dist2 += (query[:, :, None, 1] - ref[:, None, :, 1]).pow(2)
    dist2 += (query[:, :, None, 2] - ref[:, None, :, 2]).pow(2)
    return dist2


def _ascending_stable(dist2: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest entries of the last axis, ascending, equal distances by index: a stable
    sort's order, as KNN_CUDA's insertion sort gives. topk picks among equal values arbitrarily, so its
    result is re-ordered by (distance, index), and rows whose k-th and (k+1)-th distances tie (topk
    may have left out a lower index) are fully sorted."""
    count = dist2.shape[-1]
    take = min(k + 1, count)
    values, idx = dist2.topk(take, dim=-1, largest=False, sorted=True)
    boundary_tie = values[..., k - 1] == values[..., k] if take > k else torch.zeros_like(values[..., 0], dtype=torch.bool)
    idx = idx[..., :k].sort(dim=-1).values
    idx = idx.gather(-1, dist2.gather(-1, idx).sort(dim=-1, stable=True).indices)
    if bool(boundary_tie.any()):
        idx[boundary_tie] = dist2[boundary_tie].sort(dim=-1, stable=True).indices[..., :k]
    return idx


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, chunk_size: int | None = None):
    """The k nearest ref points of each query: (dist2 (B, M, k), idx (B, M, k)), nearest first
    (equal distances in index order).

    dist2 is recomputed from the gathered points, so it is differentiable in query and ref.
    """
    _check_pair(query, ref, "knn")
    batch, num_queries, _ = query.shape
    num_ref = ref.shape[1]
    if not 0 < k <= num_ref:
        raise PointliftConfigError(f"knn: k={k} must be in 1..{num_ref} (number of reference points)")
    idx = torch.empty(batch, num_queries, k, dtype=torch.long, device=query.device)
    with torch.no_grad():
        for rows in _query_chunks(batch, num_queries, num_ref, chunk_size):
            dist2 = _pairwise_dist2(query[:, rows].detach(), ref.detach())
            idx[:, rows] = _ascending_stable(dist2, k)
    dist2 = (gather(ref, idx) - query[:, :, None, :]).pow(2).sum(-1)
    return dist2, idx


def ball_query(query: torch.Tensor, ref: torch.Tensor, radius: float, k: int,
               chunk_size: int | None = None) -> torch.Tensor:
    """Indices (B, M, k) of the first k ref points (in index order) with dist < radius, as PointNet++.

    Slots beyond the points found repeat the first one found; a query with no point in range
    gets index 0 everywhere (the PointNet++ kernel's behaviour).
    """
    _check_pair(query, ref, "ball_query")
    if k <= 0 or radius <= 0:
        raise PointliftConfigError(f"ball_query: need k > 0 and radius > 0, got k={k}, radius={radius}")
    batch, num_queries, _ = query.shape
    num_ref = ref.shape[1]
    take = min(k, num_ref)
    idx = torch.empty(batch, num_queries, k, dtype=torch.long, device=query.device)
    order = torch.arange(num_ref, device=query.device)
    with torch.no_grad():
        for rows in _query_chunks(batch, num_queries, num_ref, chunk_size):
            inside = _pairwise_dist2(query[:, rows].detach(), ref.detach()) < radius * radius
            # Index where inside, sentinel num_ref elsewhere; the k smallest are the first k inside.
            candidates = torch.where(inside, order, torch.full_like(order, num_ref))
            first = candidates.topk(take, dim=-1, largest=False, sorted=True).values
            if take < k:
                first = torch.cat([first, first.new_full((*first.shape[:-1], k - take), num_ref)], dim=-1)
            head = first[..., :1]
            head = torch.where(head == num_ref, torch.zeros_like(head), head)
            idx[:, rows] = torch.where(first == num_ref, head.expand_as(first), first)
    return idx
