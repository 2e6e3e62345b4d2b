"""PPKT's positive pairs: which pixel each 3D point was seen at.

A pair is (point index, view index, pixel (u, v)); a view is one image (an RGB-D frame's colour
image or one LiDAR camera). Pairs are kept as three parallel tensors so a point can have several
pixels (fused RGB-D frames seen by other views, or several LiDAR cameras).

RGB-D: every valid depth pixel back-projects to a point; the point and its own pixel are a pair by
construction (no visibility question). Fusing frames with their poses puts the points of several
frames in one coordinate frame (the first frame's camera, to keep coordinates small; or, with
`world=True`, the poses' own world frame - a gravity-aligned one when the source turned it); with
`cross_view=True` each fused point is also paired with the other frames' pixels where it passes
the occlusion test |depth(u, v) - z| <= tolerance * z against that frame's own depth map.

LiDAR: points are projected with `lidar2img`; kept when the camera depth exceeds `min_depth` and the
pixel is inside the image. There is no sensor depth map, so the optional occlusion test uses a
z-buffer built from the projected points themselves: the nearest depth per cell of
`zbuffer_cell` x `zbuffer_cell` pixels (LiDAR is sparse; at single-pixel cells a far point is rarely
hit by a nearer one, so coarser cells are what makes the test bite). A point farther than the
cell's nearest by more than `tolerance * z` is hidden behind a nearer surface and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pointlift.errors import PointliftConfigError
from pointlift.geometry import (depth_to_points, in_image, invert_rigid, lidar_to_image, occlusion_mask, pixel_index,
                                project, transform_points)


@dataclass
class PointPixelPairs:
    """Points of one training sample and their pixels.

    points (N, 3) float32, colors (N, 3) float32 in [0, 1], pair_point (Q,) long into points,
    pair_view (Q,) long into the sample's views, pair_pixel (Q, 2) long (u, v) in the view's image.
    """

    points: torch.Tensor
    colors: torch.Tensor
    pair_point: torch.Tensor
    pair_view: torch.Tensor
    pair_pixel: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.pair_point.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.points, self.colors, self.pair_point, self.pair_view,
                                                           self.pair_pixel))


def rgbd_frame_points(depth: torch.Tensor, K: torch.Tensor, pixel_stride: int = 1,
                      max_depth: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-project valid depth pixels (every `pixel_stride`-th row/column, depth <= max_depth if > 0).

    Returns camera-frame points (M, 3) and their pixels (M, 2) long (u, v).
    """
    points, pixels = depth_to_points(depth, K, stride=pixel_stride)
    if max_depth > 0:
        keep = points[:, 2] <= max_depth
        points, pixels = points[keep], pixels[keep]
    return points, pixels


def rgbd_pairs(frames, pixel_stride: int = 1, max_depth: float = 0.0, cross_view: bool = False,
               occlusion_tolerance: float = 0.1, world: bool = False) -> PointPixelPairs:
    """Pairs from one or more RGB-D frames (objects with color, depth, intrinsics, pose).

    Several frames are fused into the first frame's camera coordinates using their poses (`world`: every
    frame's points go through its own pose into world coordinates); each point keeps its own frame
    (view) and pixel, whatever the coordinates. `cross_view` adds the occlusion-tested pixels of the
    other frames (see the module docstring).
    """
    if not frames:
        raise PointliftConfigError("rgbd_pairs needs at least one frame")
    reference_inverse = (torch.eye(4, dtype=torch.float64) if world else
                         invert_rigid(torch.as_tensor(frames[0].pose, dtype=torch.float64)))
    all_points, all_colors, views, pixels_all = [], [], [], []
    to_reference = []
    for view, frame in enumerate(frames):
        depth = torch.as_tensor(frame.depth, dtype=torch.float32)
        K = torch.as_tensor(frame.intrinsics, dtype=torch.float64)
        points_cam, pixels = rgbd_frame_points(depth, K.float(), pixel_stride, max_depth)
        transform = reference_inverse @ torch.as_tensor(frame.pose, dtype=torch.float64)
        to_reference.append(transform)
        points = transform_points(transform, points_cam.double()).float() if view or world else points_cam
        color = torch.as_tensor(np.asarray(frame.color))[pixels[:, 1], pixels[:, 0]].float() / 255.0
        all_points.append(points)
        all_colors.append(color)
        views.append(torch.full((points.shape[0],), view, dtype=torch.long))
        pixels_all.append(pixels)
    points = torch.cat(all_points)
    colors = torch.cat(all_colors)
    pair_view = torch.cat(views)
    pair_pixel = torch.cat(pixels_all)
    pair_point = torch.arange(points.shape[0])
    if cross_view and len(frames) > 1:
        extra_point, extra_view, extra_pixel = [], [], []
        for view, frame in enumerate(frames):
            others = (pair_view != view).nonzero(as_tuple=True)[0]
            depth = torch.as_tensor(frame.depth, dtype=torch.float32)
            K = torch.as_tensor(frame.intrinsics, dtype=torch.float32)
            points_cam = transform_points(invert_rigid(to_reference[view]), points[others].double()).float()
            uv, z = project(points_cam, K)
            keep = (z > 0) & occlusion_mask(uv, z, depth, occlusion_tolerance)
            extra_point.append(others[keep])
            extra_view.append(torch.full((int(keep.sum()),), view, dtype=torch.long))
            extra_pixel.append(pixel_index(uv[keep]))
        pair_point = torch.cat([pair_point, *extra_point])
        pair_view = torch.cat([pair_view, *extra_view])
        pair_pixel = torch.cat([pair_pixel, *extra_pixel])
    return PointPixelPairs(points, colors, pair_point, pair_view, pair_pixel)


