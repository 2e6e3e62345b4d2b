"""Shape-classification data: shape splits, few-shot subsets, datasets, augmentation and voxelising collates.

Two point-cloud pipelines (`ShapeDataConfig.pipeline`), both over (N, 3) point arrays of any shape set:
- `released` (Image2Point's released ModelNet code; tests/test_image2point_reference.py checks it against
  the reference batch): points as given (no renormalisation), training augmentation `released_augment`
  (shuffle; per-axis scale U(0.9, 1.1) with p = 0.9; shift U(-0.2, 0.2) with p = 0.9; jitter U(+-0.0125)
  per coordinate with p = 0.7), then `released_voxelize`: round(xyz / voxel) minus the per-cloud minimum,
  the first point of each voxel, voxels in lexicographic (x, y, z) order, features = that point's xyz.
- `voxel_mean` (pointlift's earlier pipeline, PPKT's downstream evaluation): unit-sphere normalisation,
  scale/shift/clipped-Gaussian jitter always applied (`augment_points`), floor voxelisation, features =
  mean xyz per voxel.

The few-shot protocol samples K training shapes per class with a seed (`few_shot_indices`); validation
shapes are carved from the training split with a fixed seed (`build_datasets_with_validation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch

from pointlift.engine.config import InputPathStr
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry.voxel import average_per_voxel, voxelize


@dataclass
class ShapeDataConfig:
    """Which shapes, how they are voxelised and which training subset is used."""

    # "modelnet10" (voxel npz), "modelnet40" (h5 folder), or any pointlift.data.shape_sets format / "auto"
    dataset: str = "modelnet10"
    variant: str = "PB_T50_RS"  # ScanObjectNN file variant (shape_sets)
    # the shapes: a file or folder (modelnet40: the folder of ply_data_*.h5)
    path: InputPathStr = "../shared/data/modelnet10_vox32.npz"
    voxel_size: float = 0.05  # on unit-sphere shapes (released ModelNet40 setting)
    # "released": Image2Point's released pipeline; "voxel_mean": pointlift's earlier one (see module doc)
    pipeline: Literal["released", "voxel_mean"] = "voxel_mean"
    # `released` pipeline only: scale each shape into the unit sphere once, when it is loaded. The
    # released code never normalises (its ModelNet40 h5 files come normalised by their provider); the
    # ModelNet10 voxel-grid file does not (its points fill [-0.5, 0.5]^3). None = True for modelnet10.
    normalize: Optional[bool] = None
    augment: bool = True  # training augmentation of the chosen pipeline
    input_scale: float = 1.0  # multiplies the xyz features fed to the stem
    max_points: Optional[int] = None  # random subset of points per shape (None = all)
    train_per_class: Optional[int] = None  # few-shot K (or a budget subset); None = every shape
    subset_seed: int = 0  # seed of the train_per_class / test_per_class subsets
    test_per_class: Optional[int] = None  # evaluate on a class-balanced test subset (budget)
    # validation shapes per class carved from the *training* split (fixed seed, disjoint from the training
    # subset): settings and epochs-to-target are judged on it, never on the test split. None = no validation.
    val_per_class: Optional[int] = None
    # pointlift's option for the CPU: build each training batch's kernel maps in the collate, so that a DataLoader
    # worker (train.num_workers > 0) makes them beside the step (the same run, bit for bit; sparse/prebuilt.py)
    kernel_maps_in_loader: bool = False

    def __post_init__(self):
        from pointlift.data.shape_sets import FORMATS

        if self.dataset not in ("modelnet10", "modelnet40", "auto", *FORMATS):
            raise PointliftConfigError(f"data.dataset: must be modelnet10, modelnet40, auto or one of {FORMATS}; "
                                       f"got {self.dataset!r}")
        if self.voxel_size <= 0:
            raise PointliftConfigError(f"data.voxel_size: must be > 0, got {self.voxel_size}")
        for key in ("train_per_class", "test_per_class", "max_points", "val_per_class"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise PointliftConfigError(f"data.{key}: must be >= 1 or null, got {value}")


# ---------------------------------------------------------------------------------------- data


def load_shape_split(config: ShapeDataConfig, split: str):
    """The `ShapeSet` of one split (ModelNet10 voxel npz or ModelNet40 HDF5 folder)."""
    from pointlift.data.shapes import load_modelnet10_vox, load_modelnet40_h5

    if config.dataset == "modelnet10":
        return load_modelnet10_vox(config.path, split)
    if config.dataset == "modelnet40":
        return load_modelnet40_h5(config.path, split)
    from pointlift.data.shape_sets import ShapeSetConfig, load_shape_set  # any other shape set, raw points

    return load_shape_set(ShapeSetConfig(format=config.dataset, path=config.path, variant=config.variant,
                                         num_points=2048), split)


def few_shot_indices(labels: np.ndarray, per_class: int, seed: int, allow_fewer: bool = False) -> np.ndarray:
    """`per_class` random indices of every class (sorted), reproducible from `seed`. A class with fewer
    shapes is an error, or with `allow_fewer` gives all its shapes (a budget subset of a test split)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class and not allow_fewer:
            raise PointliftDataError("<labels>", f"class {label} has {len(members)} shapes, fewer than {per_class}")
        chosen.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point lies on the unit sphere."""
    centred = points - points.mean(0, keepdims=True)
    radius = float(np.linalg.norm(centred, axis=1).max())
    return centred / radius if radius > 0 else centred


class _LabelledPointSets(torch.utils.data.Dataset):
    """float32 point sets (each passed through `prepare` once) with int64 labels; items {"points", "label"}."""

    def __init__(self, points: list[np.ndarray], labels: np.ndarray, augment: bool, max_points: int | None,
                 prepare=lambda p: p):
        if len(points) != len(labels):
            raise PointliftDataError("<shapes>", f"{len(points)} point sets but {len(labels)} labels")
        self.points = [prepare(np.asarray(p, dtype=np.float32)).astype(np.float32) for p in points]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augment = augment
        self.max_points = max_points

    def __len__(self) -> int:
        return len(self.points)


class VoxelShapeDataset(_LabelledPointSets):
    """Normalised (and, for training, augmented) point sets with labels: {"points", "label"}."""

    def __init__(self, points: list[np.ndarray], labels: np.ndarray, augment: bool = False,
                 max_points: int | None = None):
        super().__init__(points, labels, augment, max_points, prepare=normalize_unit_sphere)

    def __getitem__(self, index: int) -> dict:
        points = torch.from_numpy(self.points[index])
        if self.max_points is not None and len(points) > self.max_points:
            points = points[torch.randperm(len(points))[: self.max_points]]
        if self.augment:
            points = augment_points(points)
        return {"points": points, "label": int(self.labels[index])}


def augment_points(points: torch.Tensor) -> torch.Tensor:
    """pointlift's earlier augmentation (`voxel_mean` pipeline; not the released one, see `released_augment`):
    scale U(0.9, 1.1) per axis, shift U(-0.2, 0.2) and jitter, always applied.

    Jitter is N(0, 0.01) clipped to +-0.025. Uses torch's global RNG, which the trainer seeds.
    """
    scale = torch.empty(1, 3).uniform_(0.9, 1.1)
    shift = torch.empty(1, 3).uniform_(-0.2, 0.2)
    jitter = (torch.randn_like(points) * 0.01).clamp_(-0.025, 0.025)
    return points * scale + shift + jitter


def released_augment(points: torch.Tensor) -> torch.Tensor:
    """The released training augmentation, in its order: shuffle the points; with p = 0.9 scale each axis
    by U(0.9, 1.1); with p = 0.9 shift by U(-0.2, 0.2) per axis; with p = 0.7 add U(-0.0125, 0.0125) to
    every coordinate. No rotation. torch's global RNG (seeded by the trainer) draws everything."""
    points = points[torch.randperm(len(points))]
    if torch.rand(()) < 0.9:
        points = points * torch.empty(1, 3).uniform_(0.9, 1.1)
    if torch.rand(()) < 0.9:
        points = points + torch.empty(1, 3).uniform_(-0.2, 0.2)
    if torch.rand(()) < 0.7:
        points = points + (torch.rand_like(points) - 0.5) * 0.025
    return points


