"""Tests for pointlift.geometry: round trips, slow references and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry import (
    average_per_voxel,
    backproject,
    compose,
    depth_to_points,
    invert_rigid,
    occlusion_mask,
    project,
    project_to_image,
    random_rotation_about_up,
    render_depth_views,
    rotation_about_axis,
    transform_points,
    views_to_teacher_input,
    voxelize,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_intrinsics(batch: int, generator: torch.Generator) -> torch.Tensor:
    K = torch.zeros(batch, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = 200 + 300 * torch.rand(batch, generator=generator, dtype=torch.float64)
    K[:, 1, 1] = 200 + 300 * torch.rand(batch, generator=generator, dtype=torch.float64)
    K[:, 0, 1] = 2 * torch.rand(batch, generator=generator, dtype=torch.float64) - 1  # small skew
    K[:, 0, 2] = 30 + 10 * torch.rand(batch, generator=generator, dtype=torch.float64)
    K[:, 1, 2] = 20 + 10 * torch.rand(batch, generator=generator, dtype=torch.float64)
    K[:, 2, 2] = 1
    return K


def random_rigid(batch: int, generator: torch.Generator) -> torch.Tensor:
    axes = torch.randn(batch, 3, generator=generator, dtype=torch.float64)
    angles = (2 * torch.rand(batch, generator=generator, dtype=torch.float64) - 1) * math.pi
    T = rotation_about_axis(angles, axes)
    T[:, :3, 3] = torch.randn(batch, 3, generator=generator, dtype=torch.float64) * 3
    return T


# ---------------------------------------------------------------- camera


@pytest.mark.parametrize("device", DEVICES)
def test_backproject_then_project_returns_pixels_batched(device):
    generator = torch.Generator().manual_seed(0)
    batch, height, width = 3, 48, 64
    K = random_intrinsics(batch, generator).float().to(device)
    depth = (0.5 + 9.5 * torch.rand(batch, height, width, generator=generator)).to(device)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    uv = torch.stack([cols, rows], dim=-1).reshape(1, -1, 2).expand(batch, -1, -1).float().to(device)
    points = backproject(uv, depth.reshape(batch, -1), K)
    assert points.shape == (batch, height * width, 3)
    uv_back, z = project(points, K)
    assert (uv_back - uv).abs().max().item() < 1e-4
    assert torch.allclose(z, depth.reshape(batch, -1), rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_depth_to_points_keeps_valid_strided_pixels_and_round_trips(device):
    generator = torch.Generator().manual_seed(1)
    height, width, stride = 30, 40, 3
    K = random_intrinsics(1, generator)[0].float().to(device)
    depth = 1 + 4 * torch.rand(height, width, generator=generator)
    depth[torch.rand(height, width, generator=generator) < 0.3] = 0  # invalid pixels
    depth[5, 6] = float("nan")
    depth = depth.to(device)
    points, pixels = depth_to_points(depth, K, stride=stride)
    expected = [
        (u, v)
        for v in range(height)
        for u in range(width)
        if u % stride == 0 and v % stride == 0 and depth[v, u].item() > 0
    ]
    assert [tuple(p) for p in pixels.tolist()] == expected
    uv, z = project(points, K)
    assert (uv - pixels.float()).abs().max().item() < 1e-4
    assert torch.allclose(z, depth[pixels[:, 1], pixels[:, 0]])


@pytest.mark.parametrize("device", DEVICES)
def test_project_to_image_matches_camera_pairs_through_lidar2img(device):
    generator = torch.Generator().manual_seed(2)
    height, width = 24, 32
    K = random_intrinsics(1, generator)[0]
    K[0, 0] = K[1, 1] = 30.0
    K[0, 2], K[1, 2] = 15.5, 11.5
    depth = 1.5 + 3 * torch.rand(height, width, generator=generator, dtype=torch.float64)
    cam_points, pixels = depth_to_points(depth, K)
    lidar_from_cam = random_rigid(1, generator)[0]
    lidar_points = transform_points(lidar_from_cam, cam_points)
    K4 = torch.eye(4, dtype=torch.float64)
    K4[:3, :3] = K
    lidar2img = K4 @ invert_rigid(lidar_from_cam)
    extra = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.5], [1000.0, 0.0, 2.0]], dtype=torch.float64)
    all_points = torch.cat([cam_points, extra])  # behind camera, too close, outside the image
    uv, mask = project_to_image(
        transform_points(lidar_from_cam, all_points).to(device), lidar2img.to(device), (height, width)
    )
    n = cam_points.shape[0]
    assert (uv[:n].cpu() - pixels.double()).abs().max().item() < 1e-6
    assert mask[:n].all() and not mask[n:].any()
    # With the frame's own depth map every pixel's point agrees with it.
    _, mask_occ = project_to_image(lidar_points.to(device), lidar2img.to(device), (height, width), depth_map=depth.to(device))
    assert mask_occ.all()


@pytest.mark.parametrize("device", DEVICES)
def test_occlusion_drops_hidden_point_and_keeps_visible(device):
    height, width = 10, 12
    depth_map = torch.full((height, width), 2.0, device=device)
    uv = torch.tensor([[4.0, 5.0], [4.2, 4.9], [7.0, 3.0], [20.0, 3.0]], device=device)
    z = torch.tensor([2.1, 4.0, 2.0, 2.0], device=device)  # visible, hidden behind the wall, visible, outside
    keep = occlusion_mask(uv, z, depth_map, tolerance=0.25)
    assert keep.tolist() == [True, False, True, False]
    # The same through a camera: an identity lidar2img with pixel = (x/z, y/z).
    K = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], device=device)
    visible = backproject(torch.tensor([[4.0, 5.0]], device=device), torch.tensor([2.0], device=device), K)
    hidden = backproject(torch.tensor([[4.0, 5.0]], device=device), torch.tensor([5.0], device=device), K)
    lidar2img = torch.eye(4, device=device)
    _, mask = project_to_image(torch.cat([visible, hidden]), lidar2img, (height, width), depth_map=depth_map)
    assert mask.tolist() == [True, False]
    _, mask_no_test = project_to_image(torch.cat([visible, hidden]), lidar2img, (height, width))
    assert mask_no_test.tolist() == [True, True]


def test_camera_bad_input_raises():
    with pytest.raises(PointliftConfigError):
        depth_to_points(torch.ones(4, 4), torch.eye(3), stride=0)
    with pytest.raises(PointliftDataError):
        depth_to_points(torch.ones(2, 4, 4), torch.eye(3))
    with pytest.raises(PointliftDataError):
        project_to_image(torch.ones(5, 2), torch.eye(4), (4, 4))


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("device", DEVICES)
def test_rigid_inverse_round_trip_and_compose(device):
    generator = torch.Generator().manual_seed(3)
    T = random_rigid(4, generator).to(device)
    points = torch.randn(4, 50, 3, generator=generator, dtype=torch.float64).to(device)
    back = transform_points(invert_rigid(T), transform_points(T, points))
    assert torch.allclose(back, points, atol=1e-12)
    eye = torch.eye(4, dtype=torch.float64, device=device).expand(4, 4, 4)
    assert torch.allclose(compose(invert_rigid(T), T), eye, atol=1e-12)
    assert torch.allclose(invert_rigid(T), torch.linalg.inv(T), atol=1e-12)
    S = random_rigid(4, generator).to(device)
    assert torch.allclose(
        transform_points(compose(S, T), points), transform_points(S, transform_points(T, points)), atol=1e-12
    )


def test_rotation_about_axis_hand_cases():
    quarter = rotation_about_axis(math.pi / 2, "z", dtype=torch.float64)
    x_axis = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(transform_points(quarter, x_axis), torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), atol=1e-12)
    about_x = rotation_about_axis(math.pi / 2, 0, dtype=torch.float64)
    y_axis = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(transform_points(about_x, y_axis), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), atol=1e-12)
    about_vector = rotation_about_axis(torch.tensor([0.3, -1.2]), torch.tensor([0.0, 0.0, 2.0]))
    about_z = rotation_about_axis(torch.tensor([0.3, -1.2]), "z")
    assert torch.allclose(about_vector, about_z, atol=1e-6)
    with pytest.raises(PointliftConfigError):
        rotation_about_axis(1.0, "w")


def test_random_rotation_about_up_keeps_up_coordinate():
    generator = torch.Generator().manual_seed(4)
    R = random_rotation_about_up(8, up="y", generator=generator, dtype=torch.float64)
    assert R.shape == (8, 4, 4)
    rotation = R[:, :3, :3]
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(8, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(8, dtype=torch.float64))
    points = torch.randn(8, 20, 3, dtype=torch.float64, generator=generator)
    rotated = transform_points(R, points)
    assert torch.allclose(rotated[..., 1], points[..., 1], atol=1e-12)
    assert not torch.allclose(rotated, points, atol=1e-3)
    assert torch.allclose(rotated.norm(dim=-1), points.norm(dim=-1))


# ---------------------------------------------------------------- voxels


def slow_voxelize(points: np.ndarray, voxel_size: float, batch: np.ndarray):
    cells = [tuple(int(math.floor(c / voxel_size)) for c in p) for p in points.tolist()]
    lows = {}
    for b, cell in zip(batch.tolist(), cells):
        lows[b] = tuple(min(a, c) for a, c in zip(lows.get(b, cell), cell))
    keys = [(b,) + tuple(c - low for c, low in zip(cell, lows[b])) for b, cell in zip(batch.tolist(), cells)]
    members: dict[tuple, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    return keys, members


@pytest.mark.parametrize("device", DEVICES)
def test_voxelize_matches_slow_dict_reference(device):
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(600, 3, generator=generator, dtype=torch.float64) * 2 + 3
    batch = torch.randint(0, 3, (600,), generator=generator) * 2  # samples 1 and 3 have no points
    voxel_size = 0.7
    vox = voxelize(points.to(device), voxel_size, batch.to(device))
    keys, members = slow_voxelize(points.numpy(), voxel_size, batch.numpy())
    coords = [tuple(c) for c in vox.coords.tolist()]
    assert coords == sorted(members)  # unique, lexicographically sorted
    assert (vox.coords >= 0).all()
    for b in (0, 2, 4):
        assert vox.coords[vox.coords[:, 0] == b, 1:].amin(dim=0).tolist() == [0, 0, 0]
    assert [coords[i] for i in vox.inverse.tolist()] == keys
    assert vox.counts.tolist() == [len(members[c]) for c in coords]
    features = torch.randn(600, 4, generator=generator, dtype=torch.float64)
    means = average_per_voxel(features.to(device), vox).cpu()
    expected = torch.stack([features[members[c]].mean(dim=0) for c in coords])
    assert torch.allclose(means, expected)


def test_voxelize_huge_grid_falls_back_and_rejects_bad_input():
    points = torch.tensor([[0.0, 0.0, 0.0], [1e6, 1e6, 1e6], [1e6, 1e6, 1e6], [0.5, 0.0, 0.0]], dtype=torch.float64)
    vox = voxelize(points, 1e-4)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [0, 5000, 0, 0], [0, 10**10, 10**10, 10**10]]
    assert vox.inverse.tolist() == [0, 2, 2, 1] and vox.counts.tolist() == [1, 1, 2]
    with pytest.raises(PointliftConfigError):
        voxelize(points, 0.0)
    with pytest.raises(PointliftDataError):
        voxelize(torch.tensor([[0.0, float("nan"), 0.0]]), 0.1)


# ---------------------------------------------------------------- rendering

VIEWS = ((0, 1, 2), (0, 2, 1), (1, 2, 0))


def slow_render(points: np.ndarray, image_size: int, footprint: int):
    """Per-point loop written straight from the definition in render.py's docstring."""
    batch, num_points, _ = points.shape
    images = np.zeros((batch, 3, image_size, image_size))
    pixels = np.zeros((batch, 3, num_points, 2), dtype=np.int64)
    radius = footprint // 2
    for b in range(batch):
        cloud = points[b].tolist()
        low = [min(p[a] for p in cloud) for a in range(3)]
        high = [max(p[a] for p in cloud) for a in range(3)]
        largest = max(high[a] - low[a] for a in range(3)) or 1.0
        for view, (ua, va, da) in enumerate(VIEWS):
            extent = max(high[ua] - low[ua], high[va] - low[va]) or 1.0
            cells = [
                (
                    math.floor((p[ua] - low[ua]) / extent * (image_size - 3)),
                    math.floor((p[va] - low[va]) / extent * (image_size - 3)),
                )
                for p in cloud
            ]
            shift_u = (image_size - 1 - max(c[0] for c in cells)) // 2
            shift_v = (image_size - 1 - max(c[1] for c in cells)) // 2
            for n, (p, (cu, cv)) in enumerate(zip(cloud, cells)):
                u, v = cu + shift_u, cv + shift_v
                pixels[b, view, n] = (u, v)
                value = 1.0 + (p[da] - low[da]) / largest
                for dv in range(-radius, radius + 1):
                    for du in range(-radius, radius + 1):
                        if 0 <= u + du < image_size and 0 <= v + dv < image_size:
                            images[b, view, v + dv, u + du] += value
    return images, pixels


