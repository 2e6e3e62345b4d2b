"""Image2Point's released networks (Xu et al., ECCV 2022; chenfengxu714/image2point), in one place.

- `Image2PointResNet` (+ `ReleasedResidualBlock`, `RELEASED_RESNETS`, `init_conv_released`): the released
  classification network `SPVCNN{18,50,101}_cls`, module for module, tested against the released outputs.
- `released_to_conv3d` / `conv3d_to_released` / `load_released_state_dict`: the torchsparse kernel layout.
- `released_resnet_name` / `inflate_resnet_state`: the released pairing and inflation of 2D ResNet tensors
  (`model_zoo.weight_transform`), on top of the generic kernel inflation of `pointlift.models.inflate`.
- `build_network`: the network of an Image2Point config. Design `released` (default): for ResNet
  18/34/50/101 `Image2PointResNet`; for the depthwise families (MobileNetV2, EfficientNet-Lite; pointlift's
  extension, there is no released version) the same design (`_released_depthwise_design`): the whole timm
  network inflated, its stem replaced by a random stride-1 conv + BN, its first stride-2 block at stride 1
  (total stride 8 instead of 32, as the released ResNet drops conv1's stride and the max-pool), a Linear +
  BatchNorm1d head. Design `imagenet-stem` (pointlift's earlier design): the whole 2D network inflated,
  ImageNet stem included, total stride 32, plain Linear head. `weights="random"`: the same network from scratch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.models.inflate import (DEFAULT_AXIS, InflatedLayer, create_2d_network, he_init_, inflate_kernel,
                                      inflate_network)
from pointlift.models.sparse_resnet import conv
from pointlift.sparse import SparseBatchNorm, SparseConv3d, SparseReLU, SparseTensor, SubMConv3d, global_pool

DESIGNS = ("released", "imagenet-stem")


class ReleasedResidualBlock(nn.Module):
    """The released Image2Point residual block (chenfengxu714/image2point `ResidualBlock`), same module
    names: `net` = conv-bn-relu-conv-bn (basic) or 1x1-bn-relu-k-bn-relu-1x1-bn (bottleneck, the k-conv
    strided), `downsample` = identity when shapes agree, else a 2x2x2 conv (stride 2, or stride 1 in a
    bottleneck stage 1) + bn; output relu(net(x) + downsample(x))."""

    def __init__(self, cin: int, cout: int, stride: int, bottleneck_channels: int = 0):
        super().__init__()
        if bottleneck_channels:
            mid = bottleneck_channels
            self.net = nn.Sequential(conv(cin, mid, 1), SparseBatchNorm(mid), SparseReLU(),
                                     conv(mid, mid, 3, stride), SparseBatchNorm(mid), SparseReLU(),
                                     conv(mid, cout, 1), SparseBatchNorm(cout))
        else:
            self.net = nn.Sequential(conv(cin, cout, 3, stride), SparseBatchNorm(cout), SparseReLU(),
                                     conv(cout, cout, 3), SparseBatchNorm(cout))
        if cin == cout and stride == 1:
            self.downsample = nn.Sequential()
        else:  # ks 2 even at stride 1 (released bottleneck stage 1): out[p] = sum of in[p + {0,1}^3]
            self.downsample = nn.Sequential(SparseConv3d(cin, cout, kernel_size=2, stride=stride),
                                            SparseBatchNorm(cout))
        self.relu = SparseReLU()

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.relu(self.net(x) + self.downsample(x))


# name -> (depths, bottleneck). Widths 64/128/256/512 (x4 after a bottleneck), strides 1/2/2/2.
RELEASED_RESNETS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
                    "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True)}


def init_conv_released(layer: nn.Module) -> None:
    """torchsparse v1.2's Conv3d initialisation: U(-s, s), s = 1 / sqrt(cin * k^3) (the released random init)."""
    bound = 1.0 / math.sqrt(layer.in_channels // layer.groups * layer.kernel_size**3)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)


class Image2PointResNet(nn.Module):
    """Image2Point's released classification network (`SPVCNN{18,50,101}_cls`), module for module:
    `stem` = random 3x3x3 stride-1 conv on the input features + BN (no ReLU, no max-pool; the 2D
    conv1/bn1 are not used), `stage1..4` = the ResNet's stages (strides 1/2/2/2: total stride 8),
    per-sample mean over the last sites, `classifier` = Linear + BatchNorm1d. State-dict keys equal the
    released ones except that a conv's `kernel` (K, cin, cout) is our `weight` in Conv3d layout
    (`released_to_conv3d`). resnet34 is the same design at ResNet-34's depths (the released
    SPVCNN34_cls is a different, distillation network that its `spvcnn_cls` builder cannot build)."""

    def __init__(self, name: str, in_channels: int = 3, num_classes: int = 40):
        super().__init__()
        if name not in RELEASED_RESNETS:
            raise PointliftConfigError(f"unknown released ResNet {name!r}; choose from {sorted(RELEASED_RESNETS)}")
        depths, bottleneck = RELEASED_RESNETS[name]
        self.name = name
        self.stem = nn.Sequential(SubMConv3d(in_channels, 64, 3), SparseBatchNorm(64))
        channels = 64
        for index, (depth, width, stride) in enumerate(zip(depths, (64, 128, 256, 512), (1, 2, 2, 2))):
            out = width * 4 if bottleneck else width
            blocks = []
            for i in range(depth):
                blocks.append(ReleasedResidualBlock(channels, out, stride if i == 0 else 1,
                                                    width if bottleneck else 0))
                channels = out
            self.add_module(f"stage{index + 1}", nn.Sequential(*blocks))
        self.feature_channels = channels
        self.classifier = nn.Sequential(nn.Linear(channels, num_classes), nn.BatchNorm1d(num_classes))
        for module in self.modules():
            if isinstance(module, (SubMConv3d, SparseConv3d)):
                init_conv_released(module)

    io_prefixes = ("stem", "classifier")  # FIP's input and output layers

    def forward_features(self, x: SparseTensor) -> SparseTensor:
        # The released forward also maps the stem output to the points and back (trilinear, pres = vres):
        # an identity up to float32 rounding (<= 1.3e-6 on the reference batch), so it is left out.
        x = self.stem(x)
        for index in range(1, 5):
            x = getattr(self, f"stage{index}")(x)
        return x

    def forward_head(self, x: SparseTensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = global_pool(x, "mean")
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier


def released_to_conv3d(kernel: torch.Tensor) -> torch.Tensor:
    """A torchsparse v1.2 kernel -> torch Conv3d layout: (27, cin, cout) offsets x fastest, (8, cin, cout)
    offsets z fastest, (cin, cout) for 1x1x1 -> (cout, cin, k, k, k)."""
    if kernel.ndim == 2:
        return kernel.t()[:, :, None, None, None].contiguous()
    volume, cin, cout = kernel.shape
    if volume == 27:
        return kernel.reshape(3, 3, 3, cin, cout).permute(4, 3, 2, 1, 0).contiguous()
    if volume == 8:
        return kernel.reshape(2, 2, 2, cin, cout).permute(4, 3, 0, 1, 2).contiguous()
    raise PointliftConfigError(f"no torchsparse kernel layout for shape {tuple(kernel.shape)}")


def conv3d_to_released(weight: torch.Tensor) -> torch.Tensor:
    """The inverse of `released_to_conv3d`."""
    cout, cin, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    if k == 1:
        return weight[:, :, 0, 0, 0].t().contiguous()
    if k == 3:
        return weight.permute(4, 3, 2, 1, 0).reshape(27, cin, cout).contiguous()
    if k == 2:
        return weight.permute(2, 3, 4, 1, 0).reshape(8, cin, cout).contiguous()
    raise PointliftConfigError(f"no torchsparse kernel layout for kernel size {k}")


def load_released_state_dict(model: Image2PointResNet, state: dict, strict: bool = True):
    """Load a state dict in the released layout (names `....kernel`, torchsparse kernels) into `model`."""
    converted = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.endswith(".kernel"):
            converted[key[: -len("kernel")] + "weight"] = released_to_conv3d(value)
        else:
            converted[key] = value
    return model.load_state_dict(converted, strict=strict)


# ------------------------------------------------------------ released inflation of 2D ResNet tensors


def inflate_cell_pointwise(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """A 1x1 shortcut -> the released 2x2x2 kernel: `copy` (released) every tap = W (a sum over the cell),
    `average` W / 8, `center` W at tap (0, 0, 0) only (samples the cell's first voxel, as 2D samples 2*o)."""
    filled = weight.reshape(*weight.shape[:2], 1, 1, 1).expand(*weight.shape[:2], 2, 2, 2)
    if mode == "copy":
        return filled.contiguous()
    if mode == "average":
        return filled / 8
    out = torch.zeros_like(filled)
    out[:, :, 0, 0, 0] = weight[:, :, 0, 0]
    return out


# 2D ResNet block member -> released block member (torchvision / timm names on the left)
_RESNET_MEMBERS = {"conv1": "net.0", "bn1": "net.1", "conv2": "net.3", "bn2": "net.4", "conv3": "net.6",
                   "bn3": "net.7", "downsample.0": "downsample.0", "downsample.1": "downsample.1"}


def released_resnet_name(name_2d: str) -> str | None:
    """`layer2.0.conv1.weight` -> `stage2.0.net.0.weight` (None for conv1/bn1/fc, which are not used). This
    is the released positional zip of the 2D keys containing 'layer' with the 3D keys containing 'stage'."""
    parts = name_2d.split(".")
    if not parts[0].startswith("layer"):
        return None
    member = ".".join(parts[2:-1])
    if member not in _RESNET_MEMBERS:
        raise PointliftConfigError(f"cannot map 2D ResNet tensor {name_2d!r} onto the released network")
    return f"stage{parts[0][len('layer'):]}.{parts[1]}.{_RESNET_MEMBERS[member]}.{parts[-1]}"


def inflate_resnet_state(state_2d: dict, mode: str = "copy", axis: str = DEFAULT_AXIS) -> dict:
    """The stage tensors of `Image2PointResNet` (Conv3d layout) from a 2D ResNet state dict, as the released
    `model_zoo.weight_transform` builds them: 3x3 kernels by `inflate_kernel`, 1x1 shortcuts as 2x2x2
    cells (`inflate_cell_pointwise`), other 1x1 kernels as 1x1x1, BN tensors copied."""
    out = {}
    for name, value in state_2d.items():
        target = released_resnet_name(name)
        if target is None:
            continue
        if value.ndim == 4 and value.shape[-1] == 3:
            value = inflate_kernel(value, mode, axis)
        elif value.ndim == 4 and ".downsample." in f".{target}":
            value = inflate_cell_pointwise(value, mode)
        elif value.ndim == 4:
            value = value[..., None].clone()
        out[target] = value
    return out

# ------------------------------------------------------------------------------ the method's network


def _released_depthwise_design(net: nn.Module, num_classes: int, in_channels: int = 3) -> nn.Module:
    """An inflated timm MobileNetV2 / EfficientNet on the released design (pointlift's extension): a random
    3x3x3 stride-1 stem conv + BN (no activation, as the released stem), the first stride-2 conv of the
    blocks at stride 1 (no early downsampling: total stride 8), a Linear + BatchNorm1d classifier."""
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


__all__ = ["DESIGNS", "Image2PointResNet", "RELEASED_RESNETS", "ReleasedResidualBlock", "build_network",
           "conv3d_to_released", "inflate_resnet_state", "init_conv_released", "load_released_state_dict",
           "released_resnet_name", "released_to_conv3d"]