def released_voxelize(points: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image2Point's released quantisation of one cloud (N, 3) -> (coords (M, 3) int64, features (M, 3)
    float32, kept point indices (M,)): round(xyz / voxel) in float32 (half to even), minus the per-cloud
    minimum; the FIRST point of each voxel is kept; voxels in lexicographic (x, y, z) order; features are
    the kept points' xyz (not centred, not quantised)."""
    xyz = np.asarray(points, dtype=np.float32)
    grid = np.round(xyz / np.float32(voxel_size))
    grid -= grid.min(0, keepdims=True)
    grid = grid.astype(np.int64)
    # one int64 key per voxel in (x, y, z) order: np.unique over it (stable, first occurrence) is
    # np.unique(grid, axis=0) without the row-wise sort, which dominated the collate
    extent = grid.max(0) + 1 if len(grid) else np.ones(3, dtype=np.int64)
    keys = (grid[:, 0] * extent[1] + grid[:, 1]) * extent[2] + grid[:, 2]
    _, index = np.unique(keys, return_index=True)
    return grid[index], xyz[index], index


class ReleasedCollate:
    """A list of {"points", "label"} -> coords (M, 4) [b, x, y, z], features (M, 3), labels (B,), with
    `released_voxelize` per cloud (features times `input_scale`, 1 = released)."""

    def __init__(self, voxel_size: float, input_scale: float = 1.0):
        self.voxel_size = voxel_size
        self.input_scale = input_scale

    def __call__(self, items: list[dict]) -> dict:
        coords, features = [], []
        for b, item in enumerate(items):
            c, f, _ = released_voxelize(item["points"].numpy(), self.voxel_size)
            coords.append(np.concatenate([np.full((len(c), 1), b, dtype=np.int64), c], axis=1))
            features.append(f)
        labels = torch.tensor([item["label"] for item in items], dtype=torch.long)
        return {"coords": torch.from_numpy(np.concatenate(coords)),
                "features": torch.from_numpy(np.concatenate(features)) * self.input_scale, "labels": labels}


