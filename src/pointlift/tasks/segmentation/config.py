"""Scene segmentation's typed configuration: which scans train and test, augmentations, the network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pointlift.engine.config import OptimConfig, TrainConfig, require


@dataclass
class SegDataConfig:
    """Which scans train and test, and how they are voxelised. `train`/`test`/`val` list split units:
    a ScanNet room (`scene0003`), a SemanticKITTI sequence (`05`), an S3DIS area (`Area_5`) or a full
    scan name; no unit may sit on two sides (a room's scans stay together)."""

    layout: Literal["scannet-votenet", "scannet", "semantickitti", "s3dis"] = "scannet-votenet"
    root: Path = Path("../shared/data/scannet-votenet")
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    features: Literal["rgb", "constant", "intensity"] = "rgb"
    voxel_size: float = 0.05
    scene_fraction: float = 1.0  # label efficiency: this fraction of the training scans (at least one)
    point_fraction: float = 1.0  # label efficiency: this fraction of each training scan's points keep labels
    # limited annotations (the ScanNet data-efficient protocol's 20/50/100/200): this many labelled points per
    # training scan keep their label (all if fewer), the rest IGNORE; drawn once per (scan, subset_seed)
    points_per_scene: Optional[int] = None
    subset_seed: int = 0
    max_points: Optional[int] = None  # training: random subset of each scan's points (None = all)
    crop_radius: Optional[float] = None  # training: keep points within this horizontal radius of a random point

    def __post_init__(self):
        require(self.voxel_size > 0, "voxel_size", f"must be > 0, got {self.voxel_size}")
        require(0 < self.scene_fraction <= 1, "scene_fraction", f"must be in (0, 1], got {self.scene_fraction}")
        require(0 < self.point_fraction <= 1, "point_fraction", f"must be in (0, 1], got {self.point_fraction}")
        require(self.max_points is None or self.max_points >= 1, "max_points", "must be >= 1 or null")
        require(self.points_per_scene is None or self.points_per_scene >= 1, "points_per_scene",
                f"must be >= 1 or null, got {self.points_per_scene}")
        require(self.points_per_scene is None or self.point_fraction == 1, "points_per_scene",
                "set either points_per_scene or point_fraction, not both")
        require(self.crop_radius is None or self.crop_radius > 0, "crop_radius", "must be > 0 or null")
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            shared = set(getattr(self, a)) & set(getattr(self, b))
            require(not shared, b, f"{sorted(shared)} also in {a}: a split unit must stay on one side")


@dataclass
class SegAugmentConfig:
    """Scene augmentations (training only): rotation about the up axis z, mirror of x and/or y, isotropic
    scale, clipped Gaussian jitter, and optional elastic distortion (the usual ScanNet recipe)."""

    rotate_up: bool = True
    flip: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    jitter_sigma: float = 0.005
    jitter_clip: float = 0.02
    elastic: bool = False
    elastic_params: list[tuple[float, float]] = field(default_factory=lambda: [(0.2, 0.4), (0.8, 1.6)])
    color_jitter: float = 0.0  # std of additive noise on RGB features (0 = off)

    def __post_init__(self):
        require(0 < self.scale[0] <= self.scale[1], "scale", f"must be 0 < low <= high, got {self.scale}")
        require(self.jitter_sigma >= 0 and self.jitter_clip >= 0, "jitter_sigma", "must be >= 0")


@dataclass
class SegModelConfig:
    """arch `spunet`: a sparse U-Net (`unet` names a size); `inflated`: the inflated-encoder U-Net of
    `teacher`. init `scratch`, `ppkt` (needs `checkpoint`, arch spunet) or `image2point` (arch inflated)."""

    arch: Literal["spunet", "inflated"] = "spunet"
    unet: str = "spunet-small"
    init: Literal["scratch", "ppkt", "image2point"] = "scratch"
    checkpoint: Optional[Path] = None  # PPKT checkpoint (init ppkt)
    teacher: str = "tf_efficientnet_lite0"  # inflated arch
    teacher_weights: Optional[str] = None  # None = bundled / hub ImageNet weights, or a local file
    inflation_mode: Literal["copy", "center", "average"] = "copy"
    inflation_axis: Literal["z-axis", "y-axis", "x-axis"] = "z-axis"  # the released axis options
    decoder_channels: int = 32

    def __post_init__(self):
        require(self.init != "ppkt" or self.checkpoint is not None, "checkpoint", "init 'ppkt' needs a checkpoint")
        require(self.init != "ppkt" or self.arch == "spunet", "arch", "init 'ppkt' needs arch 'spunet'")
        require(self.init != "image2point" or self.arch == "inflated", "arch",
                "init 'image2point' needs arch 'inflated'")


@dataclass
class SegmentationConfig:
    name: str = "segmentation"
    data: SegDataConfig = field(default_factory=SegDataConfig)
    augment: SegAugmentConfig = field(default_factory=SegAugmentConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, batch_size=4, optim=OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)))
    eval_untrained: bool = True  # also score the network before training (same seed) on the test scans
    write_predictions: bool = True  # PLY per test scan and a picture in the report
    device: Optional[str] = None
    run_root: Path = Path("runs")
