"""Teacher-feature cache: the frozen teacher's low-resolution maps, computed once per view.

The teacher is frozen and PPKT's augmentations move the points, not the image (3D rotations, flips
and scaling leave every pixel's feature unchanged; a horizontal image flip is applied to the cached
map itself, which is exact for the bilinear UPL and equal to flipping the teacher's input up to the
teacher's own, approximate, flip symmetry). So the teacher forward - most of a training step's cost on
a CPU - only has to run once per view. Maps are stored before the UPL (it trains) as one float16
`features.npy` (V, C, h, w) read memory-mapped, beside `cache.json` holding the key.

The key hashes the teacher identity (model, weights file, stage, precision), a hash of the teacher's
actual parameter values, the image size and the view names: any change makes a new cache instead of silently reusing stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pointlift.errors import PointliftDataError
from pointlift.teachers.teacher import weights_fingerprint

FEATURES_FILE = "features.npy"
META_FILE = "cache.json"


def cache_key(teacher_identity: str, image_hw: tuple[int, int], view_names: list[str], weights: str = "") -> str:
    """Hash of everything the cached maps depend on."""
    payload = json.dumps({"teacher": teacher_identity, "weights": weights, "image_hw": list(map(int, image_hw)),
                          "views": list(view_names)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class TeacherFeatureCache:
    """Read-only view of a filled cache: `cache[i]` -> float32 tensor (C, h, w) of view i."""

    def __init__(self, directory: Path, key: str, features: np.ndarray, built_now: bool, build_seconds: float):
        self.directory = directory
        self.key = key
        self.features = features
        self.built_now = built_now
        self.build_seconds = build_seconds

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.features[index], dtype=np.float32))


def _valid_existing(directory: Path, key: str, num_views: int) -> np.ndarray | None:
    meta_path, features_path = directory / META_FILE, directory / FEATURES_FILE
    if not (meta_path.is_file() and features_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        features = np.load(features_path, mmap_mode="r")
    except (ValueError, OSError):
        return None  # a corrupt or half-written cache is rebuilt, never trusted
    if meta.get("key") != key or features.shape[0] != num_views or list(features.shape) != meta.get("shape"):
        return None
    return features


@torch.no_grad()
def open_teacher_cache(directory: str | Path, teacher, image_hw: tuple[int, int], view_names: list[str],
                       load_image: Callable[[int], torch.Tensor], batch_size: int = 8,
                       device: str | torch.device = "cpu", progress: bool = False) -> TeacherFeatureCache:
    """Open the cache in `directory` for these views, computing it first if missing or stale.

    `load_image(i)` gives view i as float (3, H, W) in [0, 1] at `image_hw`. A stale cache (other
    teacher, weights, image size or views) is replaced; the new one is written to temporary files
    and moved into place, so an interrupted build never leaves a cache that looks complete.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = cache_key(teacher.identity(), image_hw, view_names, weights_fingerprint(teacher))
    existing = _valid_existing(directory, key, len(view_names))
    if existing is not None:
        return TeacherFeatureCache(directory, key, existing, built_now=False, build_seconds=0.0)
    if not view_names:
        raise PointliftDataError(directory, "teacher cache: no views to compute")

    from pointlift.progress import bar as progress_bar

    start = time.perf_counter()
    tmp_path = directory / (FEATURES_FILE + f".tmp-{os.getpid()}")
    features = None
    teacher = teacher.to(device)
    bar = progress_bar(total=len(view_names), desc="teacher cache", wanted=progress)
    try:
        for first in range(0, len(view_names), batch_size):
            indices = range(first, min(first + batch_size, len(view_names)))
            images = torch.stack([load_image(i) for i in indices]).to(device)
            if tuple(images.shape[-2:]) != tuple(image_hw):
                raise PointliftDataError(directory, f"view image is {tuple(images.shape[-2:])}, cache expects {image_hw}")
            maps = teacher.features(teacher.normalize(images)).float().cpu().numpy().astype(np.float16)
            if features is None:
                features = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.float16,
                                                     shape=(len(view_names), *maps.shape[1:]))
            features[first:first + len(indices)] = maps
            bar.update(len(indices))
        features.flush()
        shape = list(features.shape)
        del features
        os.replace(tmp_path, directory / FEATURES_FILE)
        meta = {"key": key, "teacher": teacher.identity(), "image_hw": list(image_hw), "shape": shape,
                "num_views": len(view_names)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
    finally:
        bar.close()
        tmp_path.unlink(missing_ok=True)
    loaded = np.load(directory / FEATURES_FILE, mmap_mode="r")
    return TeacherFeatureCache(directory, key, loaded, built_now=True, build_seconds=time.perf_counter() - start)