class ReleasedShapeDataset(_LabelledPointSets):
    """Point sets as given (or unit-sphere scaled once with `normalize`), `released_augment` when training.

    The released code keeps `xyz[:num_points]`; its ModelNet40 h5 clouds come in random point order, so that
    is a random subset. Point sets with more than `max_points` points are therefore put in a fixed random
    order once (seeded by their index): sorted inputs such as voxel-grid centres would otherwise be cut to
    one end of the shape whenever they are not shuffled first (every evaluation)."""

    def __init__(self, points: list[np.ndarray], labels: np.ndarray, augment: bool = False,
                 max_points: int | None = None, normalize: bool = False):
        super().__init__(points, labels, augment, max_points,
                         prepare=normalize_unit_sphere if normalize else (lambda p: p))
        if max_points is not None:
            self.points = [p[np.random.default_rng(index).permutation(len(p))] if len(p) > max_points else p
                           for index, p in enumerate(self.points)]

    def __getitem__(self, index: int) -> dict:
        points = torch.from_numpy(self.points[index])
        if self.augment:
            points = released_augment(points)  # shuffles first, so a cut below keeps random points
        if self.max_points is not None and len(points) > self.max_points:
            points = points[: self.max_points]  # released: xyz[:num_points]
        return {"points": points, "label": int(self.labels[index])}


