"""Sparse convolutions against dense torch convolutions on the densified grid.

Reference semantics (see pointlift.sparse.conv): inactive input sites are zero in the dense
grid; submanifold output is read at the input sites, strided output at unique(floor(c/s)), and
transposed output at the cached finer sites. Forward values and gradients of input features and
weights must agree to < 1e-4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.sparse import conv as conv_module
from pointlift.sparse import kernel_map as kernel_map_module
from pointlift.sparse import (
    SparseBatchNorm,
    SparseConv3d,
    SparseInverseConv3d,
    SparseReLU,
    SparseTensor,
    SubMConv3d,
    global_pool,
    spconv_available,
    use_backend,
)
from pointlift.sparse.kernel_map import decode_keys, encode_keys


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA cases where a GPU exists
GRID = 9  # odd on purpose: exercises borders that do not divide by the stride


def random_sparse(batch=2, grid=GRID, channels=4, density=0.3, seed=0, device="cpu"):
    """Random unique coords per sample (shuffled order) and features."""
    gen = torch.Generator().manual_seed(seed)
    coords = []
    for b in range(batch):
        occupied = (torch.rand(grid, grid, grid, generator=gen) < density).nonzero()
        coords.append(torch.cat([torch.full((len(occupied), 1), b), occupied], dim=1))
    coords = torch.cat(coords)
    coords = coords[torch.randperm(len(coords), generator=gen)]
    features = torch.randn(len(coords), channels, generator=gen)
    return coords.to(device), features.to(device)


def scatter_dense(coords, features, batch, shape):
    grid = features.new_zeros(batch, features.shape[1], *shape)
    grid[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]] = features
    return grid


def read_sites(dense, coords):
    return dense[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]]


def transposed_weight(weight, groups):
    """Conv3d layout (Co_total, Ci, k,k,k) -> conv_transpose3d layout (Ci_total, Co, k,k,k)."""
    co_total, ci = weight.shape[:2]
    w = weight.reshape(groups, co_total // groups, ci, *weight.shape[2:]).transpose(1, 2)
    return w.reshape(groups * ci, co_total // groups, *weight.shape[2:])


# name, class, in, out, kwargs
CASES = [
    ("subm_k3", SubMConv3d, 4, 5, dict(kernel_size=3)),
    ("subm_k1", SubMConv3d, 4, 5, dict(kernel_size=1)),
    ("subm_k5", SubMConv3d, 3, 2, dict(kernel_size=5)),
    ("subm_k3_dilation2", SubMConv3d, 4, 5, dict(kernel_size=3, dilation=2)),
    ("subm_k3_bias", SubMConv3d, 4, 5, dict(kernel_size=3, bias=True)),
    ("subm_depthwise", SubMConv3d, 4, 4, dict(kernel_size=3, groups=4)),
    ("subm_grouped", SubMConv3d, 4, 6, dict(kernel_size=3, groups=2)),
    ("strided_k2_s2", SparseConv3d, 4, 5, dict(kernel_size=2, stride=2)),
    ("even_k2_s1", SparseConv3d, 4, 5, dict(kernel_size=2, stride=1)),  # ResNet-50's stride-1 shortcut
    ("strided_k3_s2", SparseConv3d, 4, 5, dict(kernel_size=3, stride=2)),
    ("strided_k3_s2_dilation2", SparseConv3d, 4, 5, dict(kernel_size=3, stride=2, dilation=2)),
    ("strided_depthwise_k3_s2", SparseConv3d, 4, 4, dict(kernel_size=3, stride=2, groups=4)),
    ("strided_grouped_k2_s2", SparseConv3d, 4, 6, dict(kernel_size=2, stride=2, groups=2)),
    ("inverse_k2_s2", SparseInverseConv3d, 4, 5, dict(kernel_size=2, stride=2)),
    ("inverse_k3_s2", SparseInverseConv3d, 4, 5, dict(kernel_size=3, stride=2)),
    ("inverse_depthwise_k2_s2", SparseInverseConv3d, 4, 4, dict(kernel_size=2, stride=2, groups=4)),
]


@pytest.mark.parametrize("chunk", ["one", "several", "several, gathered per offset"])
@pytest.mark.parametrize("path", ["csr", "index_add"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv_matches_dense(case, device, path, chunk, monkeypatch):
    """Both ways of summing pair products onto sites (CSR segment sums and index_add_), with all pairs in one
    chunk and split into chunks of about two offsets (a 3x3x3 offset here has about 100 pairs), and with each
    offset's rows gathered just before its products (wide layers on the CPU; here every non-depthwise one)."""
    monkeypatch.setattr(conv_module, "SCATTER", path)
    if chunk != "one":
        monkeypatch.setattr(kernel_map_module, "PAIR_CHUNK", 250)
    monkeypatch.setattr(conv_module, "PER_OFFSET_GATHER_MIN_CHANNELS", 1 if "per offset" in chunk else 10**9)
    check_against_dense(case, device)


