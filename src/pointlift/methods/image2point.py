"""Image2Point (Xu et al., ECCV 2022): 2D ConvNet weights as 3D weights, then fine-tune a few layers.

1. `build_network`, design `released` (default): for ResNet 18/34/50/101 the released classification
   network (`Image2PointResNet`: random stride-1 3x3x3 stem + BN, the 2D stages inflated with the
   released rules and axis options, total stride 8, mean pool, Linear + BatchNorm1d), tested against
   the released code's outputs; for the depthwise families (MobileNetV2, EfficientNet-Lite; pointlift's
   extension, there is no released version) the same design: the whole timm network inflated, its stem
   replaced by a random stride-1 conv + BN, its first stride-2 block at stride 1 (total stride 8 instead
   of 32, as the released ResNet drops conv1's stride and the max-pool), a Linear + BatchNorm1d head.
   Design `imagenet-stem` (pointlift's earlier design): the whole 2D network inflated, ImageNet stem
   included, total stride 32, plain Linear head. `weights="random"`: the same network from scratch.
2. `apply_fip`: "fine-tuning image-pretrained" modes. `io`: only the input layer (stem conv + its BN)
   and the output layer (classifier) train, everything inside is frozen *including* its BN running
   statistics; `ioms`: as io but the BN running statistics update; `iobn`: all conv kernels frozen
   except the io layers, every BN affine trains (statistics update); `all`: full fine-tuning.
3. `finetune`: voxelised shape classification (pointlift.tasks.shape_classification) with the engine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from pointlift.engine.config import TrainConfig, OptimConfig, config_to_dict, load_config
from pointlift.errors import PointliftConfigError
from pointlift.models.inflate import create_2d_network, format_report, he_init_, inflate_network
from pointlift.sparse import SparseBatchNorm, SparseConv3d, SubMConv3d
from pointlift.tasks.shape_classification import (ShapeDataConfig, SparseShapeClassifier, batch_to_sparse,
                                                  build_datasets_with_validation, points_to_batch,
                                                  train_classifier)

FIP_MODES = ("io", "ioms", "iobn", "all")


DESIGNS = ("released", "imagenet-stem")


@dataclass
class InflationConfig:
    teacher: str = "resnet18"  # resnet18/34/50/101, or a timm MobileNetV2 / EfficientNet(-Lite) name
    weights: Optional[str] = None  # local file; None = bundled package or timm hub; "random" = from scratch
    mode: Literal["copy", "center", "average"] = "copy"  # copy = released; center/average = pointlift's
    axis: Literal["z-axis", "y-axis", "x-axis"] = "z-axis"  # the released options (models/inflate.py)
    design: Literal["released", "imagenet-stem"] = "released"


@dataclass
class Image2PointDataConfig(ShapeDataConfig):
    """Shape data with the released point pipeline as default (`voxel_mean` = pointlift's earlier one)."""

    pipeline: Literal["released", "voxel_mean"] = "released"


@dataclass
class Image2PointConfig:
    name: str = "image2point"
    inflation: InflationConfig = field(default_factory=InflationConfig)
    fip: Literal["io", "ioms", "iobn", "all"] = "io"
    init_checkpoint: Optional[str] = None  # start from `pointlift inflate` output (head re-initialised)
    data: Image2PointDataConfig = field(default_factory=Image2PointDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, batch_size=32, optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)))
    eval_every_epoch: bool = True
    eval_batch_size: int = 64
    target_accuracy: float = 0.85  # for epochs-to-target (benchmark)
    # re-estimate trainable BN statistics on the training shapes before each evaluation (few-step runs)
    precise_bn: bool = False
    device: Optional[str] = None


# ------------------------------------------------------------------------------------ the network