def test_render_hand_computed_image():
    # image_size 8 -> 5 cells across the largest in-plane extent (5), so grid = 1 and cells = coordinates.
    points = torch.tensor([[[0.0, 0.0, 0.0], [5.0, 0.0, 2.0], [5.0, 5.0, 5.0], [0.0, 1.0, 5.0]]])
    sharp = render_depth_views(points, image_size=8, footprint=1)
    expected = torch.zeros(8, 8)
    # view 0 looks along z: u = x, v = y, shift (8 - 1 - 5) // 2 = 1; value = 1 + z / 5.
    expected[1, 1] = 1.0
    expected[1, 6] = 1.4
    expected[6, 6] = 2.0
    expected[2, 1] = 2.0
    assert torch.allclose(sharp.images[0, 0], expected)
    assert sharp.pixels[0, 0].tolist() == [[1, 1], [6, 1], [6, 6], [1, 2]]
    # view 2 looks along x: u = y, v = z; value = 1 + x / 5.
    assert sharp.pixels[0, 2].tolist() == [[1, 1], [1, 3], [6, 6], [2, 6]]
    assert sharp.images[0, 2, 3, 1].item() == pytest.approx(2.0)
    assert sharp.images[0, 2, 6, 2].item() == pytest.approx(1.0)

    wide = render_depth_views(points, image_size=8, footprint=3)
    expected = torch.zeros(8, 8)
    expected[0:3, 0:3] += 1.0  # around (u, v) = (1, 1)
    expected[0:3, 5:8] += 1.4  # around (6, 1)
    expected[5:8, 5:8] += 2.0  # around (6, 6)
    expected[1:4, 0:3] += 2.0  # around (1, 2): overlaps the first square, sums
    assert torch.allclose(wide.images[0, 0], expected)
    assert wide.images[0, 0, 1, 1].item() == pytest.approx(3.0)


