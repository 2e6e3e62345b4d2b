"""Which way is up in an RGB-D sequence's world frame, and the rotation that makes it +z.

Camera-to-world poses put frames in the frame of their reconstruction, whose axes are arbitrary:
7-Scenes' world is close to its first camera (y down), the HoloLens and SUN3D frames here are y up,
ScanNet's scans are z up. Scans seen at fine-tune time (ScanNet, S3DIS) are z up, so world-frame
pretraining needs the gravity direction of each sequence, measured from its data:

1. a first guess: cameras are held roughly upright, so the mean camera "down" axis (+y of an OpenCV
   camera, the pose's second column) points roughly down;
2. the answer: the mean normal of the horizontal surfaces (floor, tables, counters, ceiling) seen in
   the depth maps - every surface normal within a cone around the current guess, oriented along it,
   averaged, with the cone narrowed 30 -> 15 -> 8 degrees. Walls and furniture sides fall outside
   the cone, so pitched cameras (looking down at a table) do not bias the result as they bias step 1.
"""

from __future__ import annotations

import math

import numpy as np

CONES_DEG = (30.0, 15.0, 8.0)


def depth_normals(depth: np.ndarray, K: np.ndarray, stride: int = 4) -> np.ndarray:
    """Unit surface normals (M, 3) in camera coordinates from a depth map, every `stride`-th pixel, where
    the pixel and its right and lower neighbours are valid and on one surface (depth within 5 %)."""
    d = np.asarray(depth, dtype=np.float64)[::stride, ::stride]
    rows, cols = np.mgrid[0:d.shape[0], 0:d.shape[1]] * stride
    x = (cols - K[0, 2]) / K[0, 0] * d
    y = (rows - K[1, 2]) / K[1, 1] * d
    points = np.stack([x, y, d], -1)
    right = points[:-1, 1:] - points[:-1, :-1]
    down = points[1:, :-1] - points[:-1, :-1]
    centre = d[:-1, :-1]
    valid = (centre > 0) & (d[:-1, 1:] > 0) & (d[1:, :-1] > 0)
    valid &= (np.abs(d[:-1, 1:] - centre) < 0.05 * centre) & (np.abs(d[1:, :-1] - centre) < 0.05 * centre)
    normals = np.cross(right, down)[valid]
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals[length[:, 0] > 0] / length[length[:, 0] > 0]


def estimate_up(frames, stride: int = 4) -> tuple[np.ndarray, dict]:
    """The world's up direction (unit (3,)) of frames with depth, intrinsics and camera-to-world pose,
    and a record of how it was found (see the module docstring)."""
    frames = list(frames)
    if not frames:
        raise ValueError("estimate_up needs at least one frame")
    down = np.mean([np.asarray(f.pose)[:3, 1] for f in frames], axis=0)
    guess = -down / max(np.linalg.norm(down), 1e-12)
    normals = np.concatenate([depth_normals(f.depth, f.intrinsics, stride) @ np.asarray(f.pose)[:3, :3].T
                              for f in frames])
    up, used = guess, 0
    for cone in CONES_DEG:
        aligned = normals * np.sign(normals @ up)[:, None]
        inside = aligned[aligned @ up >= math.cos(math.radians(cone))]
        if len(inside) < 100:  # too few horizontal surfaces seen: keep the camera-based direction
            break
        mean = inside.mean(0)
        up, used = mean / np.linalg.norm(mean), len(inside)
    record = {"up": up.tolist(), "cameras_up": guess.tolist(),
              "angle_cameras_to_surfaces_deg": float(np.degrees(np.arccos(np.clip(up @ guess, -1, 1)))),
              "horizontal_normals": int(used), "normals": int(len(normals)), "frames": len(frames)}
    return up, record


def rotation_to_z(up) -> np.ndarray:
    """The smallest rotation (3, 3) taking the unit vector `up` to +z (Rodrigues)."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(up, z)
    s, c = np.linalg.norm(axis), float(up @ z)
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * skew + (1 - c) * skew @ skew