def _released_depthwise_design(net: nn.Module, num_classes: int, in_channels: int = 3) -> nn.Module:
    """An inflated timm MobileNetV2 / EfficientNet on the released design (pointlift's extension): a random
    3x3x3 stride-1 stem conv + BN (no activation, as the released stem), the first stride-2 conv of the
    blocks at stride 1 (no early downsampling: total stride 8), a Linear + BatchNorm1d classifier."""
    from pointlift.models.sparse_resnet import init_conv_released

    if not all(hasattr(net, a) for a in ("conv_stem", "bn1", "blocks", "classifier")):
        raise PointliftConfigError(f"the released design needs a ResNet or a timm EfficientNet-style network, "
                                   f"got {type(net).__name__}")
    channels = net.conv_stem.out_channels
    net.conv_stem = SubMConv3d(in_channels, channels, 3)
    init_conv_released(net.conv_stem)
    net.bn1 = SparseBatchNorm(channels)
    for name, module in net.blocks.named_modules():
        if isinstance(module, SparseConv3d) and module.stride > 1 and module.kernel_size % 2 == 1:
            parent_name, _, child = name.rpartition(".")
            parent = net.blocks.get_submodule(parent_name) if parent_name else net.blocks
            flat = SubMConv3d(module.in_channels, module.out_channels, module.kernel_size, groups=module.groups,
                              bias=module.bias is not None)
            flat.load_state_dict(module.state_dict())
            setattr(parent, child, flat)
            break
    features = net.classifier.in_features if isinstance(net.classifier, nn.Linear) else net.num_features
    net.classifier = nn.Sequential(nn.Linear(features, num_classes), nn.BatchNorm1d(num_classes))
    net.io_prefixes = ("conv_stem", "bn1", "classifier")
    return net


def build_network(teacher: str, weights: str | None, mode: str, axis: str,
                  num_classes: int | None, design: str = "released") -> tuple[nn.Module, list]:
    """(3D network SparseTensor -> logits, inflation report). `weights="random"`: trained from scratch."""
    from pointlift.models.inflate import InflatedLayer, inflate_resnet_state, released_resnet_name
    from pointlift.models.sparse_resnet import RELEASED_RESNETS, Image2PointResNet

    if design not in DESIGNS:
        raise PointliftConfigError(f"inflation.design must be one of {DESIGNS}, got {design!r}")
    if design == "released" and teacher in RELEASED_RESNETS:
        net = Image2PointResNet(teacher, in_channels=3, num_classes=num_classes or 1000)
        report = []
        if weights != "random":
            state = create_2d_network(teacher, weights=weights).state_dict()
            inflated = inflate_resnet_state(state, mode, axis)
            result = net.load_state_dict(inflated, strict=False)
            untouched = {k.split(".")[0] for k in result.missing_keys}
            if result.unexpected_keys or untouched - {"stem", "classifier"}:
                raise PointliftConfigError(f"2D {teacher} does not fit the released network: unexpected "
                                           f"{result.unexpected_keys[:3]}, missing {result.missing_keys[:3]}")
            report = [InflatedLayer(k2, released_resnet_name(k2), "conv" if state[k2].ndim == 4 else "norm",
                                    tuple(state[k2].shape), tuple(inflated[released_resnet_name(k2)].shape),
                                    mode if state[k2].ndim == 4 else "copied")
                      for k2 in state if released_resnet_name(k2) is not None and k2.endswith("weight")]
        return net, report
    net_2d = create_2d_network(teacher, weights=weights, num_classes=num_classes)
    net_3d, report = inflate_network(net_2d, mode=mode, axis=axis)
    if weights == "random":
        he_init_(net_3d)
    if design == "released":
        net_3d = _released_depthwise_design(net_3d, num_classes or 1000)
    return net_3d, report


def _input_output_layers(net: nn.Module) -> tuple[str, ...]:
    """Names of the input layer (stem conv and its norm) and the output layer (the classifier, with its
    BatchNorm1d in the released head); every module inside them counts as input/output layer."""
    if hasattr(net, "io_prefixes"):
        return tuple(net.io_prefixes)
    modules = list(net.named_modules())
    first_conv = next(n for n, m in modules if isinstance(m, (SubMConv3d, SparseConv3d)))
    first_norm = next(n for n, m in modules if isinstance(m, SparseBatchNorm))
    classifier = net.get_classifier()
    head = [n for n, m in modules if m is classifier]
    return (first_conv, first_norm, *head)


def apply_fip(model: SparseShapeClassifier, fip: str) -> dict[str, int]:
    """Set requires_grad and the frozen-statistics norms for an FIP mode; returns parameter counts.

    Released semantics (tests/test_image2point_reference.py against fip.json): the input (stem conv + BN)
    and output (classifier) layers always train; `io` freezes everything else and puts every other BN in
    eval mode (its running statistics neither used from the batch nor updated); `ioms` the same trainable
    set with every BN in train mode; `iobn` also trains every BN's affine; `all` trains everything."""
    if fip not in FIP_MODES:
        raise PointliftConfigError(f"fip must be one of {FIP_MODES}, got {fip!r}")
    net = model.backbone
    prefixes = _input_output_layers(net)

    def is_io(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    frozen_norms = []
    for name, module in net.named_modules():
        own = list(module.parameters(recurse=False))
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if fip == "all" or is_io(name):
            trainable = True
        elif fip == "iobn":
            trainable = is_norm
        else:  # io, ioms
            trainable = False
        for p in own:
            p.requires_grad_(trainable)
        if fip == "io" and is_norm and not is_io(name):
            frozen_norms.append(name)
    model.frozen_norms = tuple(frozen_norms)
    model.train(model.training)
    total = sum(p.numel() for p in model.parameters())
    trainable_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable_count, "total_params": total, "frozen_bn_layers": len(frozen_norms)}


