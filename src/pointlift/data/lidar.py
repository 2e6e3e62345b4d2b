"""LiDAR sweeps with calibrated cameras: KITTI and nuScenes (mmdetection3d info dicts).

Every camera is reduced to one `lidar2img` 4x4 matrix with `lidar2img @ [x, y, z, 1] =
[u*d, v*d, d, 1]`, so projection code downstream is the same for every dataset.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointlift.data.guard import read_text, reading
from pointlift.data.points import read_raw_bin
from pointlift.data.rgbd import read_color_image
from pointlift.errors import PointliftDataError

__all__ = [
    "CameraView",
    "LidarCameraFrame",
    "read_kitti_frame",
    "read_nuscenes_frame",
    "read_kitti_calibration",
    "load_info_pickle",
]


@dataclass
class CameraView:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    lidar2img: np.ndarray  # (4, 4) float64


@dataclass
class LidarCameraFrame:
    name: str
    points: np.ndarray  # (N, C) float32, columns x, y, z, then sensor extras (intensity, ...)
    cameras: list[CameraView]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Info pickles hold only dicts, lists and NumPy values; refuse anything else, because
    unpickling arbitrary classes runs arbitrary code."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" or (module, name) in {
            ("collections", "OrderedDict"), ("builtins", "slice"), ("builtins", "complex"),
            ("_codecs", "encode"),  # how NumPy pickles raw array bytes
        }:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_info_pickle(path: str | Path) -> dict:
    """Load an mmdetection3d-style info `.pkl` (`{'metainfo', 'data_list'}`) safely."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    try:
        # From memory: a corrupt length field then reads what is there instead of allocating it.
        info = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as error:  # a corrupt pickle fails in many ways (even MemoryError)
        raise PointliftDataError(path, f"cannot be read as an info pickle ({error})") from None
    if not isinstance(info, dict) or not isinstance(info.get("data_list"), list) or not info["data_list"]:
        raise PointliftDataError(path, "is not an info dict with a non-empty 'data_list'")
    return info