def check_against_dense(case, device):
    """The layer of `case` (on the current backend) against dense conv3d / conv_transpose3d: output sites,
    values, and the gradients of the input features and the weight."""
    name, cls, cin, cout, kwargs = case
    torch.manual_seed(1)
    k = kwargs["kernel_size"]
    s = kwargs.get("stride", 1)
    d = kwargs.get("dilation", 1)
    g = kwargs.get("groups", 1)
    pad = d * (k - 1) // 2
    conv = cls(cin, cout, **kwargs).to(device)
    coords, feats = random_sparse(channels=cin, device=device)

    if cls is SparseInverseConv3d:
        # The coarse sites come from the strided conv of a fine tensor; the input lives there.
        fine = SparseTensor(torch.zeros(len(coords), 1, device=device), coords)
        coarse_stride = fine.manager.downsample(1, s)
        coarse_coords = fine.manager.coords_at(coarse_stride)
        feats = torch.randn(len(coarse_coords), cin, device=device)
        leaf = feats.clone().requires_grad_()
        x = SparseTensor(leaf, stride=coarse_stride, manager=fine.manager)
        in_coords, in_shape = coarse_coords, (GRID // s + 2,) * 3
    else:
        leaf = feats.clone().requires_grad_()
        x = SparseTensor(leaf, coords)
        in_coords, in_shape = coords, (GRID + 3,) * 3  # margin: border sites keep all outputs
    y = conv(x)

    # expected output sites
    if cls is SubMConv3d:
        assert y.stride == 1 and torch.equal(y.coords, coords)
    elif cls is SparseConv3d:
        expected = {(int(b), int(i) // s, int(j) // s, int(l) // s) for b, i, j, l in coords.tolist()}
        assert y.stride == s and {tuple(c) for c in y.coords.tolist()} == expected
        assert len(y) == len(expected)
    else:
        assert y.stride == 1 and torch.equal(y.coords, coords)

    dense_in = scatter_dense(in_coords, feats, 2, in_shape).requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    if cls is SparseInverseConv3d:
        dense_out = F.conv_transpose3d(dense_in, transposed_weight(weight, g), stride=s, padding=pad, dilation=d, groups=g)
    else:
        dense_out = F.conv3d(dense_in, weight, stride=s, padding=pad, dilation=d, groups=g)
    if conv.bias is not None:
        dense_out = dense_out + conv.bias.detach().view(1, -1, 1, 1, 1)
    expected_out = read_sites(dense_out, y.coords)
    assert y.features.shape == (len(y), cout)
    assert (y.features - expected_out).abs().max().item() < 1e-4

    probe = torch.randn_like(expected_out)
    (y.features * probe).sum().backward()
    (expected_out * probe).sum().backward()
    assert (leaf.grad - read_sites(dense_in.grad, in_coords)).abs().max().item() < 1e-4
    assert (conv.weight.grad - weight.grad).abs().max().item() < 1e-4
    # the gradient must not be trivially zero
    assert conv.weight.grad.abs().max().item() > 1e-3 and leaf.grad.abs().max().item() > 1e-3


def test_kernel_maps_are_cached_and_shared():
    coords, feats = random_sparse(channels=4)
    x = SparseTensor(feats, coords)
    down = SparseConv3d(4, 8, kernel_size=2, stride=2)
    up = SparseInverseConv3d(8, 4, kernel_size=2, stride=2)
    sub_a, sub_b = SubMConv3d(4, 4), SubMConv3d(4, 4)
    y = sub_b(sub_a(x))
    z = up(down(y))
    assert len(x.manager._maps) == 2  # one submanifold map at stride 1, one stride-1 -> stride-2 map
    assert z.manager is x.manager and torch.equal(z.coords, x.coords)
    cached = x.manager.kernel_map(1, 1, 3, 1)
    assert sub_a(x).manager.kernel_map(1, 1, 3, 1) is cached


def test_kernel_map_against_bruteforce():
    coords, feats = random_sparse(channels=1, grid=6, seed=3)
    x = SparseTensor(feats, coords)
    kmap = x.manager.kernel_map(1, 1, 3, 1)
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    for k, (dx, dy, dz) in enumerate(offsets):
        expected = set()
        for o, (b, i, j, l) in enumerate(coords.tolist()):
            other = index.get((b, i + dx, j + dy, l + dz))
            if other is not None:
                expected.add((other, o))
        got = set(zip(kmap.in_index[k].tolist(), kmap.out_index[k].tolist()))
        assert got == expected


def assert_same_map(mine, theirs, what=""):
    """The same pairs, offset by offset and in the same order (and the same concatenation the convolutions walk)."""
    assert (mine.identity, mine.num_in, mine.num_out, len(mine.in_index)) == \
        (theirs.identity, theirs.num_in, theirs.num_out, len(theirs.in_index)), what
    for a, b in zip(mine.in_index + mine.out_index, theirs.in_index + theirs.out_index):
        assert torch.equal(a, b), what
    assert mine.pairs().ids == theirs.pairs().ids and mine.pairs().bounds == theirs.pairs().bounds, what
    assert torch.equal(mine.pairs().in_cat, theirs.pairs().in_cat), what
    assert torch.equal(mine.pairs().out_cat, theirs.pairs().out_cat), what


def test_submanifold_maps_taken_from_larger_ones_are_the_searched_ones():
    """A manager that already holds a submanifold map on some sites takes a smaller one (same dilation) from it
    instead of searching: 3 from 5, 1 from 3, dilated 3 from dilated 5 give the maps a search builds, and a
    kernel-1 map has no pairs to search at all."""
    from pointlift.sparse.kernel_map import CoordinateHash, build_kernel_map
    from pointlift.sparse.tensor import CoordinateManager

    coords, _ = random_sparse(channels=1, grid=9, seed=7)
    coords[:, 1:] -= 4  # negative coordinates too, shuffled order
    manager = CoordinateManager(coords)
    requests = [(5, 1), (3, 1), (1, 1), (5, 2), (3, 2), (7, 1)]
    for kernel_size, dilation in requests:
        manager.kernel_map(1, 1, kernel_size, dilation)
    pairs = 0
    for kernel_size, dilation in requests:
        searched = build_kernel_map(CoordinateHash(coords), coords, 1, kernel_size, dilation, same_sites=True)
        assert_same_map(manager.kernel_map(1, 1, kernel_size, dilation), searched, (kernel_size, dilation))
        pairs += searched.num_pairs
    assert pairs > 20 * len(coords)
    assert manager.kernel_map(1, 1, 1, 1).pairs().count == 0 and manager.kernel_map(1, 1, 1, 1).identity == 0


@pytest.mark.parametrize("kernel_size,stride,dilation", [(3, 1, 1), (5, 1, 2), (5, 1, 3), (2, 2, 1), (3, 2, 2), (3, 4, 1)])
def test_grid_and_binary_search_lookups_agree(kernel_size, stride, dilation, monkeypatch):
    """The kernel-map query reads a dense grid or a column grid when one fits, else binary-searches sorted
    keys (once per offset, or once per (dx, dy) column); all must give the same pairs (dilation 3 with k5
    reaches past the grids' margin: the fallback)."""
    from pointlift.sparse.kernel_map import CoordinateHash

    coords, feats = random_sparse(channels=1, grid=9, seed=5)
    coords[:, 1:] -= 4  # negative coordinates too

    def pairs(grids: tuple, columns: bool = False):
        monkeypatch.setattr(CoordinateHash, "GRIDS", grids)
        monkeypatch.setattr(CoordinateHash, "COLUMN_MIN_SITES", 0 if columns else 1 << 62)
        x = SparseTensor(feats, coords)
        out_stride = x.manager.downsample(1, stride) if stride > 1 else 1
        kmap = x.manager.kernel_map(1, out_stride, kernel_size, dilation)
        hashed = x.manager.hash_at(1)
        used = (hashed._grid is not None, hashed._column_grid is not None)
        return [set(zip(i.tolist(), o.tolist())) for i, o in zip(kmap.in_index, kmap.out_index)], used

    dense, used_dense = pairs(("dense", "column"))
    by_columns, used_columns = pairs(("column",))
    searched, used_none = pairs(())
    column_searched, _ = pairs((), columns=True)  # dense kernels: one search per (dx, dy) column
    assert used_dense == (True, False) and used_columns == (False, True) and used_none == (False, False)
    assert dense == by_columns == searched == column_searched and sum(map(len, searched)) > 0


def test_column_grid_on_a_wide_sparse_scene():
    """A LiDAR-like scene (sites scattered over a box too large for the dense grid, several per column,
    two batches, gaps in z) takes the column grid by default, and its pairs are one search per offset's."""
    from pointlift.sparse.kernel_map import CoordinateHash, kernel_offsets, offset_key_deltas

    generator = torch.Generator().manual_seed(3)
    ground = torch.randint(-150, 150, (1500, 2), generator=generator)
    height = torch.randint(-3, 4, (1500, 1), generator=generator)
    poles = torch.cat([ground[:200].repeat_interleave(4, 0), torch.arange(4).repeat(200).view(-1, 1) * 2], 1)
    batch = torch.randint(0, 2, (2300, 1), generator=generator)
    coords = torch.unique(torch.cat([batch, torch.cat([torch.cat([ground, height], 1), poles])], 1), dim=0)
    coords = coords[torch.randperm(len(coords), generator=generator)]
    hashed = CoordinateHash(coords)
    for kernel_size, base in ((5, hashed.sorted_keys), (3, hashed.sorted_keys[::2]), (2, hashed.sorted_keys[1::3])):
        offsets = kernel_offsets(kernel_size, 1, coords.device)
        expected = hashed.lookup(base.unsqueeze(0) + offset_key_deltas(offsets).unsqueeze(1))
        assert torch.equal(hashed.lookup_around(base, offsets), expected)
        assert (expected >= 0).sum() > len(base)
    assert hashed._grid is None and hashed._column_grid is not None
    outside = hashed.sorted_keys + (10_000 << 36)  # queries beyond the box: the search answers, all absent
    assert torch.equal(hashed.lookup_around(outside, kernel_offsets(3, 1, coords.device)),
                       torch.full((27, len(outside)), -1))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_column_lookup_equals_one_search_per_offset(kernel_size):
    """`lookup_columns` (one search per (dx, dy) column) returns exactly what one binary search per offset
    returns: full and half offset sets, columns cut by batch and by the coordinate range's ends, gaps in z,
    queries that fall before the first and after the last key, an empty hash."""
    from pointlift.sparse.kernel_map import AXIS_BIAS, CoordinateHash, kernel_offsets, offset_key_deltas

    generator = torch.Generator().manual_seed(kernel_size)
    limit = AXIS_BIAS - 64
    coords = torch.cat([random_sparse(channels=1, grid=7, density=0.5, seed=kernel_size)[0],
                        torch.tensor([[0, -limit + 1, 0, -limit + 1], [0, -limit + 1, 0, -limit + 2],
                                      [2, limit - 1, limit - 1, limit - 1], [2, limit - 1, limit - 1, limit - 3],
                                      [1, 3, 3, 100], [1, 3, 3, 102], [1, 3, 4, 101]])])
    coords = coords[torch.randperm(len(coords), generator=generator)]  # the hash sorts; rows keep their order
    offsets = kernel_offsets(kernel_size, 1, coords.device)
    assert CoordinateHash.dense_in_z(offsets) and not CoordinateHash.dense_in_z(kernel_offsets(3, 2, coords.device))
    hashed = CoordinateHash(coords)
    bases = [hashed.sorted_keys, hashed.sorted_keys[::3], torch.sort(hashed.sorted_keys + 5)[0]]
    for base in bases:
        for asked in (offsets, offsets[: len(offsets) // 2], offsets[len(offsets) // 2 + 3:]):
            expected = hashed.lookup(base.unsqueeze(0) + offset_key_deltas(asked).unsqueeze(1))
            assert torch.equal(hashed.lookup_columns(base, asked), expected)
            assert (expected >= 0).sum() > len(base) // 2
    empty = CoordinateHash(coords[:0])
    assert torch.equal(empty.lookup_columns(bases[0], offsets), torch.full((len(offsets), len(bases[0])), -1))


def test_key_round_trip_and_range_checks():
    coords = torch.tensor([[0, 0, 0, 0], [3, 5, -2, 7], [511, 100000, 3, 4]])
    assert torch.equal(decode_keys(encode_keys(coords)), coords)
    with pytest.raises(PointliftDataError):
        SparseTensor(torch.zeros(1, 1), torch.tensor([[0, 200000, 0, 0]]))
    with pytest.raises(PointliftDataError):
        SparseTensor(torch.zeros(2, 1), torch.tensor([[0, 1, 0, 0]]))
    with pytest.raises(PointliftDataError):
        SubMConv3d(3, 4)(SparseTensor(torch.zeros(1, 2), torch.tensor([[0, 1, 0, 0]])))
    with pytest.raises(PointliftConfigError):
        SubMConv3d(3, 4, kernel_size=2)
    with pytest.raises(PointliftConfigError):
        SparseConv3d(3, 4, groups=2)
    with pytest.raises(PointliftDataError):  # no finer sites cached: nothing to go back to
        SparseInverseConv3d(2, 2, kernel_size=2, stride=2)(SparseTensor(torch.zeros(1, 2), torch.tensor([[0, 1, 0, 0]]), stride=2))


def test_sorting_keys_that_arrive_sorted_is_torch_sort():
    """`sort_keys` skips the sort of strictly increasing keys (voxelised and downsampled sites): the same keys and
    positions as torch.sort, which still sorts the rest (shuffled, or with repeated keys)."""
    from pointlift.sparse.kernel_map import sort_keys

    generator = torch.Generator().manual_seed(0)
    increasing = torch.randint(0, 50, (300,), generator=generator).cumsum(0) + 1
    cases = [increasing, increasing[torch.randperm(300, generator=generator)], increasing.repeat_interleave(2),
             increasing[:1], increasing[:0]]
    for keys in cases:
        got, want = sort_keys(keys), torch.sort(keys)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_global_pool_and_batchnorm_match_references():
    coords, feats = random_sparse(channels=3, seed=5)
    x = SparseTensor(feats, coords)
    for b in range(2):
        rows = feats[coords[:, 0] == b]
        assert torch.allclose(global_pool(x, "max")[b], rows.max(0).values)
        assert torch.allclose(global_pool(x, "mean")[b], rows.mean(0), atol=1e-6)
    bn, ref = SparseBatchNorm(3), torch.nn.BatchNorm1d(3)
    assert list(bn.state_dict()) == list(ref.state_dict())
    assert torch.allclose(bn(x).features, ref(feats), atol=1e-6)
    assert torch.allclose(bn.running_mean, ref.running_mean)
    assert torch.equal(SparseReLU()(x).features, feats.clamp(min=0))


def test_residual_add_requires_same_sites():
    coords, feats = random_sparse(channels=2)
    x = SparseTensor(feats, coords)
    other = SparseTensor(feats, coords)
    assert torch.equal((x + x).features, 2 * feats)
    with pytest.raises(PointliftDataError):
        x + other


def spconv_backend_matches_pure(device):
    torch.manual_seed(0)
    coords, feats = random_sparse(channels=4, grid=12, device=device)
    layers = torch.nn.ModuleList(
        [SubMConv3d(4, 8, 3), SparseConv3d(8, 16, kernel_size=2, stride=2), SubMConv3d(16, 16, 3),
         SparseInverseConv3d(16, 8, kernel_size=2, stride=2), SubMConv3d(8, 3, 1, bias=True)]
    ).to(device)

    def run(backend):
        leaf = feats.clone().requires_grad_()
        with use_backend(backend):
            x = SparseTensor(leaf, coords)
            y = layers[1](layers[0](x))
            y = layers[2](y)
            out = layers[4](layers[3](y))
        if backend == "spconv":  # spconv really ran: its maps sit in the shared manager
            assert {"subm_1_1_k3_d1", "down_1_2_k2_d1", "subm_2_2_k3_d1"} <= set(out.manager.backend_state["spconv"]["indice_dict"])
        order = torch.argsort(encode_keys(out.coords))
        result = out.features[order]
        layers.zero_grad()
        (result * torch.arange(result.numel(), device=device).view_as(result).sin()).sum().backward()
        return result.detach(), leaf.grad, [p.grad.clone() for p in layers.parameters()]

    out_pure, grad_pure, wgrad_pure = run("pure")
    out_sp, grad_sp, wgrad_sp = run("spconv")
    assert (out_pure - out_sp).abs().max().item() < 1e-4
    assert (grad_pure - grad_sp).abs().max().item() < 1e-4
    for a, b in zip(wgrad_pure, wgrad_sp):
        assert (a - b).abs().max().item() < 1e-4


# spconv is optional: its parity test exists where it is installed (CUDA cases where a GPU exists).
if spconv_available():
    test_spconv_backend_matches_pure = pytest.mark.parametrize("device", DEVICES)(spconv_backend_matches_pure)


def test_spconv_missing_is_one_clear_config_error(monkeypatch):
    from pointlift.sparse import backend as backend_module
    from pointlift.sparse import set_backend

    monkeypatch.setattr(backend_module, "spconv_available", lambda: False)
    with pytest.raises(PointliftConfigError, match="pip install spconv"):
        SubMConv3d(4, 4, backend="spconv")
    with pytest.raises(PointliftConfigError, match="pip install spconv"):
        set_backend("spconv")


def test_workspace_reuse_and_scatter_paths_agree(monkeypatch):
    """A small U-Net twice (scratch buffers reused across layers and steps) and with index_add_:
    identical outputs and gradients."""
    from pointlift.models.sparse_unet import sparse_unet

    coords, feats = random_sparse(channels=3, grid=12, density=0.2, seed=5)
    torch.manual_seed(0)
    model = sparse_unet("spunet-tiny", in_channels=3, out_channels=4).eval()

    def run():
        model.zero_grad()
        out = model(SparseTensor(feats, coords)).features
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    first, grads_first = run()
    again, grads_again = run()
    conv_module.release_workspace()
    monkeypatch.setattr(conv_module, "SCATTER", "index_add")
    other, grads_other = run()
    assert torch.equal(first, again) and all(torch.equal(a, b) for a, b in zip(grads_first, grads_again))
    assert (first - other).abs().max() < 1e-4
    assert max((a - b).abs().max().item() for a, b in zip(grads_first, grads_other)) < 1e-3


def test_transposed_map_shares_pairs_and_segment_matrices():
    coords, feats = random_sparse(channels=2)
    x = SparseTensor(feats, coords)
    stride = x.manager.downsample(1, 2)
    kmap = x.manager.kernel_map(1, stride, 2, 1)
    [forward_out] = kmap.scatter_matrices("out", torch.float32)  # one chunk: fewer than PAIR_CHUNK pairs
    back = kmap.transposed()
    assert back.transposed() is kmap
    assert back.scatter_matrices("in", torch.float32)[0] is forward_out
    assert torch.equal(back.pairs().in_cat, kmap.pairs().out_cat)
    values = torch.randn(kmap.pairs().count, 3)
    expected = torch.zeros(kmap.num_out, 3).index_add_(0, kmap.pairs().out_cat, values)
    assert torch.allclose(forward_out @ values, expected, atol=1e-6)


def test_pair_chunks_are_runs_of_whole_offsets_within_the_cap(monkeypatch):
    """Chunks cover every pair once, in order, each offset whole; at most PAIR_CHUNK pairs unless one offset
    alone has more; each chunk's segment matrix sums exactly its own pairs."""
    coords, _ = random_sparse(channels=1, grid=10, density=0.4, seed=2)
    x = SparseTensor(torch.zeros(len(coords), 1), coords)
    kmap = x.manager.kernel_map(1, 1, 3, 1)
    pairs = kmap.pairs()
    sizes = [b - a for a, b in pairs.bounds]
    cap = sorted(sizes)[len(sizes) // 2] + 1  # about two offsets per chunk; the largest offsets alone
    monkeypatch.setattr(kernel_map_module, "PAIR_CHUNK", cap)
    chunks = pairs.chunks()
    assert [k for chunk in chunks for k in chunk.ids] == pairs.ids and len(chunks) > 2
    assert [n for chunk in chunks for n in chunk.sizes] == sizes
    assert chunks[0].start == 0 and chunks[-1].stop == pairs.count
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    for chunk in chunks:
        assert chunk.stop - chunk.start == sum(chunk.sizes)
        assert chunk.stop - chunk.start <= cap or len(chunk.ids) == 1
    matrices = kmap.scatter_matrices("out", torch.float64)
    assert len(matrices) == len(chunks)
    values = torch.randn(pairs.count, 2, dtype=torch.float64)
    summed = sum(matrix @ values[chunk.start:chunk.stop] for matrix, chunk in zip(matrices, chunks))
    expected = torch.zeros(kmap.num_out, 2, dtype=torch.float64).index_add_(0, pairs.out_cat, values)
    assert torch.allclose(summed, expected)


@pytest.mark.parametrize("groups", [1, 2, 4], ids=["dense", "grouped", "depthwise"])
def test_one_sided_gradients_match_both_sided(groups, monkeypatch):
    """A frozen weight or a frozen input takes other paths through the backward (a depthwise layer scales its
    gathered rows in place); each gradient must not depend on whether the other one is asked for."""
    monkeypatch.setattr(kernel_map_module, "PAIR_CHUNK", 250)  # several chunks reuse the scratch buffers
    torch.manual_seed(2)
    coords, feats = random_sparse(channels=4)
    conv = SubMConv3d(4, 4, kernel_size=3, groups=groups)
    probe = torch.randn(len(coords), 4)

    def grads(features_grad: bool, weight_grad: bool):
        leaf = feats.clone().requires_grad_(features_grad)
        conv.weight.requires_grad_(weight_grad)
        conv.weight.grad = None
        (conv(SparseTensor(leaf, coords)).features * probe).sum().backward()
        return leaf.grad, conv.weight.grad

    both_features, both_weight = grads(True, True)
    only_features, no_weight = grads(True, False)
    no_features, only_weight = grads(False, True)
    assert no_weight is None and no_features is None
    assert torch.equal(only_features, both_features) and torch.equal(only_weight, both_weight)
    assert both_features.abs().max() > 1e-3 and both_weight.abs().max() > 1e-3


def test_gathering_per_offset_gives_the_chunked_results_bit_for_bit(monkeypatch):
    """A wide layer gathers each offset's rows just before its products instead of a chunk at once: the same
    rows and products, so the output and every gradient are identical bit for bit (forward and backward)."""
    monkeypatch.setattr(kernel_map_module, "PAIR_CHUNK", 250)
    coords, feats = random_sparse(channels=32)
    results = {}
    for threshold in (32, 10**9):
        monkeypatch.setattr(conv_module, "PER_OFFSET_GATHER_MIN_CHANNELS", threshold)
        torch.manual_seed(3)
        net = torch.nn.ModuleList([SubMConv3d(32, 40, kernel_size=3), SparseConv3d(40, 48, kernel_size=2, stride=2),
                                   SparseInverseConv3d(48, 32, kernel_size=2, stride=2)])
        leaf = feats.clone().requires_grad_()
        x = SparseTensor(leaf, coords)
        for layer in net:
            x = layer(x)
        (x.features ** 2).sum().backward()
        results[threshold] = [x.features.detach(), leaf.grad] + [layer.weight.grad for layer in net]
    assert all(torch.equal(a, b) for a, b in zip(results[32], results[10**9]))