def _load_init_checkpoint(model: SparseShapeClassifier, path: str) -> int:
    """Load an Image2Point (e.g. `pointlift inflate`) checkpoint of this architecture; only the classifier
    may differ (re-initialised for the new classes). Another method's or architecture's checkpoint is an error."""
    from pointlift.engine.checkpoint import load_init_checkpoint, read_checkpoint_meta

    kind = (read_checkpoint_meta(path).get("model_spec") or {}).get("kind")
    if kind == "i2p_mae":  # the one mix-up users make: say where such a checkpoint goes
        raise PointliftConfigError(f"init_checkpoint {path}: an 'i2p_mae' checkpoint; Image2Point starts from "
                                   "`pointlift inflate` output (I2P-MAE checkpoints fine-tune with "
                                   "`pointlift finetune i2p-mae`)")
    net = model.backbone
    classifier = net.get_classifier()
    head = tuple(f"backbone.{name}." for name, module in net.named_modules() if module is classifier)
    return load_init_checkpoint(model, path, "image2point", reinit=head)


def build_classifier(config: Image2PointConfig, num_classes: int) -> tuple[SparseShapeClassifier, dict]:
    """The FIP-configured classifier and {trainable_params, total_params, ...}."""
    from pointlift.engine.seed import seed_everything

    inflation = config.inflation
    seed_everything(config.train.seed)  # before anything random is built: runs repeat exactly
    net, _ = build_network(inflation.teacher, inflation.weights, inflation.mode, inflation.axis, num_classes,
                           inflation.design)
    model = SparseShapeClassifier(net)
    if config.init_checkpoint:
        _load_init_checkpoint(model, config.init_checkpoint)
    counts = apply_fip(model, config.fip)
    return model, counts


def model_spec(config: Image2PointConfig, num_classes: int) -> dict:
    return {"kind": "image2point", "config": {
        "teacher": config.inflation.teacher, "mode": config.inflation.mode, "axis": config.inflation.axis,
        "design": config.inflation.design, "num_classes": num_classes, "voxel_size": config.data.voxel_size,
        "input_scale": config.data.input_scale, "pipeline": config.data.pipeline,
        "normalize": config.data.normalize if config.data.normalize is not None else
        config.data.dataset == "modelnet10"}}


# -------------------------------------------------------------------------------------- training


def finetune(config: Image2PointConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
             train_split=None, test_split=None) -> dict:
    """Fine-tune on shape classification; returns last-epoch metrics, the per-epoch curve and counts."""
    from pointlift.engine.seed import seed_everything

    seed_everything(config.train.seed)
    train_set, val_set, test_set, class_names = build_datasets_with_validation(config.data, train_split, test_split)
    num_classes = len(class_names)
    model, counts = build_classifier(config, num_classes)
    print(f"[image2point] fip={config.fip} teacher={config.inflation.teacher} weights={config.inflation.weights} "
          f"trainable parameters {counts['trainable_params']:,} of {counts['total_params']:,}")
    start = time.perf_counter()
    result = train_classifier(model, train_set, test_set, config.data, config.train, run_dir,
                              eval_every_epoch=config.eval_every_epoch, eval_batch_size=config.eval_batch_size,
                              resume=resume, progress=progress, config_for_checkpoint=config_to_dict(config),
                              model_spec=model_spec(config, num_classes), device=config.device, val_set=val_set,
                              precise_bn=config.precise_bn)
    curve = _curve_from_history(result["history"], val_set is not None) or result["curve"]
    summary = {"overall_acc": result["final"]["overall_acc"], "mean_class_acc": result["final"]["mean_class_acc"],
               "curve": curve, "curve_split": result["curve_split"],
               "val_overall_acc": curve[-1]["overall_acc"] if val_set is not None and curve else float("nan"),
               "train_shapes": len(train_set), "val_shapes": len(val_set) if val_set is not None else 0,
               "test_shapes": len(test_set),
               "seconds": time.perf_counter() - start, **counts}
    from pointlift.engine.rundir import write_json

    write_json(Path(run_dir) / "results.json", summary)  # rank 0 only: its evaluation is the run's
    return summary