def zbuffer_depth_map(uv: torch.Tensor, z: torch.Tensor, image_hw: tuple[int, int], cell: int = 1) -> torch.Tensor:
    """Depth map (H, W) from projected points: the nearest z per `cell` x `cell` block, 0 where empty.

    uv (N, 2) must lie inside the image. Every pixel of a block reads the block's nearest depth.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    if cell < 1:
        raise PointliftConfigError(f"zbuffer cell must be >= 1, got {cell}")
    rows, cols = -(-height // cell), -(-width // cell)
    pixel = pixel_index(uv)
    block = (pixel[:, 1] // cell) * cols + pixel[:, 0] // cell
    nearest = torch.full((rows * cols,), float("inf"), dtype=z.dtype, device=z.device)
    nearest = nearest.scatter_reduce(0, block, z, reduce="amin")
    nearest = torch.where(torch.isinf(nearest), torch.zeros_like(nearest), nearest).view(rows, cols)
    return nearest.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:height, :width]


def lidar_pairs(points: torch.Tensor, cameras: list[tuple[tuple[int, int], torch.Tensor]],
                min_depth: float = 1.0, occlusion: bool = True, occlusion_tolerance: float = 0.25,
                zbuffer_cell: int = 4, colors: torch.Tensor | None = None) -> PointPixelPairs:
    """Pairs from a LiDAR sweep (N, 3+) and cameras given as ((H, W), lidar2img (4, 4)).

    A point seen by several cameras gets one pair per camera. `colors` default to a constant grey
    (LiDAR has no colour; the student may use constant input features instead).
    """
    xyz = points[:, :3].float()
    xyz64 = xyz.double()  # projected in float64, once per camera
    pair_point, pair_view, pair_pixel = [], [], []
    for view, (image_hw, lidar2img) in enumerate(cameras):
        uv, depth = lidar_to_image(xyz64, torch.as_tensor(lidar2img, dtype=torch.float64))
        # in front of the camera and inside its image; then (occlusion) not behind a nearer point of the sweep
        index = ((depth > min_depth) & in_image(uv, image_hw)).nonzero(as_tuple=True)[0]
        if occlusion and len(index):
            seen_uv, seen_depth = uv[index], depth[index]
            depth_map = zbuffer_depth_map(seen_uv, seen_depth, image_hw, zbuffer_cell)
            index = index[occlusion_mask(seen_uv, seen_depth, depth_map, occlusion_tolerance)]
        pair_point.append(index)
        pair_view.append(torch.full((index.shape[0],), view, dtype=torch.long))
        pair_pixel.append(pixel_index(uv[index]))
    if colors is None:
        colors = torch.full_like(xyz, 0.5)
    return PointPixelPairs(xyz, colors.float(), torch.cat(pair_point), torch.cat(pair_view), torch.cat(pair_pixel))


def rescale_pixels(pixels: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """The pixel of a resized image (to_hw) that covers each pixel (u, v) of the original (from_hw)."""
    scale = torch.tensor([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]], dtype=torch.float64)
    scaled = torch.floor((pixels.double() + 0.5) * scale).long()
    limit = torch.tensor([to_hw[1] - 1, to_hw[0] - 1])
    return torch.minimum(scaled.clamp(min=0), limit)


def resize_image(image: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, h, w) in [0, 1], area-averaged (antialiased) when shrinking."""
    tensor = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if tuple(tensor.shape[1:]) == tuple(out_hw):
        return tensor
    return F.interpolate(tensor[None], size=tuple(out_hw), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp_(0, 1)
