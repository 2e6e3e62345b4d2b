"""Shape-classification sets with their official splits: ModelNet10 (voxel npz), ModelNet40 (h5 and
resampled txt) and ScanObjectNN (h5).

All loaders return a `ShapeSet` of variable-length point arrays so downstream code never needs to
know which on-disk layout a benchmark came from. Empty shapes are dropped with one warning that
counts them (they carry no signal and break sampling).
"""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointlift.data.guard import check_npz_member_size, read_npz_member, read_text, reading
from pointlift.errors import PointliftConfigError, PointliftDataError

__all__ = [
    "ShapeSet",
    "MODELNET10_CLASSES",
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_VARIANTS",
    "load_modelnet10_vox",
    "load_modelnet40_h5",
    "load_modelnet40_resampled",
    "load_scanobjectnn_h5",
]

MODELNET10_CLASSES = [
    "bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet",
]

# Label order of ScanObjectNN's h5 files (its shape_names.txt).
SCANOBJECTNN_CLASSES = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
    "bed", "pillow", "sink", "sofa", "toilet",
]

# Variant -> file-name stem after "training_"/"test_" (ScanObjectNN h5_files/{main_split,...}).
SCANOBJECTNN_VARIANTS = {
    "OBJ_BG": "objectdataset",
    "main_split": "objectdataset",
    "PB_T25": "objectdataset_augmented25_norot",
    "PB_T25_R": "objectdataset_augmented25rot",
    "PB_T50_R": "objectdataset_augmentedrot",
    "PB_T50_RS": "objectdataset_augmentedrot_scale75",  # the release's name (underscore)
}


@dataclass
class ShapeSet:
    """One split of a shape-classification dataset.

    `points[i]` is `(Ni, 3) float32`, `labels` is `(S,) int64` indexing `class_names`.
    `normals`, when the source has them, parallels `points`.
    """

    points: list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    split: str
    source: Path
    normals: list[np.ndarray] | None = None
    names: list[str] | None = None  # per shape, where known: its file, relative to `source`

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.points[index], int(self.labels[index])


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise PointliftConfigError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _drop_empty(shape_set: ShapeSet) -> ShapeSet:
    keep = [i for i, p in enumerate(shape_set.points) if len(p) > 0]
    dropped = len(shape_set.points) - len(keep)
    if dropped:
        warnings.warn(
            f"{shape_set.source}: dropped {dropped} empty shapes of {len(shape_set.points)} "
            f"in the {shape_set.split} split",
            stacklevel=3,
        )
        shape_set.points = [shape_set.points[i] for i in keep]
        shape_set.labels = shape_set.labels[keep]
        if shape_set.normals is not None:
            shape_set.normals = [shape_set.normals[i] for i in keep]
    return shape_set


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise PointliftDataError(path, f"labels have non-integer dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PointliftDataError(
            path, f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}"
        )
    return labels


def _read_names(path: Path) -> list[str]:
    names = [line.strip() for line in read_text(path, "list of names").splitlines() if line.strip()]
    if not names:
        raise PointliftDataError(path, "lists no names")
    return names


# ----------------------------------------------------------------------------------------------
# ModelNet10 voxel grids


def load_modelnet10_vox(path: str | Path, split: str) -> ShapeSet:
    """ModelNet10 as occupancy grids (`X_<split>` (S, R, R, R), `y_<split>` (S,)).

    Points are occupied voxel centres `(index + 0.5) / R - 0.5`, axes in array order (i, j, k).
    """
    path = Path(path)
    _check_split(split)
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            keys = {name.removesuffix(".npy") for name in archive.namelist()}
            missing = {f"X_{split}", f"y_{split}"} - keys
            if missing:
                raise PointliftDataError(path, f"has no {', '.join(sorted(missing))} (keys: {', '.join(sorted(keys))})")
            labels = read_npz_member(path, archive, archive.getinfo(f"y_{split}.npy"))
            grids = archive.getinfo(f"X_{split}.npy")
            check_npz_member_size(path, grids)
            with archive.open(grids) as member:
                num_shapes, points = _occupied_voxel_centres(path, member, f"X_{split}", grids.file_size)
    except PointliftDataError:
        raise
    except Exception as error:  # zip/npy corruption surfaces as several exception types
        raise PointliftDataError(path, f"cannot be read as an npz archive ({error})") from None
    if labels.reshape(-1).shape[0] != num_shapes:
        raise PointliftDataError(path, f"X_{split} has {num_shapes} grids but y_{split} {labels.size} labels")
    labels = _check_labels(path, labels, len(MODELNET10_CLASSES))
    shape_set = ShapeSet(points, labels, list(MODELNET10_CLASSES), split, path)
    return _drop_empty(shape_set)