def make_collate(config: "ShapeDataConfig"):
    """The collate function of `config.pipeline`."""
    cls = ReleasedCollate if config.pipeline == "released" else VoxelCollate
    return cls(config.voxel_size, config.input_scale)


class VoxelCollate:
    """A list of {"points", "label"} -> one batched voxelisation: coords (M,4), features (M,3), labels (B,)."""

    def __init__(self, voxel_size: float, input_scale: float = 1.0):
        self.voxel_size = voxel_size
        self.input_scale = input_scale

    def __call__(self, items: list[dict]) -> dict:
        points = torch.cat([item["points"] for item in items])
        batch_index = torch.cat([torch.full((len(item["points"]),), i, dtype=torch.long)
                                 for i, item in enumerate(items)])
        voxels = voxelize(points, self.voxel_size, batch_index)
        features = average_per_voxel(points, voxels) * self.input_scale
        labels = torch.tensor([item["label"] for item in items], dtype=torch.long)
        return {"coords": voxels.coords, "features": features, "labels": labels}


def points_to_batch(points: torch.Tensor, voxel_size: float, input_scale: float = 1.0,
                    pipeline: str = "voxel_mean", normalize: bool = True) -> dict:
    """(B, P, 3) point sets -> the classifier's batch (no augmentation, no labels). `voxel_mean` always
    normalises each set to the unit sphere; `released` only with `normalize`."""
    def prepare(p):
        p = p.detach().cpu().numpy().astype(np.float32)
        return normalize_unit_sphere(p) if (normalize or pipeline != "released") else p

    items = [{"points": torch.from_numpy(prepare(p).astype(np.float32)), "label": -1} for p in points]
    collate = ReleasedCollate if pipeline == "released" else VoxelCollate
    batch = collate(voxel_size, input_scale)(items)
    return {k: v.to(points.device) for k, v in batch.items()}


VALIDATION_SEED = 54321  # the validation shapes are the same whatever the few-shot subset seed


def build_datasets_with_validation(config: ShapeDataConfig, train_split=None, test_split=None):
    """(train, validation or None, test, class names). Validation = `val_per_class` shapes per class of the
    training split, removed before the training subset is drawn, so the two never overlap."""
    train_split = train_split if train_split is not None else load_shape_split(config, "train")
    test_split = test_split if test_split is not None else load_shape_split(config, "test")
    labels = np.asarray(train_split.labels)
    available = np.arange(len(labels))
    val_index = None
    if config.val_per_class is not None:
        val_index = few_shot_indices(labels, config.val_per_class, VALIDATION_SEED)
        available = np.setdiff1d(available, val_index)
    train_index = available
    if config.train_per_class is not None:
        train_index = available[few_shot_indices(labels[available], config.train_per_class, config.subset_seed)]
    test_index = np.arange(len(test_split.labels))
    if config.test_per_class is not None:
        test_index = few_shot_indices(test_split.labels, config.test_per_class, seed=12345, allow_fewer=True)
    if config.pipeline == "released":
        normalize = config.normalize if config.normalize is not None else config.dataset == "modelnet10"

        def make(split, index, augment):
            return ReleasedShapeDataset([split.points[i] for i in index], np.asarray(split.labels)[index],
                                        augment=augment, max_points=config.max_points, normalize=normalize)
    else:
        def make(split, index, augment):
            return VoxelShapeDataset([split.points[i] for i in index], np.asarray(split.labels)[index],
                                     augment=augment, max_points=config.max_points)
    train = make(train_split, train_index, config.augment)
    val = make(train_split, val_index, False) if val_index is not None else None
    test = make(test_split, test_index, False)
    return train, val, test, list(train_split.class_names)


def build_datasets(config: ShapeDataConfig, train_split=None, test_split=None):
    """(train dataset, test dataset, class names) following the subset settings of `config`."""
    train, _, test, names = build_datasets_with_validation(config, train_split, test_split)
    return train, test, names
