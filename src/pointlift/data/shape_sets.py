"""One interface to every shape set: pretraining data, fine-tuning data and evaluation data alike.

A `ShapeSetConfig` names a layout on disk and how its shapes become network input: the number of
points per shape and the normalisation. `load_points(config, split)` is the single place that
applies them, so pretraining, embedding and evaluation of one dataset see identical inputs.

Layouts (`format`), each read by the existing loaders of `pointlift.data.shapes` where one exists:

- `modelnet10_vox`: npz with `X_train`/`y_train`/`X_test`/`y_test` occupancy grids;
- `modelnet40_h5`: `modelnet40_ply_hdf5_2048/` (`shape_names.txt`, `ply_data_*.h5`, `*_files.txt`);
- `modelnet40_resampled`: `modelnet40_normal_resampled/` (`<class>/<id>.txt`, `modelnet40_*.txt`);
- `scanobjectnn_h5`: `h5_files/` (or its `main_split/`) with `training_*.h5`/`test_*.h5`, `variant`
  picks the file (OBJ_BG, PB_T50_RS, ...; OBJ_ONLY reads `main_split_nobg/`);
- `shapenet55`: the Point-BERT / I2P-MAE layout: `shapenet_pc/<synset>-<model>.npy` (8192, 3) and
  `train.txt`/`test.txt` (in the root or in `ShapeNet-55/`) listing those file names; the label is
  the synset, classes in sorted synset order (the order of those projects' label tables);
- `point_folder`: your own point files, any format `read_point_file` reads (.ply .pcd .npy .npz .off
  .bin; raw .bin needs `columns`): labelled as `root/{train,test}/<class>/<file>` or
  `root/<class>/{train,test}/<file>` (the raw ModelNet layout); for self-supervised pretraining also
  unlabelled, as `root/train/<class>/<file>` without `test/`, or a flat `root/<file>` (one class, the
  folder's name; a train split only).

`format: auto` detects the layout from the path.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from pointlift.data.shapes import (
    SCANOBJECTNN_VARIANTS,
    ShapeSet,
    load_modelnet10_vox,
    load_modelnet40_h5,
    load_modelnet40_resampled,
    load_scanobjectnn_h5,
)
from pointlift.engine.config import InputPathStr, require
from pointlift.errors import PointliftConfigError, PointliftDataError

__all__ = [
    "FORMATS",
    "POINT_SUFFIXES",
    "ShapeSetConfig",
    "detect_format",
    "list_point_files",
    "load_points",
    "load_shape_set",
    "prepare_point_sets",
]

# Far above any published recipe (1k-8k points); a bound that refuses a typo before it allocates memory.
MAX_POINTS_PER_SHAPE = 100_000

FORMATS = ("modelnet10_vox", "modelnet40_h5", "modelnet40_resampled", "scanobjectnn_h5", "shapenet55",
           "point_folder")
POINT_SUFFIXES = (".ply", ".pcd", ".npy", ".npz", ".off", ".bin")
SPLITS = ("train", "test")
# ScanObjectNN variants: the file stems of data.shapes, plus OBJ_ONLY (the same file names in main_split_nobg/)
SCANOBJECTNN_CHOICES = (*SCANOBJECTNN_VARIANTS, "OBJ_ONLY")


@dataclass
class ShapeSetConfig:
    """Which shapes, and how each becomes an input of `num_points` points (the same everywhere)."""

    format: str = "auto"  # one of FORMATS, or "auto" (detected from `path`)
    path: InputPathStr = ""  # the shape set: a file or a folder
    num_points: int = 1024  # points per shape; fewer in a file are repeated, more are subsampled
    # "unit_sphere": centre on the mean of the sampled points and scale the farthest to radius 1
    # (Point-BERT/Point-MAE/I2P-MAE's pc_norm); "none": coordinates as stored.
    normalize: Literal["unit_sphere", "none"] = "unit_sphere"
    variant: str = "PB_T50_RS"  # ScanObjectNN file variant
    columns: Optional[int] = None  # float32 values per point of raw .bin files (point_folder)
    max_shapes: Optional[int] = None  # a seeded random subset of each split (small budgets)
    seed: int = 0  # the resampling of each shape is fixed by (seed, index): identical in every run

    def __post_init__(self):
        require(self.format == "auto" or self.format in FORMATS, "format",
                f"must be 'auto' or one of {', '.join(FORMATS)}; got {self.format!r}")
        require(isinstance(self.num_points, int) and 1 <= self.num_points <= MAX_POINTS_PER_SHAPE, "num_points",
                f"must be an integer in 1..{MAX_POINTS_PER_SHAPE}, got {self.num_points!r}")
        require(self.normalize in ("unit_sphere", "none"), "normalize", "must be 'unit_sphere' or 'none'")
        require(self.variant in SCANOBJECTNN_CHOICES, "variant",
                f"must be one of {', '.join(SCANOBJECTNN_CHOICES)}; got {self.variant!r}")
        require(self.columns is None or self.columns >= 3, "columns", "must be >= 3 or null")
        require(self.max_shapes is None or self.max_shapes >= 1, "max_shapes", "must be >= 1 or null")


# ----------------------------------------------------------------------------------------- layouts


def _shapenet_lists(root: Path) -> Path | None:
    for folder in (root, root / "ShapeNet-55"):
        if (folder / "train.txt").is_file() or (folder / "test.txt").is_file():
            return folder
    return None


def _point_folder_layout(root: Path) -> str | None:
    """"split_first" (root/train/<class>/..., test/ optional), "class_first" (root/<class>/train/...),
    "flat" (point files directly in root: unlabelled) or None."""
    if (root / "train").is_dir():
        return "split_first"
    classes = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if classes and all((d / "train").is_dir() or (d / "test").is_dir() for d in classes):
        return "class_first"
    if list_point_files(root):
        return "flat"
    return None


def detect_format(path: str | Path) -> str:
    """The layout of `path` (see the module docstring), or a PointliftDataError listing the known ones."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PointliftDataError(path, "no such file or directory")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "modelnet10_vox"
        if path.suffix.lower() == ".h5":
            return "scanobjectnn_h5"
        raise PointliftDataError(path, "a single file is a shape set only as a ModelNet10 voxel .npz or a "
                                       "ScanObjectNN .h5; for point files use a folder")
    if (path / "shapenet_pc").is_dir():
        return "shapenet55"
    if (path / "shape_names.txt").is_file() and any(path.glob("ply_data_*.h5")):
        return "modelnet40_h5"
    if (path / "modelnet40_shape_names.txt").is_file():
        return "modelnet40_resampled"
    if any(path.glob("*_objectdataset*.h5")) or any((path / "main_split").glob("*_objectdataset*.h5")):
        return "scanobjectnn_h5"
    if _point_folder_layout(path) is not None:
        return "point_folder"
    raise PointliftDataError(path, "not a known shape-set layout (ModelNet10 .npz, ModelNet40 h5 or resampled, "
                                   "ScanObjectNN h5, ShapeNet-55 shapenet_pc/ + train.txt, or a point folder "
                                   "train/<class>/<files> or <class>/train/<files>)")


