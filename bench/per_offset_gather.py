"""Gathering each kernel offset's rows just before its products vs a whole chunk of offsets at once.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/per_offset_gather.py --out bench/results/per-offset-gather-cpu.json

Two figures, each side by side in one process, the two ways alternating (order reversed every other repeat):
1. `shapes`: the gathers and products of one chunk of offsets (rows per offset, channels, offsets as in the
   `cpu` preset's layers), per-pair ratio per-offset / chunked;
2. `step`: the `bench sparse --preset cpu` training step (spunet-v1m1, about 20k sites), pure engine, with
   `PER_OFFSET_GATHER_MIN_CHANNELS` at its value and switched off. The results are bit-identical (tested).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pointlift.bench.sparse import _step, default_data_root, load_frame_voxels
from pointlift.commands.bench import cpu_description
from pointlift.engine.allocator import keep_freed_memory
from pointlift.models.sparse_unet import sparse_unet
from pointlift.sparse import conv

SHAPES = [(3000, 8, 26), (3000, 16, 26), (6000, 32, 26), (6000, 64, 10), (6000, 96, 10), (3000, 128, 20),
          (1500, 256, 26)]  # (rows per offset, channels in = out, offsets)


def _best(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def shape_ratios(repeats: int) -> list[dict]:
    rows = []
    for per_offset_rows, channels, offsets in SHAPES:
        source = torch.randn(40_000, channels)
        index = torch.randint(0, 40_000, (per_offset_rows * offsets,))
        weights = [torch.randn(channels, channels) for _ in range(offsets)]
        chunk, small = torch.empty(len(index), channels), torch.empty(per_offset_rows, channels)
        products = torch.empty(len(index), channels)
        sizes = [per_offset_rows] * offsets

        def chunked():
            torch.index_select(source, 0, index, out=chunk)
            for w, x, out in zip(weights, chunk.split(sizes), products.split(sizes)):
                torch.mm(x, w, out=out)

        def per_offset():
            for w, rows_k, out in zip(weights, index.split(sizes), products.split(sizes)):
                torch.mm(torch.index_select(source, 0, rows_k, out=small), w, out=out)

        chunked(), per_offset()
        ratios = []
        for r in range(repeats):
            pair = (chunked, per_offset) if r % 2 == 0 else (per_offset, chunked)
            times = {f.__name__: _best(f) for f in pair}
            ratios.append(times["per_offset"] / times["chunked"])
        rows.append({"rows_per_offset": per_offset_rows, "channels": channels, "offsets": offsets,
                     "ratios": ratios, "median": statistics.median(ratios)})
        print(f"{per_offset_rows} rows x {channels} channels x {offsets} offsets: per-offset / chunked "
              f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return rows


def step_ratios(repeats: int) -> dict:
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    coords, features, _, _ = load_frame_voxels(default_data_root(), 1, cpu, 0.02)
    labels = torch.randint(0, 20, (len(coords),))
    model = sparse_unet("spunet-v1m1", in_channels=3, out_channels=20).train()
    on = conv.PER_OFFSET_GATHER_MIN_CHANNELS
    arms = {"per_offset": on, "chunked": 10**9}
    times = {name: [] for name in arms}
    for name, threshold in arms.items():  # warm-up
        conv.PER_OFFSET_GATHER_MIN_CHANNELS = threshold
        _step(model, coords, features, labels, cpu)
    for r in range(repeats):
        for name in (arms if r % 2 == 0 else list(arms)[::-1]):
            conv.PER_OFFSET_GATHER_MIN_CHANNELS = arms[name]
            times[name].append(sum(_step(model, coords, features, labels, cpu)))
    conv.PER_OFFSET_GATHER_MIN_CHANNELS = on
    ratios = [a / b for a, b in zip(times["per_offset"], times["chunked"])]
    print(f"step ({len(coords)} sites): per-offset / chunked median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}); s per step {statistics.median(times['per_offset']):.2f} "
          f"vs {statistics.median(times['chunked']):.2f}", flush=True)
    return {"sites": len(coords), "seconds": times, "ratios": ratios, "median": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    kept = keep_freed_memory()
    record = {"what": __doc__.split("\n\n")[0], "torch_threads": torch.get_num_threads(), "cpu": cpu_description(),
              "torch": torch.__version__, "keep_freed_memory": kept,
              "shapes": shape_ratios(args.repeats), "step": step_ratios(args.repeats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