def _curve_from_history(history: list[dict], validation: bool) -> list[dict]:
    """Per-epoch accuracy rows from the run's logged evaluations - on resume these include the epochs
    before the interruption, which the evaluation callback of this process never saw."""
    prefix = "eval/val_" if validation else "eval/"
    return [{"epoch": int(row["epoch"]), "overall_acc": row[prefix + "overall_acc"],
             "mean_class_acc": row.get(prefix + "mean_class_acc", float("nan"))}
            for row in history if prefix + "overall_acc" in row]


def finetune_command(config_path, resume: bool = False, run_dir=None) -> dict:
    """`pointlift finetune image2point --config FILE [--resume] [--run-dir DIR]`."""
    from pointlift.engine.rundir import create_run_dir

    config = load_config(config_path, Image2PointConfig)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    run_dir = create_run_dir(config.name, run_dir=run_dir, config=config)
    summary = finetune(config, run_dir, resume=resume)
    from pointlift.engine.distributed import is_main_process

    if is_main_process():
        print(f"[image2point] overall accuracy {summary['overall_acc']:.4f}, mean-class {summary['mean_class_acc']:.4f} "
          f"(last epoch) -> {run_dir}")
    return summary


def inflate_command(teacher: str, weights=None, mode: str = "copy", axis: str = "z-axis", out=None,
                    design: str = "released") -> Path:
    """`pointlift inflate`: save the inflated network as a checkpoint (design `imagenet-stem` keeps the
    ImageNet classifier; the released design has a fresh 1000-way Linear + BatchNorm1d head)."""
    from pointlift.engine.checkpoint import model_state_for_checkpoint, save_checkpoint

    net, report = build_network(teacher, str(weights) if weights is not None else None, mode, axis, None, design)
    print(format_report(report))
    model = SparseShapeClassifier(net)
    head = net.get_classifier()
    linear = head[0] if isinstance(head, nn.Sequential) else head
    spec = {"kind": "image2point", "config": {"teacher": teacher, "mode": mode, "axis": axis, "design": design,
                                              "num_classes": int(linear.out_features),
                                              "voxel_size": 0.05, "input_scale": 1.0, "pipeline": "released",
                                              "normalize": True}}
    path = save_checkpoint(out, model_state_for_checkpoint(model), config={"teacher": teacher,
                           "weights": str(weights) if weights else None, "mode": mode, "axis": axis},
                           step=0, model_spec=spec,
                           extra={"report": [[r.name_2d, r.name_3d, list(r.shape_2d), list(r.shape_3d), r.mode]
                                             for r in report]})
    print(f"[image2point] inflated {len(report)} layers of {teacher} ({mode}, axis {axis}) -> {path}")
    return path


# ------------------------------------------------------------------------------------- embedding


class Image2PointEmbedder(SparseShapeClassifier):
    """The inflated network as a feature extractor: `.embed(points (B,P,3)) -> (B, F)` pooled features."""

    def __init__(self, backbone: nn.Module, voxel_size: float, input_scale: float, pipeline: str = "voxel_mean",
                 normalize: bool = True):
        super().__init__(backbone)
        self.voxel_size = voxel_size
        self.input_scale = input_scale
        self.pipeline, self.normalize = pipeline, normalize

    @torch.no_grad()
    def embed(self, points: torch.Tensor) -> torch.Tensor:
        batch = points_to_batch(points.float(), self.voxel_size, self.input_scale, self.pipeline, self.normalize)
        features = self.backbone.forward_features(batch_to_sparse(batch))
        return self.backbone.forward_head(features, pre_logits=True)


def build_embedder(model_spec_config: dict) -> Image2PointEmbedder:
    """Architecture from a checkpoint's model_spec config (weights are loaded by the caller)."""
    cfg = dict(model_spec_config)
    # checkpoints written before the released design carry no "design"/"pipeline": the earlier ones
    net, _ = build_network(cfg.get("teacher", "tf_efficientnet_lite0"), "random", cfg.get("mode", "copy"),
                           _legacy_axis(cfg.get("axis", "z-axis")), cfg.get("num_classes"),
                           cfg.get("design", "imagenet-stem"))
    return Image2PointEmbedder(net, float(cfg.get("voxel_size", 0.05)), float(cfg.get("input_scale", 1.0)),
                               cfg.get("pipeline", "voxel_mean"), bool(cfg.get("normalize", True))).eval()


