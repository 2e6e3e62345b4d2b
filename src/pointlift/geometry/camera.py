"""Pinhole cameras: projection, back-projection, depth maps to points, LiDAR-to-image pairing.

Pixel convention (OpenCV): pixel centres sit at integer coordinates, so the pixel a point falls in is
`round(uv)` = `floor(uv + 0.5)`, and a point is inside an (H, W) image when that pixel index lies in
[0, W) x [0, H). `depth_to_points` back-projects the integer pixel centres, so projecting its points
returns exactly those pixels.
"""

from __future__ import annotations

import torch

from pointlift.errors import PointliftConfigError, PointliftDataError

# Below this |z| a point is treated as on the camera plane: its projection is meaningless anyway
# and callers mask it by depth, but a finite value keeps gradients and masks free of NaN.
_MIN_ABS_Z = 1e-8


def _safe_divisor(z: torch.Tensor) -> torch.Tensor:
    tiny = torch.full_like(z, _MIN_ABS_Z)
    return torch.where(z.abs() > _MIN_ABS_Z, z, torch.where(z < 0, -tiny, tiny))


def _check_last_dims(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tensor.dim() < len(shape) or tuple(tensor.shape[-len(shape):]) != shape:
        raise PointliftDataError(f"<{name}>", f"expected shape (..., {', '.join(map(str, shape))}), got {tuple(tensor.shape)}")


def project(points_cam: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points (..., N, 3) with intrinsics K (..., 3, 3).

    Returns uv (..., N, 2) and depth z (..., N). Leading dims broadcast, so one K can serve a batch.
    Points with z <= 0 get finite but meaningless uv: mask them by depth.
    """
    _check_last_dims("points_cam", points_cam, (3,))
    _check_last_dims("K", K, (3, 3))
    homogeneous = points_cam @ K.to(points_cam.dtype).transpose(-1, -2)
    depth = points_cam[..., 2]
    uv = homogeneous[..., :2] / _safe_divisor(homogeneous[..., 2:3])
    return uv, depth


def backproject(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (..., N, 3) seen at pixels uv (..., N, 2) with depth z (..., N)."""
    _check_last_dims("uv", uv, (2,))
    _check_last_dims("K", K, (3, 3))
    uv = uv.to(depth.dtype)
    ones = torch.ones_like(uv[..., :1])
    pixels_h = torch.cat([uv, ones], dim=-1)
    rays = pixels_h @ torch.linalg.inv(K.to(depth.dtype)).transpose(-1, -2)  # z component is 1
    return rays * depth.unsqueeze(-1)


def depth_to_points(depth: torch.Tensor, K: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-project the valid pixels (finite depth > 0) of a depth map (H, W).

    `stride` keeps every stride-th row and column (u % stride == 0 and v % stride == 0), to thin
    dense frames cheaply. Returns points_cam (M, 3) and their pixels (M, 2) long (u, v), row-major.
    """
    if not isinstance(stride, int) or stride < 1:
        raise PointliftConfigError(f"depth_to_points: stride must be a positive integer, got {stride!r}")
    if depth.dim() != 2:
        raise PointliftDataError("<depth>", f"expected a depth map of shape (H, W), got {tuple(depth.shape)}")
    _check_last_dims("K", K, (3, 3))
    if not depth.is_floating_point():
        depth = depth.float()
    height, width = depth.shape
    valid = torch.isfinite(depth) & (depth > 0)
    if stride > 1:
        keep = torch.zeros_like(valid)
        keep[::stride, ::stride] = True
        valid &= keep
    rows, cols = torch.nonzero(valid, as_tuple=True)
    pixels = torch.stack([cols, rows], dim=-1)
    points = backproject(pixels, depth[rows, cols], K)
    return points, pixels


def pixel_index(uv: torch.Tensor) -> torch.Tensor:
    """Integer pixel (u, v) long containing each continuous coordinate (centres at integers)."""
    return torch.floor(uv + 0.5).long()


def in_image(uv: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """True where the pixel of uv (..., 2) lies inside an image of size (H, W)."""
    height, width = int(image_hw[0]), int(image_hw[1])
    pixel = pixel_index(uv)
    finite = torch.isfinite(uv).all(dim=-1)
    return finite & (pixel[..., 0] >= 0) & (pixel[..., 0] < width) & (pixel[..., 1] >= 0) & (pixel[..., 1] < height)


def occlusion_mask(uv: torch.Tensor, z: torch.Tensor, depth_map: torch.Tensor, tolerance: float = 0.25) -> torch.Tensor:
    """Keep points whose depth agrees with the depth map: |depth(u, v) - z| <= tolerance * z.

    uv (N, 2), z (N,), depth_map (H, W). A point hidden behind a nearer surface reads the nearer
    depth and is dropped. Points outside the image, or where the map has no depth (0), cannot be
    confirmed and are dropped too.
    """
    if depth_map.dim() != 2:
        raise PointliftDataError("<depth_map>", f"expected shape (H, W), got {tuple(depth_map.shape)}")
    if tolerance < 0:
        raise PointliftConfigError(f"occlusion tolerance must be >= 0, got {tolerance}")
    height, width = depth_map.shape
    inside = in_image(uv, (height, width))
    pixel = pixel_index(torch.where(inside.unsqueeze(-1), uv, torch.zeros_like(uv)))
    observed = depth_map[pixel[..., 1], pixel[..., 0]].to(z.dtype)
    return inside & (observed > 0) & ((observed - z).abs() <= tolerance * z)


def lidar_to_image(points: torch.Tensor, lidar2img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uv (N, 2) and camera depth d (N,) of LiDAR points (N, 3+): `lidar2img @ [x, y, z, 1] = [u*d, v*d, d, 1]`."""
    xyz = points[:, :3]
    if not xyz.is_floating_point():
        xyz = xyz.float()
    ones = torch.ones_like(xyz[:, :1])
    projected = torch.cat([xyz, ones], dim=1) @ lidar2img.to(xyz.dtype).T
    depth = projected[:, 2]
    return projected[:, :2] / _safe_divisor(depth).unsqueeze(-1), depth


def project_to_image(
    points: torch.Tensor,
    lidar2img: torch.Tensor,
    image_hw: tuple[int, int],
    min_depth: float = 1.0,
    depth_map: torch.Tensor | None = None,
    occlusion_tolerance: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair LiDAR points (N, 3+) with a camera: `lidar2img @ [x, y, z, 1] = [u*d, v*d, d, 1]`.

    Returns uv (N, 2) float and mask (N,) bool: camera depth d > min_depth (points close to or
    behind the camera project unreliably) and the pixel inside the image; with `depth_map`
    (H, W) also the occlusion test of `occlusion_mask`. Only the first three columns are used.
    """
    if points.dim() != 2 or points.shape[1] < 3:
        raise PointliftDataError("<points>", f"expected points of shape (N, 3+), got {tuple(points.shape)}")
    if tuple(lidar2img.shape) != (4, 4):
        raise PointliftDataError("<lidar2img>", f"expected a (4, 4) matrix, got {tuple(lidar2img.shape)}")
    uv, depth = lidar_to_image(points, lidar2img)
    mask = (depth > min_depth) & in_image(uv, image_hw)
    if depth_map is not None:
        if tuple(depth_map.shape) != (int(image_hw[0]), int(image_hw[1])):
            raise PointliftDataError("<depth_map>", f"shape {tuple(depth_map.shape)} does not match image {tuple(image_hw)}")
        mask &= occlusion_mask(uv, depth, depth_map, occlusion_tolerance)
    return uv, mask
