"""Sparse 3D convolutions in pure PyTorch: gather -> matmul -> scatter-add over kernel offsets.

Weights use torch `Conv3d`'s layout `(out_channels, in_channels / groups, k, k, k)` for every
module, so 2D->3D inflation and comparisons with dense `conv3d` are direct. Dense meaning
(what the tests check):
- `SubMConv3d`: dense `conv3d(padding=dilation*(k-1)//2)` with inactive inputs zero, read at
  the input sites (the output sites are the input sites).
- `SparseConv3d` (stride s): dense `conv3d(stride=s, padding=dilation*(k-1)//2)` read at the
  sites unique(floor(coord / s)).
- `SparseInverseConv3d` (stride s): dense `conv_transpose3d` with the same stride/padding and
  weight `w.transpose(0, 1)` (per group), read at the cached sites of the finer stride.

Execution: small maps run all kernel offsets at once (one padded gather, one batched matmul,
one scatter-add), large maps loop over offsets (gather -> matmul -> index_add_ each). The
autograd function saves only the input features and weights (not the gathers) and recomputes
the gathers in backward: much less memory on large scenes, same speed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.sparse import backend as backend_registry
from pointlift.sparse.kernel_map import KernelMap
from pointlift.sparse.tensor import SparseTensor


def _grouped_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (n, G*Ci) times per-group w (G, Ci, Co) -> (n, G*Co)."""
    groups, cin, cout = w.shape
    if groups == 1:
        return x @ w[0]
    if cin == 1 and cout == 1:  # depthwise: a per-channel scale
        return x * w[:, 0, 0]
    n = x.shape[0]
    return torch.bmm(x.view(n, groups, cin).transpose(0, 1), w).transpose(0, 1).reshape(n, groups * cout)


