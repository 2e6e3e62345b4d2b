"""PPKT's run configuration: where pairs come from, the two networks, the loss, the augmentations, the run.

Every field is a config key of `pointlift pretrain ppkt --config FILE` (and of a checkpoint's model_spec).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pointlift.engine.config import InputPath, InputPathStr, TrainConfig, require


@dataclass
class PPKTDataConfig:
    """Where pairs come from. kind: an RGB-D directory (7-Scenes/ScanNet layout), a KITTI-style
    directory of `NAME.bin/.png/.txt` triples, a SemanticKITTI root (`sequences/SS/velodyne`, `image_2`,
    `calib.txt`; labels unused), one nuScenes info pickle, or a synthetic scene.

    rgbd `root` (and each of `roots`) is one sequence or a folder holding sequences (every one below it
    is used). `frame: camera` (the released recipe) keeps points in the (first fused) camera's frame, y
    down; `frame: world` puts them in the poses' world frame turned so that gravity is +z (up measured
    per sequence from its horizontal surfaces, `pointlift.data.gravity`, or `world_up` given), as
    scans are seen at fine-tune time."""

    kind: Literal["rgbd", "kitti", "semantickitti", "nuscenes", "synthetic"] = "rgbd"  # the layout of `root`
    root: Optional[InputPath] = None  # the data folder (required unless kind is synthetic); rgbd: one sequence or a folder of them
    roots: list[InputPath] = field(default_factory=list)  # rgbd: more sequences (or folders of them) beside root
    frame: Literal["camera", "world"] = "camera"  # points in the camera frame (released) or the gravity-aligned world frame (z up, from the poses)
    world_up: Optional[tuple[float, float, float]] = None  # frame world: the poses' up direction (None = measured)
    sequences: list[str] = field(default_factory=list)  # semantickitti: sequences to use (empty = all)
    info_pkl: Optional[InputPath] = None  # nuscenes only: the info pickle
    train_below: Optional[int] = None  # rgbd: frame numbers below this train, the rest are held out
    holdout_fraction: float = 0.25  # otherwise: the last fraction of frames is held out
    frame_stride: int = 1  # use every k-th frame
    frames_per_sample: int = 1  # fuse this many consecutive (strided) frames into one sample
    cross_view_pairs: bool = False  # fused frames: also pair points with other frames' pixels (occlusion-tested)
    pixel_stride: int = 4  # back-project every k-th depth row/column
    image_size: tuple[int, int] = (240, 320)  # (H, W) of the teacher's input and of the pixel grid
    max_depth: float = 0.0  # rgbd: drop points farther than this (0 = keep all)
    min_depth: float = 1.0  # lidar: keep camera depth > this
    occlusion: bool = True  # lidar: z-buffer occlusion test
    occlusion_tolerance: float = 0.25  # |depth(u, v) - z| <= tolerance * z
    zbuffer_cell: int = 4  # lidar z-buffer cell size in pixels
    max_eval_frames: int = 0  # 0 = every held-out frame
    pair_cache_mb: float = 256.0  # keep each sample's point-pixel pairs after first use, up to this many MB per dataset (0 = off; the run is the same)
    # pointlift's option for the CPU: voxelise each training batch and build the student's kernel maps in the collate,
    # so that a DataLoader worker (train.num_workers > 0) does it beside the step (the same run; sparse/prebuilt.py)
    kernel_maps_in_loader: bool = False
    synthetic_frames: int = 16  # synthetic: frames of the generated scene
    synthetic_hw: tuple[int, int] = (96, 128)  # synthetic: (H, W) of the generated frames
    synthetic_seed: int = 0  # synthetic: seed of the generated scene

    def __post_init__(self):
        require(self.frame_stride >= 1, "frame_stride", "must be >= 1")
        require(self.frames_per_sample >= 1, "frames_per_sample", "must be >= 1")
        require(self.pixel_stride >= 1, "pixel_stride", "must be >= 1")
        require(min(self.image_size) >= 8, "image_size", f"must be at least 8x8, got {self.image_size}")
        require(0 < self.holdout_fraction < 1, "holdout_fraction", "must be in (0, 1)")
        require(self.occlusion_tolerance >= 0, "occlusion_tolerance", "must be >= 0")
        require(self.zbuffer_cell >= 1, "zbuffer_cell", "must be >= 1")
        require(self.pair_cache_mb >= 0, "pair_cache_mb", "must be >= 0 (0 = off)")
        require(self.kind == "synthetic" or self.root is not None, "root", f"required for kind '{self.kind}'")
        require(not self.roots or self.kind == "rgbd", "roots", "only for kind 'rgbd'")
        require(self.frame == "camera" or self.kind in ("rgbd", "synthetic"), "frame",
                f"'world' needs camera poses (kind rgbd or synthetic), not kind '{self.kind}'")
        require(self.world_up is None or any(abs(v) > 0 for v in self.world_up), "world_up", "must be non-zero")
        require(self.kind != "nuscenes" or self.info_pkl is not None, "info_pkl", "required for kind 'nuscenes'")


@dataclass
class PPKTModelConfig:
    """The frozen 2D teacher and the 3D student."""

    teacher: str = "tf_efficientnet_lite0"  # timm model name of the 2D teacher
    teacher_weights: Optional[InputPathStr] = None  # None = bundled/hub weights, a path, or "random"
    teacher_stage: int = -1  # which feature stage of the teacher (-1 = last)
    embed_dim: int = 64  # width of the shared pixel/point embedding
    upl_mode: Literal["bilinear", "learned"] = "bilinear"  # how teacher maps are upsampled to pixels
    student: str = "spunet-v1m1"  # the sparse U-Net (pointlift.models.sparse_unet names)
    in_features: Literal["rgb", "constant"] = "rgb"  # point features fed to the student
    voxel_size: float = 0.05  # student voxel size (metres)
    up_axis: Literal["x", "y", "z"] = "y"  # camera frames: y (down); LiDAR: z

    def __post_init__(self):
        require(self.embed_dim >= 1, "embed_dim", "must be >= 1")
        require(self.voxel_size > 0, "voxel_size", "must be > 0")


@dataclass
class PPKTLossConfig:
    """The pixel-to-point InfoNCE loss."""

    num_pairs: int = 4096  # point-pixel pairs sampled per batch
    temperature: float = 0.07  # InfoNCE temperature

    def __post_init__(self):
        require(self.num_pairs >= 2, "num_pairs", "must be >= 2")
        require(self.temperature > 0, "temperature", "must be > 0")


@dataclass
class PPKTAugmentConfig:
    """Augmentations the teacher cache is exact under: they move points, not pixels."""

    rotate_up: bool = True  # random rotation about the up axis
    flip: bool = True  # random mirror of a horizontal axis
    scale: tuple[float, float] = (0.9, 1.1)  # [low, high] of the random isotropic scale
    image_flip: bool = False  # mirror image (cached map) and pixel u together, p = 0.5


@dataclass
class PPKTConfig:
    """One YAML file per PPKT pretraining run (`pointlift pretrain ppkt --config FILE`)."""

    data: PPKTDataConfig = field(default_factory=PPKTDataConfig)  # where pairs come from
    model: PPKTModelConfig = field(default_factory=PPKTModelConfig)  # teacher and student
    loss: PPKTLossConfig = field(default_factory=PPKTLossConfig)  # the contrastive loss
    augment: PPKTAugmentConfig = field(default_factory=PPKTAugmentConfig)  # point augmentations
    train: TrainConfig = field(default_factory=TrainConfig)  # the training loop
    cache: bool = True  # compute the teacher's maps once and reuse them
    cache_dir: Optional[Path] = None  # default: <run_dir>/teacher_cache
    eval_points_per_frame: int = 256  # retrieval candidates per frame (chance = 1 / this)
    eval_untrained: bool = True  # also measure the untrained network (same seed) for comparison
    device: Optional[str] = None  # cpu, cuda, cuda:1 ... (null = cuda if available)
    run_root: Path = Path("runs")  # folder of run directories (relative to the current directory)

    def __post_init__(self):
        require(self.eval_points_per_frame >= 2, "eval_points_per_frame", "must be >= 2")
        require(not self.data.kernel_maps_in_loader or self.device is None or self.device == "cpu",
                "data.kernel_maps_in_loader", f"builds kernel maps on the CPU; this run is on {self.device}")
        require(self.data.frame != "world" or self.model.up_axis == "z", "model.up_axis",
                "must be 'z' with data.frame 'world' (world clouds are turned z up)")
