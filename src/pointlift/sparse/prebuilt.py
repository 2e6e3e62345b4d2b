"""Kernel maps built ahead of the training step (in a DataLoader worker) and handed over as one tensor.

Why: a sparse network's kernel maps and CSR scatter matrices depend on the batch's coordinates only. On the CPU
they are about a fifth of a small U-Net's step (segmentation with `spunet-tiny`, BENCHMARKS.md), and a collate
that builds them lets a DataLoader worker do that beside the step. They travel packed into one int64 tensor
(one shared-memory block): a worker that returned a coordinate manager's ~150 tensors one by one spent longer
moving them than building them. The maps are the ones the step would build, so the run stays the same bit for
bit (tested); a map the plan missed is built in the step as before.

    plan = record_plan(network, in_channels)              # once, before the DataLoader starts its workers
                                                          # (a task calls plan_for_loader: the same, checked)
    collate = WithKernelMaps(collate, plan)               # the batch gains "kernel_maps"
    manager = batch_manager(batch)                        # in the step: SparseTensor(features, manager=manager)
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.sparse import kernel_map
from pointlift.sparse.kernel_map import KernelMap, Pairs
from pointlift.sparse.tensor import CoordinateManager, SparseTensor

MapKey = tuple[int, int, int, int]  # (in_stride, out_stride, kernel_size, dilation), the manager's cache key


@dataclass(frozen=True)
class MapPlan:
    """What a network asks of its coordinate manager in one training step, in order: `steps` are
    ("downsample", stride, factor) and ("map", in_stride, out_stride, kernel_size, dilation); `scatter` are the
    CSR scatter matrices its forward and backward build, as (map key, side of the map as built, dtype)."""

    steps: tuple[tuple, ...]
    scatter: tuple[tuple[MapKey, str, torch.dtype], ...]


class _RecordingManager(CoordinateManager):
    def __init__(self, coords: torch.Tensor):
        super().__init__(coords, batch_size=1)
        self.steps: list[tuple] = []

    def downsample(self, stride: int, factor: int) -> int:
        self.steps.append(("downsample", stride, factor))
        return super().downsample(stride, factor)

    def kernel_map(self, in_stride: int, out_stride: int, kernel_size: int, dilation: int) -> KernelMap:
        self.steps.append(("map", in_stride, out_stride, kernel_size, dilation))
        return super().kernel_map(in_stride, out_stride, kernel_size, dilation)


def record_plan(network: nn.Module, in_channels: int, side: int = 64, sites: int = 4096) -> MapPlan:
    """The plan of `network` (SparseTensor -> SparseTensor or a tensor): a copy of it in eval mode runs forward
    and backward on `sites` random voxels of a `side`^3 box (so that a U-Net's coarsest stride has neighbours
    too), and the requests its coordinate manager sees are noted. The network itself is not touched
    (statistics, gradients, random streams). A U-Net asks the same of every batch; a network whose requests
    depended on the data would build what the plan lacks in the step, as without a plan."""
    probe = copy.deepcopy(network).eval()
    generator = torch.Generator().manual_seed(0)
    cells = torch.randperm(side**3, generator=generator)[:sites]
    coords = torch.stack([torch.zeros_like(cells), cells // side**2, cells // side % side, cells % side], dim=1)
    manager = _RecordingManager(coords)
    features = torch.randn(len(coords), in_channels, generator=generator)
    out = probe(SparseTensor(features, manager=manager))
    total = (out.features if isinstance(out, SparseTensor) else out).float().sum()
    if total.requires_grad:  # a network with nothing to train needs no backward maps
        total.backward()
    scatter = tuple((key, which, dtype) for key, kmap in manager._maps.items()
                    for which, dtype, _device in kmap._scatter)
    return MapPlan(tuple(dict.fromkeys(manager.steps)), scatter)


def plan_for_loader(network: nn.Module, in_channels: int, device: torch.device, num_workers: int) -> MapPlan:
    """`record_plan` behind the checks of a task's `data.kernel_maps_in_loader`: CPU runs only (a clear error
    elsewhere), and a warning where no DataLoader worker would take the work off the training thread."""
    if device.type != "cpu":
        raise PointliftConfigError(f"data.kernel_maps_in_loader builds kernel maps on the CPU; this run is on "
                                   f"{device} (set device: cpu, or leave the option off)")
    if num_workers == 0:
        warnings.warn("data.kernel_maps_in_loader with train.num_workers: 0 builds the kernel maps on the training "
                      "thread, which gains nothing; set train.num_workers: 1", RuntimeWarning, stacklevel=2)
    return record_plan(network, in_channels)


def build_manager(coords: torch.Tensor, batch_size: int, plan: MapPlan) -> CoordinateManager:
    """A coordinate manager for `coords` holding everything `plan` names."""
    manager = CoordinateManager(coords, batch_size)
    for step in plan.steps:
        if step[0] == "downsample":
            manager.downsample(*step[1:])
        else:
            manager.kernel_map(*step[1:])
    for key, side, dtype in plan.scatter:
        manager._maps[key].scatter_matrices(side, dtype)
    return manager


class PackedManager:
    """A coordinate manager's coordinates, kernel maps and scatter matrices in one int64 tensor (`flat`, cut at
    `sizes`) and a small description (`meta`). Pickles as one shared-memory block between processes."""

    def __init__(self, manager: CoordinateManager):
        parts: list[torch.Tensor] = []

        def put(tensor: torch.Tensor) -> tuple[int, tuple]:
            parts.append(tensor.reshape(-1).long())
            return len(parts) - 1, tuple(tensor.shape)

        maps = {}
        for key, kmap in manager._maps.items():
            pairs = kmap.pairs()
            maps[key] = {"num_in": kmap.num_in, "num_out": kmap.num_out, "identity": kmap.identity,
                         "offsets": len(kmap.in_index), "ids": pairs.ids, "bounds": pairs.bounds,
                         "in_cat": put(pairs.in_cat), "out_cat": put(pairs.out_cat),
                         "scatter": {(side, dtype): [(put(m.crow_indices()), put(m.col_indices()), tuple(m.shape))
                                                     for m in matrices]
                                     for (side, dtype, _device), matrices in kmap._scatter.items()}}
        self.meta = {"batch_size": manager.batch_size, "maps": maps, "pair_chunk": kernel_map.PAIR_CHUNK,
                     "coords": {stride: put(coords) for stride, coords in manager.coords.items()}}
        self.sizes = [int(part.numel()) for part in parts]
        self.flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def unpack(self) -> CoordinateManager:
        """The manager again (its tensors are views of `flat`); what it lacks is built on first use as usual."""
        views = self.flat.split(self.sizes)

        def get(ref: tuple[int, tuple]) -> torch.Tensor:
            return views[ref[0]].view(ref[1])

        meta = self.meta
        manager = CoordinateManager.__new__(CoordinateManager)
        manager.batch_size = meta["batch_size"]
        manager.coords = {stride: get(ref) for stride, ref in meta["coords"].items()}
        manager._hashes, manager._maps, manager._parents, manager.backend_state = {}, {}, {}, {}
        for key, entry in meta["maps"].items():
            in_cat, out_cat = get(entry["in_cat"]), get(entry["out_cat"])
            kmap = KernelMap.from_pairs(Pairs(entry["ids"], entry["bounds"], in_cat, out_cat), entry["offsets"],
                                        entry["num_in"], entry["num_out"], entry["identity"])
            # scatter matrices come per chunk of pairs: only usable where the chunks are cut the same way
            scatter = entry["scatter"] if meta["pair_chunk"] == kernel_map.PAIR_CHUNK else {}
            for (side, dtype), matrices in scatter.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                    kmap._scatter[(side, dtype, in_cat.device)] = [
                        torch.sparse_csr_tensor(get(crow), get(col), torch.ones(shape[1], dtype=dtype),
                                                size=shape, check_invariants=False)
                        for crow, col, shape in matrices]
            manager._maps[key] = kmap
        return manager


def batch_manager(batch: dict) -> CoordinateManager | None:
    """The coordinate manager a batch brings (its packed kernel maps, unpacked), or None: the step builds them."""
    return batch["kernel_maps"].unpack() if "kernel_maps" in batch else None


class WithKernelMaps:
    """A collate that adds batch["kernel_maps"]: the `plan`'s maps for batch["coords"] (one sample per item),
    packed (CPU only)."""

    def __init__(self, collate, plan: MapPlan):
        self.collate, self.plan = collate, plan

    def __call__(self, items):
        batch = self.collate(items)
        manager = build_manager(batch["coords"], len(items), self.plan)
        batch["kernel_maps"] = PackedManager(manager)
        return batch
