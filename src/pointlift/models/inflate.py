"""Inflate a 2D ConvNet (timm) into a 3D sparse ConvNet of the same shape (Image2Point).

One file past ~400 lines on purpose: the kernel rules, the sparse stand-ins for 2D layers and the module-tree
conversion are one mechanism (every stand-in exists only for the conversion to place it).

Design: the 3D network *mirrors* the 2D module tree. We deep-copy the timm model and replace each
leaf layer by its sparse counterpart (Conv2d -> SubMConv3d / SparseConv3d with an inflated kernel,
BatchNorm -> SparseBatchNorm with the same parameters and statistics, activations applied to the
active sites, pooling per sample, squeeze-excite with per-sample gates). The timm blocks' own
forward code then runs unchanged on `SparseTensor`s, because it only calls child modules and adds
tensors. Module names (and so state-dict keys) stay those of the 2D model, which makes the
2D -> 3D correspondence trivial: layers are matched by name, and the report lists them.

Only containers whose forward we have checked are accepted (`SUPPORTED_CONTAINERS`); anything else
raises `PointliftConfigError` naming the layer, so an unknown block can never run half-converted.

Kernel inflation, for a k x k kernel W[cout, cin, kh, kw] (weights in torch's Conv3d layout
(cout, cin, kx, ky, kz)). The *axis* option places the 2D kernel in 3D, with the names and meaning of
the released code (chenfengxu714/image2point `weight_transform`; checked bit-exactly against its
inflated tensors in tests/test_image2point_reference.py):
- `z-axis` (released default): W3[o,i,x,y,z] = W2[o,i,kh=z,kw=x], the same for every y;
- `y-axis`: W3[o,i,x,y,z] = W2[o,i,kh=y,kw=x], the same for every z;
- `x-axis`: W3[o,i,x,y,z] = W2[o,i,kh=y,kw=z], the same for every x.
The *mode* says how the k copies along that "copy" axis are filled:
- `copy` (released): the 2D kernel repeated k times, no rescaling;
- `center` (pointlift): the 2D kernel in the centre slice, zeros elsewhere: exact on a flat sheet of voxels;
- `average` (pointlift): `copy` / k, so an input constant along the copy axis gives the 2D response.
A stride-s 1x1 convolution (ResNet downsample) becomes an s x s x s kernel filled by repetition in
`copy` mode (released: a sum over the cell), the same / s^3 in `average` mode, and a stride-s 1x1x1
kernel in `center` mode (it then samples voxel 2*o exactly as the 2D layer samples pixel 2*o).
TF "same" padding (timm Conv2dSame, `tf_` models) is asymmetric; sparse convolutions are centred, so
those layers shift by half a voxel relative to 2D (noted in the report; harmless for 3D training).
The released networks, with the released pairing of 2D ResNet tensors, are in `pointlift.models.image2point_net`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.sparse import (SparseBatchNorm, SparseConv3d, SparseTensor, SubMConv3d, broadcast_to_sites,
                              global_pool)

INFLATION_MODES = ("copy", "center", "average")
# released axis option -> (copy axis, axis of the 2D rows, axis of the 2D columns); 0/1/2 = x/y/z
AXIS_LAYOUTS = {"z-axis": (1, 2, 0), "y-axis": (2, 1, 0), "x-axis": (0, 1, 2)}
AXES = tuple(AXIS_LAYOUTS)
DEFAULT_AXIS = "z-axis"


def check_axis(axis: str) -> str:
    if axis not in AXIS_LAYOUTS:
        raise PointliftConfigError(f"inflation axis must be one of {AXES} (the released options), got {axis!r}")
    return axis


@dataclass
class InflatedLayer:
    """One row of the inflation report."""

    name_2d: str
    name_3d: str
    kind: str  # "conv", "norm", "pool", "act", "se", "linear", ...
    shape_2d: tuple
    shape_3d: tuple
    mode: str  # inflation mode used (or "copied" / "-" for non-kernel layers)
    note: str = ""


# ------------------------------------------------------------------------------------------ kernels


def inflate_kernel(weight: torch.Tensor, mode: str = "copy", axis: str = DEFAULT_AXIS) -> torch.Tensor:
    """(cout, cin, k, k) -> (cout, cin, k, k, k) in Conv3d layout, placed by `axis`, filled by `mode`."""
    if mode not in INFLATION_MODES:
        raise PointliftConfigError(f"inflation mode must be one of {INFLATION_MODES}, got {mode!r}")
    copy_dim, row_dim, col_dim = AXIS_LAYOUTS[check_axis(axis)]
    k = weight.shape[-1]
    if weight.ndim != 4 or weight.shape[-2] != k:
        raise PointliftConfigError(f"only square 2D kernels inflate to isotropic 3D ones, got {tuple(weight.shape)}")
    # (o, i, row, col, copy) -> spatial dims ordered x, y, z
    source = {row_dim: 2, col_dim: 3, copy_dim: 4}
    if mode == "center":
        slab = torch.zeros(*weight.shape, k, dtype=weight.dtype, device=weight.device)
        slab[..., k // 2] = weight
    else:
        slab = weight.unsqueeze(-1).expand(*weight.shape, k)
        if mode == "average":
            slab = slab / k
    return slab.permute(0, 1, source[0], source[1], source[2]).contiguous()


def inflate_strided_pointwise(weight: torch.Tensor, stride: int, mode: str) -> torch.Tensor:
    """A stride-s 1x1 kernel -> s x s x s (copy: repetition; average: / s^3) or 1x1x1 (center)."""
    if mode == "center":
        return weight.unsqueeze(-1).clone()
    filled = weight.reshape(*weight.shape[:2], 1, 1, 1).expand(*weight.shape[:2], stride, stride, stride).contiguous()
    return filled / stride**3 if mode == "average" else filled


# ----------------------------------------------------------------------------------- sparse layers


class SparseElementwise(nn.Module):
    """Apply a pointwise torch module (activation, dropout) to the features of the active sites."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x.replace(self.fn(x.features)) if isinstance(x, SparseTensor) else self.fn(x)


