"""Procedurally generated data for the embedded quickstart and for tests.

Two generators, both deterministic given a seed and needing no files:
- `make_shapes`: labelled point clouds of simple parametric solids (surface samples), a stand-in for
  ModelNet-style classification;
- `make_rgbd_scene`: RGB-D frames of a room with coloured, textured boxes and balls, ray-cast exactly
  from known camera poses, a stand-in for 7-Scenes/ScanNet sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPE_CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "table", "ring")


def _unit_sphere(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(rng, n):
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(0, 3, size=n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
    return p


def _cylinder(rng, n):
    n_side = int(n * 0.6)
    theta = rng.uniform(0, 2 * np.pi, n)
    z = rng.uniform(-1, 1, n)
    r = np.ones(n)
    cap = np.arange(n) >= n_side
    r[cap] = np.sqrt(rng.uniform(0, 1, cap.sum()))
    z[cap] = rng.choice([-1.0, 1.0], size=cap.sum())
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], 1)


def _cone(rng, n):
    n_side = int(n * 0.7)
    theta = rng.uniform(0, 2 * np.pi, n)
    h = np.sqrt(rng.uniform(0, 1, n))  # area-uniform along the slant
    r, z = h.copy(), 1 - 2 * h
    base = np.arange(n) >= n_side
    r[base] = np.sqrt(rng.uniform(0, 1, base.sum()))
    z[base] = -1.0
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], 1)


def _torus(rng, n, minor=0.3):
    u, v = rng.uniform(0, 2 * np.pi, (2, n))
    return np.stack([(1 + minor * np.cos(v)) * np.cos(u), (1 + minor * np.cos(v)) * np.sin(u), minor * np.sin(v)], 1) / (1 + minor)


def _pyramid(rng, n):
    base = rng.uniform(0, 1, n) < 0.25
    p = np.empty((n, 3))
    p[base] = np.c_[rng.uniform(-1, 1, (base.sum(), 2)), -np.ones(base.sum())]
    k = (~base).sum()
    t = np.sqrt(rng.uniform(0, 1, k))  # 0 at apex, 1 at base
    s = rng.uniform(-1, 1, k)
    side = rng.integers(0, 4, k)
    x = np.where(side < 2, np.where(side == 0, t, -t), s * t)
    y = np.where(side < 2, s * t, np.where(side == 2, t, -t))
    p[~base] = np.c_[x, y, 1 - 2 * t]
    return p


def _table(rng, n):
    top = int(n * 0.6)
    p = np.empty((n, 3))
    p[:top] = np.c_[rng.uniform(-1, 1, (top, 2)), rng.uniform(0.8, 0.9, top)]
    legs = n - top
    corner = rng.integers(0, 4, legs)
    cx = np.where(corner % 2 == 0, -0.85, 0.85)
    cy = np.where(corner < 2, -0.85, 0.85)
    p[top:] = np.c_[cx + rng.uniform(-0.08, 0.08, legs), cy + rng.uniform(-0.08, 0.08, legs), rng.uniform(-1, 0.8, legs)]
    return p


def _ring(rng, n):
    theta = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(0.7, 1.0, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta), rng.uniform(-0.1, 0.1, n)], 1)


_GENERATORS = {
    "sphere": _unit_sphere,
    "cube": _cube,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "pyramid": _pyramid,
    "table": _table,
    "ring": _ring,
}


def make_shapes(
    num_per_class: int,
    num_points: int = 1024,
    classes: tuple[str, ...] = SHAPE_CLASSES,
    seed: int = 0,
    noise: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Point clouds (S, num_points, 3) float32 in the unit sphere, labels (S,) int64, class names.

    Each shape is its class's solid with a random anisotropic stretch (up to 1.5x per axis), a random
    rotation about the up (z) axis and Gaussian jitter, so classes differ in structure, not just size.
    """
    unknown = [c for c in classes if c not in _GENERATORS]
    if unknown:
        raise ValueError(f"unknown synthetic shape classes {unknown}; choose from {SHAPE_CLASSES}")
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for label, name in enumerate(classes):
        for _ in range(num_per_class):
            p = _GENERATORS[name](rng, num_points)
            p = p * rng.uniform(0.67, 1.0, size=3)
            angle = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(angle), np.sin(angle)
            p = p @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
            p = p + rng.normal(scale=noise, size=p.shape)
            p = p - p.mean(0)
            p = p / np.linalg.norm(p, axis=1).max()
            points.append(p.astype(np.float32))
            labels.append(label)
    order = rng.permutation(len(labels))
    return np.stack(points)[order], np.asarray(labels, dtype=np.int64)[order], list(classes)