def test_render_centres_narrow_axis_and_clips_footprint():
    # In view 0 the y extent (1) is a fifth of the x extent (5): y cells 0..1 are centred.
    points = torch.tensor([[[0.0, 0.0, 0.0], [5.0, 1.0, 0.0]]])
    views = render_depth_views(points, image_size=8, footprint=5)
    assert views.pixels[0, 0].tolist() == [[1, 3], [6, 4]]
    # Each 5x5 square loses one column at the image border: 4 x 5 pixels each, at value 1 (all z equal).
    image = views.images[0, 0]
    assert image[:, 0].tolist() == [0, 1, 1, 1, 1, 1, 0, 0]
    assert image.sum().item() == pytest.approx(2 * 20)


@pytest.mark.parametrize("device", DEVICES)
def test_render_matches_slow_reference_on_random_clouds(device):
    generator = torch.Generator().manual_seed(6)
    points = torch.randn(2, 60, 3, generator=generator) * torch.tensor([1.0, 0.5, 2.0])
    views = render_depth_views(points.to(device), image_size=32, footprint=5)
    images, pixels = slow_render(points.double().numpy(), 32, 5)
    assert views.images.shape == (2, 3, 32, 32) and views.pixels.shape == (2, 3, 60, 2)
    assert views.pixels.dtype == torch.long
    assert np.array_equal(views.pixels.cpu().numpy(), pixels)
    assert np.allclose(views.images.cpu().numpy(), images, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_render_invariant_to_scale_and_translation(device):
    generator = torch.Generator().manual_seed(7)
    points = torch.rand(3, 500, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 0.6, 0.8], dtype=torch.float64)
    moved = points * 3.7 + torch.tensor([10.0, -4.0, 0.25], dtype=torch.float64)
    shrunk = points * 0.013 - 2.0
    reference = render_depth_views(points.to(device), image_size=64)
    for other in (moved, shrunk):
        views = render_depth_views(other.to(device), image_size=64)
        assert torch.equal(views.pixels, reference.pixels)
        assert torch.allclose(views.images, reference.images, atol=1e-9)
        assert torch.allclose(views_to_teacher_input(views.images), views_to_teacher_input(reference.images), atol=1e-9)
    # A non-isotropic stretch does change the views, so the check above can fail.
    stretched = render_depth_views((points * torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)).to(device), image_size=64)
    assert not torch.equal(stretched.pixels, reference.pixels)


