"""Issue 27's step-time targets at a glance: after / before per method, one and two threads, beside its target.

    bash scripts/with-env.sh python bench/plot_step_targets.py --out bench/results/step-targets-cpu.png \
        bench/results/step-times-cpu-session8.json bench/results/step-times-cpu-2threads-session8.json

Reads `bench/step_times.py` results with trees named `before` and `after`. A method measured in several files
takes the last file's figure. `teacher_in_loader` rows compare with `before`'s official I2P-MAE at the same thread count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = {"ppkt-lidar": 4.0, "ppkt-rgbd": 1.3, "i2p-mae-official": 2.0, "i2p-mae-official-teacher-in-loader": 2.0,
           "image2point": 1.3, "segmentation": 1.3}
LABELS = {"ppkt-lidar": "PPKT, LiDAR", "ppkt-rgbd": "PPKT, RGB-D", "i2p-mae-official": "official I2P-MAE",
          "i2p-mae-official-teacher-in-loader": "official I2P-MAE,\nteacher in 1 loader worker",
          "image2point": "Image2Point", "segmentation": "segmentation"}


def ratios(paths: list[Path]) -> dict[str, dict[int, float]]:
    """method -> {threads: after / before}."""
    out: dict[str, dict[int, float]] = {}
    for path in paths:
        record = json.loads(path.read_text())
        threads = {arm["threads"] for arm in record["arms"].values()}
        if len(threads) != 1:
            raise SystemExit(f"{path}: expected one thread count per file, got {sorted(threads)}")
        (count,) = threads
        summary = record["summary"]
        for name, row in summary.items():
            before = row.get("before") or (summary.get("i2p-mae-official", {}).get("before")
                                           if "teacher-in-loader" in name else None)
            if name in TARGETS and row.get("after") and before:
                out.setdefault(name, {})[count] = row["after"] / before
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    found = ratios(args.results)
    names = [name for name in TARGETS if name in found][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.75 * len(names) + 1.2))
    for row, name in enumerate(names):
        for shift, (count, colour) in zip((-0.18, 0.18), ((1, "tab:blue"), (2, "tab:orange"))):
            if count in found[name]:
                value = found[name][count]
                ax.barh(row + shift, value, 0.34, color=colour, label=f"{count} thread{'s' * (count > 1)}")
                ax.text(value + 0.03, row + shift, f"{value:.2f}×", va="center", fontsize=8)
        ax.plot([TARGETS[name]] * 2, [row - 0.42, row + 0.42], color="black", linestyle="--", linewidth=1.2,
                label="target")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.set_yticks(range(len(names)), [LABELS[name] for name in names], fontsize=8)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("training-step samples/s, after / before (issue 27)")
    ax.set_xlim(0, 4.4)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(args.out)


if __name__ == "__main__":
    main()