class SparseBatchNormAct(SparseBatchNorm):
    """timm's BatchNormAct2d on active sites: batch norm, dropout, activation; same state-dict keys."""

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, drop: nn.Module, act: nn.Module):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.drop = drop
        self.act = act

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.act(self.drop(super().forward(x)))


class SparseMaxPool3d(nn.Module):
    """Max over each output site's k^3 window of *active* input sites (= 2D max pool with -inf pad)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: SparseTensor) -> SparseTensor:
        out_stride = x.manager.downsample(x.stride, self.stride) if self.stride > 1 else x.stride
        kmap = x.manager.kernel_map(x.stride, out_stride, self.kernel_size, 1)
        in_index, out_index = torch.cat(kmap.in_index), torch.cat(kmap.out_index)
        channels = x.num_channels
        out = x.features.new_full((kmap.num_out, channels), float("-inf"))
        out = out.scatter_reduce(0, out_index[:, None].expand(-1, channels), x.features.index_select(0, in_index),
                                 reduce="amax", include_self=True)
        return x.replace(out, stride=out_stride)


class SparseGlobalPool(nn.Module):
    """Per-sample global average/max pool: SparseTensor -> (B, C), like timm's flattening pool."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return global_pool(x, self.mode)


class SparseDropPath(nn.Module):
    """Stochastic depth per sample: drop a whole sample's residual branch (all its sites)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.bernoulli(x.features.new_full((x.batch_size, 1), keep)) / keep
        return x.replace(x.features * broadcast_to_sites(x, mask))


class SparseSqueezeExcite(nn.Module):
    """Squeeze-excite with per-sample gates; keeps the 2D block's own 1x1 convs (on (B, C, 1, 1))."""

    def __init__(self, se: nn.Module):
        super().__init__()
        for name, child in se.named_children():
            self.add_module(name, child)
        self.efficientnet_layout = hasattr(se, "conv_reduce")

    def forward(self, x: SparseTensor) -> SparseTensor:
        s = global_pool(x, "mean")[:, :, None, None]
        if self.efficientnet_layout:  # timm efficientnet SqueezeExcite
            s = self.conv_expand(self.act1(self.conv_reduce(s)))
        else:  # timm layers SEModule (ResNet SE variants)
            s = self.fc2(self.act(self.bn(self.fc1(s))))
        gate = self.gate(s).flatten(1)
        return x.replace(x.features * broadcast_to_sites(x, gate.to(x.features.dtype)))


