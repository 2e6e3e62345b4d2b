"""Scene segmentation's typed configuration: which scans train and test, augmentations, the network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pointlift.engine.config import InputPath, InputPathStr, OptimConfig, TrainConfig, require


@dataclass
class SegDataConfig:
    """Which scans train and test, and how they are voxelised. `train`/`test`/`val` list split units:
    a ScanNet room (`scene0003`), a SemanticKITTI sequence (`05`), an S3DIS area (`Area_5`) or a full
    scan name; no unit may sit on two sides (a room's scans stay together)."""

    layout: Literal["scannet-votenet", "scannet", "semantickitti", "s3dis"] = "scannet-votenet"  # the layout of `root`
    root: InputPath = Path("../shared/data/scannet-votenet")  # the folder of scans
    train: list[str] = field(default_factory=list)  # training split units
    test: list[str] = field(default_factory=list)  # test split units
    val: list[str] = field(default_factory=list)  # validation split units (optional)
    features: Literal["rgb", "constant", "intensity"] = "rgb"  # point features fed to the network
    voxel_size: float = 0.05  # metres
    scene_fraction: float = 1.0  # label efficiency: this fraction of the training scans (at least one)
    point_fraction: float = 1.0  # label efficiency: this fraction of each training scan's points keep labels
    # limited annotations (the ScanNet data-efficient protocol's 20/50/100/200): this many labelled points per
    # training scan keep their label (all if fewer), the rest IGNORE; drawn once per (scan, subset_seed)
    points_per_scene: Optional[int] = None
    subset_seed: int = 0  # seed of the scene_fraction / point_fraction / points_per_scene subsets
    max_points: Optional[int] = None  # training: random subset of each scan's points (None = all)
    crop_radius: Optional[float] = None  # training: keep points within this horizontal radius of a random point
    # pointlift's option for the CPU: build each training batch's kernel maps in the collate, so that a DataLoader
    # worker (train.num_workers > 0) makes them beside the step (the same run, bit for bit; sparse/prebuilt.py)
    kernel_maps_in_loader: bool = False

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

    rotate_up: bool = True  # random rotation about z
    flip: bool = True  # random mirror of x and/or y
    scale: tuple[float, float] = (0.9, 1.1)  # [low, high] of the random isotropic scale
    jitter_sigma: float = 0.005  # std of the Gaussian jitter (metres)
    jitter_clip: float = 0.02  # the jitter is clipped to +- this
    elastic: bool = False  # elastic distortion
    # elastic distortion: [granularity, magnitude] pairs, applied in turn
    elastic_params: list[tuple[float, float]] = field(default_factory=lambda: [(0.2, 0.4), (0.8, 1.6)])
    color_jitter: float = 0.0  # std of additive noise on RGB features (0 = off)

    def __post_init__(self):
        require(0 < self.scale[0] <= self.scale[1], "scale", f"must be 0 < low <= high, got {self.scale}")
        require(self.jitter_sigma >= 0 and self.jitter_clip >= 0, "jitter_sigma", "must be >= 0")


@dataclass
class SegModelConfig:
    """arch `spunet`: a sparse U-Net (`unet` names a size); `inflated`: the inflated-encoder U-Net of
    `teacher`. init `scratch`, `ppkt` (needs `checkpoint`, arch spunet) or `image2point` (arch inflated)."""

    arch: Literal["spunet", "inflated"] = "spunet"  # sparse U-Net, or inflated-encoder U-Net
    unet: str = "spunet-small"  # arch spunet: the U-Net size (pointlift.models.sparse_unet names)
    init: Literal["scratch", "ppkt", "image2point"] = "scratch"  # where the initial weights come from
    checkpoint: Optional[InputPath] = None  # PPKT checkpoint (init ppkt)
    teacher: str = "tf_efficientnet_lite0"  # inflated arch
    teacher_weights: Optional[InputPathStr] = None  # None = bundled / hub ImageNet weights, or a local file
    inflation_mode: Literal["copy", "center", "average"] = "copy"  # inflated arch: how 2D kernels become 3D
    inflation_axis: Literal["z-axis", "y-axis", "x-axis"] = "z-axis"  # the released axis options
    decoder_channels: int = 32  # inflated arch: width of the decoder

    def __post_init__(self):
        require(self.init != "ppkt" or self.checkpoint is not None, "checkpoint", "init 'ppkt' needs a checkpoint")
        require(self.init != "ppkt" or self.arch == "spunet", "arch", "init 'ppkt' needs arch 'spunet'")
        require(self.init != "image2point" or self.arch == "inflated", "arch",
                "init 'image2point' needs arch 'inflated'")


@dataclass
class SegmentationConfig:
    """One YAML file per segmentation run (`pointlift finetune segmentation --config FILE`)."""

    name: str = "segmentation"  # run directories are <run_root>/<name>-<time>
    data: SegDataConfig = field(default_factory=SegDataConfig)  # scans, splits, voxelisation
    augment: SegAugmentConfig = field(default_factory=SegAugmentConfig)  # training augmentations
    model: SegModelConfig = field(default_factory=SegModelConfig)  # the network and its initialisation
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # the training loop (this recipe's defaults)
        epochs=100, batch_size=4, optim=OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)))
    eval_untrained: bool = True  # also score the network before training (same seed) on the test scans
    write_predictions: bool = True  # PLY per test scan and a picture in the report
    device: Optional[str] = None  # cpu, cuda, cuda:1 ... (null = cuda if available)
    run_root: Path = Path("runs")  # folder of run directories (relative to the current directory)

    def __post_init__(self):
        require(not self.data.kernel_maps_in_loader or self.device is None or self.device == "cpu",
                "data.kernel_maps_in_loader", f"builds kernel maps on the CPU; this run is on {self.device}")