def resolve_format(config: ShapeSetConfig) -> str:
    if not config.path:
        raise PointliftConfigError("data.path: a shape set needs a path")
    return detect_format(config.path) if config.format == "auto" else config.format


# ----------------------------------------------------------------------------------------- readers


def load_shape_set(config: ShapeSetConfig, split: str) -> ShapeSet:
    """One split as variable-length point arrays (no resampling or normalisation yet)."""
    if split not in SPLITS:
        raise PointliftConfigError(f"split must be 'train' or 'test', got {split!r}")
    fmt = resolve_format(config)
    path = Path(config.path).expanduser()
    if fmt == "modelnet10_vox":
        return load_modelnet10_vox(path, split)
    if fmt == "modelnet40_h5":
        return load_modelnet40_h5(path, split)
    if fmt == "modelnet40_resampled":
        return load_modelnet40_resampled(path, split, num_points=config.num_points)
    if fmt == "scanobjectnn_h5":
        if config.variant == "OBJ_ONLY":  # objects without background: main_split_nobg/*_objectdataset.h5
            nobg = path / "main_split_nobg"
            return load_scanobjectnn_h5(nobg if nobg.is_dir() else path, split, variant="OBJ_BG")
        return load_scanobjectnn_h5(path, split, variant=config.variant)
    if fmt == "shapenet55":
        return load_shapenet55(path, split)
    return load_point_folder(path, split, columns=config.columns, mesh_samples=config.num_points, seed=config.seed)


