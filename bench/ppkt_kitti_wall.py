"""Wall time of bench segmentation's PPKT SemanticKITTI pretraining, whole (teacher cache, training, held-out
retrieval), from the calling tree: the figure issue 27 quoted ("801 s for 60 steps") re-measured.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/ppkt_kitti_wall.py --preset cpu --work /tmp/pk --out pk.json

Run it from each tree (its own `scripts/with-env.sh`), alternating, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from pointlift.bench.segmentation import PRESETS, pretrain_ppkt_kitti


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--work", type=Path, required=True, help="an empty folder for the run and its teacher cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = PRESETS[args.preset]
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _, results = pretrain_ppkt_kitti(spec, spec.kitti["unet"], spec.kitti["voxel_size"], args.work)
    wall = time.perf_counter() - start
    record = {"preset": args.preset, "wall_s": wall, "train_s": results.get("train_seconds"),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "retrieval_pretrained": results.get("retrieval_pretrained"),
              "retrieval_untrained": results.get("retrieval_untrained"),
              "source": str(Path(__import__("pointlift").__file__).parent)}
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wall {wall:.1f} s, training {record['train_s']:.1f} s")


if __name__ == "__main__":
    main()
