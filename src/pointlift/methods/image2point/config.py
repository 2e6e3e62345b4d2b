"""Image2Point's configuration: which 2D network is inflated and how, which layers fine-tune (FIP), the data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pointlift.engine.config import InputPathStr, OptimConfig, TrainConfig
from pointlift.models.image2point_net import DESIGNS
from pointlift.tasks.shape_classification.data import ShapeDataConfig

FIP_MODES = ("io", "ioms", "iobn", "all")  # the paper's "fine-tuning image-pretrained" modes (.fip)


@dataclass
class InflationConfig:
    """Which 2D ConvNet is inflated into 3D, and how."""

    teacher: str = "resnet18"  # resnet18/34/50/101, or a timm MobileNetV2 / EfficientNet(-Lite) name
    weights: Optional[InputPathStr] = None  # local file; None = bundled package or timm hub; "random" = from scratch
    mode: Literal["copy", "center", "average"] = "copy"  # copy = released; center/average = pointlift's
    axis: Literal["z-axis", "y-axis", "x-axis"] = "z-axis"  # the released options (models/inflate.py)
    design: Literal["released", "imagenet-stem"] = "released"  # released network, or pointlift's ImageNet-stem variant


@dataclass
class Image2PointDataConfig(ShapeDataConfig):
    """Shape data with the released point pipeline as default (`voxel_mean` = pointlift's earlier one)."""

    pipeline: Literal["released", "voxel_mean"] = "released"  # point pipeline (see shape_classification/data.py)


@dataclass
class Image2PointConfig:
    """One YAML file per Image2Point run (`pointlift finetune image2point --config FILE`)."""

    name: str = "image2point"  # run directories are <run_root>/<name>-<time>
    inflation: InflationConfig = field(default_factory=InflationConfig)  # the inflated 2D network
    fip: Literal["io", "ioms", "iobn", "all"] = "io"  # which layers fine-tune (the paper's FIP modes)
    init_checkpoint: Optional[InputPathStr] = None  # start from `pointlift inflate` output (head re-initialised)
    data: Image2PointDataConfig = field(default_factory=Image2PointDataConfig)  # the shapes
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # the training loop (this recipe's defaults)
        epochs=100, batch_size=32, optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)))
    eval_every_epoch: bool = True  # evaluate after every epoch (false = after the last only)
    eval_batch_size: int = 64  # shapes per evaluation batch
    # re-estimate trainable BN statistics on the training shapes before each evaluation (few-step runs)
    precise_bn: bool = False
    device: Optional[str] = None  # cpu, cuda, cuda:1 ... (null = cuda if available)
    run_root: Path = Path("runs")  # runs go to <run_root>/<name>-<time> unless --run-dir names one


__all__ = ["DESIGNS", "FIP_MODES", "Image2PointConfig", "Image2PointDataConfig", "InflationConfig"]