def test_views_to_teacher_input_normalises_sigmoid():
    images = torch.tensor([[[[0.0, 2.0]], [[-1.0, 30.0]]]])  # (B=1, V=2, H=1, W=2)
    teacher_input = views_to_teacher_input(images, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.1))
    assert teacher_input.shape == (2, 3, 1, 2)
    assert teacher_input[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.4, 2.0])
    sig = 1 / (1 + math.exp(-2.0))
    assert teacher_input[0, 1, 0, 1].item() == pytest.approx((sig - 0.4) / 0.25)
    assert teacher_input[1, 2, 0, 1].item() == pytest.approx((1.0 - 0.3) / 0.1, rel=1e-5)


def test_render_bad_input_raises():
    with pytest.raises(PointliftConfigError):
        render_depth_views(torch.zeros(1, 4, 3), footprint=4)
    with pytest.raises(PointliftDataError):
        render_depth_views(torch.zeros(4, 3))
    with pytest.raises(PointliftDataError):
        render_depth_views(torch.full((1, 4, 3), float("inf")))


def test_render_degenerate_cloud_stays_finite():
    views = render_depth_views(torch.ones(2, 5, 3), image_size=16, footprint=3)
    assert torch.isfinite(views.images).all()
    assert views.pixels.unique().tolist() == [7]  # one cell, centred: (16 - 1 - 0) // 2
    assert views.images[0, 0, 6:9, 6:9].tolist() == [[5.0] * 3] * 3  # 5 coincident points at value 1
