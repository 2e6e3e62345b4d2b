"""Point-cloud augmentations of whole scans (scene segmentation's training recipe), in NumPy with an explicit
generator so that a sample's draws depend only on the stream the trainer gives it."""

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
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        points = points @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32).T
    if config.flip:
        for axis in (0, 1):
            if rng.random() < 0.5:
                points[:, axis] = -points[:, axis]
    points = points * rng.uniform(*config.scale)
    if config.jitter_sigma > 0:
        points = points + np.clip(rng.normal(0, config.jitter_sigma, points.shape), -config.jitter_clip,
                                  config.jitter_clip)
    if config.color_jitter > 0 and feature_kind == "rgb":
        features = np.clip(features + rng.normal(0, config.color_jitter, features.shape), 0, 1)
    return points.astype(np.float32), features.astype(np.float32)
