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

Execution (pure backend), per layer: one gather of every pair's input row into a reused scratch
buffer (wide layers on the CPU: each offset's rows just before its matmul, into a small one), one
matmul per kernel offset into one product buffer (a depthwise layer scales the gathered rows in place
instead), and one segment sum of the products onto the output sites (a cached CSR 0/1
matrix on CPU, `index_add_` on CUDA). The autograd function saves only the input features and the
weight and reuses the forward's kernel map in backward, where it recomputes the gather (much less
memory on large scenes than saving it).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn
from torch.profiler import record_function

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


# How pair values are summed onto their sites: "csr" (a sorted segment sum, S @ values with a
# cached CSR 0/1 matrix; fastest on CPU), "index_add" (atomic scatter; the usual choice on CUDA)
# or "auto" (csr on CPU, index_add elsewhere).
SCATTER = "auto"


def _use_csr(device: torch.device) -> bool:
    return SCATTER == "csr" or (SCATTER == "auto" and device.type == "cpu")


class _Workspace(threading.local):
    """Reused scratch buffers for the gathered rows and per-pair products (CPU only).

    A fresh multi-megabyte CPU tensor costs a page fault per 4 KiB page on first touch (glibc
    serves it by mmap and returns it on free), which made the gathers slower than the matmuls;
    reusing two buffers removes that. Buffers never leave the autograd function.
    """

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, slot: int, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "cpu":
            return like.new_empty(rows, cols)
        key = (slot, like.dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < rows * cols:
            self.buffers[key] = buf = like.new_empty(max(rows * cols, 1))
        return buf[: rows * cols].view(rows, cols)


_WORKSPACE = _Workspace()


def release_workspace() -> None:
    """Free this thread's scratch buffers (they are otherwise kept for the next convolution)."""
    _WORKSPACE.buffers.clear()


def _gather(x: torch.Tensor, index: torch.Tensor, slot: int) -> torch.Tensor:
    buf = _WORKSPACE.get(slot, index.numel(), x.shape[1], x)
    return torch.index_select(x, 0, index, out=buf)


def _is_depthwise(w: torch.Tensor) -> bool:
    """w (K, G, A, B) scales each channel: one input and one output channel per group."""
    return w.shape[1] > 1 and w.shape[2] == 1 and w.shape[3] == 1


def _per_offset_products(w: torch.Tensor):
    """For w (K, G, A, B): the K per-offset operands and a function (x, operand, out) writing x @ w[k] per
    group into `out` (without a temporary when G = 1). Chosen once per layer: the loop over offsets then makes
    one call per offset (on small layers Python's per-call cost is a good part of the step)."""
    groups = w.shape[1]
    if groups == 1:
        return w[:, 0].unbind(0), lambda x, w_k, out: torch.mm(x, w_k, out=out)
    if _is_depthwise(w):  # a per-channel scale; `out` may be x itself
        return w[:, :, 0, 0].unbind(0), lambda x, w_k, out: torch.mul(x, w_k, out=out)
    return w.unbind(0), lambda x, w_k, out: out.copy_(_grouped_matmul(x, w_k))


# A dense (non-depthwise) layer at least this wide on both sides gathers each offset's rows just before the
# product that reads them, into one small reused buffer that is still in cache, instead of a whole chunk of
# offsets at once. Bit-identical (the same rows and products). Measured on a Zen 4 core with 1 and 2 threads
# (bench/per_offset_gather.py): the gathers and products 4-11 % faster at 32-256 channels, 5-38 % slower at 8
# (more calls for little work), mixed at 16.
PER_OFFSET_GATHER_MIN_CHANNELS = 32


def _gathers_per_offset(w: torch.Tensor) -> bool:
    """w (K, G, A, B) on the CPU: gather offset by offset (see PER_OFFSET_GATHER_MIN_CHANNELS)?"""
    groups, a, b = w.shape[1:]
    return (w.device.type == "cpu" and not _is_depthwise(w)
            and min(groups * a, groups * b) >= PER_OFFSET_GATHER_MIN_CHANNELS)


def _products_buffer(gathered: torch.Tensor, w: torch.Tensor, columns: int, slot: int) -> torch.Tensor:
    """Where a chunk's per-offset products go: a depthwise layer scales its gathered rows in place (one
    memory-bound pass less, and about a quarter faster than writing a second buffer on CPU); others need
    their own buffer (the products have other widths)."""
    if _is_depthwise(w):
        return gathered
    return _WORKSPACE.get(slot, gathered.shape[0], columns, gathered)


def _scatter_sum(base: torch.Tensor | None, kmap: KernelMap, side: str, chunk: int, values: torch.Tensor,
                 rows: int) -> torch.Tensor:
    """base + (sum of `values`, the rows of pair chunk number `chunk`, onto their `side` sites); base may be
    None (zeros)."""
    if _use_csr(values.device):
        matrix = kmap.scatter_matrices(side, values.dtype)[chunk]
        if base is None:
            return matrix @ values
        return base.addmm_(matrix, values)
    pairs = kmap.pairs()
    rows_of = pairs.chunks()[chunk]
    index = (pairs.out_cat if side == "out" else pairs.in_cat)[rows_of.start:rows_of.stop]
    if base is None:
        base = values.new_zeros(rows, values.shape[1])
    return base.index_add_(0, index, values)


def _transpose_2d(x: torch.Tensor) -> torch.Tensor:
    """x.t().contiguous(), copied in row blocks on CPU so each block's source stays in cache.

    The Conv3d weight keeps the kernel offset innermost; the matmuls need it outermost. A plain
    permuted copy of a 256x256x27 weight strides across 27 KiB per element on CPU (several
    times slower than the blocked copy), and it happens twice per layer and step.
    """
    rows, cols = x.shape
    if rows == 1 or cols == 1:  # a vector (a 1x1x1 kernel's weight): its transpose is the same memory
        return x.reshape(cols, rows)
    if x.device.type != "cpu" or rows * cols < (1 << 16):
        return x.t().contiguous()
    out = x.new_empty(cols, rows)
    block = 4096
    for a in range(0, rows, block):
        out[:, a : a + block].copy_(x[a : a + block].t())
    return out


def _offset_major(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Conv3d layout (G*Co, Ci, k, k, k) -> (K, G, Co, Ci), contiguous; W_k = w[k, g].t()."""
    cout_total, cin = weight.shape[:2]
    k3 = weight[0, 0].numel()
    return _transpose_2d(weight.reshape(cout_total * cin, k3)).view(k3, groups, cout_total // groups, cin)


class _SparseConvFunction(torch.autograd.Function):
    """out[out_index[k]] += features[in_index[k]] @ W[k] for every kernel offset k.

    Per chunk of pairs (whole offsets, at most PAIR_CHUNK pairs, so that the scratch buffers stay
    small; measured no slower than one chunk): one gather of the chunk's input rows, one
    matmul per offset into one product buffer, one segment sum onto the output sites. Backward reuses
    the forward's map (and its cached CSR matrices) and recomputes the gathers instead of saving them
    (memory). The weight enters and its gradient leaves in Conv3d layout; inside, it is offset-major
    (K, G, Co, Ci).
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, groups: int, label: str) -> torch.Tensor:
        # dtypes were settled by the caller, so autocast stays out
        ctx.label = label
        with torch.autocast(features.device.type, enabled=False):
            w = _offset_major(weight, groups)  # (K, G, Co, Ci), what backward multiplies by
            ctx.kmap, ctx.weight_shape = kmap, weight.shape
            ctx.save_for_backward(features, w)
            # forward multiplies by W_k^T: a contiguous (Ci, Co) operand makes the matmuls 15-25 %
            # faster on CPU than the transposed view (MKL, one thread, 32-128 channels)
            w_t = w.transpose(2, 3).contiguous()  # (K, G, Ci, Co)
            cout = w.shape[2]
            out = None
            if kmap.identity is not None:
                out = _grouped_matmul(features, w_t[kmap.identity])
            pairs = kmap.pairs()
            operands, multiply = _per_offset_products(w_t)
            per_offset = _gathers_per_offset(w_t)
            for c, chunk in enumerate(pairs.chunks()):
                rows = pairs.in_cat[chunk.start:chunk.stop]
                if per_offset:
                    products = _WORKSPACE.get(1, rows.numel(), groups * cout, features)
                    x_parts = (_gather(features, rows_k, 2) for rows_k in rows.split(chunk.sizes))
                else:
                    gathered = _gather(features, rows, 0)
                    products = _products_buffer(gathered, w_t, groups * cout, 1)
                    x_parts = gathered.split(chunk.sizes)
                for k, x_k, out_k in zip(chunk.ids, x_parts, products.split(chunk.sizes)):
                    multiply(x_k, operands[k], out_k)
                out = _scatter_sum(out, kmap, "out", c, products, kmap.num_out)
            if out is None:
                out = features.new_zeros(kmap.num_out, groups * cout)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        features, w = ctx.saved_tensors  # w: (K, G, Co, Ci)
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        num_offsets, groups, cout, cin = w.shape
        need_features, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_features = None
        grad_w = torch.zeros_like(w) if need_weight else None
        with torch.autocast(features.device.type, enabled=False), record_function(f"{ctx.label}.backward"):
            if kmap.identity is not None:
                k = kmap.identity
                if need_features:
                    grad_features = _grouped_matmul(grad_out, w[k])
                if need_weight:
                    grad_w[k] = _grouped_weight_grad(features, grad_out, groups).transpose(1, 2)
            pairs = kmap.pairs()
            operands, multiply = _per_offset_products(w) if need_features else (None, None)
            grad_w_rows = grad_w[:, 0].unbind(0) if need_weight and groups == 1 else None

            def add_weight_grad(k: int, g_k: torch.Tensor, x_k: torch.Tensor) -> None:
                if groups == 1:
                    torch.mm(g_k.t(), x_k, out=grad_w_rows[k])
                else:
                    grad_w[k] = _grouped_weight_grad(x_k, g_k, groups).transpose(1, 2)

            depthwise, per_offset = _is_depthwise(w), _gathers_per_offset(w)
            for c, chunk in enumerate(pairs.chunks()):
                out_rows, in_rows = pairs.out_cat[chunk.start:chunk.stop], pairs.in_cat[chunk.start:chunk.stop]
                if per_offset:  # each offset's rows gathered just before its two products
                    products = _WORKSPACE.get(0, out_rows.numel(), groups * cin, grad_out) if need_features else None
                    product_parts = products.split(chunk.sizes) if need_features else [None] * len(chunk.ids)
                    for k, out_k, in_k, product_k in zip(chunk.ids, out_rows.split(chunk.sizes),
                                                         in_rows.split(chunk.sizes), product_parts):
                        g_k = _gather(grad_out, out_k, 2)
                        if need_weight:
                            add_weight_grad(k, g_k, _gather(features, in_k, 3))
                        if need_features:
                            multiply(g_k, operands[k], product_k)
                else:
                    g = _gather(grad_out, out_rows, 1)
                    g_parts = g.split(chunk.sizes)
                    if need_weight:
                        x = _gather(features, in_rows, 0)
                        if depthwise:  # sum of x * g over each offset's pairs: one product for the chunk, in place
                            for k, xg_k in zip(chunk.ids, x.mul_(g).split(chunk.sizes)):
                                grad_w[k] = xg_k.sum(0).view(groups, 1, 1)
                        else:
                            for k, g_k, x_k in zip(chunk.ids, g_parts, x.split(chunk.sizes)):
                                add_weight_grad(k, g_k, x_k)
                    if need_features:
                        products = _products_buffer(g, w, groups * cin, 0)  # the gathered x is done with
                        for k, g_k, out_k in zip(chunk.ids, g_parts, products.split(chunk.sizes)):
                            multiply(g_k, operands[k], out_k)
                if need_features:
                    grad_features = _scatter_sum(grad_features, kmap, "in", c, products, kmap.num_in)
            if need_features and grad_features is None:
                grad_features = torch.zeros_like(features)
            grad_weight = None
            if need_weight:
                grad_weight = _transpose_2d(grad_w.view(num_offsets, -1)).view(ctx.weight_shape)
        return grad_features, grad_weight, None, None, None


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


def sparse_conv_features(
    features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, groups: int, label: str = "sparse.conv",
    compiled: bool = False,
) -> torch.Tensor:
    """Apply a Conv3d-layout weight (Co_total, Ci, k, k, k) along a kernel map: (M_in, C) -> (M_out, Co_total).

    `label` names the backward pass in torch.profiler traces (the per-layer-type breakdown). `compiled`:
    run on the compiled backend's kernels where they cover the layer (`pointlift.sparse.compiled`).
    """
    dtype = _compute_dtype(features, weight)
    features, weight = features.to(dtype), weight.to(dtype)
    if compiled:
        from pointlift.sparse import compiled as compiled_backend

        if compiled_backend.supports(features, weight, groups):
            return compiled_backend.conv_features(features, weight, kmap)
    return _SparseConvFunction.apply(features, weight, kmap, groups, label)


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
            backend_registry.require(backend)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        if backend_registry.resolve(backend) == "compiled":  # before an optimiser or DDP sees the weight
            self._use_kernel_layout()

    def _use_kernel_layout(self) -> None:
        """On the compiled backend: keep the weight's values in its kernels' memory order (same values)."""
        from pointlift.sparse import compiled

        if compiled.layout_fits(self.weight, self.groups):
            compiled.use_kernel_layout(self.weight)

    def reset_parameters(self) -> None:
        # nn.Conv3d's initialisation, so sparse and dense layers start alike. A weight in the compiled kernels'
        # memory order gets the values a contiguous one would (the same random draws, copied in).
        weight = (self.weight if self.weight.is_contiguous()
                  else torch.empty(self.weight.shape, dtype=self.weight.dtype, device=self.weight.device))
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if weight is not self.weight:
            with torch.no_grad():
                self.weight.copy_(weight)
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

    def profile_label(self) -> str:
        """Layer type for profiler traces: sparse.subm_k3, sparse.down_k2s2, sparse.up_k2s2, ..."""
        kind = "up" if self.transposed else ("subm" if self.stride == 1 else "down")
        return f"sparse.{kind}_k{self.kernel_size}" + (f"s{self.stride}" if self.stride > 1 else "")

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.num_channels != self.in_channels:
            raise PointliftDataError(
                "sparse tensor", f"{type(self).__name__} expects {self.in_channels} channels, got {x.num_channels}"
            )
        label = self.profile_label()
        with record_function(label):
            backend = backend_registry.resolve(self.backend)
            if backend == "spconv":
                from pointlift.sparse import spconv_backend

                out = spconv_backend.try_forward(self, x)
                if out is not None:
                    return out
            out_stride, kmap = self.output_stride_and_map(x)
            if backend == "compiled":
                self._use_kernel_layout()  # a module made before the backend was chosen: once, here
            features = sparse_conv_features(x.features, self.weight, kmap, self.groups, label,
                                            compiled=backend == "compiled")
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
