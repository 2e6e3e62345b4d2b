"""The "compiled" sparse backend: pointlift's own fused C++ kernels for sparse convolutions on the CPU.

An option of ours, not a part of any method: the pure backend (the default) runs wherever torch runs and
its results are what the behaviour digests record; this one needs a C++ compiler on the machine and
rounds differently (the same sums in another order: agreement with the pure backend and exactness
against dense convolutions are tested). Where it applies it does a convolution's gather, products and
sum in one pass (`compiled_source.py`); every other layer — grouped or depthwise, output channels not a
multiple of 8, input channels not a multiple of 8 where the input needs a gradient, other dtypes,
CUDA — runs on the pure backend, so any network works. While it is the process-wide backend its kernels also
read the kernel maps' pairs from the coordinate hash's grid (`grid_pairs`), downsample sites (`coarse_sites`, with
the stride-2 maps read from the parents: `partition_map`) and voxelise CPU point clouds (`geometry.voxelize`):
integers, the same maps and voxels as the pure backend's.
"""

from __future__ import annotations

import functools

import torch

from pointlift.errors import PointliftConfigError
from pointlift.sparse.kernel_map import CoordinateHash, KernelMap, Pairs

BUILD_HELP = (
    "the 'compiled' sparse backend builds C++ kernels on first use and needs a C++ compiler (g++) and "
    "ninja (`pip install ninja`); use the default backend 'pure' instead"
)


@functools.lru_cache(maxsize=1)
def kernels():
    """The built kernels (compiled once per machine, then loaded from the cache)."""
    from pointlift.sparse import compiled_source

    try:
        return compiled_source.build()
    except Exception as error:  # the compiler's own message says what is missing
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise PointliftConfigError(f"{BUILD_HELP} (build failed: {reason})") from None


def available() -> bool:
    """Do the kernels build (or load) here?"""
    try:
        kernels()
    except PointliftConfigError:
        return False
    return True


def layout_fits(weight: torch.Tensor, groups: int) -> bool:
    """Would the kernels run a layer with this weight (for some input)? Then it keeps the kernels' layout."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and groups == 1
            and weight.shape[0] % 8 == 0)


def supports(features: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Can the kernels run this layer on these features (else it runs on the pure backend)?"""
    return (layout_fits(weight, groups) and features.device.type == "cpu" and features.dtype == torch.float32
            and (weight.shape[1] % 8 == 0 or not features.requires_grad))


def _offset_rows(weight: torch.Tensor) -> torch.Tensor:
    """Conv3d layout (Co, Ci, k, k, k) -> (K, Ci, Co), W_k = [k]: a view for a weight in the kernels' layout
    (`use_kernel_layout`), else a copy."""
    k3 = weight[0, 0].numel()
    return weight.permute(2, 3, 4, 1, 0).reshape(k3, weight.shape[1], weight.shape[0])


