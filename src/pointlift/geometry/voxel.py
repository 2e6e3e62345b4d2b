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


def _compiled_kernels(points: torch.Tensor):
    """pointlift's compiled CPU kernels where they are the process-wide sparse backend (an option of ours) and
    take these points (float or double on the CPU), else None. They compute the same voxels as the torch path:
    the cells are the same float division and floor, and the rest is integers (tested)."""
    from pointlift.sparse import backend

    if not backend.compiled_integers_on(points) or points.dtype not in (torch.float32, torch.float64):
        return None
    from pointlift.sparse.compiled import kernels

    return kernels()


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
    # one sum answers for nearly every cloud (NaN and inf survive it); only a sum that overflowed looks closer
    if not bool(torch.isfinite(points.sum())) and not bool(torch.isfinite(points).all()):
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

    num_batches = int(batch_index.max()) + 1
    unset = torch.iinfo(torch.long).max
    kernels = _compiled_kernels(points)
    if kernels is not None:  # the same cells and bounds, in one parallel pass without (3, N) intermediates
        points, size, batch_index = points.contiguous(), size.expand(3).contiguous(), batch_index.contiguous()
        low, high, batch_min = kernels.voxel_bounds(points, size, batch_index, num_batches)
        cells = local = None
        extents = high - low + 1
    else:
        # per axis, each a contiguous row: the reductions and sums below run along memory
        cells = torch.floor(points.t().contiguous() / size.view(-1, 1)).long()  # (3, N)
        batch_min = torch.stack([torch.full((num_batches,), unset, dtype=torch.long, device=points.device)
                                 .scatter_reduce_(0, batch_index, axis, reduce="amin") for axis in cells], dim=1)
        low = cells.amin(1)
        local = cells - low.view(-1, 1)
        extents = local.amax(1) + 1  # >= each sample's own extent

    # One int64 key per point makes unique() one-dimensional and fast: key = b * S + linear(cell - min_b), the
    # lexicographic order of the shifted coordinates [b, i, j, k], summed from each point's offset to the lowest
    # corner of all samples plus one shift per sample. Where the grid is too large for a key, row-wise unique
    # gives the same voxels in the same order.
    batch_min = torch.where(batch_min == unset, 0, batch_min)  # samples without points
    if float(extents.double().prod()) * num_batches < 2**62:
        e1, e2, e3 = extents.tolist()
        corner = batch_min - low
        shift = torch.arange(num_batches, device=points.device) * (e1 * e2 * e3) - (
            (corner[:, 0] * e2 + corner[:, 1]) * e3 + corner[:, 2])
        bound = num_batches * e1 * e2 * e3  # keys lie in [0, bound)
        if kernels is not None:
            from pointlift.sparse.compiled import BITMAP_CELLS_PER_SITE

            key = kernels.voxel_keys(points, size, batch_index, low, extents, shift)
            bitmap_fits = bound <= BITMAP_CELLS_PER_SITE * num_points
        else:
            key = local[0].mul_(e2).add_(local[1]).mul_(e3).add_(local[2]).add_(shift.index_select(0, batch_index))
            bitmap_fits = False
        if bitmap_fits:
            unique_keys, inverse, counts = kernels.unique_bounded(key, bound)  # torch.unique's result, no sort
        else:
            unique_keys, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
        k = unique_keys % e3
        rest = unique_keys // e3
        j = rest % e2
        rest = rest // e2
        i = rest % e1
        b = rest // e1
        unique_coords = torch.stack([b, i, j, k], dim=1)
    else:
        if cells is None:
            cells = torch.floor(points.t().contiguous() / size.view(-1, 1)).long()
        coords = torch.cat([batch_index[:, None], cells.t() - batch_min[batch_index]], dim=1)
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
