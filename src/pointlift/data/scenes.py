"""Labelled scene scans for semantic segmentation, and the standard benchmark label maps.

Layouts read (each reader returns a `Scene` with raw dataset labels and the benchmark's train ids):
- ScanNet, VoteNet's export: `sceneXXXX_YY_vert.npy` (N x 6: xyz metres, RGB 0-255) + `_sem_label.npy`
  (NYU40 ids, 0 = unannotated);
- ScanNet, its own release layout: `sceneXXXX_YY_vh_clean_2.ply` (+ `sceneXXXX_YY_vh_clean_2.labels.ply`,
  whose vertex property `label` holds the NYU40 id);
- SemanticKITTI: `sequences/SS/velodyne/NNNNNN.bin` (float32 x, y, z, intensity) + `labels/NNNNNN.label`
  (uint32: semantic id = low 16 bits); `image_2/NNNNNN.png` and `calib.txt` (P2, Tr) for LiDAR + camera;
- S3DIS: `Area_N/<room>/Annotations/<class>_<k>.txt` (x y z r g b per line).

Label maps: ScanNet-20 (the benchmark's 20 NYU40 ids), SemanticKITTI-19 (the `learning_map` of SemanticKITTI's
semantic-kitti.yaml), S3DIS-13. Train ids are 0..C-1; IGNORE (-1) marks points no class covers.
Scene names carry their split group (ScanNet room `sceneXXXX`, KITTI sequence, S3DIS area), so a split
can keep every scan of one room on one side (`scene_group`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pointlift.data.guard import read_npy, read_text
from pointlift.data.lidar import calibration_rows
from pointlift.errors import PointliftConfigError, PointliftDataError

IGNORE = -1

# --------------------------------------------------------------------------------------- label maps

SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_NAMES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                   "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
                   "bathtub", "otherfurniture")

# SemanticKITTI raw id -> learning id (semantic-kitti.yaml `learning_map`); learning id 0 = unlabelled.
SEMANTICKITTI_LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
    48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}
SEMANTICKITTI19_NAMES = ("car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
                         "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence",
                         "vegetation", "trunk", "terrain", "pole", "traffic-sign")

S3DIS13_NAMES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
                 "bookcase", "board", "clutter")

LABEL_SETS = {"scannet20": SCANNET20_NAMES, "semantickitti19": SEMANTICKITTI19_NAMES, "s3dis13": S3DIS13_NAMES}


def _lookup(table: dict[int, int], raw: np.ndarray, path, what: str, strict: bool) -> np.ndarray:
    raw = np.asarray(raw).astype(np.int64)
    size = max(int(raw.max(initial=0)), max(table)) + 1
    lut = np.full(size, IGNORE if not strict else -2, dtype=np.int64)
    for key, value in table.items():
        lut[key] = value
    out = lut[raw]
    if strict and (out == -2).any():
        bad = np.unique(raw[out == -2])[:5].tolist()
        raise PointliftDataError(path, f"{what} ids {bad} are not in the label map")
    return out


def map_scannet20(nyu40: np.ndarray) -> np.ndarray:
    """NYU40 ids -> ScanNet-20 train ids 0..19; every other id (0 = unannotated) -> IGNORE."""
    nyu40 = np.asarray(nyu40).astype(np.int64)
    if nyu40.size and (nyu40.min() < 0 or nyu40.max() > 40):
        raise PointliftDataError("<labels>", f"NYU40 ids must be in 0..40, got {nyu40.min()}..{nyu40.max()}")
    return _lookup({nyu: i for i, nyu in enumerate(SCANNET20_NYU40_IDS)}, nyu40, "<labels>", "NYU40", False)


def map_semantickitti19(raw: np.ndarray, path="<labels>") -> np.ndarray:
    """Raw SemanticKITTI semantic ids (low 16 bits) -> train ids 0..18 (learning id - 1); unlabelled,
    outlier, other-structure and other-object -> IGNORE. An id outside that map is an error."""
    learning = _lookup(SEMANTICKITTI_LEARNING_MAP, raw, path, "SemanticKITTI semantic", True)
    return learning - 1  # learning id 0 (unlabelled) becomes IGNORE


def s3dis13_id(class_name: str) -> int:
    """S3DIS annotation file class -> train id; classes outside the 13 (e.g. `stairs`) are clutter, as in
    the usual S3DIS preparation."""
    return S3DIS13_NAMES.index(class_name) if class_name in S3DIS13_NAMES else S3DIS13_NAMES.index("clutter")


# -------------------------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    """One labelled scan. `labels` are train ids (IGNORE = -1), `raw_labels` the dataset's own ids."""

    name: str  # e.g. "scene0000_00", "00/000008", "Area_1/office_1"
    points: np.ndarray  # (N, 3) float32 metres
    labels: np.ndarray  # (N,) int64 train ids
    label_set: str  # key of LABEL_SETS
    colors: Optional[np.ndarray] = None  # (N, 3) float32 in [0, 1]
    intensity: Optional[np.ndarray] = None  # (N,) float32
    raw_labels: Optional[np.ndarray] = None
    path: Optional[Path] = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def class_names(self) -> tuple[str, ...]:
        return LABEL_SETS[self.label_set]


