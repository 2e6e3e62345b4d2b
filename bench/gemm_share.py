"""How much of a sparse U-Net training step is dense matrix products, for the pure engine and for spconv.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/gemm_share.py --out bench/results/gemm-share-cpu.json

Both engines run a convolution as gather -> one matrix product per kernel offset -> scatter, and both hand
the products to the same BLAS (`torch.mm`, MKL on the x86 wheels). This measures, on the `bench sparse`
`cpu` preset's step (spunet-v1m1, the 7-Scenes frame at 2 cm, about 20k sites): the step's wall time (min of
`--repeats` unprofiled steps) and the self time of `aten::mm` in one profiled step, per backend; and the
BLAS rate on stand-alone products of the layers' shapes. When the products are most of both steps, no
engine built on them can be much faster than the other: the ratio is bounded below by
pure's product time / spconv's step time. spconv runs only where it is installed (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pointlift.bench.sparse import _step, default_data_root, load_frame_voxels
from pointlift.commands.bench import cpu_description
from pointlift.models.sparse_unet import sparse_unet
from pointlift.sparse.backend import spconv_available, use_backend


def blas_rate(rows: int, channels: int, repeats: int = 20) -> float:
    """GFLOP/s of (rows x channels) @ (channels x channels), the shape of one kernel offset's product."""
    a, w = torch.randn(rows, channels), torch.randn(channels, channels)
    out = torch.empty(rows, channels)
    torch.mm(a, w, out=out)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, w, out=out)
    return 2 * rows * channels * channels * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxel", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from torch.profiler import ProfilerActivity, profile

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    coords, features, _, _ = load_frame_voxels(default_data_root(), 1, cpu, args.voxel)
    labels = torch.randint(0, 20, (len(coords),))
    model = sparse_unet("spunet-v1m1", in_channels=3, out_channels=20).train()
    backends = ["pure", "spconv"] if spconv_available() else ["pure"]
    rows = {}
    for backend in backends:
        with use_backend(backend):
            _step(model, coords, features, labels, cpu)  # warm-up: caches, workspaces
            steps = [sum(_step(model, coords, features, labels, cpu)) for _ in range(args.repeats)]
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                _step(model, coords, features, labels, cpu)
        mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key == "aten::mm") / 1e6
        step = min(steps)
        rows[backend] = {"step_s": step, "steps_s": steps, "mm_self_s_profiled": mm, "mm_share": mm / step,
                         "rest_s": step - mm}
        print(f"{backend}: step {step:.2f} s, aten::mm {mm:.2f} s ({100 * mm / step:.0f} %), rest {step - mm:.2f} s",
              flush=True)
    rates = {f"{rows}x{c}@{c}x{c}": blas_rate(rows, c) for rows in (6000,) for c in (32, 64, 128, 256)}
    rates["2048x2048@2048x2048"] = blas_rate(2048, 2048, repeats=3)  # near the core's peak: what its FMA units give
    print("BLAS GFLOP/s:", {k: round(v, 1) for k, v in rates.items()})
    record = {"what": __doc__.split("\n\n")[0], "sites": len(coords), "voxel": args.voxel,
              "torch_threads": torch.get_num_threads(), "cpu": cpu_description(), "torch": torch.__version__,
              "backends": rows, "blas_gflops": rates}
    if "spconv" in rows:
        spconv_step = rows["spconv"]["step_s"]
        record["ratio"] = rows["pure"]["step_s"] / spconv_step
        record["ratio_floor_products_only"] = rows["pure"]["mm_self_s_profiled"] / spconv_step
        record["pure_rest_s_needed_for_0.85"] = 0.85 * spconv_step - rows["pure"]["mm_self_s_profiled"]
        print(f"ratio {record['ratio']:.2f}; with nothing but its products pure would be "
              f"{record['ratio_floor_products_only']:.2f}; 0.85 needs the rest at "
              f"{record['pure_rest_s_needed_for_0.85']:.2f} s (now {rows['pure']['rest_s']:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