# ---------------------------------------------------------------------------------- the conversion


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _supported_containers() -> tuple[type, ...]:
    """Modules whose forward only calls children and adds tensors (checked against timm's code)."""
    from timm.models import _efficientnet_blocks as blocks
    from timm.models import efficientnet, resnet

    return (nn.Sequential, resnet.ResNet, resnet.BasicBlock, resnet.Bottleneck, efficientnet.EfficientNet,
            blocks.InvertedResidual, blocks.DepthwiseSeparableConv, blocks.ConvBnAct)


def _is_activation(module: nn.Module) -> bool:
    simple = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
              nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout)
    return isinstance(module, simple) or type(module).__module__ == "timm.layers.activations"


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _convert_conv(conv: nn.Conv2d, name: str, mode: str, axis: str) -> tuple[nn.Module, InflatedLayer]:
    (kh, kw), (sh, sw), (dh, dw) = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    if kh != kw or sh != sw or (dh, dw) != (1, 1):
        raise PointliftConfigError(
            f"cannot inflate layer '{name}': needs a square kernel and stride and no dilation, got "
            f"kernel {(kh, kw)}, stride {(sh, sw)}, dilation {(dh, dw)}")
    k, s = kh, sh
    tf_same = type(conv).__name__ == "Conv2dSame"
    note = "tf-same padding made symmetric" if tf_same else ""
    if not tf_same and _pair(conv.padding) != ((k - 1) // 2, (k - 1) // 2) and conv.padding != "same":
        raise PointliftConfigError(f"cannot inflate layer '{name}': padding {conv.padding} is not (k-1)/2 for k={k}")
    bias = conv.bias is not None
    weight = conv.weight.detach()
    if k == 1 and s > 1:
        weight3d = inflate_strided_pointwise(weight, s, mode)
        kernel = weight3d.shape[-1]
        layer = SparseConv3d(conv.in_channels, conv.out_channels, kernel_size=kernel, stride=s, groups=conv.groups,
                             bias=bias)
        note = (note + "; " if note else "") + f"stride-{s} 1x1 -> {kernel}^3"
    elif k % 2 == 0:
        raise PointliftConfigError(f"cannot inflate layer '{name}': even kernel size {k} with stride {s}")
    else:
        weight3d = inflate_kernel(weight, mode, axis)
        cls = SubMConv3d if s == 1 else SparseConv3d
        layer = cls(conv.in_channels, conv.out_channels, kernel_size=k, stride=s, groups=conv.groups, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight3d)
        if bias:
            layer.bias.copy_(conv.bias.detach())
    layer.to(conv.weight.device)
    return layer, InflatedLayer(name, name, "conv", tuple(weight.shape), tuple(weight3d.shape), mode, note)


def _convert_norm(norm: nn.BatchNorm2d, name: str, mode: str, axis: str) -> tuple[nn.Module, InflatedLayer]:
    from timm.layers import BatchNormAct2d

    args = (norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    if isinstance(norm, BatchNormAct2d):
        act = norm.act if isinstance(norm.act, nn.Identity) else _convert(norm.act, f"{name}.act", mode, axis, [])
        drop = norm.drop if isinstance(norm.drop, nn.Identity) else SparseElementwise(norm.drop)
        layer = SparseBatchNormAct(*args, drop=drop, act=act)
    else:
        layer = SparseBatchNorm(norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                                track_running_stats=norm.track_running_stats)
    layer.load_state_dict(norm.state_dict())
    layer.to(next(iter(norm.state_dict().values())).device)
    shape = (norm.num_features,)
    return layer, InflatedLayer(name, name, "norm", shape, shape, "copied", type(norm).__name__)


def _convert(module: nn.Module, name: str, mode: str, axis: str, report: list[InflatedLayer]) -> nn.Module:
    """The sparse counterpart of `module` (containers are converted in place, child by child)."""
    from timm.layers import DropPath, SelectAdaptivePool2d
    from timm.layers.squeeze_excite import SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite

    label = name or "<model>"
    if isinstance(module, nn.Conv2d):
        layer, row = _convert_conv(module, label, mode, axis)
        report.append(row)
        return layer
    if isinstance(module, nn.BatchNorm2d):
        layer, row = _convert_norm(module, label, mode, axis)
        report.append(row)
        return layer
    if isinstance(module, (nn.Identity, nn.Linear, nn.Flatten)):
        if isinstance(module, nn.Linear):
            shape = tuple(module.weight.shape)
            report.append(InflatedLayer(label, label, "linear", shape, shape, "copied"))
        return module
    if _is_activation(module):
        return SparseElementwise(module)
    if isinstance(module, DropPath):
        return SparseDropPath(module.drop_prob)
    if isinstance(module, nn.MaxPool2d):
        k, s, p = (_pair(module.kernel_size)[0], _pair(module.stride)[0], _pair(module.padding)[0])
        if p != (k - 1) // 2 or _pair(module.dilation) != (1, 1) or module.ceil_mode:
            raise PointliftConfigError(f"cannot inflate layer '{label}': max pool needs padding (k-1)/2, no dilation")
        report.append(InflatedLayer(label, label, "pool", (k, k), (k, k, k), "-"))
        return SparseMaxPool3d(k, s)
    if isinstance(module, SelectAdaptivePool2d):
        pool_type = module.pool_type
        if pool_type not in ("avg", "max"):
            raise PointliftConfigError(f"cannot inflate layer '{label}': global pool type {pool_type!r}")
        report.append(InflatedLayer(label, label, "pool", ("global",), ("global",), pool_type))
        return SparseGlobalPool("mean" if pool_type == "avg" else "max")
    if isinstance(module, (SqueezeExcite, SEModule)):
        if getattr(module, "add_maxpool", False):
            raise PointliftConfigError(f"cannot inflate layer '{label}': squeeze-excite with max pooling")
        report.append(InflatedLayer(label, label, "se", ("gate",), ("gate",), "copied", "per-sample gates"))
        return SparseSqueezeExcite(module)
    if isinstance(module, _supported_containers()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            setattr(module, child_name, _convert(child, full, mode, axis, report))
        return module
    raise PointliftConfigError(
        f"cannot inflate layer '{label}' ({_class_name(module)}): no sparse 3D counterpart is known")


def inflate_network(model_2d: nn.Module, mode: str = "copy", axis: str = DEFAULT_AXIS) -> tuple[nn.Module, list[InflatedLayer]]:
    """(3D sparse network, report). The 2D model is left untouched; the 3D one takes `SparseTensor`s.

    The result has the 2D model's class and module names (timm's forward code runs on sparse
    tensors), so `model_3d(x)` -> logits (B, classes), `model_3d.forward_features(x)` -> SparseTensor.
    """
    if mode not in INFLATION_MODES:
        raise PointliftConfigError(f"inflation mode must be one of {INFLATION_MODES}, got {mode!r}")
    check_axis(axis)
    if getattr(model_2d, "grad_checkpointing", False):
        raise PointliftConfigError("disable gradient checkpointing on the 2D model before inflating it")
    report: list[InflatedLayer] = []
    model_3d = _convert(copy.deepcopy(model_2d), "", mode, axis, report)
    model_3d.train(model_2d.training)
    return model_3d, report


def he_init_(module: nn.Module) -> None:
    """From-scratch initialisation of an inflated network, BN statistics reset: He-normal sparse convs with
    3D fan-out (k^3 * out / groups), the standard initialisation of these CNNs (timm's in 2D) and of 3D sparse
    nets; every other layer its own reset. PyTorch's default conv initialisation (kaiming-uniform a=sqrt(5),
    var 1/(3 fan_in)) is ~6x smaller per layer, so a frozen random network passed almost no signal (~1e-11);
    the scratch baseline should be the network's proper initialisation, not a degenerate one."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_parameters()  # also resets the running statistics
        elif isinstance(layer, (SubMConv3d, SparseConv3d)):
            fan_out = layer.out_channels * layer.kernel_size**3 // layer.groups
            with torch.no_grad():
                layer.weight.normal_(0.0, (2.0 / fan_out) ** 0.5)
                if getattr(layer, "bias", None) is not None:
                    layer.bias.zero_()
        elif layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


def format_report(report: list[InflatedLayer]) -> str:
    """A readable table of the 2D -> 3D layer correspondence."""
    lines = [f"{'2D layer':40s} {'3D layer':40s} {'2D shape':22s} {'3D shape':26s} mode"]
    for row in report:
        note = f"  ({row.note})" if row.note else ""
        lines.append(f"{row.name_2d:40s} {row.name_3d:40s} {str(row.shape_2d):22s} {str(row.shape_3d):26s} "
                     f"{row.mode}{note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- the 2D networks


def create_2d_network(name: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """A timm 2D CNN with ImageNet weights: `weights` = a local file, None = bundled package (EfficientNet-
    Lite) or timm's hub, "random" = timm's random initialisation. `num_classes` replaces the classifier."""
    import timm

    from pointlift.teachers.weights import bundled_weights_path, create_pretrained_timm, load_weights_file

    try:
        if weights == "random":
            model = timm.create_model(name, pretrained=False)
        elif weights is not None:
            model = timm.create_model(name, pretrained=False)
            load_weights_file(model, weights, name)
        elif bundled_weights_path(name) is not None:
            model = timm.create_model(name, pretrained=False)
            load_weights_file(model, bundled_weights_path(name), name)
        else:
            model = create_pretrained_timm(name)  # fails fast offline, naming --weights
    except RuntimeError as error:  # unknown model name, or the hub unreachable
        raise PointliftConfigError(f"cannot create 2D network {name!r} (weights {weights!r}): {error}") from None
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model.eval()


def sheet_tensor(images: torch.Tensor, axis: str = DEFAULT_AXIS) -> SparseTensor:
    """Lay images (B, C, H, W) flat as a sheet of voxels: rows and columns on the axes `axis` gives them
    (`AXIS_LAYOUTS`), the copy axis at 0, so an inflated kernel sees the image as its 2D layer does."""
    copy_dim, row_dim, col_dim = AXIS_LAYOUTS[check_axis(axis)]
    b, c, h, w = images.shape
    bb, rr, cc = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    xyz = [None, None, None]
    xyz[row_dim], xyz[col_dim] = rr.reshape(-1), cc.reshape(-1)
    xyz[copy_dim] = torch.zeros(b * h * w, dtype=torch.long)
    coords = torch.stack([bb.reshape(-1), *xyz], dim=1).to(images.device)
    features = images.permute(0, 2, 3, 1).reshape(-1, c)
    return SparseTensor(features, coords, batch_size=b)


def sheet_to_image(x: SparseTensor, height: int, width: int, axis: str = DEFAULT_AXIS) -> torch.Tensor:
    """The inverse of `sheet_tensor` for an activation on a sheet: (B, C, height, width), 0 where inactive."""
    _, row_dim, col_dim = AXIS_LAYOUTS[check_axis(axis)]
    coords = x.coords
    out = x.features.new_zeros(x.batch_size, x.num_channels, height, width)
    out[coords[:, 0], :, coords[:, 1 + row_dim], coords[:, 1 + col_dim]] = x.features
    return out