def _as_conv3d(rows: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """(K, Ci, Co) -> the Conv3d-shaped view (Co, Ci, k, k, k) of the same memory."""
    return rows.view(*kernel_size, *rows.shape[1:]).permute(4, 3, 0, 1, 2)


def use_kernel_layout(weight: torch.nn.Parameter) -> None:
    """Keep a Conv3d weight's values in the memory order the kernels read, (K, Ci, Co), behind its usual
    shape, so that no step copies it: forward reads W_k in place and backward hands back a gradient of the
    same layout, which autograd keeps as it is. The parameter stays the same object with the same shape and
    values (its state dict and checkpoints are unchanged: they are saved contiguous)."""
    if weight.detach().permute(2, 3, 4, 1, 0).is_contiguous():
        return
    with torch.no_grad():
        weight.data = _as_conv3d(_offset_rows(weight.detach()).contiguous(), tuple(weight.shape[2:]))


class _CompiledConvFunction(torch.autograd.Function):
    """out[out_index[k]] += features[in_index[k]] @ W_k for every offset k, fused per offset.

    W_k is read from the weight as (K, Ci, Co) (in place where the module keeps that layout), W_k^T from a
    per-offset transpose (K, Co, Ci), and the weight gradient is written as (K, Ci, Co). The identity offset
    of a submanifold map is one plain matrix product.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        cout, cin = weight.shape[:2]
        features = features.contiguous()
        w = _offset_rows(weight)
        ctx.save_for_backward(features, w)
        ctx.kmap, ctx.kernel_size = kmap, tuple(weight.shape[2:])
        if kmap.identity is not None:
            out = features @ w[kmap.identity]
        else:
            out = features.new_zeros(kmap.num_out, cout)
        pairs = kmap.pairs()
        if pairs.count:
            kernels().pair_products(features, w, cin * cout, cout, pairs.in_cat, pairs.out_cat,
                                    pairs.bounds_table(), out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        features, w = ctx.saved_tensors  # w: (K, Ci, Co)
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        k3, cin, cout = w.shape
        pairs = kmap.pairs()
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            w_t = w.transpose(1, 2).contiguous()  # (K, Co, Ci): W_k^T, one small transpose per offset
            if kmap.identity is not None:
                grad_features = grad_out @ w_t[kmap.identity]
            else:
                grad_features = features.new_zeros(kmap.num_in, cin)
            if pairs.count:
                kernels().pair_products(grad_out, w_t, cout * cin, cin, pairs.out_cat, pairs.in_cat,
                                        pairs.bounds_table(), grad_features)
        if ctx.needs_input_grad[1]:
            grad_rows = features.new_empty(k3, cin, cout)  # every offset is written once below
            if kmap.identity is not None:
                torch.mm(features.t(), grad_out, out=grad_rows[kmap.identity])
            for k in set(range(k3)) - set(pairs.ids) - {kmap.identity}:  # offsets without pairs
                grad_rows[k] = 0
            if pairs.count:
                kernels().weight_products(features, grad_out, pairs.in_cat, pairs.out_cat, pairs.bounds_table(),
                                          grad_rows, cin * cout, cout)
            grad_weight = _as_conv3d(grad_rows, ctx.kernel_size)
        return grad_features, grad_weight, None


def grid_pairs(in_hash: CoordinateHash, base_keys: torch.Tensor, out_sites: torch.Tensor, offsets: torch.Tensor,
               mirrored: bool) -> tuple[list[int], torch.Tensor, torch.Tensor] | None:
    """`kernel_map._pairs_around` in one pass of the kernels where a grid of `in_hash` holds every query, else
    None (then the torch path searches)."""
    base = in_hash.decode(base_keys)
    grid = in_hash.grid_for(base, offsets)
    if grid is None:
        return None
    empty = torch.empty(0, dtype=torch.int32)
    steps = offsets[:, 0] * grid.extent[1] + offsets[:, 1]
    counts, in_cat, out_cat = kernels().grid_pairs(
        grid.rows, empty if grid.columns is None else grid.columns, int(grid.extent[2]), grid.column_index(base),
        base[:, 3] - grid.low[2], steps, offsets[:, 2].contiguous(), out_sites.contiguous(), mirrored)
    return counts.tolist(), in_cat, out_cat


# the kernels' bitmaps (voxelize's unique, coarse_sites) keep one bit per possible key or cell: used while that is
# at most this many bits per site or point
BITMAP_CELLS_PER_SITE = 256


def coarse_sites(coords: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`kernel_map.downsample_coords(coords, factor)` and each site's row among the coarse sites (its parent), from
    one bit per cell of the coarse sites' box where that box has at most BITMAP_CELLS_PER_SITE cells per site, else
    None (then torch's unique answers). The same sites in the same order (tested)."""
    if not len(coords):
        return None
    found = kernels().coarse_sites(coords.contiguous(), factor, BITMAP_CELLS_PER_SITE * len(coords))
    return (found[0], found[1]) if found else None


def partition_map(in_hash: CoordinateHash, parent: torch.Tensor, num_out: int, factor: int) -> KernelMap:
    """The map of a convolution with kernel size = stride = `factor` from the sites of `in_hash` onto their
    coarse sites (`parent`: each site's row among them, from `coarse_sites`): every site feeds its parent through
    one offset, so there is nothing to look up. The pairs `build_kernel_map` finds, in its order (tested)."""
    counts, in_cat, out_cat = kernels().partition_pairs(in_hash.coords.contiguous(), in_hash.order, parent, factor)
    pairs = Pairs.of_offsets(list(range(factor ** 3)), counts.tolist(), in_cat, out_cat)
    return KernelMap.from_pairs(pairs, factor ** 3, in_hash.size, num_out, None)


def conv_features(features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """The convolution's output features (a layer `supports` accepts)."""
    return _CompiledConvFunction.apply(features, weight, kmap)
