"""RGB-D sequences: Microsoft 7-Scenes and ScanNet's exported (`export_sampled_data`) layout.

`open_rgbd_sequence` only indexes file names (and checks they are all there); each frame's images
and pose are read when it is indexed, so a long sequence costs nothing until it is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointlift.data.guard import read_text, reading
from pointlift.errors import PointliftDataError

__all__ = ["RGBDFrame", "RGBDSequence", "open_rgbd_sequence", "find_rgbd_sequences", "read_pose", "read_depth_png",
           "read_color_image"]

_SEVEN_SCENES_FRAME = re.compile(r"^frame-(\d+)\.depth\.png$")


@dataclass
class RGBDFrame:
    """One registered RGB-D frame. `depth` is metres (0 = invalid); `intrinsics` are the depth
    camera's; `pose` maps camera coordinates to world coordinates."""

    name: str
    color: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres
    intrinsics: np.ndarray  # (3, 3) float64
    pose: np.ndarray  # (4, 4) float64 camera-to-world


@dataclass(frozen=True)
class _FrameFiles:
    name: str
    number: int
    color: Path
    depth: Path
    pose: Path


class RGBDSequence:
    """Indexable, lazily read sequence of `RGBDFrame`s."""

    def __init__(self, root: Path, layout: str, frames: list[_FrameFiles], intrinsics: np.ndarray,
                 depth_scale: float, invalid_depth: int):
        self.root = root
        self.layout = layout
        self.intrinsics = intrinsics
        self.depth_scale = depth_scale
        self.invalid_depth = invalid_depth
        self._frames = frames
        self._depth_shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self._frames]

    @property
    def frame_numbers(self) -> list[int]:
        return [f.number for f in self._frames]

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> RGBDFrame:
        files = self._frames[index]
        depth = read_depth_png(files.depth, self.depth_scale, self.invalid_depth)
        if self._depth_shape is None:
            self._depth_shape = depth.shape
        elif depth.shape != self._depth_shape:
            raise PointliftDataError(
                files.depth, f"depth is {depth.shape[1]}x{depth.shape[0]} but the sequence's is "
                f"{self._depth_shape[1]}x{self._depth_shape[0]}"
            )
        color = read_color_image(files.color, size_hw=depth.shape)
        pose = read_pose(files.pose)
        return RGBDFrame(files.name, color, depth, self.intrinsics.copy(), pose)


def read_pose(path: Path) -> np.ndarray:
    """A 4x4 rigid camera-to-world matrix from text; non-finite (ScanNet writes -inf for lost
    tracking) or non-rigid matrices are errors naming the file."""
    path = Path(path)
    matrix = _read_matrix(path, (4, 4))
    if not np.isfinite(matrix).all():
        raise PointliftDataError(path, "pose has non-finite values (invalid/lost tracking)")
    rotation = matrix[:3, :3]
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        raise PointliftDataError(path, f"pose's last row is {matrix[3].tolist()}, expected [0, 0, 0, 1]")
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-2) or np.linalg.det(rotation) < 0:
        raise PointliftDataError(path, "pose's rotation part is not a rotation (not a rigid transform)")
    return matrix


def _read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    text = read_text(path, "matrix text")
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError:
        raise PointliftDataError(path, "is not a whitespace-separated matrix of numbers") from None
    if values.size != shape[0] * shape[1]:
        raise PointliftDataError(path, f"holds {values.size} numbers, expected a {shape[0]}x{shape[1]} matrix")
    return values.reshape(shape)


# An RGB-D frame larger than this (4096 x 4096; Azure Kinect's largest colour mode is 4096 x 3072) is a
# damaged header, refused before decoding: a flipped size byte must not cost gigabytes of memory.
FRAME_MAX_PIXELS = 4096 * 4096


def _open_image(path: Path):
    from PIL import Image

    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    try:
        image = Image.open(path)
        limit = min(Image.MAX_IMAGE_PIXELS or FRAME_MAX_PIXELS, FRAME_MAX_PIXELS)
        if limit and image.width * image.height > limit:  # refuse before decoding, not after a warning
            raise PointliftDataError(path, f"declares a {image.width}x{image.height} image (more than {limit} pixels)")
        image.load()  # decode now so truncation is reported here, with the file name
    except PointliftDataError:
        raise
    except Image.DecompressionBombError as error:
        raise PointliftDataError(path, f"declares an implausibly large image ({error})") from None
    except Exception as error:  # noqa: BLE001 - decoders fail in many ways on corrupt files
        raise PointliftDataError(path, f"cannot be decoded as an image ({type(error).__name__}: {error})") from None
    return image


def read_depth_png(path: Path, scale: float = 1000.0, invalid: int = 0) -> np.ndarray:
    """16-bit depth PNG (millimetres) -> `(H, W) float32` metres with 0 for invalid pixels."""
    path = Path(path)
    with reading(path):
        return _depth_png(path, scale, invalid)


def _depth_png(path: Path, scale: float, invalid: int) -> np.ndarray:
    image = _open_image(path)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise PointliftDataError(path, f"depth image has mode {image.mode!r}, expected 16-bit")
    raw = np.asarray(image)
    if raw.ndim != 2:
        raise PointliftDataError(path, f"depth image has shape {raw.shape}, expected (H, W)")
    if raw.min() < 0 or raw.max() > 65535:
        raise PointliftDataError(path, "depth values outside the 16-bit range")
    raw = raw.astype(np.int32, copy=False)
    depth = (raw / scale).astype(np.float32)
    depth[raw == invalid] = 0.0
    depth[raw == 0] = 0.0
    return depth


