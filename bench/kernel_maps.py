"""Kernel-map lookups on LiDAR sweeps: one binary search per kernel offset vs one per (dx, dy) column.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/kernel_maps.py --out bench/results/kernel-maps-cpu.json

The sites are what PPKT's LiDAR pretraining feeds its sparse U-Net (bench segmentation cpu-long): two
SemanticKITTI sweeps as one batch, voxelised at 0.3 m, then the coarser strides of the U-Net. LiDAR boxes are
too sparse for the dense site grid (`CoordinateHash._dense_grid` refuses them), so every stride-1 map of these
scenes takes the binary-search path. For the submanifold maps the network builds (half the offsets: the other
half are read backwards), it times `CoordinateHash.lookup` (one search per offset) and `lookup_columns` (one
per column), alternating within every repeat, CPU time of this process, the minimum over repeats; and checks
that both return the same sites.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pointlift.bench import shared_path
from pointlift.commands.bench import _cpu_model
from pointlift.sparse.kernel_map import CoordinateHash, downsample_coords, kernel_offsets, offset_key_deltas


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", default="00")
    parser.add_argument("--voxel-size", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    coords = lidar_sites(args.sequence, 2, args.voxel_size)
    rows = []
    for stride in (1, 2, 4, 8):
        hashed = CoordinateHash(coords)
        grid = hashed._dense_grid() is not None
        for kernel_size in ((5, 3) if stride == 1 else (3,)):  # the U-Net's stem is 5x5x5 at stride 1
            offsets = kernel_offsets(kernel_size, 1, coords.device)[: kernel_size ** 3 // 2]
            base = hashed.sorted_keys
            one_per_offset = lambda: hashed.lookup(base.unsqueeze(0) + offset_key_deltas(offsets).unsqueeze(1))  # noqa: E731
            per_column = lambda: hashed.lookup_columns(base, offsets)  # noqa: E731
            assert torch.equal(one_per_offset(), per_column()), (stride, kernel_size)
            times = {"one_search_per_offset": [], "one_search_per_column": []}
            for _ in range(args.repeats):
                times["one_search_per_offset"].append(_cpu_seconds(one_per_offset))
                times["one_search_per_column"].append(_cpu_seconds(per_column))
            best = {name: min(values) * 1000 for name, values in times.items()}
            rows.append({"stride": stride, "sites": len(coords), "kernel_size": kernel_size,
                         "offsets_searched": len(offsets), "dense_grid_allowed": grid,
                         **{f"{name}_ms": value for name, value in best.items()},
                         "speedup": best["one_search_per_offset"] / best["one_search_per_column"]})
            print(f"stride {stride}, {len(coords)} sites, {kernel_size}^3 (half: {len(offsets)} offsets): "
                  f"{best['one_search_per_offset']:.1f} -> {best['one_search_per_column']:.1f} ms "
                  f"({rows[-1]['speedup']:.2f}x){' (dense grid allowed)' if grid else ''}", flush=True)
        coords = downsample_coords(coords, 2)
    record = {"what": __doc__.split("\n\n")[0], "sequence": args.sequence, "voxel_size": args.voxel_size,
              "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "cpu": _cpu_model(),
              "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
