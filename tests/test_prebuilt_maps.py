"""Kernel maps built ahead of the step (sparse/prebuilt.py): the plan covers what a U-Net asks, the packed maps
equal fresh ones, and a step on them is bit-identical to a step that builds its own."""

from __future__ import annotations

import pickle

import pytest
import torch

from pointlift.models.sparse_unet import sparse_unet
from pointlift.sparse import SparseTensor
from pointlift.sparse.prebuilt import PackedManager, WithKernelMaps, build_manager, record_plan
from pointlift.sparse.tensor import CoordinateManager


def scene_coords(seed: int = 0, batch: int = 2) -> torch.Tensor:
    """Voxels of a floor and two walls per sample (surfaces, like scans), [b, x, y, z]."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for b in range(batch):
        xy = torch.randint(0, 40, (1500, 2), generator=g)
        floor = torch.cat([xy, torch.zeros(1500, 1, dtype=torch.long)], 1)
        wall = torch.cat([xy[:, :1], torch.full((1500, 1), 39), xy[:, 1:] % 20], 1)
        side = torch.cat([torch.zeros(1500, 1, dtype=torch.long), xy[:, :1], xy[:, 1:] % 20], 1)
        sites = torch.unique(torch.cat([floor, wall, side]), dim=0)
        samples.append(torch.cat([torch.full((len(sites), 1), b), sites], 1))
    return torch.cat(samples)


def step(net, features, manager):
    """One forward and backward: the output and every gradient."""
    net.zero_grad(set_to_none=True)
    out = net(SparseTensor(features, manager=manager)).features
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach()] + [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("name", ["spunet-tiny", "spunet-small"])
def test_a_step_on_packed_maps_is_bit_identical_and_builds_nothing(name):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = sparse_unet(name, in_channels=3, out_channels=5).train()
    coords = scene_coords()
    features = torch.rand(len(coords), 3)
    plan = record_plan(net, 3)
    assert any(s[0] == "downsample" for s in plan.steps) and plan.scatter
    unpacked = pickle.loads(pickle.dumps(PackedManager(build_manager(coords, 2, plan)))).unpack()
    maps_before = {key: set(kmap._scatter) for key, kmap in unpacked._maps.items()}
    want = step(net, features, CoordinateManager(coords, 2))
    got = step(net, features, unpacked)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # the step found every map and scatter matrix it needed: nothing was hashed or built
    assert not unpacked._hashes
    assert {key: set(kmap._scatter) for key, kmap in unpacked._maps.items()} == maps_before


def test_packed_maps_equal_fresh_ones():
    net = sparse_unet("spunet-tiny", in_channels=3, out_channels=5)
    coords = scene_coords(1)
    plan = record_plan(net, 3)
    fresh = build_manager(coords, 2, plan)
    unpacked = PackedManager(fresh).unpack()
    assert unpacked.coords.keys() == fresh.coords.keys()
    assert all(torch.equal(unpacked.coords[s], fresh.coords[s]) for s in fresh.coords)
    assert unpacked._maps.keys() == fresh._maps.keys()
    for key, want in fresh._maps.items():
        got = unpacked._maps[key]
        assert (got.num_in, got.num_out, got.identity) == (want.num_in, want.num_out, want.identity)
        for a, b in zip(got.in_index + got.out_index, want.in_index + want.out_index, strict=True):
            assert torch.equal(a, b)
        for other in (got.transposed(), want.transposed()):  # the decoder reads the down maps backwards
            assert other.pairs().count == want.pairs().count
        assert got._scatter.keys() == want._scatter.keys()
        for side in want._scatter:
            for a, b in zip(got._scatter[side], want._scatter[side], strict=True):
                assert a.shape == b.shape
                assert all(torch.equal(x, y) for x, y in ((a.crow_indices(), b.crow_indices()),
                                                          (a.col_indices(), b.col_indices()), (a.values(), b.values())))


def test_recording_the_plan_leaves_the_network_and_random_streams_alone():
    torch.manual_seed(3)
    net = sparse_unet("spunet-tiny", in_channels=3, out_channels=5).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    record_plan(net, 3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_the_collate_adds_packed_maps_that_cross_a_worker_process():
    net = sparse_unet("spunet-tiny", in_channels=3, out_channels=5)
    samples = [scene_coords(seed, batch=1) for seed in (2, 3)]

    def collate(items):  # one sample per item, numbered in the batch
        return {"coords": torch.cat([torch.cat([torch.full((len(c), 1), b), c[:, 1:]], 1)
                                     for b, c in enumerate(items)])}

    plan = record_plan(net, 3)
    loader = torch.utils.data.DataLoader(samples, batch_size=2, num_workers=1, collate_fn=WithKernelMaps(collate, plan))
    batch = next(iter(loader))
    manager = batch["kernel_maps"].unpack()
    assert torch.equal(manager.coords[1], batch["coords"]) and manager.batch_size == 2
    want = build_manager(batch["coords"], 2, plan)
    assert manager._maps.keys() == want._maps.keys()
    assert all(torch.equal(manager._maps[key].pairs().in_cat, want._maps[key].pairs().in_cat) for key in want._maps)


@pytest.mark.parametrize("kind", ["segmentation", "ppkt"])
def test_the_option_on_cuda_fails_when_the_config_loads(kind):
    from pointlift.engine.config import load_config
    from pointlift.errors import PointliftConfigError
    from pointlift.methods.ppkt.config import PPKTConfig
    from pointlift.tasks.segmentation.config import SegmentationConfig

    cls = {"segmentation": SegmentationConfig, "ppkt": PPKTConfig}[kind]
    data = {"kernel_maps_in_loader": True, **({"kind": "synthetic"} if kind == "ppkt" else {})}
    with pytest.raises(PointliftConfigError, match="kernel_maps_in_loader"):
        load_config({"device": "cuda", "data": data}, cls)
    assert load_config({"device": "cpu", "data": data}, cls).data.kernel_maps_in_loader


def test_a_task_gets_a_clear_error_off_the_cpu_and_a_warning_without_a_worker():
    from pointlift.errors import PointliftConfigError
    from pointlift.sparse.prebuilt import plan_for_loader

    net = sparse_unet("spunet-tiny", in_channels=3, out_channels=5)
    with pytest.raises(PointliftConfigError, match="on the CPU; this run is on cuda"):
        plan_for_loader(net, 3, torch.device("cuda"), num_workers=1)
    with pytest.warns(RuntimeWarning, match="num_workers: 1"):
        plan = plan_for_loader(net, 3, torch.device("cpu"), num_workers=0)
    assert plan == record_plan(net, 3)
