"""Teacher outputs for I2P-MAE: rendering -> 2D teacher, and a per-shape cache of the teacher's maps.

Why a cache: the three depth views of a shape do not change under isotropic scaling and translation
(the renderer normalises both away), and those are the only augmentations of pointlift's recipe.
So the teacher runs once per shape; every epoch reuses its low-resolution maps. We store the maps
(3 views x C x h x w features and 3 x h x w saliency) rather than per-point vectors: they are small
(h, w = image_size / stride) and the exact per-point values are recovered from them by the same
bicubic read-back the uncached path uses (`pointlift.geometry.readback.read_back`).

The cache key hashes the teacher identity, a fingerprint of the teacher's actual weights (two teachers
with the same name and weights source, e.g. two random initialisations, must not share maps), the
rendering settings (image size, footprint), the storage dtype and the exact bytes of the
(un-augmented) point sets: any change makes a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry.render import released_teacher_input, render_depth_views, views_to_teacher_input
from pointlift.teachers.teacher import weights_fingerprint

CACHE_FORMAT = 1


# --------------------------------------------------------------------------------- teacher maps


@torch.no_grad()
def teacher_maps(teacher, points: torch.Tensor, image_size: int = 224, footprint: int = 5,
                 with_saliency: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Render points (B, N, 3) into 3 depth views and run the teacher once.

    Returns features (B, 3, C, h, w) and saliency (B, 3, h, w) (None unless asked), float32.
    """
    views = render_depth_views(points, image_size=image_size, footprint=footprint)
    images = views_to_teacher_input(views.images.float(), teacher.mean, teacher.std)
    features, saliency = teacher.features_and_saliency(images, with_saliency=with_saliency)
    batch = points.shape[0]
    features = features.float().reshape(batch, 3, *features.shape[1:])
    if saliency is not None:
        saliency = saliency.float().reshape(batch, 3, *saliency.shape[1:])
    return features, saliency


@torch.no_grad()
def released_view_maps(teacher, images: torch.Tensor, with_saliency: bool = True):
    """The official recipe's teacher pass on raw released views (B, 3, H, W): features (B, 3, C, h, w) and
    saliency (B, 3, h, w) (None unless asked), float32."""
    features, saliency = teacher.features_and_saliency(released_teacher_input(images), with_saliency=with_saliency)
    batch = images.shape[0]
    features = features.float().reshape(batch, 3, *features.shape[1:])
    if saliency is not None:
        saliency = saliency.float().reshape(batch, 3, *saliency.shape[1:])
    return features, saliency


# --------------------------------------------------------------------------------- cache


@dataclass
class TeacherMaps:
    """Per-shape teacher maps: features (S, 3, C, h, w) and saliency (S, 3, h, w), NumPy (memmap or in RAM)."""

    features: np.ndarray
    saliency: np.ndarray
    key: str
    built: bool  # True when computed in this call, False when read from disk

    def __len__(self) -> int:
        return len(self.features)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 tensors (3, C, h, w) and (3, h, w) for one shape."""
        return (torch.from_numpy(np.asarray(self.features[index], dtype=np.float32)),
                torch.from_numpy(np.asarray(self.saliency[index], dtype=np.float32)))


def cache_key(teacher_identity: str, image_size: int, footprint: int, storage_dtype: str,
              points: np.ndarray, weights: str = "") -> str:
    """Hash of everything the cached maps depend on; `weights` is the teacher's `weights_fingerprint`."""
    digest = hashlib.sha256()
    settings = {"format": CACHE_FORMAT, "teacher": teacher_identity, "weights": weights, "image_size": image_size,
                "footprint": footprint, "dtype": storage_dtype, "shape": list(points.shape)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(points, dtype=np.float32).tobytes())
    return digest.hexdigest()[:24]


def build_teacher_cache(teacher, points: np.ndarray, image_size: int = 224, footprint: int = 5,
                        cache_dir: str | Path | None = None, batch_size: int = 32,
                        storage_dtype: str = "float16", progress: bool = False) -> TeacherMaps:
    """Teacher maps for every shape of points (S, N, 3), read from `cache_dir` when present.

    With `cache_dir=None` the maps stay in memory. On disk, each key gets a directory holding
    `features.npy`, `saliency.npy` and `meta.json`; it is built in a temporary directory and renamed
    into place, so an interrupted build never leaves a half-written entry.
    """
    if storage_dtype not in ("float16", "float32"):
        raise PointliftConfigError(f"cache storage_dtype must be float16 or float32, got {storage_dtype!r}")
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 3 or points.shape[-1] != 3 or len(points) == 0:
        raise PointliftDataError("<points>", f"expected point sets (S, N, 3), got {points.shape}")
    weights = weights_fingerprint(teacher)
    key = cache_key(teacher.identity(), image_size, footprint, storage_dtype, points, weights)
    entry = None if cache_dir is None else Path(cache_dir).expanduser() / key
    if entry is not None and (entry / "meta.json").is_file():
        try:
            features = np.load(entry / "features.npy", mmap_mode="r")
            saliency = np.load(entry / "saliency.npy", mmap_mode="r")
        except (OSError, ValueError) as error:
            raise PointliftDataError(entry, f"unreadable teacher cache ({error}); delete it to rebuild") from None
        if len(features) != len(points) or len(saliency) != len(points):
            raise PointliftDataError(entry, "teacher cache does not match the shapes; delete it to rebuild")
        return TeacherMaps(features, saliency, key, built=False)

    device = next(teacher.parameters()).device
    dtype = np.float16 if storage_dtype == "float16" else np.float32
    features = saliency = None
    tmp = None
    if entry is not None:
        tmp = entry.with_name(f"{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    from pointlift.progress import bar

    for start in bar(range(0, len(points), batch_size), desc="teacher cache", unit="batch", wanted=progress):
        chunk = torch.from_numpy(points[start:start + batch_size]).to(device)
        feats, sal = teacher_maps(teacher, chunk, image_size, footprint)
        if features is None:
            shape_f = (len(points), *feats.shape[1:])
            shape_s = (len(points), *sal.shape[1:])
            if tmp is None:
                features, saliency = np.empty(shape_f, dtype), np.empty(shape_s, dtype)
            else:
                features = np.lib.format.open_memmap(tmp / "features.npy", "w+", dtype, shape_f)
                saliency = np.lib.format.open_memmap(tmp / "saliency.npy", "w+", dtype, shape_s)
        features[start:start + len(chunk)] = feats.cpu().numpy().astype(dtype)
        saliency[start:start + len(chunk)] = sal.cpu().numpy().astype(dtype)
    if tmp is None:
        return TeacherMaps(features, saliency, key, built=True)
    features.flush()
    saliency.flush()
    del features, saliency
    meta = {"teacher": teacher.identity(), "weights": weights, "image_size": image_size, "footprint": footprint,
            "dtype": storage_dtype, "num_shapes": len(points), "format": CACHE_FORMAT}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, entry)
    except OSError:  # another process finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    return TeacherMaps(np.load(entry / "features.npy", mmap_mode="r"),
                       np.load(entry / "saliency.npy", mmap_mode="r"), key, built=True)