def _matrix(path: Path, value, what: str) -> np.ndarray:
    """A 3x3, 3x4 or 4x4 matrix from an info entry, padded to 4x4 (projection matrices)."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PointliftDataError(path, f"{what} is not a numeric matrix") from None
    if matrix.shape not in ((3, 3), (3, 4), (4, 4)):
        raise PointliftDataError(path, f"{what} has shape {matrix.shape}, expected 3x3, 3x4 or 4x4")
    if not np.isfinite(matrix).all():
        raise PointliftDataError(path, f"{what} has non-finite values")
    padded = np.eye(4)
    padded[: matrix.shape[0], : matrix.shape[1]] = matrix
    return padded


def _is_camera_only(matrix: np.ndarray) -> bool:
    """True for an intrinsic/projection matrix with no rotation into the camera frame.

    A real LiDAR->image matrix's third row is the camera's optical axis in LiDAR coordinates; a
    P matrix's is (0, 0, 1), which would make the LiDAR's up axis the viewing direction."""
    return bool(np.allclose(matrix[2, :3], [0, 0, 1]) and np.allclose(matrix[1, 0], 0)
                and np.allclose(matrix[0, 1], 0))


def read_kitti_calibration(path: str | Path, camera: str = "CAM2", image_name: str | None = None) -> np.ndarray:
    """The `lidar2img` 4x4 of one KITTI camera from any of the common calibration files.

    - the official `calib/<id>.txt` (`P2: ...`, `R0_rect: ...`, `Tr_velo_to_cam: ...`):
      `lidar2img = P2 @ R0_rect @ Tr_velo_to_cam`;
    - an mmdetection3d info `.pkl`: the camera's `lidar2img` (or `cam2img @ lidar2cam`);
    - a bare 16- or 12-number text file holding `lidar2img` itself.
    """
    path = Path(path)
    with reading(path):
        return _kitti_calibration(path, camera, image_name)


def calibration_rows(path: Path, text: str) -> dict[str, np.ndarray]:
    """`KEY: v1 v2 ...` lines of a KITTI-style calibration text -> {KEY: float64 values}."""
    rows = {}
    for line in text.splitlines():
        if ":" in line:
            key, values = line.split(":", 1)
            try:
                rows[key.strip()] = np.array(values.split(), dtype=np.float64)
            except ValueError:
                raise PointliftDataError(path, f"line {key.strip()!r} is not numeric") from None
    return rows


def _kitti_calibration(path: Path, camera: str, image_name: str | None) -> np.ndarray:
    if path.suffix == ".pkl":
        entry = load_info_pickle(path)["data_list"][0]
        if not isinstance(entry, dict) or not isinstance(entry.get("images", {}), dict):
            raise PointliftDataError(path, "data_list[0] is not a dict with an 'images' dict")
        images = entry.get("images", {})
        if image_name is not None:
            named = [k for k, v in images.items()
                     if isinstance(v, dict) and Path(str(v.get("img_path", ""))).name == image_name]
            camera = named[0] if named else camera
        if camera not in images:
            raise PointliftDataError(path, f"has no camera {camera!r} (cameras: {', '.join(images)})")
        return _lidar2img_from_entry(path, images[camera], camera)
    text = read_text(path, "calibration text")
    if ":" in text:
        rows = calibration_rows(path, text)
        number = camera[-1] if camera.startswith("CAM") else "2"
        needed = [f"P{number}", "R0_rect", "Tr_velo_to_cam"]
        missing = [k for k in needed if k not in rows]
        if missing:
            raise PointliftDataError(path, f"KITTI calibration lacks {', '.join(missing)}")
        def matrix(key: str) -> np.ndarray:
            values = rows[key]
            shape = {9: (3, 3), 12: (3, 4), 16: (4, 4)}.get(values.size)
            if shape is None:
                raise PointliftDataError(path, f"{key} holds {values.size} numbers, expected 9, 12 or 16")
            return _matrix(path, values.reshape(shape), key)

        return matrix(f"P{number}") @ matrix("R0_rect") @ matrix("Tr_velo_to_cam")
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError:
        raise PointliftDataError(path, "is not a whitespace-separated matrix of numbers") from None
    if values.size not in (12, 16):
        raise PointliftDataError(path, f"holds {values.size} numbers, expected a 3x4 or 4x4 lidar->image matrix")
    matrix = _matrix(path, values.reshape(-1, 4), "lidar->image matrix")
    if _is_camera_only(matrix):
        raise PointliftDataError(
            path, "holds a camera projection matrix (P2/cam2img) without the LiDAR->camera rotation; "
            "pass the official calib file (P2, R0_rect, Tr_velo_to_cam) or the info .pkl instead"
        )
    return matrix


def _lidar2img_from_entry(path: Path, camera_info: dict, camera: str) -> np.ndarray:
    """Prefer composing `cam2img @ lidar2cam` (the definition); fall back to a stored `lidar2img`."""
    if "cam2img" in camera_info and "lidar2cam" in camera_info:
        return _matrix(path, camera_info["cam2img"], f"{camera} cam2img") @ _matrix(
            path, camera_info["lidar2cam"], f"{camera} lidar2cam"
        )
    if "lidar2img" in camera_info:
        return _matrix(path, camera_info["lidar2img"], f"{camera} lidar2img")
    raise PointliftDataError(path, f"camera {camera!r} has neither cam2img+lidar2cam nor lidar2img")


def read_kitti_frame(bin_path: str | Path, image_path: str | Path, calib_path: str | Path,
                     columns: int = 4) -> LidarCameraFrame:
    """A KITTI velodyne sweep (float32 x, y, z, reflectance) with the left colour camera."""
    bin_path, image_path = Path(bin_path), Path(image_path)
    points = read_raw_bin(bin_path, columns)
    lidar2img = read_kitti_calibration(calib_path, image_name=image_path.name)
    image = read_color_image(image_path)
    return LidarCameraFrame(bin_path.stem, points, [CameraView("CAM2", image, lidar2img)])


def _resolve(root: Path, stored: str, subfolder: str | None) -> Path:
    """Info files store paths relative to some data root; try the usual places."""
    stored_path = Path(stored)
    candidates = [root / stored_path, root / stored_path.name]
    if subfolder:
        candidates.append(root / subfolder / stored_path.name)
    return next((c for c in candidates if c.is_file()), candidates[0])


def read_nuscenes_frame(info_pkl: str | Path, root: str | Path, index: int = 0) -> LidarCameraFrame:
    """One nuScenes sample from an mmdetection3d (v1.1) info pickle: the LIDAR_TOP sweep
    (`num_pts_feats` float32 columns) and every camera, `lidar2img = cam2img @ lidar2cam`."""
    info_pkl, root = Path(info_pkl), Path(root)
    with reading(info_pkl):
        return _nuscenes_frame(info_pkl, root, index)


def _nuscenes_frame(info_pkl: Path, root: Path, index: int) -> LidarCameraFrame:
    info = load_info_pickle(info_pkl)
    if not 0 <= index < len(info["data_list"]):
        raise PointliftDataError(info_pkl, f"has {len(info['data_list'])} samples, index {index} is out of range")
    entry = info["data_list"][index]
    if not isinstance(entry, dict):
        raise PointliftDataError(info_pkl, f"sample {index} is a {type(entry).__name__}, not a dict")
    lidar = entry.get("lidar_points")
    if not isinstance(lidar, dict) or "lidar_path" not in lidar:
        raise PointliftDataError(info_pkl, f"sample {index} has no lidar_points.lidar_path")
    lidar_path = _resolve(root, str(lidar["lidar_path"]), "samples/LIDAR_TOP")
    columns = lidar.get("num_pts_feats", 5)
    if not isinstance(columns, (int, np.integer)) or isinstance(columns, bool) or not 3 <= columns <= 64:
        raise PointliftDataError(info_pkl, f"sample {index} num_pts_feats is {columns!r}, expected an integer 3..64")
    points = read_raw_bin(lidar_path, int(columns))
    images = entry.get("images", {})
    if not isinstance(images, dict):
        raise PointliftDataError(info_pkl, f"sample {index} 'images' is a {type(images).__name__}, expected a dict")
    cameras = []
    for camera, camera_info in images.items():
        if not isinstance(camera_info, dict) or not camera_info.get("img_path"):
            continue
        lidar2img = _lidar2img_from_entry(info_pkl, camera_info, camera)
        image = read_color_image(_resolve(root, str(camera_info["img_path"]), f"samples/{camera}"))
        cameras.append(CameraView(camera, image, lidar2img))
    if not cameras:
        raise PointliftDataError(info_pkl, f"sample {index} has no cameras with images")
    name = str(entry.get("token", lidar_path.stem))
    return LidarCameraFrame(name, points, cameras)
