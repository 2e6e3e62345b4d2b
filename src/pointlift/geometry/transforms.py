"""Rigid transforms as homogeneous 4x4 matrices, batched over leading dimensions.

One representation (4x4) everywhere keeps poses, lidar2cam matrices and augmentations composable
with plain matrix products.
"""

from __future__ import annotations

import math

import torch

from pointlift.errors import PointliftConfigError, PointliftDataError

_AXIS_INDEX = {"x": 0, "y": 1, "z": 2}


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply T (..., 4, 4) to points (..., N, 3); leading dims broadcast. Returns (..., N, 3)."""
    if T.shape[-2:] != (4, 4):
        raise PointliftDataError("<transform>", f"expected shape (..., 4, 4), got {tuple(T.shape)}")
    if points.shape[-1] != 3:
        raise PointliftDataError("<points>", f"expected shape (..., N, 3), got {tuple(points.shape)}")
    T = T.to(points.dtype)
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4): [R^T, -R^T t], exact and cheaper than a general inverse."""
    rotation_t = T[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(T)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ T[..., :3, 3:4]).squeeze(-1)
    inverse[..., 3, 3] = 1
    return inverse


def compose(*transforms: torch.Tensor) -> torch.Tensor:
    """Matrix product T1 @ T2 @ ... @ Tk: the last transform is applied to the points first."""
    if not transforms:
        raise PointliftConfigError("compose needs at least one transform")
    result = transforms[0]
    for T in transforms[1:]:
        result = result @ T.to(result.dtype)
    return result


def _axis_vector(axis, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(axis, str):
        if axis.lower() not in _AXIS_INDEX:
            raise PointliftConfigError(f"rotation axis must be 'x', 'y', 'z', 0, 1, 2 or a 3-vector, got {axis!r}")
        axis = _AXIS_INDEX[axis.lower()]
    if isinstance(axis, int):
        if axis not in (0, 1, 2):
            raise PointliftConfigError(f"rotation axis index must be 0, 1 or 2, got {axis}")
        vector = torch.zeros(3, dtype=dtype, device=device)
        vector[axis] = 1
        return vector
    vector = torch.as_tensor(axis, dtype=dtype, device=device)
    if vector.shape[-1:] != (3,):
        raise PointliftConfigError(f"rotation axis vector must have 3 components, got shape {tuple(vector.shape)}")
    norm = vector.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise PointliftConfigError("rotation axis vector must be non-zero")
    return vector / norm


def rotation_about_axis(angle, axis="z", dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Homogeneous rotation (..., 4, 4) by `angle` radians (float or tensor (...,)) about `axis`.

    `axis` is 'x'/'y'/'z', 0/1/2 or a 3-vector (..., 3) (normalised here); Rodrigues' formula,
    right-handed (rotating x by +90 degrees about z gives y).
    """
    if isinstance(angle, torch.Tensor):
        dtype = dtype or (angle.dtype if angle.is_floating_point() else torch.get_default_dtype())
        device = device if device is not None else angle.device
    else:
        dtype = dtype or torch.get_default_dtype()
    angle = torch.as_tensor(angle, dtype=dtype, device=device)
    unit = _axis_vector(axis, dtype, device)
    batch_shape = torch.broadcast_shapes(angle.shape, unit.shape[:-1])
    angle = angle.expand(batch_shape)
    unit = unit.expand(*batch_shape, 3)
    x, y, z = unit.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*batch_shape, 3, 3)
    eye = torch.eye(3, dtype=dtype, device=device).expand(*batch_shape, 3, 3)
    sin = torch.sin(angle)[..., None, None]
    cos = torch.cos(angle)[..., None, None]
    rotation = eye + sin * cross + (1 - cos) * (cross @ cross)
    T = torch.zeros(*batch_shape, 4, 4, dtype=dtype, device=device)
    T[..., :3, :3] = rotation
    T[..., 3, 3] = 1
    return T


def random_rotation_about_up(
    batch_size: int | None = None,
    up="z",
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    """Uniformly random rotation(s) about the up axis: (4, 4), or (batch_size, 4, 4).

    The usual augmentation for scenes and upright shapes: gravity stays where it was.
    `up` is 'z' for ScanNet/LiDAR frames, 'y' for many shape datasets.
    """
    shape = () if batch_size is None else (int(batch_size),)
    dtype = dtype or torch.get_default_dtype()
    gen_device = generator.device if generator is not None else device
    angle = torch.rand(shape, generator=generator, dtype=dtype, device=gen_device) * (2 * math.pi)
    return rotation_about_axis(angle.to(device) if device is not None else angle, up, dtype=dtype)