def read_color_image(path: Path, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """8-bit RGB image `(H, W, 3) uint8`, resized (bilinear) to `size_hw` if given and different.

    Resizing is only allowed between equal aspect ratios: anything else means the files do not
    belong together.
    """
    path = Path(path)
    with reading(path):
        return _color_image(path, size_hw)


def _color_image(path: Path, size_hw: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    image = _open_image(path).convert("RGB")
    if size_hw is not None and (image.height, image.width) != tuple(size_hw):
        height, width = size_hw
        if abs(image.width / image.height - width / height) > 0.02 * (width / height):
            raise PointliftDataError(
                path, f"colour is {image.width}x{image.height}, cannot match depth {width}x{height} "
                "(different aspect ratio)"
            )
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


def _layout_of(root: Path) -> str | None:
    """"scannet" for folders per modality (depth/ beside pose/ or intrinsic/), "7scenes" for frame-*.depth.png
    files, None for anything else."""
    if (root / "depth").is_dir() and ((root / "pose").is_dir() or (root / "intrinsic").is_dir()):
        return "scannet"
    if any(root.glob("frame-*.depth.png")):
        return "7scenes"
    return None


def open_rgbd_sequence(root: str | Path) -> RGBDSequence:
    """Index a 7-Scenes sequence folder or a ScanNet-style folder per modality (ScanNet's export, HoloLens)."""
    root = Path(root)
    if not root.is_dir():
        raise PointliftDataError(root, "directory not found")
    layout = _layout_of(root)
    if layout == "scannet":
        return _open_scannet(root)
    if layout == "7scenes" or (root / "camera-intrinsics.txt").is_file():
        return _open_seven_scenes(root)
    raise PointliftDataError(
        root, "is neither a 7-Scenes sequence (frame-*.depth.png) nor a ScanNet export (depth/, pose/, intrinsic/)"
    )


def find_rgbd_sequences(root: str | Path, max_depth: int = 3) -> list[Path]:
    """`root` if it is an RGB-D sequence, otherwise every sequence folder below it (sorted, at most
    `max_depth` levels down): one data folder can hold several scenes and a scene several sequences."""
    root = Path(root)
    if not root.is_dir():
        raise PointliftDataError(root, "directory not found")
    if _layout_of(root) is not None:
        return [root]
    found, level = [], [root]
    for _ in range(max_depth):
        below = sorted(p for folder in level for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        found += [p for p in below if _layout_of(p) is not None]
        level = [p for p in below if _layout_of(p) is None]
    if not found:
        raise PointliftDataError(root, "holds no RGB-D sequence (7-Scenes frame-*.depth.png or ScanNet-style "
                                       "depth/ + pose/ folders)")
    return sorted(found)


def _read_intrinsic_matrix(path: Path) -> np.ndarray:
    """A 3x3 or 4x4 intrinsic matrix from text (ScanNet writes 4x4, others 3x3)."""
    text = read_text(path, "matrix text") if path.is_file() else None
    if text is not None and len(text.split()) == 9:
        return _read_matrix(path, (3, 3))
    return _read_matrix(path, (4, 4))


def _check_intrinsics(path: Path, matrix: np.ndarray) -> np.ndarray:
    k = matrix[:3, :3]
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1]):
        raise PointliftDataError(path, f"is not a pinhole intrinsic matrix: {k.tolist()}")
    return k.copy()


def _require_files(frames: list[_FrameFiles]) -> None:
    for frame in frames:
        for file in (frame.color, frame.pose):
            if not file.is_file():
                raise PointliftDataError(file, f"missing (frame {frame.name} has a depth image)")


def _open_seven_scenes(root: Path) -> RGBDSequence:
    intrinsics_path = root / "camera-intrinsics.txt"
    if not intrinsics_path.is_file() and (root.parent / intrinsics_path.name).is_file():
        intrinsics_path = root.parent / intrinsics_path.name  # 3DMatch/SUN3D: one file per scene, sequences below
    intrinsics = _check_intrinsics(intrinsics_path, _read_matrix(intrinsics_path, (3, 3)))
    frames = []
    for depth_path in root.glob("frame-*.depth.png"):
        match = _SEVEN_SCENES_FRAME.match(depth_path.name)
        if not match:
            continue
        stem = f"frame-{match.group(1)}"
        color = root / f"{stem}.color.png"  # the official release; ../shared re-encodes as jpg
        if not color.is_file():
            color = root / f"{stem}.color.jpg"
        frames.append(_FrameFiles(stem, int(match.group(1)), color, depth_path, root / f"{stem}.pose.txt"))
    if not frames:
        raise PointliftDataError(root, "has no frame-*.depth.png files")
    frames.sort(key=lambda f: f.number)
    _require_files(frames)
    return RGBDSequence(root, "7scenes", frames, intrinsics, depth_scale=1000.0, invalid_depth=65535)


def _open_scannet(root: Path) -> RGBDSequence:
    intrinsics_path = root / "intrinsic" / "intrinsic_depth.txt"
    if not intrinsics_path.is_file() and (root / "intrinsic.txt").is_file():
        intrinsics_path = root / "intrinsic.txt"  # one 3x3 (or 4x4) file beside the folders (HoloLens export)
    intrinsics = _check_intrinsics(intrinsics_path, _read_intrinsic_matrix(intrinsics_path))
    frames = []
    for depth_path in (root / "depth").glob("*.png"):
        if not depth_path.stem.isdigit():
            continue
        number = int(depth_path.stem)
        frames.append(_FrameFiles(depth_path.stem, number, root / "color" / f"{depth_path.stem}.jpg",
                                  depth_path, root / "pose" / f"{depth_path.stem}.txt"))
    if not frames:
        raise PointliftDataError(root / "depth", "has no <N>.png depth images")
    frames.sort(key=lambda f: f.number)
    _require_files(frames)
    return RGBDSequence(root, "scannet", frames, intrinsics, depth_scale=1000.0, invalid_depth=0)