def _legacy_axis(axis: str) -> str:
    """Axis names of older checkpoints ("x"/"y"/"z") -> the released option with the same copy axis (the
    architecture, which is all build_embedder needs, does not depend on the rows/columns placement)."""
    return {"x": "x-axis", "y": "z-axis", "z": "y-axis"}.get(axis, axis)


# ------------------------------------------------------------------------------------ quickstart


def quickstart(run_dir, progress: bool = True) -> dict:
    """About a minute of CPU time on 2 cores: ImageNet EfficientNet-Lite0 (bundled weights) inflated
    (pointlift's earlier `imagenet-stem` design, copy along z = axis `y-axis`) vs the same network from scratch, identical budget: fip `ioms` (stem and classifier
    train, inner weights frozen, BN statistics adapt), 16^3 voxels (0.125 on the unit sphere), 8 steps
    of 20 on 40 synthetic shapes (4 classes), tested on 32 others (seed 1); chance = 0.25.

    Why these settings (chosen on separate validation shapes, seed 2, not on the test shapes): with
    frozen ImageNet BN statistics (`io`) the xyz voxels drive the head BN+ReLU6 to ~0 and both arms sat
    at chance; at 8^3 voxels every layer past stride 8 sees one site per shape (chance again). `ioms`
    plus re-estimating the adapted BN statistics on the training shapes before the final evaluation
    (`precise_bn`: after 8 momentum-0.1 updates 43% of the ImageNet statistics would remain) gave
    validation accuracy 0.66 inflated vs 0.38 random (training loss 1.52 -> 0.61 vs 1.47 -> 1.49).
    Returns {"figures": {"acc_inflated_ioms", "acc_random_ioms", "chance", "trainable_params_*", "seconds",
    "cpu_seconds"}, "plots": [(caption, png)]} (the shape pointlift.quickstart expects)."""
    from pointlift.data.shapes import ShapeSet
    from pointlift.data.synthetic import make_shapes

    run_dir = Path(run_dir)
    classes = ("sphere", "cube", "torus", "table")
    points, labels, names = make_shapes(num_per_class=10, num_points=300, classes=classes, seed=0)
    test_points, test_labels, _ = make_shapes(num_per_class=8, num_points=300, classes=classes, seed=1)
    train_split = ShapeSet(list(points), labels, names, "train", Path("<synthetic>"))
    test_split = ShapeSet(list(test_points), test_labels, names, "test", Path("<synthetic>"))
    figures: dict = {"chance": 1.0 / len(classes)}
    start, cpu_start = time.perf_counter(), time.process_time()
    for label, weights in (("inflated", None), ("random", "random")):
        config = Image2PointConfig(
            name=f"quickstart-{label}",
            inflation=InflationConfig(teacher="tf_efficientnet_lite0", weights=weights, mode="copy", axis="y-axis",
                                      design="imagenet-stem"),
            fip="ioms", precise_bn=True,
            data=Image2PointDataConfig(voxel_size=0.125, augment=False, pipeline="voxel_mean"),
            train=TrainConfig(epochs=4, batch_size=20, log_every=1, checkpoint_every=0,
                              optim=OptimConfig(name="adamw", lr=1e-2, weight_decay=1e-4)),
            eval_every_epoch=False)
        summary = finetune(config, run_dir / label, progress=progress, train_split=train_split,
                           test_split=test_split)
        figures[f"acc_{label}_ioms"] = summary["overall_acc"]
        figures[f"trainable_params_{label}"] = summary["trainable_params"]
    figures["seconds"] = time.perf_counter() - start
    figures["cpu_seconds"] = time.process_time() - cpu_start
    return {"figures": figures, "plots": _quickstart_plots(run_dir, figures)}


def _quickstart_plots(run_dir: Path, figures: dict) -> list:
    """Training loss of both arms side by side, and their test accuracy against chance."""
    from pointlift.report import plot_bars, plot_curves, read_metrics_csv

    curves = {f"loss, {arm}": read_metrics_csv(run_dir / arm / "metrics.csv").get("loss", [])
              for arm in ("inflated", "random")}
    accuracy = {"test accuracy": {"inflated": figures["acc_inflated_ioms"], "random init": figures["acc_random_ioms"],
                                  "chance": figures["chance"]}}
    return [("training loss, inflated vs random init", plot_curves(curves, run_dir / "image2point_loss.png",
                                                                    title="Image2Point fine-tuning (ioms)")),
            ("test accuracy", plot_bars(accuracy, run_dir / "image2point_accuracy.png",
                                        title="Image2Point on synthetic shapes"))]