def load_shapenet55(root: str | Path, split: str) -> ShapeSet:
    """ShapeNet-55 as Point-BERT/I2P-MAE ship it: `shapenet_pc/<synset>-<model>.npy` + `<split>.txt`."""
    root = Path(root)
    lists = _shapenet_lists(root)
    if lists is None:
        raise PointliftDataError(root, "has no train.txt/test.txt (looked in the folder and in ShapeNet-55/)")
    listing = lists / f"{split}.txt"
    if not listing.is_file():
        raise PointliftDataError(listing, "file not found")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise PointliftDataError(listing, "lists no shapes")
    synsets = []
    for number, name in enumerate(names, 1):
        synset, dash, model = name.partition("-")
        if not dash or not synset.isdigit() or not model:
            raise PointliftDataError(listing, f"line {number}: {name!r} is not '<synset>-<model id>.npy'")
        synsets.append(synset)
    # Classes are the synsets of both splits (sorted), so train and test labels agree.
    all_synsets = set(synsets)
    other = lists / f"{'test' if split == 'train' else 'train'}.txt"
    if other.is_file():
        all_synsets |= {line.strip().partition("-")[0] for line in other.read_text().splitlines() if line.strip()}
    class_names = sorted(all_synsets)
    index = {name: i for i, name in enumerate(class_names)}
    from pointlift.data.points import read_point_file

    points = [read_point_file(root / "shapenet_pc" / (name if name.endswith(".npy") else f"{name}.npy")).xyz
              for name in names]
    labels = np.asarray([index[s] for s in synsets], dtype=np.int64)
    return ShapeSet(points, labels, class_names, split, root)


def list_point_files(folder: str | Path) -> list[Path]:
    """The point files directly in `folder`, sorted by name (other files are ignored)."""
    folder = Path(folder)
    return sorted(f for f in folder.iterdir()
                  if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(POINT_SUFFIXES))


def load_point_folder(root: str | Path, split: str, columns: int | None = None, mesh_samples: int = 2048,
                      seed: int = 0) -> ShapeSet:
    """Labelled point files in class sub-folders, per split (see the module docstring for the layouts).

    Classes are the sorted sub-folder names of the training split; a test class unknown to training,
    or a training class without files, is an error. `mesh_samples`/`seed` sample .off meshes."""
    from pointlift.data.points import read_point_file

    root = Path(root)
    if not root.is_dir():
        raise PointliftDataError(root, "directory not found")
    layout = _point_folder_layout(root)
    if layout is None:
        raise PointliftDataError(root, "expected train/<class>/<files> and test/<class>/<files>, "
                                       "or <class>/train/<files> and <class>/test/<files>, or point files")
    if layout == "flat":
        if split != "train":
            raise PointliftDataError(root, f"is a flat folder of point files (unlabelled, a train split only): "
                                           f"no {split} split; evaluation needs train/<class>/ and test/<class>/")
        files = list_point_files(root)
        points = [read_point_file(f, columns, num_samples=mesh_samples, seed=seed).xyz for f in files]
        return ShapeSet(points, np.zeros(len(files), dtype=np.int64), [root.name], split, root,
                        names=[f.name for f in files])

    def class_folders(which: str) -> dict[str, Path]:
        if layout == "split_first":
            base = root / which
            return {d.name: d for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith(".")} \
                if base.is_dir() else {}
        return {d.name: d / which for d in sorted(root.iterdir())
                if d.is_dir() and not d.name.startswith(".") and (d / which).is_dir()}

    train_classes = class_folders("train")
    class_names = sorted(train_classes)
    if not class_names:
        raise PointliftDataError(root, "has no class folders in the train split")
    folders = class_folders(split)
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise PointliftDataError(root, f"{split} split has classes absent from train: {unknown[:5]}")
    points, labels, names = [], [], []
    for label, name in enumerate(class_names):
        files = list_point_files(folders[name]) if name in folders else []
        if split == "train" and not files:
            raise PointliftDataError(train_classes[name], "class folder has no point files")
        for file in files:
            points.append(read_point_file(file, columns, num_samples=mesh_samples, seed=seed).xyz)
            labels.append(label)
            names.append(file.relative_to(root).as_posix())
    if not points:
        raise PointliftDataError(root, f"the {split} split has no point files")
    return ShapeSet(points, np.asarray(labels, dtype=np.int64), class_names, split, root, names=names)


