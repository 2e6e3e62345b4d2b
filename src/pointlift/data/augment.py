"""Point-cloud augmentations of whole scans (scene segmentation's training recipe), in NumPy with an explicit
generator so that a sample's draws depend only on the stream the trainer gives it. Each transform is a function
that makes its own draws; `augment_scene` chains them in the recipe's order.

PPKT (`methods.ppkt.dataset`) and shape classification (`tasks.shape_classification.data`) augment with
torch's global generator and other draws (rotation about a configurable axis, one flip, per-axis scale and
shift, probabilities of the released recipe), so they keep their own code: sharing these functions would
change their runs."""

from __future__ import annotations

import numpy as np


def elastic_distortion(points: np.ndarray, granularity: float, magnitude: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement field: Gaussian noise on a grid of `granularity` metres, blurred, read
    trilinearly at each point and scaled by `magnitude` (the ScanNet recipe's elastic augmentation)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    low = points.min(0)
    shape = np.floor((points.max(0) - low) / granularity).astype(int) + 3
    noise = rng.standard_normal((3, *shape)).astype(np.float32)
    for c in range(3):
        noise[c] = gaussian_filter(noise[c], sigma=1.0, mode="constant")
    grid = ((points - low) / granularity + 1).T
    offset = np.stack([map_coordinates(noise[c], grid, order=1, mode="nearest") for c in range(3)], 1)
    return points + offset * magnitude


def rotate_about_up(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation by an angle U(0, 2 pi) about z, the scans' up axis (one draw)."""
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32).T


def flip_axes(points: np.ndarray, rng: np.random.Generator, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Each of `axes` negated with probability 1/2 (one draw per axis, in order); a copy, the input is kept."""
    points = points.copy()
    for axis in axes:
        if rng.random() < 0.5:
            points[:, axis] = -points[:, axis]
    return points


def scale(points: np.ndarray, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """One isotropic factor U(low, high) for the whole scan (one draw)."""
    return points * rng.uniform(low, high)


def jitter(points: np.ndarray, sigma: float, clip: float, rng: np.random.Generator) -> np.ndarray:
    """Per-coordinate Gaussian noise N(0, sigma), clipped to +-`clip`."""
    return points + np.clip(rng.normal(0, sigma, points.shape), -clip, clip)


def color_jitter(colors: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise N(0, sigma) on RGB in [0, 1], kept in [0, 1]."""
    return np.clip(colors + rng.normal(0, sigma, colors.shape), 0, 1)


def augment_scene(points: np.ndarray, features: np.ndarray, config, feature_kind: str,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training augmentation of one scan (points centred on their mean first), in this draw order: elastic
    distortion, rotation about z, flips of x and y, scale, jitter, colour jitter. `config`: the settings of a
    `SegAugmentConfig` (elastic, elastic_params, rotate_up, flip, scale, jitter_sigma, jitter_clip, color_jitter)."""
    points = points - points.mean(0, keepdims=True)
    if config.elastic:
        for granularity, magnitude in config.elastic_params:
            points = elastic_distortion(points, granularity, magnitude, rng)
    if config.rotate_up:
        points = rotate_about_up(points, rng)
    if config.flip:
        points = flip_axes(points, rng)
    points = scale(points, *config.scale, rng)
    if config.jitter_sigma > 0:
        points = jitter(points, config.jitter_sigma, config.jitter_clip, rng)
    if config.color_jitter > 0 and feature_kind == "rgb":
        features = color_jitter(features, config.color_jitter, rng)
    return points.astype(np.float32), features.astype(np.float32)