def _grouped_weight_grad(x: torch.Tensor, grad: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum over pairs of x^T grad per group: x (n, G*Ci), grad (n, G*Co) -> (G, Ci, Co)."""
    n = x.shape[0]
    if groups == 1:
        return (x.t() @ grad).unsqueeze(0)
    cin, cout = x.shape[1] // groups, grad.shape[1] // groups
    if cin == 1 and cout == 1:
        return (x * grad).sum(0).view(groups, 1, 1)
    xg = x.view(n, groups, cin).permute(1, 2, 0)  # (G, Ci, n)
    gg = grad.view(n, groups, cout).transpose(0, 1)  # (G, n, Co)
    return torch.bmm(xg, gg)


# Maps whose padded gather (offsets x longest pair list x channels) stays under this many
# elements run all offsets in one batched matmul; larger ones loop over offsets (no padding
# waste, bounded memory). Small maps are dominated by per-op overhead, large ones by the matmuls.
BATCHED_OFFSETS_MAX_ELEMENTS = 1 << 22


def _use_batched(kmap: KernelMap, channels: int) -> bool:
    ids, pad_in, _ = kmap.padded()
    return bool(ids) and pad_in.numel() * channels <= BATCHED_OFFSETS_MAX_ELEMENTS


def _with_zero_row(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(1, x.shape[1])])


class _SparseConvFunction(torch.autograd.Function):
    """out[out_index[k]] += features[in_index[k]] @ W[k] for every kernel offset k."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        # weight: (K, G, Ci, Co)
        ctx.kmap = kmap
        ctx.save_for_backward(features, weight)
        groups, cin, cout = weight.shape[1:]
        out = features.new_zeros(kmap.num_out, groups * cout)
        if kmap.identity is not None:
            out += _grouped_matmul(features, weight[kmap.identity])
        ctx.batched = _use_batched(kmap, groups * max(cin, cout))
        if ctx.batched:
            ids, pad_in, pad_out = kmap.padded()
            gathered = _with_zero_row(features)[pad_in.view(-1)].view(len(ids), -1, groups, cin)
            result = torch.einsum("kpgi,kgio->kpgo", gathered, weight[ids])
            scattered = out.new_zeros(kmap.num_out + 1, groups * cout)
            scattered.index_add_(0, pad_out.view(-1), result.reshape(-1, groups * cout))
            out += scattered[: kmap.num_out]
            return out
        for k, (in_idx, out_idx) in enumerate(zip(kmap.in_index, kmap.out_index)):
            if k != kmap.identity and in_idx.numel():
                out.index_add_(0, out_idx, _grouped_matmul(features.index_select(0, in_idx), weight[k]))
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        features, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        groups, cin, cout = weight.shape[1:]
        weight_t = weight.transpose(2, 3)  # (K, G, Co, Ci)
        need_features, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_features = torch.zeros_like(features) if need_features else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        if kmap.identity is not None:
            k = kmap.identity
            if need_features:
                grad_features += _grouped_matmul(grad_out, weight_t[k])
            if need_weight:
                grad_weight[k] = _grouped_weight_grad(features, grad_out, groups)
        if ctx.batched:
            ids, pad_in, pad_out = kmap.padded()
            g = _with_zero_row(grad_out)[pad_out.view(-1)].view(len(ids), -1, groups, cout)
            if need_features:
                back = torch.einsum("kpgo,kgio->kpgi", g, weight[ids])
                scattered = features.new_zeros(kmap.num_in + 1, groups * cin)
                scattered.index_add_(0, pad_in.view(-1), back.reshape(-1, groups * cin))
                grad_features += scattered[: kmap.num_in]
            if need_weight:
                x = _with_zero_row(features)[pad_in.view(-1)].view(len(ids), -1, groups, cin)
                grad_weight[ids] = torch.einsum("kpgi,kpgo->kgio", x, g)
            return grad_features, grad_weight, None
        for k, (in_idx, out_idx) in enumerate(zip(kmap.in_index, kmap.out_index)):
            if k == kmap.identity or not in_idx.numel():
                continue
            g = grad_out.index_select(0, out_idx)
            if need_features:
                grad_features.index_add_(0, in_idx, _grouped_matmul(g, weight_t[k]))
            if need_weight:
                grad_weight[k] = _grouped_weight_grad(features.index_select(0, in_idx), g, groups)
        return grad_features, grad_weight, None


def _compute_dtype(features: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """Autocast's dtype when it is on for this device (matmuls follow it), else the features'."""
    device_type = features.device.type
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except TypeError:  # older torch: no per-device query
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return torch.promote_types(features.dtype, weight.dtype)


def sparse_conv_features(features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, groups: int) -> torch.Tensor:
    """Apply a Conv3d-layout weight (Co_total, Ci, k, k, k) along a kernel map: (M_in, C) -> (M_out, Co_total)."""
    cout_total, cin = weight.shape[:2]
    k3 = weight[0, 0].numel()
    w = weight.reshape(groups, cout_total // groups, cin, k3).permute(3, 0, 2, 1)  # (K, G, Ci, Co)
    dtype = _compute_dtype(features, weight)
    return _SparseConvFunction.apply(features.to(dtype), w.to(dtype).contiguous(), kmap)


class _SparseConvNd(nn.Module):
    """Shared parameters and checks; subclasses decide the output sites and the kernel map."""

    transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        backend: str | None = None,
    ):
        super().__init__()
        for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            if not isinstance(value, int) or value < 1:
                raise PointliftConfigError(f"{type(self).__name__}: {name} must be a positive int (isotropic), got {value!r}")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise PointliftConfigError(
                f"{type(self).__name__}: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        if backend is not None:
            backend_registry.check_backend_name(backend)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv3d's initialisation, so sparse and dense layers start alike.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + f", bias={self.bias is not None}"

    def output_stride_and_map(self, x: SparseTensor) -> tuple[int, KernelMap]:
        raise NotImplementedError

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.num_channels != self.in_channels:
            raise PointliftDataError(
                "sparse tensor", f"{type(self).__name__} expects {self.in_channels} channels, got {x.num_channels}"
            )
        if backend_registry.resolve(self.backend) == "spconv":
            from pointlift.sparse import spconv_backend

            out = spconv_backend.try_forward(self, x)
            if out is not None:
                return out
        out_stride, kmap = self.output_stride_and_map(x)
        features = sparse_conv_features(x.features, self.weight, kmap, self.groups)
        if self.bias is not None:
            features = features + self.bias.to(features.dtype)
        return x.replace(features, stride=out_stride)


class SubMConv3d(_SparseConvNd):
    """Submanifold convolution: output sites = input sites (odd kernel, stride 1)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, dilation=1, groups=1, bias=False, backend=None, stride=1):
        if stride != 1:
            raise PointliftConfigError(f"SubMConv3d has stride 1; use SparseConv3d for stride {stride}")
        if kernel_size % 2 == 0:
            raise PointliftConfigError(f"SubMConv3d needs an odd kernel_size to centre on each site, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, 1, dilation, groups, bias, backend)

    def output_stride_and_map(self, x):
        return x.stride, x.manager.kernel_map(x.stride, x.stride, self.kernel_size, self.dilation)


class SparseConv3d(_SparseConvNd):
    """Strided convolution: output sites = unique(floor(coord / stride)) of the input sites."""

    def output_stride_and_map(self, x):
        out_stride = x.manager.downsample(x.stride, self.stride)
        return out_stride, x.manager.kernel_map(x.stride, out_stride, self.kernel_size, self.dilation)


class SparseInverseConv3d(_SparseConvNd):
    """Transposed convolution back onto the cached sites at tensor stride / stride.

    Uses (and shares) the kernel map of the `SparseConv3d` with the same kernel_size, stride and
    dilation that produced the coarser sites, read backwards.
    """

    transposed = True

    def output_stride_and_map(self, x):
        if x.stride % self.stride:
            raise PointliftDataError("sparse tensor", f"tensor stride {x.stride} is not divisible by {self.stride}")
        out_stride = x.stride // self.stride
        x.manager.coords_at(out_stride)  # clear error if the finer sites are unknown
        return out_stride, x.manager.kernel_map(out_stride, x.stride, self.kernel_size, self.dilation).transposed()