def _occupied_voxel_centres(path: Path, member, key: str, stored: int,
                            chunk: int = 256) -> tuple[int, list[np.ndarray]]:
    """Stream `(S, R, R, R)` grids from an open .npy member, `chunk` grids at a time, so the
    500 MB of int32 ModelNet10 grids never sit in memory at once."""
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(member)
    if len(shape) != 4 or not (shape[1] == shape[2] == shape[3]) or fortran_order or dtype.hasobject:
        raise PointliftDataError(path, f"{key} has shape {shape}, expected C-ordered (S, R, R, R)")
    resolution = shape[1]
    cells = resolution**3
    if math.prod(shape) * dtype.itemsize > stored:  # checked before any grid is read
        raise PointliftDataError(path, f"{key} declares shape {shape}, more than its {stored} stored bytes")
    points: list[np.ndarray] = []
    for start in range(0, shape[0], chunk):
        count = min(chunk, shape[0] - start)
        raw = member.read(count * cells * dtype.itemsize)
        if len(raw) != count * cells * dtype.itemsize:
            raise PointliftDataError(path, f"{key} is truncated")
        grids = np.frombuffer(raw, dtype=dtype).reshape(count, cells)
        # flatnonzero over a bool array is several times faster than nonzero over 4-D int grids.
        flat = np.flatnonzero(grids > 0)
        shape_index, flat = flat // cells, flat % cells
        ijk = np.stack([flat // resolution**2, (flat // resolution) % resolution, flat % resolution], axis=1)
        centres = (ijk.astype(np.float32) + 0.5) / resolution - 0.5
        points.extend(np.split(centres, np.cumsum(np.bincount(shape_index, minlength=count))[:-1]))
    return shape[0], points


# ----------------------------------------------------------------------------------------------
# ModelNet40 modelnet40_ply_hdf5_2048


def _open_h5(path: Path):
    import h5py

    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    try:
        return h5py.File(path, "r")
    except Exception as error:  # noqa: BLE001 - OSError mostly; any failure means unreadable
        raise PointliftDataError(path, f"cannot be opened as HDF5 ({error})") from None


def _h5_array(path: Path, h5, key: str) -> np.ndarray:
    """One numeric dataset, its declared size checked against the bytes stored before reading:
    storage never written (which HDF5 would return as zeros) and data past the end are errors."""
    import h5py

    dataset = h5.get(key)
    if dataset is None:
        raise PointliftDataError(path, f"has no {key!r} dataset (keys: {', '.join(h5.keys())})")
    if not isinstance(dataset, h5py.Dataset):
        raise PointliftDataError(path, f"{key!r} is a {type(dataset).__name__}, not a dataset")
    if dataset.dtype.kind not in "fiub":
        raise PointliftDataError(path, f"{key!r} has non-numeric dtype {dataset.dtype}")
    nbytes = math.prod(dataset.shape or ()) * dataset.dtype.itemsize
    file_size = path.stat().st_size
    storage = dataset.id.get_storage_size()
    layout = dataset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dataset.id.get_offset()
        if nbytes and (storage < nbytes or offset is None):
            raise PointliftDataError(
                path, f"{key!r} declares shape {dataset.shape} ({nbytes} bytes) but stores {storage} (never written)"
            )
        if nbytes and offset + nbytes > file_size:
            raise PointliftDataError(path, f"{key!r} lies past the end of the file (truncated: {file_size} bytes)")
    elif layout == h5py.h5d.CHUNKED:
        expected = math.prod(-(-n // c) for n, c in zip(dataset.shape, dataset.chunks))
        written = dataset.id.get_num_chunks()
        if written < expected:
            raise PointliftDataError(
                path, f"{key!r} declares shape {dataset.shape} but {expected - written} of its {expected} chunks "
                "were never written"
            )
        if storage > file_size or nbytes > storage * 1100 + (1 << 20):
            raise PointliftDataError(path, f"{key!r} stores {storage} bytes for {nbytes} (corrupt or truncated)")
    elif layout != h5py.h5d.COMPACT:
        raise PointliftDataError(path, f"{key!r} uses an unsupported storage layout (external or virtual)")
    return dataset[()]


def _read_h5_points(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """`data (B, N, 3+)` and `label (B,)`/(B, 1) from one h5 file, checked for consistency."""
    with _open_h5(path) as h5, reading(path):
        data = _h5_array(path, h5, "data")
        labels = _h5_array(path, h5, "label")
    if data.ndim != 3 or data.shape[2] < 3:
        raise PointliftDataError(path, f"'data' has shape {data.shape}, expected (B, N, 3)")
    labels = np.asarray(labels).reshape(len(labels), -1) if np.ndim(labels) else np.asarray(labels).reshape(-1, 1)
    if labels.shape[1] != 1 or labels.shape[0] != data.shape[0]:
        raise PointliftDataError(
            path, f"'data' holds {data.shape[0]} shapes but 'label' has shape {labels.shape}"
        )
    points = data[:, :, :3].astype(np.float32)
    if not np.isfinite(points).all():
        raise PointliftDataError(path, "'data' has non-finite coordinates")
    return points, _check_labels(path, labels[:, 0], num_classes)


def load_modelnet40_h5(root: str | Path, split: str) -> ShapeSet:
    """ModelNet40 `modelnet40_ply_hdf5_2048`: the h5 files listed in `<split>_files.txt`."""
    root = Path(root)
    _check_split(split)
    if not root.is_dir():
        raise PointliftDataError(root, "directory not found")
    class_names = _read_names(root / "shape_names.txt")
    listing = root / f"{split}_files.txt"
    if listing.is_file():
        # The official lists carry a "data/modelnet40_ply_hdf5_2048/" prefix: resolve by name.
        lines = read_text(listing, "file list").splitlines()
        files = [root / Path(line.strip()).name for line in lines if line.strip()]
    else:
        files = sorted(root.glob(f"ply_data_{split}*.h5"))
    if not files:
        raise PointliftDataError(listing, f"no {split} h5 files listed or found")
    points, labels = [], []
    for file in files:
        data, file_labels = _read_h5_points(file, len(class_names))
        points.extend(data)
        labels.append(file_labels)
    shape_set = ShapeSet(list(points), np.concatenate(labels), class_names, split, root)
    return _drop_empty(shape_set)


# ----------------------------------------------------------------------------------------------
# ModelNet40 modelnet40_normal_resampled


def load_modelnet40_resampled(root: str | Path, split: str, num_points: int = 1024) -> ShapeSet:
    """ModelNet40 `modelnet40_normal_resampled`: `<class>/<id>.txt` rows `x,y,z,nx,ny,nz`.

    Keeps the first `num_points` rows of each file (the files are already uniformly resampled).
    """
    root = Path(root)
    _check_split(split)
    if not isinstance(num_points, int) or num_points < 1:
        raise PointliftConfigError(f"num_points must be a positive integer, got {num_points!r}")
    if not root.is_dir():
        raise PointliftDataError(root, "directory not found")
    class_names = _read_names(root / "modelnet40_shape_names.txt")
    class_index = {name: i for i, name in enumerate(class_names)}
    shape_ids = _read_names(root / f"modelnet40_{split}.txt")
    points, normals, labels = [], [], []
    for shape_id in shape_ids:
        class_name = shape_id.rsplit("_", 1)[0]
        file = root / class_name / f"{shape_id}.txt"
        if class_name not in class_index:
            raise PointliftDataError(
                root / f"modelnet40_{split}.txt", f"shape {shape_id!r} has unknown class {class_name!r}"
            )
        if not file.is_file():
            raise PointliftDataError(file, "file not found")
        try:
            rows = np.loadtxt(file, delimiter=",", dtype=np.float32, max_rows=num_points, ndmin=2)
        except ValueError as error:
            raise PointliftDataError(file, f"is not comma-separated numbers ({error})") from None
        if rows.shape[0] == 0:
            raise PointliftDataError(file, "file is empty")
        if rows.shape[1] != 6:
            raise PointliftDataError(file, f"rows have {rows.shape[1]} values, expected 6 (x,y,z,nx,ny,nz)")
        if rows.shape[0] < num_points:
            raise PointliftDataError(file, f"has {rows.shape[0]} points, fewer than num_points={num_points}")
        if not np.isfinite(rows).all():
            raise PointliftDataError(file, "has non-finite values")
        points.append(np.ascontiguousarray(rows[:, :3]))
        normals.append(np.ascontiguousarray(rows[:, 3:]))
        labels.append(class_index[class_name])
    shape_set = ShapeSet(points, np.asarray(labels, dtype=np.int64), class_names, split, root, normals)
    return _drop_empty(shape_set)


# ----------------------------------------------------------------------------------------------
# ScanObjectNN


def load_scanobjectnn_h5(path_or_root: str | Path, split: str, variant: str = "PB_T50_RS") -> ShapeSet:
    """ScanObjectNN h5 (`data (B, 2048, 3)`, `label (B,)`).

    `path_or_root` is one h5 file, or a folder holding `training_<stem>.h5`/`test_<stem>.h5`
    (directly or in `main_split/`), where `variant` picks the stem (see `SCANOBJECTNN_VARIANTS`).
    """
    path = Path(path_or_root)
    _check_split(split)
    if variant not in SCANOBJECTNN_VARIANTS:
        raise PointliftConfigError(
            f"unknown ScanObjectNN variant {variant!r}; known: {', '.join(SCANOBJECTNN_VARIANTS)}"
        )
    if path.is_dir():
        name = f"{'training' if split == 'train' else 'test'}_{SCANOBJECTNN_VARIANTS[variant]}.h5"
        candidates = [path / name, path / "main_split" / name]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise PointliftDataError(path, f"has no {name} (looked in {path} and {path / 'main_split'})")
    else:
        file = path
    data, labels = _read_h5_points(file, len(SCANOBJECTNN_CLASSES))
    shape_set = ShapeSet(list(data), labels, list(SCANOBJECTNN_CLASSES), split, file)
    return _drop_empty(shape_set)
