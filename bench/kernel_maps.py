"""Kernel-map lookups on LiDAR sweeps: one binary search per kernel offset, one per (dx, dy) column, the column grid.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/kernel_maps.py --out bench/results/kernel-maps-cpu.json

The sites are what PPKT's LiDAR pretraining feeds its sparse U-Net (bench segmentation cpu-long): two
SemanticKITTI sweeps as one batch, voxelised at 0.3 m, then the coarser strides of the U-Net. LiDAR boxes are
too sparse for the dense site grid (`CoordinateHash._dense_grid` refuses them), so every stride-1 map of these
scenes took the binary-search path until the column grid (`CoordinateHash._columns_and_z_rows`). For the
submanifold maps the network builds (half the offsets: the other half are read backwards), it times
`CoordinateHash.lookup` (one search per offset), `lookup_columns` (one per column) and the column grid (its
build timed apart), alternating within every repeat, CPU time of this process, the minimum over repeats; and
checks that all return the same sites.

`network_maps` then builds every map of the U-Net's step (`spunet-tiny`'s plan on the same batch: hashes,
downsampling, all kernel maps, and the pure backend's CSR scatter matrices) on the pure backend and on the
compiled one, whose kernels read the pairs from the
grids in one pass: wall time (the compiled pass uses torch's threads), median over alternating repeats, and a
check that both build the same maps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pointlift.bench import shared_path
from pointlift.commands.bench import cpu_description
from pointlift.sparse.kernel_map import (CoordinateHash, decode_keys, downsample_coords, kernel_offsets,
                                        offset_key_deltas)


def lidar_sites(sequence: str, frames: int, voxel_size: float) -> torch.Tensor:
    """(M, 4) [b, x, y, z] voxel coordinates of the first `frames` sweeps of a sequence, one sample each."""
    folder = shared_path(f"data/semantickitti-mini/sequences/{sequence}/velodyne")
    rows = []
    for b, path in enumerate(sorted(folder.glob("*.bin"))[:frames]):
        points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)[:, :3]
        cells = np.unique(np.floor(points / voxel_size).astype(np.int64), axis=0)
        rows.append(np.concatenate([np.full((len(cells), 1), b), cells], 1))
    return torch.from_numpy(np.concatenate(rows))


def _cpu_seconds(function) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def _wall_seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def network_maps(coords: torch.Tensor, repeats: int) -> dict:
    """Every map `spunet-tiny` builds for the batch `coords`: ms per backend (median over alternating repeats)."""
    from pointlift.models.sparse_unet import sparse_unet
    from pointlift.sparse import compiled, use_backend
    from pointlift.sparse.prebuilt import build_manager, record_plan

    backends = ["pure"] + (["compiled"] if compiled.available() else [])
    network = sparse_unet("spunet-tiny", 1, 64)
    batch_size = int(coords[:, 0].max()) + 1
    plans, built = {}, {}
    for name in backends:  # the pure backend's plan adds the CSR scatter matrices its layers use
        with use_backend(name):
            plans[name] = record_plan(network, 1)
            built[name] = build_manager(coords, batch_size, plans[name])._maps
    for key, kmap in built["pure"].items():  # the same pairs, in the same order
        for other in built.values():
            assert all(torch.equal(a, b) for a, b in zip(kmap.in_index + kmap.out_index,
                                                         other[key].in_index + other[key].out_index)), key
    times = {name: [] for name in backends}
    for _ in range(repeats):
        for name in backends:
            with use_backend(name):
                times[name].append(_wall_seconds(lambda: build_manager(coords, batch_size, plans[name])))
    medians = {name: 1000 * sorted(values)[len(values) // 2] for name, values in times.items()}
    print("all maps of spunet-tiny: " + "  ".join(f"{name} {value:.1f} ms (fastest {1000 * min(times[name]):.1f})"
                                                 for name, value in medians.items()), flush=True)
    return {"maps": len(built["pure"]), "sites": len(coords), **{f"{name}_ms": v for name, v in medians.items()},
            **{f"{name}_fastest_ms": 1000 * min(values) for name, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", default="00")
    parser.add_argument("--voxel-size", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    coords = lidar_sites(args.sequence, 2, args.voxel_size)
    network = network_maps(coords, args.repeats)
    rows = []
    for stride in (1, 2, 4, 8):
        hashed = CoordinateHash(coords)
        grid = hashed._dense_grid() is not None
        build_ms = 1000 * _cpu_seconds(hashed._columns_and_z_rows)
        column_grid = hashed._column_grid
        for kernel_size in ((5, 3) if stride == 1 else (3,)):  # the U-Net's stem is 5x5x5 at stride 1
            offsets = kernel_offsets(kernel_size, 1, coords.device)[: kernel_size ** 3 // 2]
            base = hashed.sorted_keys
            one_per_offset = lambda: hashed.lookup(base.unsqueeze(0) + offset_key_deltas(offsets).unsqueeze(1))  # noqa: E731
            per_column = lambda: hashed.lookup_columns(base, offsets)  # noqa: E731
            arms = {"one_search_per_offset": one_per_offset, "one_search_per_column": per_column}
            if column_grid is not None:
                arms["column_grid"] = lambda: column_grid.lookup(decode_keys(base), offsets)  # noqa: E731
            expected = one_per_offset()
            for name, arm in arms.items():
                assert torch.equal(arm(), expected), (stride, kernel_size, name)
            times = {name: [] for name in arms}
            for _ in range(args.repeats):
                for name, arm in arms.items():
                    times[name].append(_cpu_seconds(arm))
            best = {name: min(values) * 1000 for name, values in times.items()}
            cells = column_grid.rows.numel() + column_grid.columns.numel() if column_grid is not None else None
            rows.append({"stride": stride, "sites": len(coords), "kernel_size": kernel_size,
                         "offsets_searched": len(offsets), "dense_grid_allowed": grid,
                         "column_grid_build_ms": build_ms if column_grid is not None else None,
                         "column_grid_cells_per_site": cells / len(coords) if cells is not None else None,
                         **{f"{name}_ms": value for name, value in best.items()},
                         "speedup": best["one_search_per_offset"] / best["one_search_per_column"]})
            text = "  ".join(f"{name} {value:.1f} ms" for name, value in best.items())
            print(f"stride {stride}, {len(coords)} sites, {kernel_size}^3 (half: {len(offsets)} offsets): {text}"
                  f"{' (dense grid allowed)' if grid else ''}", flush=True)
        coords = downsample_coords(coords, 2)
    record = {"what": __doc__.split("\n\n")[0], "sequence": args.sequence, "voxel_size": args.voxel_size,
              "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "cpu": cpu_description(),
              "torch": torch.__version__, "network": network, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
