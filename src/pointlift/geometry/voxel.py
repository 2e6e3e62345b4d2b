"""Voxelisation of (batched) point clouds for sparse-convolution students.

Students run on voxels but are trained and read out per point, so besides the unique voxel
coordinates we keep the point -> voxel map (`inverse`) and how many points each voxel holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pointlift.errors import PointliftConfigError, PointliftDataError


@dataclass
class Voxelization:
    """coords (M, 4) long [b, i, j, k] >= 0, sorted; inverse (N,) long point -> voxel row; counts (M,) long."""

    coords: torch.Tensor
    inverse: torch.Tensor
    counts: torch.Tensor

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])


def _voxel_size_tensor(voxel_size, points: torch.Tensor) -> torch.Tensor:
    size = torch.as_tensor(voxel_size, dtype=points.dtype, device=points.device)
    if size.dim() > 1 or (size.dim() == 1 and size.shape[0] != 3):
        raise PointliftConfigError(f"voxel_size must be a number or 3 numbers, got {voxel_size!r}")
    if not bool(torch.isfinite(size).all()) or bool((size <= 0).any()):
        raise PointliftConfigError(f"voxel_size must be positive and finite, got {voxel_size!r}")
    return size


def voxelize(points: torch.Tensor, voxel_size, batch_index: torch.Tensor | None = None) -> Voxelization:
    """Quantise points (N, 3) into voxels of `voxel_size` (a number or per-axis (3,)).

    Voxel indices are floor(p / voxel_size), shifted so that each batch element's minimum is 0
    (non-negative coordinates keep hashing and kernel maps simple). `batch_index` (N,) long gives
    each point's batch element (default: all 0).
    """
    if points.dim() != 2 or points.shape[1] != 3:
        raise PointliftDataError("<points>", f"expected points of shape (N, 3), got {tuple(points.shape)}")
    if not points.is_floating_point():
        points = points.float()
    if not bool(torch.isfinite(points).all()):
        raise PointliftDataError("<points>", "points contain NaN or infinite coordinates")
    size = _voxel_size_tensor(voxel_size, points)
    num_points = points.shape[0]
    if batch_index is None:
        batch_index = torch.zeros(num_points, dtype=torch.long, device=points.device)
    else:
        batch_index = torch.as_tensor(batch_index, device=points.device).long()
        if batch_index.shape != (num_points,):
            raise PointliftDataError("<batch_index>", f"expected shape ({num_points},), got {tuple(batch_index.shape)}")
        if num_points and int(batch_index.min()) < 0:
            raise PointliftDataError("<batch_index>", "batch indices must be >= 0")
    if num_points == 0:
        empty = torch.zeros(0, dtype=torch.long, device=points.device)
        return Voxelization(torch.zeros(0, 4, dtype=torch.long, device=points.device), empty, empty.clone())

    cells = torch.floor(points / size).long()
    num_batches = int(batch_index.max()) + 1
    batch_min = torch.full((num_batches, 3), torch.iinfo(torch.long).max, dtype=torch.long, device=points.device)
    batch_min = batch_min.scatter_reduce(0, batch_index[:, None].expand(-1, 3), cells, reduce="amin")
    cells = cells - batch_min[batch_index]
    coords = torch.cat([batch_index[:, None], cells], dim=1)

    # One int64 key per point makes unique() one-dimensional and fast; fall back to row-wise
    # unique when the grid is too large for a key (both give lexicographic order).
    extents = coords.amax(dim=0) + 1
    if float(extents.double().prod()) < 2**62:
        key = ((coords[:, 0] * extents[1] + coords[:, 1]) * extents[2] + coords[:, 2]) * extents[3] + coords[:, 3]
        unique_keys, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
        k = unique_keys % extents[3]
        rest = unique_keys // extents[3]
        j = rest % extents[2]
        rest = rest // extents[2]
        i = rest % extents[1]
        b = rest // extents[1]
        unique_coords = torch.stack([b, i, j, k], dim=1)
    else:
        unique_coords, inverse, counts = torch.unique(coords, dim=0, return_inverse=True, return_counts=True)
    return Voxelization(unique_coords, inverse, counts)


def average_per_voxel(features: torch.Tensor, voxelization: Voxelization) -> torch.Tensor:
    """Mean of point features (N, C) over the points of each voxel: (M, C) (scatter mean)."""
    if features.dim() != 2 or features.shape[0] != voxelization.inverse.shape[0]:
        raise PointliftDataError(
            "<features>", f"expected shape ({voxelization.inverse.shape[0]}, C), got {tuple(features.shape)}"
        )
    if not features.is_floating_point():
        features = features.float()
    sums = torch.zeros(voxelization.num_voxels, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, voxelization.inverse, features)
    return sums / voxelization.counts.to(features.dtype).unsqueeze(1)
