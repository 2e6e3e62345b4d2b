"""Scans as training samples: splits, the label-efficiency subsets, per-point input features, the dataset
(crops, subsampling and augmentation of each scan) and the batched voxelisation."""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from pointlift.data.augment import augment_scene
from pointlift.data.scenes import IGNORE, Scene, list_scenes, read_scene, scene_group, select_scenes
from pointlift.errors import PointliftDataError
from pointlift.geometry.voxel import average_per_voxel, voxelize
from pointlift.tasks.segmentation.config import SegAugmentConfig, SegDataConfig


def load_split(data: SegDataConfig, units: list[str]) -> list[Scene]:
    names = list_scenes(data.layout, data.root)
    chosen = select_scenes(names, units)
    missing = [u for u in units if not any(n == u or scene_group(n) == u for n in chosen)]
    if missing:
        raise PointliftDataError(data.root, f"no scans for split units {missing} (layout {data.layout})")
    return [read_scene(data.layout, data.root, n) for n in chosen]


def _name_seed(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) + 1_000_003 * seed) % 2**32


def label_efficient_subset(scenes: list[Scene], scene_fraction: float, point_fraction: float,
                           seed: int, points_per_scene: int | None = None) -> list[Scene]:
    """The training scans of a label-efficiency setting: ceil(fraction * n) scans drawn with `seed`, and
    in each a fixed random `point_fraction` of its labelled points - or exactly `points_per_scene` of them
    (all if fewer) - keeps its label (the rest IGNORE). The masks depend only on (scan name, seed), not on
    the training order or the network, so both arms of a paired comparison see the same labels."""
    rng = np.random.default_rng(seed)
    count = max(1, math.ceil(scene_fraction * len(scenes)))
    order = sorted(rng.choice(len(scenes), size=count, replace=False).tolist())
    chosen = [scenes[i] for i in order]
    if point_fraction >= 1 and points_per_scene is None:
        return chosen
    out = []
    for scene in chosen:
        labels = scene.labels.copy()
        labelled = np.flatnonzero(labels != IGNORE)
        if points_per_scene is not None:
            keep = min(points_per_scene, len(labelled))
        else:
            keep = max(1, math.ceil(point_fraction * len(labelled))) if len(labelled) else 0
        point_rng = np.random.default_rng(_name_seed(scene.name, seed))
        dropped = np.setdiff1d(labelled, point_rng.choice(labelled, size=keep, replace=False))
        labels[dropped] = IGNORE
        out.append(Scene(scene.name, scene.points, labels, scene.label_set, scene.colors, scene.intensity,
                         scene.raw_labels, scene.path))
    return out


def subsample(keep: np.ndarray, labels: np.ndarray, size: int, keep_labelled: bool, rng) -> np.ndarray:
    """`size` of the point indices `keep`, sorted; `keep_labelled`: every labelled one stays (scarce labels
    must not be subsampled away), the rest filled at random."""
    if not keep_labelled:
        return np.sort(rng.choice(keep, size=size, replace=False))
    labelled, rest = keep[labels[keep] != IGNORE], keep[labels[keep] == IGNORE]
    fill = rng.choice(rest, size=max(0, min(len(rest), size - len(labelled))), replace=False)
    return np.sort(np.concatenate([labelled, fill]))


def scene_features(scene: Scene, kind: str) -> np.ndarray:
    """Per-point input features: RGB in [0, 1], LiDAR intensity, or a constant 1."""
    if kind == "rgb":
        if scene.colors is None:
            raise PointliftDataError(scene.path or scene.name, "has no colours; use data.features constant")
        return scene.colors.astype(np.float32)
    if kind == "intensity":
        if scene.intensity is None:
            raise PointliftDataError(scene.path or scene.name, "has no intensity; use data.features constant")
        return scene.intensity[:, None].astype(np.float32)
    return np.ones((len(scene), 1), dtype=np.float32)


def feature_channels(kind: str) -> int:
    return 3 if kind == "rgb" else 1


class SceneDataset(torch.utils.data.Dataset):
    """Scans as training (augmented, optionally cropped / subsampled) or evaluation (as read) samples:
    {"points" (N,3), "features" (N,F), "labels" (N,), "index"}."""

    def __init__(self, scenes: list[Scene], data: SegDataConfig, augment: SegAugmentConfig | None = None):
        self.scenes = scenes
        self.data = data
        self.augment = augment
        self.features = [scene_features(s, data.features) for s in scenes]

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        scene = self.scenes[index]
        points, features, labels = scene.points, self.features[index], scene.labels
        if self.augment is not None:
            # numpy randomness from torch's generator, which the trainer seeds (and checkpoints)
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
            keep = np.arange(len(points))
            if self.data.crop_radius is not None:
                centre = points[rng.integers(len(points)), :2]
                keep = keep[np.linalg.norm(points[keep, :2] - centre, axis=1) <= self.data.crop_radius]
            if self.data.max_points is not None and len(keep) > self.data.max_points:
                keep = subsample(keep, labels, self.data.max_points, self.data.points_per_scene is not None, rng)
            points, features, labels = points[keep], features[keep], labels[keep]
            points, features = augment_scene(points, features, self.augment, self.data.features, rng)
        return {"points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
                "features": torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
                "labels": torch.from_numpy(labels.astype(np.int64)), "index": index}


class SceneCollate:
    """Scans -> one batched voxelisation: coords (M,4), features (M,F) = mean per voxel, inverse (N,)
    point -> voxel row, labels (N,) per point, batch_size."""

    def __init__(self, voxel_size: float):
        self.voxel_size = voxel_size

    def __call__(self, items: list[dict]) -> dict:
        points = torch.cat([item["points"] for item in items])
        batch_index = torch.cat([torch.full((len(item["points"]),), i, dtype=torch.long)
                                 for i, item in enumerate(items)])
        voxels = voxelize(points, self.voxel_size, batch_index)
        features = average_per_voxel(torch.cat([item["features"] for item in items]), voxels)
        return {"coords": voxels.coords, "features": features, "inverse": voxels.inverse,
                "labels": torch.cat([item["labels"] for item in items]),
                "batch_size": torch.tensor(len(items))}
