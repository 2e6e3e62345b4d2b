"""The folded CPU teacher on one batch of views, in one call or in calls of fewer images: time, page faults.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/teacher_calls.py --out bench/results/teacher-calls-cpu.json

The official I2P-MAE step runs EfficientNet-Lite0 (stage -2) on 3 views of each of 32 shapes, 96 px each. One
call of 96 images makes activations of up to 85 MB (the 96-channel expansion at stride 2), over glibc's 32 MiB
mmap threshold, so every call maps fresh pages and faults them in; calls of 32 images stay under it
(`Teacher.CPU_PIXELS_PER_CALL`). Images per call alternate within every repeat; the process keeps freed memory
as the CLI does (`pointlift.engine.allocator`). Also says whether each split gives the one-call maps bit for bit.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from pointlift.commands.bench import cpu_description
from pointlift.engine.allocator import keep_freed_memory
from pointlift.teachers.teacher import Teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=96)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--per-call", default="96,48,32,16,8")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    kept = keep_freed_memory()
    teacher = Teacher("tf_efficientnet_lite0", stage=-2)
    images = torch.rand(args.views, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    sizes = [int(n) for n in args.per_call.split(",")]

    def run(per_call: int) -> torch.Tensor:
        teacher.CPU_PIXELS_PER_CALL = per_call * args.size * args.size
        return teacher.features(images)

    one_call = run(args.views)
    rows = {n: {"seconds": [], "minor_faults": [], "bit_equal_to_one_call": torch.equal(run(n), one_call)}
            for n in sizes}
    for repeat in range(args.repeats):
        for n in (sizes if repeat % 2 == 0 else sizes[::-1]):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            run(n)
            rows[n]["seconds"].append(time.perf_counter() - start)
            rows[n]["minor_faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    for n, row in rows.items():
        row["median_s"] = sorted(row["seconds"])[len(row["seconds"]) // 2]
        print(f"{n:3d} images per call: median {row['median_s']:.3f} s, faults {row['minor_faults'][-1]}, "
              f"bit-equal to one call: {row['bit_equal_to_one_call']}")
    record = {"what": __doc__.split("\n\n")[0], "views": args.views, "size": args.size, "keep_freed_memory": kept,
              "torch_threads": torch.get_num_threads(), "cpu": cpu_description(), "torch": torch.__version__,
              "per_call": {str(n): row for n, row in rows.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