# ----------------------------------------------------------------------------------------- network input


def prepare_point_sets(point_sets, num_points: int, seed: int = 0, normalize: str = "unit_sphere") -> np.ndarray:
    """List of (Ni, 3) arrays -> (S, num_points, 3) float32.

    Each shape is resampled once with a generator seeded by (seed, a hash of its points) - without
    replacement when it has enough points, else all its points plus random repeats - then normalised.
    The same shape therefore gives the same points in every epoch and every command, wherever it sits in
    the list (a file alone, in a flat folder or in a labelled one): cached teacher maps stay valid and
    embedding sees what training saw."""
    out = np.empty((len(point_sets), num_points, 3), dtype=np.float32)
    for index, cloud in enumerate(point_sets):
        cloud = np.asarray(cloud, dtype=np.float64)
        if cloud.ndim != 2 or cloud.shape[1] != 3 or len(cloud) == 0:
            raise PointliftDataError("<point sets>", f"shape {index} has points of shape {cloud.shape}")
        rng = np.random.default_rng([seed, _content_key(cloud)])
        if len(cloud) >= num_points:
            chosen = rng.choice(len(cloud), num_points, replace=False)
        else:
            chosen = np.concatenate([np.arange(len(cloud)), rng.choice(len(cloud), num_points - len(cloud))])
        cloud = cloud[chosen]
        if normalize == "unit_sphere":
            cloud = cloud - cloud.mean(axis=0)
            cloud = cloud / max(np.linalg.norm(cloud, axis=1).max(), 1e-9)
        elif normalize != "none":
            raise PointliftConfigError(f"normalize must be 'unit_sphere' or 'none', got {normalize!r}")
        out[index] = cloud
    return out


def _content_key(cloud: np.ndarray) -> int:
    """64 bits of a hash of a shape's points (float64, with its shape): the seed of its resampling."""
    digest = hashlib.blake2b(repr(cloud.shape).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(cloud, dtype=np.float64).tobytes())
    return int.from_bytes(digest.digest(), "little")


def subset_indices(count: int, max_shapes: int | None, seed: int) -> np.ndarray:
    """All indices in order, or the first `max_shapes` of a permutation seeded by `seed`."""
    if max_shapes is None:
        return np.arange(count)
    return np.random.default_rng(seed).permutation(count)[:max_shapes]


def load_points(config: ShapeSetConfig, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(points (S, num_points, 3) float32, labels (S,) int64, class names): the network input of a split."""
    return load_named_points(config, split)[:3]


def load_named_points(config: ShapeSetConfig, split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """`load_points` plus a name per shape: its file relative to the set's root where the layout has
    files (point folders), else `<split>/<index in the split>`."""
    shapes = load_shape_set(config, split)
    order = subset_indices(len(shapes), config.max_shapes, config.seed)
    point_sets = [shapes.points[i] for i in order]
    labels = np.asarray(shapes.labels)[order].astype(np.int64)
    names = [shapes.names[i] if shapes.names else f"{split}/{i}" for i in order]
    return prepare_point_sets(point_sets, config.num_points, config.seed, config.normalize), labels, \
        list(shapes.class_names), names
