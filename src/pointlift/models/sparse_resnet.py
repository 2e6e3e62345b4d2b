"""Sparse ResNet-style classifiers: a stem, stages of residual blocks, global pooling, a head.

Three block kinds cover the 2D networks worth inflating (Image2Point): `basic` and `bottleneck`
(ResNet) and `inverted` (MobileNetV2 / EfficientNet-Lite inverted residuals with a depthwise
conv and optional squeeze-excite). Layers are created in the same order as in the 2D networks,
and every conv uses torch's Conv3d weight layout, so 2D weights map onto them by position.
Downsampling convs place their outputs at unique(floor(coord / 2)); a strided shortcut is a
2x2x2 stride-2 conv (Image2Point fills it from the 2D 1x1 by repetition). Image2Point's released
classifier is `pointlift.models.image2point_net.Image2PointResNet`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.sparse import (
    SparseBatchNorm,
    SparseConv3d,
    SparseReLU,
    SparseReLU6,
    SparseSiLU,
    SparseTensor,
    SubMConv3d,
    broadcast_to_sites,
    global_pool,
)

ACTIVATIONS = {"relu": SparseReLU, "relu6": SparseReLU6, "silu": SparseSiLU}
BLOCKS = ("basic", "bottleneck", "inverted")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise PointliftConfigError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def conv(cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Module:
    """Submanifold conv at stride 1, strided sparse conv otherwise."""
    if stride == 1:
        return SubMConv3d(cin, cout, kernel_size, groups=groups, bias=bias)
    return SparseConv3d(cin, cout, kernel_size, stride=stride, groups=groups, bias=bias)


def conv_bn(cin, cout, kernel_size=3, stride=1, groups=1, activation: str | None = "relu") -> nn.Sequential:
    layers = [conv(cin, cout, kernel_size, stride, groups), SparseBatchNorm(cout)]
    if activation:
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes agree; else a projection (1x1, or stride x stride x stride when strided)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv(cin, cout, kernel_size=stride if stride > 1 else 1, stride=stride), SparseBatchNorm(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, channels: int, stride: int = 1, kernel_size: int = 3, activation: str = "relu"):
        super().__init__()
        self.conv1 = conv(cin, channels, kernel_size, stride)
        self.bn1 = SparseBatchNorm(channels)
        self.act = make_activation(activation)
        self.conv2 = conv(channels, channels, kernel_size)
        self.bn2 = SparseBatchNorm(channels)
        self.shortcut = shortcut(cin, channels, stride)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, channels: int, stride: int = 1, kernel_size: int = 3, activation: str = "relu"):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = conv(cin, channels, 1)
        self.bn1 = SparseBatchNorm(channels)
        self.conv2 = conv(channels, channels, kernel_size, stride)
        self.bn2 = SparseBatchNorm(channels)
        self.conv3 = conv(channels, out, 1)
        self.bn3 = SparseBatchNorm(out)
        self.act = make_activation(activation)
        self.shortcut = shortcut(cin, out, stride)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


class SqueezeExcite(nn.Module):
    """Per-sample channel gates from the mean over that sample's sites."""

    def __init__(self, channels: int, reduced: int, activation: str = "relu"):
        super().__init__()
        self.reduce = nn.Linear(channels, reduced)
        self.act = make_activation(activation)
        self.expand = nn.Linear(reduced, channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        gate = torch.sigmoid(self.expand(self.act(self.reduce(global_pool(x, "mean")))))
        return x.replace(x.features * broadcast_to_sites(x, gate))


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when expand_ratio = 1) -> depthwise k (strided) -> [SE] -> 1x1 project."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        kernel_size: int = 3,
        expand_ratio: int = 6,
        se_ratio: float = 0.0,
        activation: str = "relu6",
    ):
        super().__init__()
        hidden = cin * expand_ratio
        self.expand = conv_bn(cin, hidden, 1, activation=activation) if expand_ratio != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel_size, stride, groups=hidden, activation=activation)
        self.se = SqueezeExcite(hidden, max(1, int(cin * se_ratio))) if se_ratio > 0 else nn.Identity()
        self.project = conv_bn(hidden, cout, 1, activation=None)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.use_residual else out


@dataclass(frozen=True)
class StageSpec:
    """One stage: `depth` blocks of one kind; the first block carries the stride."""

    block: str
    channels: int
    depth: int
    stride: int = 1
    kernel_size: int = 3
    expand_ratio: int = 6
    se_ratio: float = 0.0