def scene_group(name: str) -> str:
    """The split unit of a scene name: ScanNet room (`scene0000` of `scene0000_01`), KITTI sequence
    (`00` of `00/000008`), S3DIS area (`Area_1` of `Area_1/office_1`)."""
    if "/" in name:
        return name.split("/", 1)[0]
    if name.startswith("scene") and "_" in name:
        return name.rsplit("_", 1)[0]
    return name


def _load_npy(path: Path) -> np.ndarray:
    return read_npy(path)  # header and size checked before allocation (data/guard.py)


def _check_xyz(path, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    if not np.isfinite(points).all():
        raise PointliftDataError(path, "coordinates contain NaN or infinite values")
    return points


def read_scannet_votenet(root: str | Path, name: str) -> Scene:
    """`<root>/<name>_vert.npy` + `_sem_label.npy` (VoteNet's ScanNet export)."""
    root = Path(root)
    vert_path, label_path = root / f"{name}_vert.npy", root / f"{name}_sem_label.npy"
    vert = _load_npy(vert_path)
    if vert.ndim != 2 or vert.shape[1] < 6:
        raise PointliftDataError(vert_path, f"expected an (N, 6) xyz+RGB array, got shape {vert.shape}")
    raw = _load_npy(label_path)
    if raw.shape != (vert.shape[0],):
        raise PointliftDataError(label_path, f"holds {raw.shape} labels for {vert.shape[0]} points")
    points = _check_xyz(vert_path, vert[:, :3])
    colors = np.clip(vert[:, 3:6].astype(np.float32) / 255.0, 0.0, 1.0)
    return Scene(name, points, map_scannet20(raw), "scannet20", colors=colors, raw_labels=raw.astype(np.int64),
                 path=vert_path)


def list_scannet_votenet(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise PointliftDataError(root, "ScanNet (VoteNet export) directory not found")
    names = sorted(p.name[: -len("_vert.npy")] for p in root.glob("*_vert.npy"))
    if not names:
        raise PointliftDataError(root, "no *_vert.npy scans found")
    return names


def read_scannet_ply(mesh_path: str | Path, labels_path: str | Path | None = None) -> Scene:
    """ScanNet release layout: mesh vertices of `*_vh_clean_2.ply` (xyz, RGB) with the NYU40 `label` vertex
    property of `*_vh_clean_2.labels.ply` (default: found beside the mesh; absent = all IGNORE)."""
    from pointlift.data.points import read_point_file

    mesh_path = Path(mesh_path)
    mesh = read_point_file(mesh_path)
    name = mesh_path.name.split("_vh_clean")[0]
    if labels_path is None:
        candidate = mesh_path.with_name(mesh_path.name.replace(".ply", ".labels.ply"))
        labels_path = candidate if candidate.is_file() else None
    raw = np.zeros(len(mesh), dtype=np.int64)
    if labels_path is not None:
        labelled = read_point_file(labels_path)
        if "label" not in labelled.fields:
            raise PointliftDataError(labels_path, "has no vertex property 'label'")
        if len(labelled) != len(mesh):
            raise PointliftDataError(labels_path, f"holds {len(labelled)} vertices, the mesh {len(mesh)}")
        raw = labelled.fields["label"].astype(np.int64)
    colors = mesh.fields.get("rgb")
    try:
        labels = map_scannet20(raw)
    except PointliftDataError as error:
        raise PointliftDataError(labels_path, error.problem) from None
    return Scene(name, _check_xyz(mesh_path, mesh.xyz), labels, "scannet20",
                 colors=None if colors is None else colors.astype(np.float32), raw_labels=raw, path=mesh_path)


def list_scannet_ply(root: str | Path) -> dict[str, Path]:
    """Scan name -> mesh path for the release layout (`scans/<name>/<name>_vh_clean_2.ply` or flat)."""
    root = Path(root)
    if not root.is_dir():
        raise PointliftDataError(root, "ScanNet directory not found")
    found = {p.name.split("_vh_clean")[0]: p for p in sorted(root.rglob("*_vh_clean_2.ply"))}
    if not found:
        raise PointliftDataError(root, "no *_vh_clean_2.ply meshes found")
    return found


def read_velodyne(bin_path: Path) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity of a KITTI velodyne sweep, checked."""
    if not bin_path.is_file():
        raise PointliftDataError(bin_path, "file not found")
    data = np.fromfile(bin_path, dtype=np.float32)
    if data.size == 0 or data.size % 4:
        raise PointliftDataError(bin_path, f"holds {data.size} float32 values, not a multiple of 4 (x, y, z, intensity)")
    data = data.reshape(-1, 4)
    _check_xyz(bin_path, data[:, :3])
    return data


def read_semantickitti_scan(sequence_dir: str | Path, frame: str) -> Scene:
    """`velodyne/<frame>.bin` + `labels/<frame>.label` of one SemanticKITTI sequence (labels optional)."""
    sequence_dir = Path(sequence_dir)
    bin_path = sequence_dir / "velodyne" / f"{frame}.bin"
    data = read_velodyne(bin_path)
    label_path = sequence_dir / "labels" / f"{frame}.label"
    if label_path.is_file():
        packed = np.fromfile(label_path, dtype=np.uint32)
        if packed.shape[0] != data.shape[0]:
            raise PointliftDataError(label_path, f"holds {packed.shape[0]} labels for {data.shape[0]} points")
        raw = (packed & 0xFFFF).astype(np.int64)
        labels = map_semantickitti19(raw, label_path)
    else:
        raw, labels = None, np.full(data.shape[0], IGNORE, dtype=np.int64)
    return Scene(f"{sequence_dir.name}/{frame}", _check_xyz(bin_path, data[:, :3]), labels, "semantickitti19",
                 intensity=data[:, 3].copy(), raw_labels=raw, path=bin_path)


def list_semantickitti(root: str | Path) -> list[str]:
    """`SS/NNNNNN` names of every scan under `<root>/sequences` (or `<root>` itself holding sequences)."""
    root = Path(root)
    base = root / "sequences" if (root / "sequences").is_dir() else root
    if not base.is_dir():
        raise PointliftDataError(root, "SemanticKITTI directory not found")
    names = [f"{seq.name}/{b.stem}" for seq in sorted(base.iterdir()) if (seq / "velodyne").is_dir()
             for b in sorted((seq / "velodyne").glob("*.bin"))]
    if not names:
        raise PointliftDataError(root, "no sequences/SS/velodyne/*.bin scans found")
    return names


def semantickitti_sequence_dir(root: str | Path, sequence: str) -> Path:
    root = Path(root)
    return (root / "sequences" if (root / "sequences").is_dir() else root) / sequence


def read_semantickitti_calib(path: str | Path, camera: str = "P2") -> np.ndarray:
    """SemanticKITTI `calib.txt` -> the 4x4 LiDAR -> image matrix `P2 @ Tr` (Tr: velodyne -> camera 0,
    already rectified in the odometry calibration, so no R0_rect)."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    rows = calibration_rows(path, read_text(path, "calibration text"))
    for key in (camera, "Tr"):
        if key not in rows:
            raise PointliftDataError(path, f"calibration lacks {key}")
        if rows[key].size != 12:
            raise PointliftDataError(path, f"{key} holds {rows[key].size} numbers, expected 12 (3 x 4)")
    projection = np.eye(4)
    projection[:3] = rows[camera].reshape(3, 4)
    tr = np.eye(4)
    tr[:3] = rows["Tr"].reshape(3, 4)
    return projection @ tr


def read_semantickitti_camera_frame(sequence_dir: str | Path, frame: str):
    """A SemanticKITTI scan with its left colour camera as a `LidarCameraFrame` (PPKT pairs; labels unused)."""
    from pointlift.data.lidar import CameraView, LidarCameraFrame
    from pointlift.data.rgbd import read_color_image

    sequence_dir = Path(sequence_dir)
    points = read_velodyne(sequence_dir / "velodyne" / f"{frame}.bin")  # labels are not read
    image_path = sequence_dir / "image_2" / f"{frame}.png"
    if not image_path.is_file():
        raise PointliftDataError(image_path, "file not found")
    lidar2img = read_semantickitti_calib(sequence_dir / "calib.txt")
    return LidarCameraFrame(f"{sequence_dir.name}_{frame}", points, [CameraView("CAM2", read_color_image(image_path), lidar2img)])


def read_s3dis_room(room_dir: str | Path) -> Scene:
    """`<room>/Annotations/<class>_<k>.txt` files (x y z r g b per line) -> one Scene (S3DIS-13)."""
    room_dir = Path(room_dir)
    annotations = room_dir / "Annotations"
    if not annotations.is_dir():
        raise PointliftDataError(annotations, "S3DIS Annotations directory not found")
    files = sorted(annotations.glob("*.txt"))
    if not files:
        raise PointliftDataError(annotations, "no <class>_<k>.txt annotation files")
    parts, labels = [], []
    for path in files:
        try:
            values = np.loadtxt(path, dtype=np.float32, ndmin=2)
        except ValueError as error:
            raise PointliftDataError(path, f"not a table of numbers ({error})") from None
        if values.size == 0:
            continue
        if values.shape[1] < 6:
            raise PointliftDataError(path, f"expected 6 columns (x y z r g b), got {values.shape[1]}")
        parts.append(values[:, :6])
        labels.append(np.full(len(values), s3dis13_id(path.stem.rsplit("_", 1)[0]), dtype=np.int64))
    if not parts:
        raise PointliftDataError(annotations, "every annotation file is empty")
    table = np.concatenate(parts)
    name = f"{room_dir.parent.name}/{room_dir.name}"
    return Scene(name, _check_xyz(annotations, table[:, :3]), np.concatenate(labels), "s3dis13",
                 colors=np.clip(table[:, 3:6] / 255.0, 0, 1).astype(np.float32), path=room_dir)


def list_s3dis(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise PointliftDataError(root, "S3DIS directory not found")
    names = [f"{a.name}/{r.name}" for a in sorted(root.glob("Area_*")) if a.is_dir()
             for r in sorted(a.iterdir()) if (r / "Annotations").is_dir()]
    if not names:
        raise PointliftDataError(root, "no Area_N/<room>/Annotations folders found")
    return names


# ------------------------------------------------------------------------------------- by layout name

LAYOUTS = ("scannet-votenet", "scannet", "semantickitti", "s3dis")


def detect_layout(root: str | Path) -> str:
    """Guess the layout of a data directory from its files."""
    root = Path(root)
    if not root.is_dir():
        raise PointliftDataError(root, "data directory not found")
    if any(root.glob("*_vert.npy")):
        return "scannet-votenet"
    if (root / "sequences").is_dir() or any(root.glob("*/velodyne")):
        return "semantickitti"
    if any(root.glob("Area_*")):
        return "s3dis"
    if any(root.rglob("*_vh_clean_2.ply")):
        return "scannet"
    raise PointliftDataError(root, f"no known scene layout ({', '.join(LAYOUTS)})")


def list_scenes(layout: str, root: str | Path) -> list[str]:
    if layout == "scannet-votenet":
        return list_scannet_votenet(root)
    if layout == "scannet":
        return sorted(list_scannet_ply(root))
    if layout == "semantickitti":
        return list_semantickitti(root)
    if layout == "s3dis":
        return list_s3dis(root)
    raise PointliftConfigError(f"unknown scene layout {layout!r}; choose from {list(LAYOUTS)}")


def read_scene(layout: str, root: str | Path, name: str) -> Scene:
    root = Path(root)
    if layout == "scannet-votenet":
        return read_scannet_votenet(root, name)
    if layout == "scannet":
        return read_scannet_ply(list_scannet_ply(root)[name])
    if layout == "semantickitti":
        sequence, frame = name.split("/", 1)
        return read_semantickitti_scan(semantickitti_sequence_dir(root, sequence), frame)
    if layout == "s3dis":
        return read_s3dis_room(root / name)
    raise PointliftConfigError(f"unknown scene layout {layout!r}; choose from {list(LAYOUTS)}")


def label_set_of(layout: str) -> str:
    return {"scannet-votenet": "scannet20", "scannet": "scannet20", "semantickitti": "semantickitti19",
            "s3dis": "s3dis13"}[layout]


def select_scenes(names: list[str], prefixes: list[str] | tuple[str, ...]) -> list[str]:
    """Names matching any prefix (a room `scene0003`, a sequence `05`, an area `Area_1`, or a full name),
    where a prefix matches a whole group or a whole name, never part of one (`scene001` matches nothing)."""
    chosen = [n for n in names if any(n == p or scene_group(n) == p for p in prefixes)]
    return chosen
