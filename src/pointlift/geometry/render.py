"""I2P-MAE orthographic multi-view depth maps of point clouds (GUIDE 1.3), in two versions.

`released_depth_views` is the released renderer (`I2P_MAE.proj2img`, checked against
../shared/reference/i2p-mae/render.npz): raw signed depth, border clamp, the released orientation.
It is the `recipe: official` renderer.

`render_depth_views` is pointlift's scale- and translation-invariant renderer (the `renderer:
invariant` option, needed by the cached teacher): three views look along z, y and x. Per shape and view, the grid size is the largest in-plane extent
divided by (image_size - 3); a point's cell is floor((p - min) / grid), and the cells are shifted so
the object sits in the middle of the image. Each point splats a footprint x footprint square whose
value is its depth coordinate, summed over points (scatter-sum, no z-buffer), as I2P-MAE does.

Depth value: 1 + (d - d_min) / largest_extent, where d is the coordinate along the viewing axis,
d_min its minimum over the shape and largest_extent the largest extent of the shape over all three
axes. Measuring from the minimum and dividing by an extent makes the images invariant to isotropic
scaling and translation (so teacher features can be cached per shape); the +1 keeps the nearest
surface (d = d_min) distinct from the empty background (0). Values lie in [1, 2] per point.

Views, as (u = column axis, v = row axis, depth axis): view 0 (along z) = (x, y, z),
view 1 (along y) = (x, z, y), view 2 (along x) = (y, z, x).

Cells are computed in float64 as floor((p - min) / extent * (image_size - 3)) - the same number as
floor((p - min) / grid) but with the extreme point landing exactly on image_size - 3 - so the
pixels do not flip under scaling/translation through rounding. (Inputs already rounded to float32
after scaling can still move a point that sits within ~1e-6 of a cell border.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pointlift.errors import PointliftConfigError, PointliftDataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (u axis, v axis, depth axis) per view: project along z, y, x.
VIEW_AXES = ((0, 1, 2), (0, 2, 1), (1, 2, 0))
DEPTH_OFFSET = 1.0


@dataclass
class DepthViews:
    """images (B, 3, H, W): raw scatter-summed depth per view; pixels (B, 3, N, 2) long (u, v) per point."""

    images: torch.Tensor
    pixels: torch.Tensor


def _nonzero(extent: torch.Tensor) -> torch.Tensor:
    """Degenerate (flat or single-point) extents become 1 so every point maps to cell 0."""
    return torch.where(extent > 0, extent, torch.ones_like(extent))


def render_depth_views(points: torch.Tensor, image_size: int = 224, footprint: int = 5) -> DepthViews:
    """Render points (B, N, 3) into three orthographic depth maps of size image_size x image_size."""
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] == 0:
        raise PointliftDataError("<points>", f"expected non-empty points of shape (B, N, 3), got {tuple(points.shape)}")
    if not isinstance(image_size, int) or image_size < 4:
        raise PointliftConfigError(f"image_size must be an integer >= 4, got {image_size!r}")
    if not isinstance(footprint, int) or footprint < 1 or footprint % 2 == 0:
        raise PointliftConfigError(f"footprint must be a positive odd integer, got {footprint!r}")
    if not bool(torch.isfinite(points).all()):
        raise PointliftDataError("<points>", "points contain NaN or infinite coordinates")
    out_dtype = points.dtype if points.is_floating_point() else torch.get_default_dtype()
    batch, num_points, _ = points.shape
    device = points.device
    work = points.double()
    span_cells = image_size - 3

    axes = torch.tensor(VIEW_AXES, device=device)  # (3 views, 3)
    lows = work.amin(dim=1)  # (B, 3)
    extent = work.amax(dim=1) - lows  # (B, 3)
    coords = work[:, :, axes].permute(0, 2, 1, 3)  # (B, views, N, 3) as (u, v, depth)
    view_lows = lows[:, axes]  # (B, views, 3)
    view_extent = extent[:, axes[:, :2]].amax(dim=-1)  # (B, views) largest in-plane extent

    ratio = (coords[..., :2] - view_lows[:, :, None, :2]) / _nonzero(view_extent)[:, :, None, None]
    cells = torch.floor(ratio * span_cells).long()  # (B, views, N, 2)
    used = cells.amax(dim=2, keepdim=True)  # occupied cells per axis; centre them
    pixels = cells + (image_size - 1 - used) // 2

    largest = _nonzero(extent.amax(dim=-1))  # (B,)
    depth = (coords[..., 2] - view_lows[:, :, None, 2]) / largest[:, None, None] + DEPTH_OFFSET

    radius = footprint // 2
    steps = torch.arange(-radius, radius + 1, device=device)
    offsets = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), dim=-1).reshape(-1, 2)  # (F*F, 2) (du, dv)
    targets = pixels[:, :, :, None, :] + offsets  # (B, views, N, F*F, 2)
    inside = ((targets >= 0) & (targets < image_size)).all(dim=-1)
    flat = (targets[..., 1] * image_size + targets[..., 0]).clamp(0, image_size * image_size - 1)
    depth = depth.to(out_dtype)
    values = torch.where(inside, depth[..., None], torch.zeros_like(depth[..., None]))

    images = torch.zeros(batch * 3, image_size * image_size, dtype=out_dtype, device=device)
    images.scatter_add_(1, flat.reshape(batch * 3, -1), values.reshape(batch * 3, -1))
    images = images.reshape(batch, 3, image_size, image_size)
    return DepthViews(images=images, pixels=pixels)


def views_to_teacher_input(
    images: torch.Tensor,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> torch.Tensor:
    """Raw depth views (B, V, H, W) -> normalised teacher input (B*V, 3, H, W).

    Sigmoid squashes the unbounded scatter sums into (0, 1) (background becomes 0.5), the single
    channel is repeated to RGB, then the teacher's mean/std normalisation is applied.
    """
    if images.dim() != 4:
        raise PointliftDataError("<images>", f"expected depth views of shape (B, V, H, W), got {tuple(images.shape)}")
    batch, views, height, width = images.shape
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    if mean_t.shape[1] != 3 or std_t.shape[1] != 3:
        raise PointliftConfigError("mean and std must have 3 values (one per RGB channel)")
    if bool((std_t <= 0).any()):
        raise PointliftConfigError("std must be positive")
    squashed = torch.sigmoid(images).reshape(batch * views, 1, height, width).expand(-1, 3, -1, -1)
    return (squashed - mean_t) / std_t


# --------------------------------------------------------------------------------- released renderer

# Coordinates (a, b, d) of each released view: image rows follow a, columns b, depth is d.
RELEASED_VIEW_PERM = ((0, 1, 2), (2, 0, 1), (1, 2, 0))


@dataclass
class ReleasedProjection:
    """Per cloud and view: pc_min (B, V, 2) of (a, b), grid size (B, V) and pixel offset (B, V, 2), all
    float32 as in the released code; `pixels(points)` maps any points of the same clouds to pixels."""

    pc_min: torch.Tensor
    grid: torch.Tensor
    offset: torch.Tensor

    def cells(self, points: torch.Tensor) -> torch.Tensor:
        """floor(((a, b) - pc_min) / grid) per view: (B, V, N, 2) float32."""
        plane = torch.stack([points[..., list(perm[:2])] for perm in RELEASED_VIEW_PERM], dim=1)  # (B, V, N, 2)
        return torch.floor((plane - self.pc_min[:, :, None, :]) / self.grid[:, :, None, None])

    def pixels(self, points: torch.Tensor) -> torch.Tensor:
        """(row, col) (B, V, N, 2) long of points (B, N, 3): the released `I2P` read position (no clamp)."""
        return (self.cells(points.float()) + 1 + self.offset[:, :, None, :]).long()


def released_depth_views(points: torch.Tensor, image_size: int = 224, footprint: int = 5):
    """The released `proj2img` for the 3 views: (raw depth (B, 3, H, W) float32, ReleasedProjection).

    Per view: grid = largest in-plane range / (image_size - 3); cell = floor(((a, b) - min) / grid);
    pixel = cell + 1 + offset, with the offset centring the footprint-dilated occupied cells; each point
    adds its raw signed d to the footprint x footprint pixels around it; pixels one step off the image
    fold onto the border row/column. Float32 throughout, in the released order of operations (a point
    whose cell sits on an edge can land on either side in another precision).
    """
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] == 0:
        raise PointliftDataError("<points>", f"expected non-empty points of shape (B, N, 3), got {tuple(points.shape)}")
    if not isinstance(footprint, int) or footprint < 1 or footprint % 2 == 0:
        raise PointliftConfigError(f"footprint must be a positive odd integer, got {footprint!r}")
    if not bool(torch.isfinite(points).all()):
        raise PointliftDataError("<points>", "points contain NaN or infinite coordinates")
    pc = points.float()
    batch, num_points, _ = pc.shape
    views = torch.stack([pc[..., list(perm)] for perm in RELEASED_VIEW_PERM], dim=1)  # (B, V, N, 3)
    low = views.amin(dim=2)
    extent = views.amax(dim=2) - low
    grid = extent[..., :2].amax(dim=-1) / (image_size - 3)  # (B, V)
    grid = torch.where(grid > 0, grid, torch.ones_like(grid))  # a single point: every cell is 0
    pc_min = low[..., :2]
    cells = torch.floor((views[..., :2] - pc_min[:, :, None, :]) / grid[:, :, None, None])  # (B, V, N, 2)
    radius = footprint // 2
    steps = torch.arange(-radius, radius + 1, device=pc.device, dtype=pc.dtype)
    foot = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).reshape(-1, 2)  # row offset slow
    dense = cells[:, :, :, None, :] + foot + 1  # (B, V, N, F*F, 2)
    centre = torch.floor((dense.amax(dim=(2, 3)) + dense.amin(dim=(2, 3))) / 2)  # (B, V, 2)
    offset = image_size / 2 - centre - 1
    dense = (dense + offset[:, :, None, None, :]).clamp(0, image_size - 1).long()
    flat = (dense[..., 0] * image_size + dense[..., 1]).reshape(batch * 3, -1)
    values = views[..., 2:3].expand(-1, -1, -1, foot.shape[0]).reshape(batch * 3, -1)
    images = torch.zeros(batch * 3, image_size * image_size, dtype=pc.dtype, device=pc.device)
    images.scatter_add_(1, flat, values)
    images = images.reshape(batch, 3, image_size, image_size)
    return images, ReleasedProjection(pc_min=pc_min, grid=grid, offset=offset)


def released_teacher_input(images: torch.Tensor) -> torch.Tensor:
    """Raw released views (B, V, H, W) -> (B*V, 3, H, W): sigmoid, 3 equal channels, ImageNet mean/std
    (the released code uses ImageNet statistics whatever the teacher)."""
    return views_to_teacher_input(images.float(), IMAGENET_MEAN, IMAGENET_STD)


def bicubic_read(maps: torch.Tensor, pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """The released `I2P` read-back, literally: maps (B, V, C, h, w) upsampled with F.interpolate
    (bicubic, align_corners=False) to image_size, read at (row, col) pixels (B, V, N, 2) -> (B, V, N, C).
    (Slow reference; `pointlift.geometry.readback.read_back` gives the same values without the
    full-size maps.)"""
    batch, views, channels = maps.shape[:3]
    up = F.interpolate(maps.flatten(0, 1), size=(image_size, image_size), mode="bicubic", align_corners=False)
    flat = (pixels[..., 0] * image_size + pixels[..., 1]).flatten(0, 1)  # (B*V, N)
    picked = up.flatten(2).gather(2, flat[:, None, :].expand(-1, channels, -1))
    return picked.transpose(1, 2).reshape(batch, views, -1, channels)