@dataclass(frozen=True)
class SparseResNetConfig:
    stages: tuple[StageSpec, ...]
    stem_channels: int = 32
    stem_kernel: int = 3
    stem_stride: int = 1
    head_channels: int = 0  # a 1x1 conv before pooling (MobileNet/EfficientNet), 0 = none
    activation: str = "relu"
    pool: str = "max"


def _resnet(block: str, depths, widths=(64, 128, 256, 512)) -> SparseResNetConfig:
    strides = (1, 2, 2, 2)
    return SparseResNetConfig(
        tuple(StageSpec(block, w, d, s) for w, d, s in zip(widths, depths, strides)), stem_channels=widths[0]
    )


def _inverted(table, stem=32, head=1280, se_ratio=0.0, activation="relu6") -> SparseResNetConfig:
    # table rows: (expand_ratio, channels, depth, stride, kernel_size)
    stages = tuple(StageSpec("inverted", c, n, s, k, t, se_ratio) for t, c, n, s, k in table)
    return SparseResNetConfig(stages, stem_channels=stem, stem_stride=2, head_channels=head, activation=activation)


CONFIGS: dict[str, SparseResNetConfig] = {
    "resnet18": _resnet("basic", (2, 2, 2, 2)),
    "resnet34": _resnet("basic", (3, 4, 6, 3)),
    "resnet50": _resnet("bottleneck", (3, 4, 6, 3)),
    # torchvision MobileNetV2 and timm EfficientNet-Lite0 layouts, layer for layer
    "mobilenetv2": _inverted(
        [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3), (6, 96, 3, 1, 3), (6, 160, 3, 2, 3), (6, 320, 1, 1, 3)]
    ),
    "efficientnet-lite0": _inverted(
        [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    ),
    # small configs that train in seconds on a CPU
    "resnet-tiny": SparseResNetConfig((StageSpec("basic", 16, 1), StageSpec("basic", 32, 1, 2)), stem_channels=16),
    "bottleneck-tiny": SparseResNetConfig(
        (StageSpec("bottleneck", 8, 1), StageSpec("bottleneck", 16, 1, 2)), stem_channels=16
    ),
    "mobilenet-tiny": _inverted([(1, 8, 1, 1, 3), (4, 16, 2, 2, 3), (4, 24, 1, 2, 5)], stem=8, head=64, se_ratio=0.25),
}


class SparseResNet(nn.Module):
    """forward(x: SparseTensor) -> logits (B, num_classes), or pooled features (B, C) when num_classes = 0."""

    def __init__(self, config: SparseResNetConfig | str, in_channels: int, num_classes: int = 0, dropout: float = 0.0):
        super().__init__()
        if isinstance(config, str):
            if config not in CONFIGS:
                raise PointliftConfigError(f"unknown sparse ResNet {config!r}; choose from {sorted(CONFIGS)}")
            config = CONFIGS[config]
        self.config = config
        act = config.activation
        self.stem = conv_bn(in_channels, config.stem_channels, config.stem_kernel, config.stem_stride, activation=act)
        channels = config.stem_channels
        stages = []
        for spec in config.stages:
            if spec.block not in BLOCKS:
                raise PointliftConfigError(f"unknown block {spec.block!r}; choose from {BLOCKS}")
            blocks = []
            for i in range(spec.depth):
                stride = spec.stride if i == 0 else 1
                if spec.block == "inverted":
                    block = InvertedResidual(channels, spec.channels, stride, spec.kernel_size, spec.expand_ratio, spec.se_ratio, act)
                    channels = spec.channels
                else:
                    kind = BasicBlock if spec.block == "basic" else Bottleneck
                    block = kind(channels, spec.channels, stride, spec.kernel_size, act)
                    channels = spec.channels * kind.expansion
                blocks.append(block)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head_conv = nn.Identity()
        if config.head_channels:
            self.head_conv = conv_bn(channels, config.head_channels, 1, activation=act)
            channels = config.head_channels
        self.feature_channels = channels
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: SparseTensor) -> SparseTensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head_conv(x)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        pooled = global_pool(self.forward_features(x), self.config.pool)
        return self.head(self.dropout(pooled))


def sparse_resnet(name: str, in_channels: int, num_classes: int = 0, **kwargs) -> SparseResNet:
    """Build a named config: resnet18/34/50, mobilenetv2, efficientnet-lite0, or a *-tiny one."""
    return SparseResNet(name, in_channels, num_classes, **kwargs)


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CONFIGS",
    "InvertedResidual",
    "SparseResNet",
    "SparseResNetConfig",
    "SqueezeExcite",
    "StageSpec",
    "sparse_resnet",
]
