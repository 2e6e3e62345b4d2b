"""Read-back: the value of a low-resolution 2D map at the pixel where each 3D point was rendered.

Upsampling a map to the render size with bicubic interpolation (align_corners=False) is separable,
up = Wy @ map @ Wx^T with fixed (out, in) matrices, so one pixel's value is Wy[v] @ map @ Wx[u]: we
never materialise the 224 x 224 upsampled maps (`render.bicubic_read` is the slow reference that does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pointlift.geometry.render import released_depth_views, render_depth_views


def bicubic_weights(in_size: int, out_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(out_size, in_size) matrix W with F.interpolate(x, bicubic, align_corners=False) = W @ x per axis."""
    eye = torch.eye(in_size, device=device, dtype=dtype).reshape(in_size, 1, 1, in_size)
    up = F.interpolate(eye, size=(1, out_size), mode="bicubic", align_corners=False)
    return up[:, 0, 0, :].transpose(0, 1).contiguous()


def read_back(maps: torch.Tensor, pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """Values of maps (B, V, C, h, w), bicubically upsampled to image_size, at pixels (B, V, N, 2) (u, v).

    Returns (B, V, N, C).
    """
    height, width = maps.shape[-2:]
    wy = bicubic_weights(height, image_size, maps.device, maps.dtype)[pixels[..., 1]]  # (B, V, N, h)
    wx = bicubic_weights(width, image_size, maps.device, maps.dtype)[pixels[..., 0]]  # (B, V, N, w)
    weights = (wy[..., :, None] * wx[..., None, :]).flatten(-2)  # (B, V, N, h*w)
    return weights @ maps.flatten(-2).transpose(-1, -2)


def point_pixels(points: torch.Tensor, renderer: str, image_size: int, footprint: int):
    """(u, v) pixels (B, 3, P, 2) of every input point under the chosen renderer, and for the released
    renderer its raw views (B, 3, H, W) (None for the invariant one, whose views the teacher cache owns)."""
    if renderer == "released":
        images, projection = released_depth_views(points, image_size, footprint)
        return projection.pixels(points).flip(-1), images
    return render_depth_views(points, image_size, footprint).pixels, None
