"""Is each quickstart demo's pretrained network ahead of its untrained twin on every data seed, not one lucky
draw? Runs the four demos of `pointlift quickstart` at data seeds 0, 1, 2 (other generated shapes, rooms and
scenes; seed 0 is the demo itself) and writes per seed the pair the demo reports and their difference.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/quickstart_seeds.py \
        --out bench/results/quickstart-seeds.json

One torch thread, as `pointlift quickstart` runs. Wall time per demo and seed is recorded too (the demo's
budget: the whole quickstart within 5 minutes on 2 cores). The exit code is the check: 0 when every demo is
ahead on every seed, 1 otherwise (about 10 minutes on one core, so the test suite does not run it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# demo -> (module, its pretrained figure, its untrained twin's figure)
DEMOS = {
    "PPKT (retrieval top-1)": ("pointlift.quickstart.ppkt", "retrieval_top1_pretrained", "retrieval_top1_untrained"),
    "Image2Point (test accuracy, inflated vs random)": ("pointlift.quickstart.image2point", "acc_inflated_ioms",
                                                        "acc_random_ioms"),
    "I2P-MAE (linear SVM accuracy)": ("pointlift.quickstart.i2p_mae", "svm_acc_i2p_mae", "svm_acc_untrained"),
    "Scene segmentation (test mIoU, trained vs untrained)": ("pointlift.quickstart.segmentation",
                                                            "test_miou_finetuned", "test_miou_untrained"),
}


def main(argv: list[str] | None = None) -> int:
    import importlib

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for demo, (module, pretrained, untrained) in DEMOS.items():
            quickstart = importlib.import_module(module).quickstart
            rows = []
            for seed in seeds:
                torch.manual_seed(0)  # as `pointlift quickstart` starts
                start = time.perf_counter()
                figures = quickstart(Path(tmp) / f"{module.rsplit('.', 1)[1]}-{seed}" / "run", progress=False,
                                     data_seed=seed)["figures"]
                row = {"seed": seed, "pretrained": figures[pretrained], "untrained": figures[untrained],
                       "seconds": time.perf_counter() - start}
                row["difference"] = row["pretrained"] - row["untrained"]
                rows.append(row)
                print(f"[quickstart_seeds] {demo} seed {seed}: {row['pretrained']:.3f} vs {row['untrained']:.3f}",
                      flush=True)
            results[demo] = {"figures": [pretrained, untrained], "per_seed": rows,
                             "ahead_on_every_seed": all(row["difference"] > 0 for row in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"demos": results, "seeds": seeds, "threads": 1}, indent=1))
    for demo, record in results.items():
        diffs = ", ".join(f"{row['difference']:+.3f}" for row in record["per_seed"])
        print(f"{demo}: {diffs} -> ahead on every seed: {record['ahead_on_every_seed']}")
    return 0 if all(record["ahead_on_every_seed"] for record in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
