"""The "compiled" sparse backend (pointlift's fused C++ CPU kernels) against dense convolutions and the pure backend.

The kernels are built once per machine (about 30 s) into ~/.cache/pointlift/kernels; these tests need a C++
compiler and ninja and say so when they are missing.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from pointlift.errors import PointliftConfigError
from pointlift.sparse import SparseConv3d, SparseInverseConv3d, SparseTensor, SubMConv3d, set_backend, use_backend
from pointlift.sparse import compiled, compiled_source
from pointlift.sparse import conv as conv_module
from test_sparse import check_against_dense, random_sparse

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None or shutil.which("ninja") is None,
    reason="the compiled backend needs a C++ compiler (c++) and ninja on PATH",
)

# name, class, in, out, kwargs: every column block the kernels have (8, 16, 32, 48, 64 wide) and every conv kind
CASES = [
    ("subm_k3_8_8", SubMConv3d, 8, 8, dict(kernel_size=3)),
    ("subm_k3_8_24", SubMConv3d, 8, 24, dict(kernel_size=3)),
    ("subm_k3_16_32", SubMConv3d, 16, 32, dict(kernel_size=3)),
    ("subm_k3_48_48", SubMConv3d, 48, 48, dict(kernel_size=3)),
    ("subm_k3_32_80", SubMConv3d, 32, 80, dict(kernel_size=3)),
    ("subm_k3_64_128", SubMConv3d, 64, 128, dict(kernel_size=3)),
    ("subm_k5_16_16", SubMConv3d, 16, 16, dict(kernel_size=5)),
    ("subm_k3_dilation2", SubMConv3d, 16, 16, dict(kernel_size=3, dilation=2)),
    ("subm_k3_bias", SubMConv3d, 16, 16, dict(kernel_size=3, bias=True)),
    ("subm_k1", SubMConv3d, 32, 16, dict(kernel_size=1)),
    ("strided_k2_s2", SparseConv3d, 16, 32, dict(kernel_size=2, stride=2)),
    ("strided_k2_s2_8_16", SparseConv3d, 8, 16, dict(kernel_size=2, stride=2)),
    ("even_k2_s1", SparseConv3d, 16, 16, dict(kernel_size=2, stride=1)),
    ("strided_k3_s2", SparseConv3d, 32, 16, dict(kernel_size=3, stride=2)),
    ("inverse_k2_s2", SparseInverseConv3d, 32, 16, dict(kernel_size=2, stride=2)),
    ("inverse_k3_s2", SparseInverseConv3d, 16, 48, dict(kernel_size=3, stride=2)),
    ("inverse_k2_s2_16_8", SparseInverseConv3d, 16, 8, dict(kernel_size=2, stride=2)),
]


@pytest.fixture
def pure_engine_forbidden(monkeypatch):
    """Fail if a layer the kernels cover ran on the pure backend instead (a silent fallback)."""
    def refuse(*args):
        raise AssertionError("the pure backend ran a layer the compiled kernels cover")

    monkeypatch.setattr(conv_module._SparseConvFunction, "apply", refuse)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_compiled_conv_matches_dense(case, threads, pure_engine_forbidden):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with use_backend("compiled"):
            check_against_dense(case, "cpu")
    finally:
        torch.set_num_threads(previous)


def test_compiled_agrees_with_pure_on_a_scene_sized_layer():
    """Thousands of pairs per offset (many register tiles and threads' blocks), and an input without a
    gradient at 3 channels (a stem: the kernels run it, as only its weight needs a gradient)."""
    coords, _ = random_sparse(batch=1, grid=24, channels=1, density=0.35)
    stem, layer = SubMConv3d(3, 32, 5), SubMConv3d(32, 64, 3)
    colours = torch.rand(len(coords), 3)
    results = {}
    for backend in ("pure", "compiled"):
        stem.zero_grad(), layer.zero_grad()
        with use_backend(backend):
            out = layer(stem(SparseTensor(colours, coords))).features
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[backend] = [out.detach(), stem.weight.grad.clone(), layer.weight.grad.clone()]
    for pure, fused in zip(results["pure"], results["compiled"]):
        assert (pure - fused).abs().max() <= 1e-5 * pure.abs().max()
        assert not torch.equal(pure, torch.zeros_like(pure))


def _lidar_like_sites(sites: int, seed: int) -> torch.Tensor:
    """Sites scattered over a box far too sparse for the dense grid (a LiDAR sweep's shape): ground with some
    height, poles with gaps in z, two samples."""
    generator = torch.Generator().manual_seed(seed)
    ground = torch.randint(-200, 200, (sites, 2), generator=generator)
    height = torch.randint(-3, 4, (sites, 1), generator=generator)
    poles = torch.cat([ground[: sites // 8].repeat_interleave(4, 0),
                       torch.arange(4).repeat(sites // 8).view(-1, 1) * 2], 1)
    points = torch.cat([torch.cat([ground, height], 1), poles])
    coords = torch.unique(torch.cat([torch.randint(0, 2, (len(points), 1), generator=generator), points], 1), dim=0)
    return coords[torch.randperm(len(coords), generator=generator)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scene", ["dense-grid", "column-grid", "searched"])
def test_kernel_maps_read_by_the_kernels_are_the_torch_paths(scene, threads, monkeypatch):
    """On the compiled backend the kernels read a map's pairs from the hash's grid: the same integers in the same
    order as the torch path, for every kind of map a U-Net builds (submanifold 1, 3, 5 and dilated; strided 2 and
    3; their transposes share them) over several blocks of sites; where no grid holds the queries the torch
    path answers on either backend."""
    from pointlift.sparse.kernel_map import CoordinateHash
    from pointlift.sparse.tensor import CoordinateManager

    if scene == "dense-grid":
        coords = random_sparse(batch=2, grid=20, channels=1, density=0.3, seed=1)[0]
    else:
        coords = _lidar_like_sites(4000, seed=2)
    monkeypatch.setattr(CoordinateHash, "GRIDS", () if scene == "searched" else CoordinateHash.GRIDS)
    requests = [(1, 1, 1, 1), (1, 1, 3, 1), (1, 1, 5, 1), (1, 1, 3, 2), (1, 2, 2, 1), (1, 2, 3, 1), (2, 2, 3, 1),
                (2, 4, 2, 1), (1, 3, 3, 1)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        managers = {}
        for backend in ("pure", "compiled"):
            with use_backend(backend):
                manager = managers[backend] = CoordinateManager(coords)
                for in_stride, out_stride, kernel_size, dilation in requests:
                    manager.downsample(in_stride, out_stride // in_stride)
                    manager.kernel_map(in_stride, out_stride, kernel_size, dilation)
    finally:
        torch.set_num_threads(previous)
    hashed = managers["compiled"].hash_at(1)
    used = {"dense-grid": (True, False), "column-grid": (False, True), "searched": (False, False)}[scene]
    assert (hashed._grid is not None, hashed._column_grid is not None) == used
    pairs = 0
    for key, kmap in managers["pure"]._maps.items():
        other = managers["compiled"]._maps[key]
        assert kmap.identity == other.identity and len(kmap.in_index) == len(other.in_index)
        for mine, theirs in zip(kmap.in_index + kmap.out_index, other.in_index + other.out_index):
            assert torch.equal(mine, theirs), key
        assert torch.equal(kmap.pairs().in_cat, other.pairs().in_cat) and kmap.pairs().ids == other.pairs().ids
        pairs += kmap.num_pairs
    assert pairs > 8 * len(coords)  # neighbours found, not only the identity pairs


@pytest.mark.parametrize("scene", ["dense-grid", "lidar-like"])
def test_downsampling_and_strided_maps_on_the_kernels_are_the_torch_paths(scene):
    """On the compiled backend the coarse sites come from a bitmap of the coarse box, with each site's parent, and a
    2x2x2 stride-2 map is read from the parents: the same coarse sites and the same pairs in the same order as
    `downsample_coords` and `build_kernel_map` (shuffled sites, negative coordinates, two samples, four levels); a
    coarse box too large for the bitmap falls back to torch's unique."""
    from pointlift.sparse.kernel_map import CoordinateHash, build_kernel_map, downsample_coords
    from pointlift.sparse.tensor import CoordinateManager
    from test_sparse import assert_same_map

    if scene == "dense-grid":
        coords = random_sparse(batch=2, grid=20, channels=1, density=0.3, seed=3)[0]
        coords[:, 1:] -= 9
    else:
        coords = _lidar_like_sites(4000, seed=4)
    with use_backend("compiled"):
        manager = CoordinateManager(coords)
        for level in range(4):
            manager.downsample(2 ** level, 2)
            manager.kernel_map(2 ** level, 2 ** (level + 1), 2, 1)
    assert len(manager._parents) == 4  # every level came from the kernels
    pairs = 0
    for level in range(4):
        fine, coarse = manager.coords[2 ** level], manager.coords[2 ** (level + 1)]
        assert torch.equal(coarse, downsample_coords(fine, 2)), level
        searched = build_kernel_map(CoordinateHash(fine), coarse, 2, 2, 1)
        assert_same_map(manager.kernel_map(2 ** level, 2 ** (level + 1), 2, 1), searched, level)
        pairs += searched.num_pairs
    assert pairs == sum(len(manager.coords[2 ** level]) for level in range(4))  # every site feeds one parent
    kernels = compiled.kernels()
    for factor in (2, 3, 5):
        sites, parent = compiled.coarse_sites(coords, factor)
        expected, inverse = torch.unique(coords.div(torch.tensor([1, factor, factor, factor]), rounding_mode="floor"),
                                         dim=0, return_inverse=True)
        assert torch.equal(sites, expected) and torch.equal(parent, inverse), factor
        counts, in_cat, out_cat = kernels.partition_pairs(coords, CoordinateHash(coords).order, parent, factor)
        assert counts.sum() == len(coords) and torch.equal(out_cat, parent[in_cat])
    far = torch.tensor([[0, 0, 0, 0], [0, 100_000, 100_000, 100_000]])
    assert compiled.coarse_sites(far, 2) is None


@pytest.mark.parametrize("threads", [1, 2])
def test_voxelisation_on_the_kernels_is_the_torch_paths(threads):
    """On the compiled backend voxelize's passes over the points run in the kernels: the same voxels, order, inverse
    and counts as the torch path, for float and double points, one or three voxel sizes, samples without points,
    cells on both sides of zero and points on cell borders; a grid too large for one key falls back alike."""
    from pointlift.geometry import voxel as voxel_module
    from pointlift.geometry import voxelize

    generator = torch.Generator().manual_seed(threads)
    sweep = torch.randn(60000, 3, generator=generator) * torch.tensor([30.0, 30.0, 2.0])
    sweep[:5000] = torch.randint(-40, 40, (5000, 3), generator=generator) * 0.25  # on the cell borders
    batch = torch.randint(0, 3, (60000,), generator=generator) * 2  # samples 1 and 3 have no points
    cases = [(sweep, 0.3, batch), (sweep, 2.0, batch), (sweep.double() * 1.7, (0.2, 0.3, 0.1), batch),
             (sweep[:10], 0.05, None),
             (torch.tensor([[0.0, 0.0, 0.0], [1e6, 1e6, 1e6], [0.5, 0.0, 0.0]]), 1e-4, None)]  # the last: no key
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for points, size, samples in cases:
            expected = voxelize(points, size, samples)
            with use_backend("compiled"):
                assert voxel_module._compiled_kernels(points) is not None  # the kernels, not the torch path, ran
                got = voxelize(points, size, samples)
            for name in ("coords", "inverse", "counts"):
                assert torch.equal(getattr(got, name), getattr(expected, name)), (points.dtype, size, name)
    finally:
        torch.set_num_threads(previous)
    assert len(expected.coords) == 3 and len(voxelize(sweep, 0.3, batch).coords) > 20000


def test_the_kernels_unique_is_torch_unique():
    """`unique_bounded` (voxelize's unique on the compiled backend: a bitmap of the possible keys, no sort) returns
    torch.unique's keys, inverse and counts, also for keys at both ends of the range and for no keys; a key
    outside the range is refused, not written outside the bitmap."""
    kernels = compiled.kernels()
    generator = torch.Generator().manual_seed(0)
    for bound, n in ((1000, 5000), (64, 3), (130, 1), (200_000, 40_000), (5, 0)):
        keys = torch.randint(0, bound, (n,), generator=generator)
        if n > 2:
            keys[:2] = torch.tensor([0, bound - 1])
        got = kernels.unique_bounded(keys, bound)
        want = torch.unique(keys, return_inverse=True, return_counts=True)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), (bound, n)
    with pytest.raises(RuntimeError, match="outside"):
        kernels.unique_bounded(torch.tensor([3, 64]), 64)


def test_the_map_kernel_refuses_a_query_outside_its_grid():
    """The kernel checks its reach itself (a wrong caller gets an error, not a read outside the table)."""
    rows = torch.full((4 * 5,), -1, dtype=torch.int32)  # 4 columns of depth 5
    one = torch.tensor([1])
    grid_pairs = compiled.kernels().grid_pairs
    counts, ins, outs = grid_pairs(rows, torch.empty(0, dtype=torch.int32), 5, one, one, one, one, one, True)
    assert counts.tolist() == [0] and ins.numel() == outs.numel() == 0
    for column, z, step, dz in ((one * 3, one, one, one), (one, one * 4, one, one), (one, one, one * -2, one)):
        with pytest.raises(RuntimeError, match="outside the grid"):
            grid_pairs(rows, torch.empty(0, dtype=torch.int32), 5, column, z, step, dz, one, False)


def test_layers_the_kernels_do_not_cover_run_on_the_pure_backend():
    """Depthwise, 12-channel and float64 layers give the pure backend's results bit for bit."""
    coords, feats = random_sparse(channels=8)
    for layer, x in ((SubMConv3d(8, 8, 3, groups=8), feats), (SubMConv3d(8, 12, 3), feats),
                     (SubMConv3d(8, 16, 3).double(), feats.double())):
        outs = []
        for backend in ("pure", "compiled"):
            with use_backend(backend):
                outs.append(layer(SparseTensor(x, coords)).features)
        assert torch.equal(outs[0], outs[1])


def test_a_failed_build_is_one_clear_config_error(monkeypatch):
    def no_compiler():
        raise RuntimeError("Ninja is required to load C++ extensions")

    compiled.kernels.cache_clear()
    monkeypatch.setattr(compiled_source, "build", no_compiler)
    try:
        with pytest.raises(PointliftConfigError, match="C\\+\\+ compiler .*Ninja is required"):
            set_backend("compiled")
        with pytest.raises(PointliftConfigError, match="C\\+\\+ compiler"):
            SubMConv3d(16, 16, 3, backend="compiled")
    finally:
        compiled.kernels.cache_clear()


def test_the_build_key_follows_the_source(monkeypatch):
    key = compiled_source.build_key()
    monkeypatch.setattr(compiled_source, "SOURCE", compiled_source.SOURCE + "\n// changed\n")
    assert compiled_source.build_key() != key


def test_a_sparse_unet_trains_on_the_compiled_kernels(pure_engine_forbidden):
    """spunet-small (16-128 channels: every convolution on the kernels) fits one scene's labels."""
    import torch.nn.functional as F

    from pointlift.models.sparse_unet import sparse_unet

    torch.manual_seed(0)
    coords, _ = random_sparse(batch=2, grid=16, channels=1, density=0.3)
    colours = torch.rand(len(coords), 3)
    labels = (coords[:, 1] > 8).long() + 2 * (coords[:, 3] > 8).long()  # four regions of space
    model = sparse_unet("spunet-small", in_channels=3, out_channels=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    with use_backend("compiled"):
        for _ in range(12):
            loss = F.cross_entropy(model(SparseTensor(colours, coords)).features, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_kernel_layout_keeps_the_weight_and_what_is_saved(tmp_path):
    """Adopting the kernels' memory order changes no value, shape, state dict or checkpoint, the gradient
    arrives in the same order (no copy), and the pure backend then gives the same results bit for bit."""
    from pointlift.engine.checkpoint import load_checkpoint, save_checkpoint

    coords, feats = random_sparse(channels=16)
    layer, twin = SubMConv3d(16, 32, 3), SubMConv3d(16, 32, 3)
    twin.load_state_dict(layer.state_dict())
    before = layer.weight.detach().clone()
    parameter = layer.weight
    compiled.use_kernel_layout(layer.weight)
    assert layer.weight is parameter and not layer.weight.is_contiguous()
    assert torch.equal(layer.weight, before) and layer.weight.shape == before.shape
    with use_backend("compiled"):
        layer(SparseTensor(feats, coords)).features.sum().backward()
    assert layer.weight.grad.stride() == layer.weight.stride()
    outs = [m(SparseTensor(feats, coords)).features for m in (layer, twin)]  # pure backend
    assert torch.equal(outs[0], outs[1])
    tensor_file = save_checkpoint(tmp_path / "c", layer.state_dict())
    restored = SubMConv3d(16, 32, 3)
    restored.load_state_dict(load_checkpoint(tensor_file)[0])
    assert torch.equal(restored.weight, before)


def test_layers_made_on_the_compiled_backend_start_from_the_same_weights():
    """Chosen before the model is built, the compiled backend lays the weights out at once (before an optimiser
    or DDP sees them), with the values the pure backend's layers get from the same seed, also when re-initialised."""
    from pointlift.models.sparse_unet import sparse_unet

    built = {}
    for backend in ("pure", "compiled"):
        torch.manual_seed(3)
        with use_backend(backend):
            built[backend] = sparse_unet("spunet-tiny", in_channels=3, out_channels=16)
    pure, fused = (dict(built[b].named_parameters()) for b in ("pure", "compiled"))
    laid_out = [name for name, p in fused.items() if p.dim() == 5 and not p.is_contiguous()]
    assert len(laid_out) >= 10
    assert all(torch.equal(pure[name], fused[name]) for name in pure)
    layer = next(m for m in built["compiled"].modules() if isinstance(m, SubMConv3d) and not m.weight.is_contiguous())
    twin = SubMConv3d(layer.in_channels, layer.out_channels, layer.kernel_size)
    torch.manual_seed(4), layer.reset_parameters()
    torch.manual_seed(4), twin.reset_parameters()
    assert torch.equal(layer.weight, twin.weight) and not layer.weight.is_contiguous()


def test_the_build_for_cpus_without_avx512_matches_dense_too(monkeypatch):
    """The kernels' other register tiles (AVX2: fewer, smaller vectors), built here with AVX-512 turned off."""
    from pathlib import Path

    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX-512: the tests above already ran the AVX2 build")
    module = compiled_source.build(("-mno-avx512f",))
    monkeypatch.setattr(compiled, "kernels", lambda: module)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for case in CASES:
                with use_backend("compiled"):
                    check_against_dense(case, "cpu")
    finally:
        torch.set_num_threads(previous)