# ------------------------------------------------------------------------------------ RGB-D scenes


@dataclass
class SyntheticFrame:
    """Same fields as `pointlift.data.rgbd.RGBDFrame`; depth in metres, 0 where nothing is hit."""

    name: str
    color: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32
    intrinsics: np.ndarray  # (3, 3) float64
    pose: np.ndarray  # (4, 4) float64 camera-to-world


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose for an OpenCV camera (x right, y down, z forward) at `eye` facing `target`."""
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], 1)
    pose[:3, 3] = eye
    return pose


def make_rgbd_scene(
    num_frames: int = 8,
    height: int = 96,
    width: int = 128,
    num_objects: int = 6,
    seed: int = 0,
) -> list[SyntheticFrame]:
    """Frames of one room (4 x 4 x 2.5 m) with random boxes and balls, seen from a circling camera.

    Ray casting is exact: every valid depth pixel back-projects onto a scene surface, so the frames
    double as geometric ground truth. Surfaces carry a colour and a checker texture so that a 2D network
    sees structure.
    """
    rng = np.random.default_rng(seed)
    fx = fy = 0.9 * width
    K = np.array([[fx, 0, width / 2], [0, fy, height / 2], [0, 0, 1.0]])
    boxes = []  # (lo, hi, colour)
    balls = []  # (centre, radius, colour)
    for i in range(num_objects):
        colour = rng.uniform(0.15, 1.0, 3)
        centre = np.r_[rng.uniform(-1.2, 1.2, 2), 0.0]
        if i % 2 == 0:
            half = rng.uniform(0.15, 0.4, 3)
            lo, hi = centre - half, centre + half
            lo[2], hi[2] = 0.0, 2 * half[2]
            boxes.append((lo, hi, colour))
        else:
            radius = rng.uniform(0.15, 0.35)
            centre[2] = radius + rng.uniform(0, 0.5)
            balls.append((centre, radius, colour))
    # Room: floor z=0, ceiling z=2.5, walls at x,y = +-2, as boxes seen from inside.
    frames = []
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    rays_cam = np.stack([(u - K[0, 2]) / fx, (v - K[1, 2]) / fy, np.ones_like(u)], -1).reshape(-1, 3)
    for f in range(num_frames):
        angle = 2 * np.pi * f / max(num_frames, 1) + rng.uniform(-0.1, 0.1)
        eye = np.array([1.6 * np.cos(angle), 1.6 * np.sin(angle), 1.4 + 0.2 * rng.uniform(-1, 1)])
        target = np.r_[rng.uniform(-0.4, 0.4, 2), 0.3]
        pose = _look_at(eye, target)
        dirs = rays_cam @ pose[:3, :3].T  # world directions, z_cam = 1 scaling kept (t = camera depth)
        t_best = np.full(len(dirs), np.inf)
        colour = np.zeros((len(dirs), 3))
        normal = np.zeros((len(dirs), 3))

        def consider(t, col, nrm):
            better = (t > 1e-6) & (t < t_best)
            t_best[better] = t[better]
            colour[better] = col[better] if col.ndim == 2 else col
            normal[better] = nrm[better]

        # Room planes (inside): each wall's colour differs.
        for axis, value, col in [(2, 0.0, (0.55, 0.5, 0.45)), (2, 2.5, (0.9, 0.9, 0.9)), (0, -2.0, (0.4, 0.6, 0.8)),
                                 (0, 2.0, (0.8, 0.6, 0.4)), (1, -2.0, (0.5, 0.8, 0.5)), (1, 2.0, (0.8, 0.5, 0.7))]:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (value - eye[axis]) / dirs[:, axis]
            n = np.zeros_like(dirs)
            n[:, axis] = -np.sign(value) if value != 0 else 1.0
            consider(np.nan_to_num(t, nan=np.inf, posinf=np.inf, neginf=np.inf), np.asarray(col), n)
        for lo, hi, col in boxes:  # slab test
            with np.errstate(divide="ignore", invalid="ignore"):
                t1, t2 = (lo - eye) / dirs, (hi - eye) / dirs
            t_near = np.nanmax(np.minimum(t1, t2), 1)
            t_far = np.nanmin(np.maximum(t1, t2), 1)
            hit = (t_near <= t_far) & (t_near > 0)
            t = np.where(hit, t_near, np.inf)
            p = eye + t_near[:, None] * dirs
            face = np.argmin(np.minimum(np.abs(p - lo), np.abs(p - hi)), 1)
            n = np.zeros_like(dirs)
            n[np.arange(len(n)), face] = 1.0
            consider(t, col, n)
        for centre, radius, col in balls:
            oc = eye - centre
            a = (dirs**2).sum(1)
            b = 2 * dirs @ oc
            c = oc @ oc - radius**2
            disc = b * b - 4 * a * c
            t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
            n = eye + np.where(np.isfinite(t), t, 0)[:, None] * dirs - centre
            n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
            consider(t, col, n)
        hit_points = eye + np.where(np.isfinite(t_best), t_best, 0)[:, None] * dirs
        checker = (np.floor(hit_points * 4).astype(np.int64).sum(1) % 2) * 0.25 + 0.75
        shade = 0.6 + 0.4 * np.abs(normal @ np.array([0.3, 0.5, 0.81]))
        rgb = np.clip(colour * checker[:, None] * shade[:, None], 0, 1)
        depth = np.where(np.isfinite(t_best), t_best, 0.0)  # t is the camera-frame z (rays have z_cam = 1)
        frames.append(
            SyntheticFrame(
                name=f"synthetic-{f:03d}",
                color=(rgb.reshape(height, width, 3) * 255).round().astype(np.uint8),
                depth=depth.reshape(height, width).astype(np.float32),
                intrinsics=K,
                pose=pose,
            )
        )
    return frames


# ---------------------------------------------------------------------------------- labelled rooms

# Train ids of the synthetic rooms, in the ScanNet-20 label set so that the segmentation task's heads,
# metrics and pictures apply unchanged: wall, floor, cabinet (box), table (top + legs), and
# otherfurniture (an upright cylinder, a stool or bin).
ROOM_CLASSES = {"wall": 0, "floor": 1, "cabinet": 2, "table": 6, "otherfurniture": 19}


def _sample_rect(rng, origin, u, v, density):
    """Points uniformly on the parallelogram origin + s*u + t*v, s,t in [0,1], `density` per m²."""
    area = float(np.linalg.norm(np.cross(u, v)))
    n = max(1, int(round(area * density)))
    s, t = rng.uniform(0, 1, (2, n, 1))
    return origin + s * u + t * v


def _box_surface(rng, low, high, density, bottom=False):
    """The faces of an axis-aligned box (without its bottom unless asked)."""
    dx, dy, dz = np.diag(high - low)
    faces = [(low + dz, dx, dy),  # top
             (low, dx, dz), (low + dy, dx, dz), (low, dy, dz), (low + dx, dy, dz)]
    if bottom:
        faces.append((low, dx, dy))
    return np.concatenate([_sample_rect(rng, o, u, v, density) for o, u, v in faces])


def _cylinder_surface(rng, centre, radius, height, density):
    n_side = max(1, int(round(2 * np.pi * radius * height * density)))
    n_top = max(1, int(round(np.pi * radius**2 * density)))
    theta = rng.uniform(0, 2 * np.pi, n_side)
    side = np.c_[centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta), rng.uniform(0, height, n_side)]
    r, phi = radius * np.sqrt(rng.uniform(0, 1, n_top)), rng.uniform(0, 2 * np.pi, n_top)
    top = np.c_[centre[0] + r * np.cos(phi), centre[1] + r * np.sin(phi), np.full(n_top, height)]
    return np.concatenate([side, top])


def _table_surface(rng, centre, half, height, density):
    low = np.r_[centre - half, height - 0.04]
    parts = [_box_surface(rng, low, np.r_[centre + half, height], density, bottom=True)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            leg = centre + np.r_[sx, sy] * (half - 0.04)
            parts.append(_box_surface(rng, np.r_[leg - 0.025, 0.0], np.r_[leg + 0.025, height - 0.04], density * 4))
    return np.concatenate(parts)


def make_labelled_room(seed: int = 0, density: float = 120.0, num_objects: int = 6):
    """A labelled room as a `pointlift.data.scenes.Scene` (label set scannet20): floor and four walls
    of a random 3.5-5.5 m x 3.5-5.5 m room, and `num_objects` cabinets, tables and cylinders placed
    without overlap, sampled on their surfaces at about `density` points per m² (xyz in metres, z up).
    Colours: one base colour per object with per-point noise; wall and floor colours vary between rooms,
    and object colours are drawn from one range for every class, so colour alone cannot label a point."""
    from pointlift.data.scenes import Scene

    rng = np.random.default_rng(seed)
    size = rng.uniform(3.5, 5.5, 2)
    height = 2.5
    parts: list[tuple[np.ndarray, int, np.ndarray]] = []
    floor_colour, wall_colour = rng.uniform(0.3, 0.7, 3), rng.uniform(0.55, 0.95, 3)
    parts.append((_sample_rect(rng, np.zeros(3), np.r_[size[0], 0, 0], np.r_[0, size[1], 0], density),
                  ROOM_CLASSES["floor"], floor_colour))
    for origin, u in ((np.zeros(3), np.r_[size[0], 0, 0]), (np.r_[0, size[1], 0], np.r_[size[0], 0, 0]),
                      (np.zeros(3), np.r_[0, size[1], 0]), (np.r_[size[0], 0, 0], np.r_[0, size[1], 0])):
        parts.append((_sample_rect(rng, origin, u, np.r_[0, 0, height], density), ROOM_CLASSES["wall"],
                      wall_colour))
    placed: list[tuple[np.ndarray, float]] = []  # (centre, footprint radius)
    kinds = ("cabinet", "table", "otherfurniture")
    for index in range(num_objects):
        kind = kinds[index % 3] if index < 3 else kinds[int(rng.integers(3))]
        for _ in range(50):  # rejection sampling of a free spot
            if kind == "cabinet":
                half, tall = rng.uniform(0.2, 0.5, 2), rng.uniform(0.8, 1.8)
                reach = float(np.linalg.norm(half))
            elif kind == "table":
                half, tall = rng.uniform(0.35, 0.7, 2), rng.uniform(0.7, 0.8)
                reach = float(np.linalg.norm(half))
            else:
                radius, tall = rng.uniform(0.15, 0.3), rng.uniform(0.4, 0.9)
                reach = radius
            centre = rng.uniform(reach + 0.05, size - reach - 0.05)
            if all(np.linalg.norm(centre - c) > reach + r + 0.1 for c, r in placed):
                break
        else:
            continue
        placed.append((centre, reach))
        if kind == "cabinet":
            points = _box_surface(rng, np.r_[centre - half, 0.0], np.r_[centre + half, tall], density)
        elif kind == "table":
            points = _table_surface(rng, centre, half, tall, density)
        else:
            points = _cylinder_surface(rng, centre, radius, tall, density)
        parts.append((points, ROOM_CLASSES[kind], rng.uniform(0.1, 0.9, 3)))
    points = np.concatenate([p for p, _, _ in parts]).astype(np.float32)
    labels = np.concatenate([np.full(len(p), label, dtype=np.int64) for p, label, _ in parts])
    colours = np.concatenate([np.broadcast_to(c, p.shape) for p, _, c in parts])
    colours = np.clip(colours + rng.normal(0, 0.05, colours.shape), 0, 1).astype(np.float32)
    return Scene(f"synthetic_room_{seed:03d}", points, labels, "scannet20", colours)


def make_labelled_rooms(count: int, seed: int = 0, **kwargs) -> list:
    """`count` rooms with seeds seed, seed+1, ...; train and test sets use disjoint seed ranges."""
    return [make_labelled_room(seed + i, **kwargs) for i in range(count)]
