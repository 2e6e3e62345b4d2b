"""Training-step throughput of each method, two source trees side by side (issue 27's before -> after).

    python bench/step_times.py --tree before=/tmp/before --tree after=. --threads 1 \
        --out bench/results/step-times-cpu.json
    python bench/step_times.py --tree main=. --threads 1,2 --processes 1,2 --out bench/results/step-scaling-cpu.json

With several arms it also draws FILE.png (samples/s of each arm relative to the first) and, with two trees,
FILE-paired.png (the paired ratios and their intervals); `--replot` recomputes the summary and redraws the plots
from an existing FILE.json.

Each method runs its real command (`pointlift pretrain ...` / `pointlift finetune ...`) from each tree's own
`scripts/with-env.sh`, on the setting of the benchmark that uses it (the `cpu` / `cpu-long` presets), for a
few steps logged one by one. The figure is the median samples/s of the steps after the first (the trainer's
own `samples_per_s`: wall time between steps, data loading included). Trees alternate within every repeat
(the order reversed every other repeat), so both see the same machine load; ratios are after / before of the
medians over repeats. `paired_*` is the claim to quote: per repeat, the ratio of the two arms' samples over
all timed steps (the runs are deterministic, so both arms see the same batches; where batches differ in size,
as scene crops do, this weighs each step by its time, which the median of per-step rates does not), their
geometric mean and a 95 % paired-t interval over the repeats. A method whose config a tree does not know (an
option added later) is skipped there.
With several thread or process counts (torchrun, gloo; samples/s of the global batch) each combination is an
arm of its own, as long as threads x processes does not exceed the cores: what more cores buy.

Methods (configs below): PPKT from SemanticKITTI LiDAR + camera and from RGB-D frames, official I2P-MAE
(teacher every step; also with `data.teacher_in_loader` and one or two DataLoader workers), Image2Point fine-tuning,
ScanNet segmentation fine-tuning; `*-loader-worker`: the same with data preparation in one DataLoader worker;
`*-kernel-maps-in-loader` (Image2Point, PPKT, segmentation): the worker also builds the kernel maps (`data.kernel_maps_in_loader`);
`ppkt-rgbd-epochs-of-5`: PPKT RGB-D on 10 frames, so that with `--steps 16` most timed steps are past the first epoch;
`*-compiled`: the sparse convolutions on pointlift's compiled CPU kernels (`--sparse-backend compiled`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pointlift.bench.i2p_mae import PRESETS as I2P_PRESETS
from pointlift.bench.segmentation import KITTI_TRAIN

SHARED = Path(os.environ.get("POINTLIFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
I2P_MODEL = json.loads(json.dumps(I2P_PRESETS["cpu"].model))  # bench i2p-mae, preset cpu (YAML-safe lists)


def _train(steps: int, batch: int, lr: float, **extra) -> dict:
    return {"max_steps": steps, "batch_size": batch, "log_every": 1, "checkpoint_every": 0,
            "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.0001}, **extra}


def method_configs(steps: int, cache: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (CLI words, config) of every timed step."""
    i2p = {"method": {"model": I2P_MODEL, "image_size": 96}, "teacher": {"stage": -2},
           "data": {"format": "modelnet10_vox", "path": str(SHARED / "data/modelnet10_vox32.npz"), "num_points": 256,
                    "max_shapes": 320},
           "train": _train(steps, 32, 0.001), "device": "cpu"}
    i2p_loader = json.loads(json.dumps(i2p))
    i2p_loader["data"]["teacher_in_loader"] = True
    i2p_loader["train"]["num_workers"] = 1
    i2p_two_loaders = json.loads(json.dumps(i2p_loader))
    i2p_two_loaders["train"]["num_workers"] = 2
    configs = {
        "ppkt-lidar": (["pretrain", "ppkt"], {  # bench segmentation cpu-long, ppkt_kitti
            "data": {"kind": "semantickitti", "root": str(SHARED / "data/semantickitti-mini"), "sequences": KITTI_TRAIN,
                     "image_size": [94, 310], "holdout_fraction": 0.2},
            "model": {"student": "spunet-tiny", "voxel_size": 0.3, "teacher_stage": 3, "in_features": "constant",
                      "up_axis": "z"},
            "loss": {"num_pairs": 2048}, "eval_untrained": False, "eval_points_per_frame": 8,
            "train": _train(steps, 2, 0.003), "cache_dir": str(cache / "ppkt-lidar")}),
        "ppkt-rgbd": (["pretrain", "ppkt"], {  # bench segmentation cpu-long, ppkt_7scenes (one sequence, EfficientNet)
            "data": {"kind": "rgbd", "root": str(SHARED / "data/7scenes-redkitchen"), "train_below": 560,
                     "frame": "world", "frame_stride": 2, "pixel_stride": 8, "image_size": [120, 160],
                     "max_eval_frames": 2},
            "model": {"student": "spunet-tiny", "voxel_size": 0.1, "teacher_stage": 3, "in_features": "rgb",
                      "up_axis": "z"},
            "loss": {"num_pairs": 2048}, "eval_untrained": False, "eval_points_per_frame": 8,
            "train": _train(steps, 2, 0.003), "cache_dir": str(cache / "ppkt-rgbd")}),
        "i2p-mae-official": (["pretrain", "i2p-mae"], i2p),
        "i2p-mae-official-teacher-in-loader": (["pretrain", "i2p-mae"], i2p_loader),
        "i2p-mae-official-teacher-in-2-loaders": (["pretrain", "i2p-mae"], i2p_two_loaders),
        "image2point": (["finetune", "image2point"], {  # bench image2point, preset cpu (FIP all)
            "inflation": {"teacher": "mobilenetv2_100", "axis": "z-axis",
                          "weights": str(SHARED / "weights/mobilenet_v2.torchvision_in1k.safetensors")},
            "fip": "all",
            "data": {"dataset": "modelnet10", "path": str(SHARED / "data/modelnet10_vox32.npz"), "voxel_size": 0.125,
                     "augment": True, "train_per_class": 20, "test_per_class": 1, "pipeline": "released"},
            "train": {**_train(steps, 25, 0.03), "optim": {"name": "sgd", "lr": 0.03, "momentum": 0.9,
                                                         "weight_decay": 0.0001}},
            "eval_every_epoch": False, "device": "cpu"}),
        "segmentation": (["finetune", "segmentation"], {  # bench segmentation cpu-long, scannet
            "name": "steps",
            "data": {"layout": "scannet-votenet", "root": str(SHARED / "data/scannet-votenet"),
                     "train": ["scene0000", "scene0001", "scene0002", "scene0003"], "test": ["scene0010_00"],
                     "voxel_size": 0.1, "max_points": 20000},
            "model": {"unet": "spunet-tiny"}, "train": _train(steps, 2, 0.01), "eval_untrained": False}),
    }
    # PPKT RGB-D on its first 10 frames: epochs of 5 steps, so that most timed steps read samples seen before
    # (what PPKT's pair cache, data.pair_cache_mb, saves from the second epoch on)
    words, config = configs["ppkt-rgbd"]
    config = json.loads(json.dumps(config))
    config["data"]["train_below"] = 20
    configs["ppkt-rgbd-epochs-of-5"] = (words, config)
    for name in ("ppkt-lidar", "ppkt-rgbd", "ppkt-rgbd-epochs-of-5", "image2point", "segmentation"):  # data in one worker
        words, config = configs[name]
        config = json.loads(json.dumps(config))
        config["train"]["num_workers"] = 1
        configs[f"{name}-loader-worker"] = (words, config)
    for name in ("image2point", "ppkt-lidar", "ppkt-rgbd", "segmentation"):  # and the kernel maps built there too
        words, config = configs[f"{name}-loader-worker"]
        config = json.loads(json.dumps(config))
        config["data"]["kernel_maps_in_loader"] = True
        configs[f"{name}-kernel-maps-in-loader"] = (words, config)
    for name in ("ppkt-lidar", "ppkt-rgbd", "image2point", "segmentation", "ppkt-lidar-loader-worker",
                 "ppkt-lidar-kernel-maps-in-loader", "segmentation-kernel-maps-in-loader"):  # on the compiled kernels
        words, config = configs[name]
        configs[f"{name}-compiled"] = ([*words, "--sparse-backend", "compiled"], config)
    return configs


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def time_one(tree: Path, words: list[str], config: dict, threads: int, work: Path, processes: int = 1) -> dict:
    """One run of `words` from `tree` (under torchrun with `processes` > 1, each with `threads` torch threads):
    per-step samples/s of the whole batch after the first step, or why it did not run."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = work / "run"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "POINTLIFT_SHARED": str(SHARED)}
    launch = ["pointlift"] if processes == 1 else [
        "python", "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "pointlift.cli"]
    start = time.perf_counter()
    done = subprocess.run(["bash", str(tree / "scripts/with-env.sh"), *launch, *words, "--config",
                           str(work / "config.yaml"), "--run-dir", str(run_dir)], env=env, capture_output=True,
                          text=True, cwd=work)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1], "wall_s": wall}
    with open(run_dir / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("samples_per_s")]
    rates = [float(row["samples_per_s"]) for row in rows[1:]]
    return {"samples_per_s": statistics.median(rates), "per_step": rates, "wall_s": wall}


def _overall(run: dict) -> float:
    """Samples/s over all timed steps of a run: every step has the same batch, so steps / sum of 1 / rate."""
    return len(run["per_step"]) / sum(1 / rate for rate in run["per_step"])


def _paired(base_runs: list[dict], runs: list[dict]) -> dict | None:
    """The paired ratio of `runs` to `base_runs` (same repeats, in order) with its 95 % interval (module doc)."""
    from pointlift.bench.stats import paired_difference

    pairs = [(_overall(a), _overall(b)) for a, b in zip(base_runs, runs) if a.get("per_step") and b.get("per_step")]
    if not pairs:
        return None
    logs = paired_difference([math.log(b) for _, b in pairs], [math.log(a) for a, _ in pairs])
    return {"ratio": math.exp(logs["mean"]), "low": math.exp(logs["low"]) if logs["low"] is not None else None,
            "high": math.exp(logs["high"]) if logs["high"] is not None else None,
            "per_repeat": [b / a for a, b in pairs]}


def summarise(results: dict, arms: dict, versus: dict | None = None) -> dict:
    """Per method: each arm's median samples/s over repeats and its ratio to the first arm's; and for each arm
    of another tree, the paired ratio (95 % interval) to the first tree at the same threads and processes
    (see the module docstring). `arms`: name -> (tree, threads, processes), in order. `versus` (method -> base
    method): also each arm of the method against each arm of the first tree on the base method, e.g. a worker
    arm with one thread against the plain method with two (the same cores), as `paired_<arm>_vs_<base>:<arm>`."""
    names = list(arms)
    first, first_tree = names[0], arms[names[0]][0]
    of_first_tree = {arms[arm][1:]: arm for arm in names if arms[arm][0] == first_tree}  # (threads, processes)
    baseline_of = {arm: of_first_tree[arms[arm][1:]] for arm in names
                   if arms[arm][0] != first_tree and arms[arm][1:] in of_first_tree}
    summary = {}
    for name, by_arm in results.items():
        row = {}
        for arm, runs in by_arm.items():
            rates = [run["samples_per_s"] for run in runs if "samples_per_s" in run]
            row[arm] = statistics.median(rates) if rates else None
        for arm in names[1:]:
            if row[first] and row[arm]:
                row[f"ratio_{arm}_vs_{first}"] = row[arm] / row[first]
        for arm, base in baseline_of.items():
            if (paired := _paired(by_arm[base], by_arm[arm])) is not None:
                row[f"paired_{arm}_vs_{base}"] = paired
        base_method = (versus or {}).get(name)
        for arm in names if base_method in results else []:
            for base in of_first_tree.values():
                if (paired := _paired(results[base_method][base], by_arm[arm])) is not None:
                    row[f"paired_{arm}_vs_{base_method}:{base}"] = paired
        summary[name] = row
    return summary


def plot_summary(summary: dict, arms: list[str], path: Path) -> Path:
    """Grouped bars: each method's samples/s relative to the first arm (1.0), one bar per arm."""
    from pointlift.report import plot_bars

    groups = {name: {arm: row[arm] / row[arms[0]] for arm in arms if row.get(arm) and row.get(arms[0])}
              for name, row in summary.items()}
    groups = {name: bars for name, bars in groups.items() if bars}  # methods the first arm could not run
    return plot_bars(groups, path, title=f"training-step samples/s relative to {arms[0]}", ylabel="× " + arms[0])


def plot_paired(summary: dict, path: Path) -> Path | None:
    """Each method's paired ratios (markers) with their 95 % intervals (bars), one colour per compared arm; None
    when the summary has no pairs (one tree)."""
    import matplotlib.pyplot as plt

    from pointlift.report import _save

    pairs = sorted({key for row in summary.values() for key in row if key.startswith("paired_")})
    methods = [name for name, row in summary.items() if any(key in row for key in pairs)]
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 5, 3.8))  # the legend takes ~3 inches at the right
    width = 0.6 / len(pairs)
    for i, key in enumerate(pairs):
        xs, ys, low, high = [], [], [], []
        for m, name in enumerate(methods):
            entry = summary[name].get(key)
            if entry and entry["low"] is not None:
                xs.append(m + (i - (len(pairs) - 1) / 2) * width)
                ys.append(entry["ratio"])
                low.append(entry["ratio"] - entry["low"])
                high.append(entry["high"] - entry["ratio"])
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=4, label=key[len("paired_"):].replace("_vs_", " / "))
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(methods)), methods, rotation=10, ha="right", fontsize=8)
    ax.set_ylabel("samples/s ratio")
    ax.set_title("samples/s ratio paired over repeats (all timed steps), 95 % interval", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree (two or more)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    parser.add_argument("--threads", default="1", help="torch threads per process, comma-separated (e.g. 1,2)")
    parser.add_argument("--processes", default="1", help="DDP processes (torchrun, gloo), comma-separated")
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--versus", action="append", default=[],
                        help="METHOD=BASE: also pair METHOD's arms with BASE's arms of the first tree (e.g. a worker "
                             "arm with one thread against the plain method with two)")
    parser.add_argument("--replot", action="store_true",
                        help="only recompute the summary and redraw the plots of an existing --out file")
    args = parser.parse_args(argv)
    versus = dict(item.split("=", 1) for item in args.versus)
    if args.replot:  # the summary too: files written before the paired ratios get them
        stored = json.loads(args.out.read_text())
        stored["versus"] = versus = versus or stored.get("versus", {})
        stored["summary"] = summarise(stored["runs"], {arm: (spec["tree"], spec["threads"], spec["processes"])
                                                       for arm, spec in stored["arms"].items()}, versus)
        args.out.write_text(json.dumps(stored, indent=1))
        print(json.dumps(stored["summary"], indent=1))
        print(plot_summary(stored["summary"], list(stored["arms"]), args.out.with_suffix(".png")))
        print(plot_paired(stored["summary"], args.out.with_name(args.out.stem + "-paired.png")))
        return 0
    trees = {name: Path(path).resolve() for name, path in (item.split("=", 1) for item in args.tree)}
    # an arm: a tree at a thread count and a process count (no more threads in all than cores)
    arms = {(f"{tree}" + (f"-t{t}" if "," in args.threads else "") + (f"-p{p}" if "," in args.processes else "")):
            (tree, t, p) for tree in trees for p in map(int, args.processes.split(","))
            for t in map(int, args.threads.split(",")) if t * p <= (os.cpu_count() or 1)}
    with tempfile.TemporaryDirectory() as tmp:
        configs = method_configs(args.steps + 1, Path(tmp) / "cache")
        names = args.methods.split(",") if args.methods else list(configs)
        results: dict = {name: {arm: [] for arm in arms} for name in names}
        for repeat in range(args.repeats):
            for name in names:
                order = list(arms) if repeat % 2 == 0 else list(arms)[::-1]
                for arm in order:
                    tree, threads, processes = arms[arm]
                    words, config = configs[name]
                    got = time_one(trees[tree], words, config, threads, Path(tmp) / f"{name}-{arm}-{repeat}", processes)
                    results[name][arm].append(got)
                    print(f"[step_times] {name} {arm} repeat {repeat}: "
                          f"{got.get('samples_per_s', got.get('error'))}", flush=True)
    summary = summarise(results, arms, versus)
    from pointlift.commands.bench import cpu_description  # here: step_profile.py imports this file from older trees

    cpu = cpu_description()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "runs": results, "trees": {k: str(v) for k, v in trees.items()},
                                    "arms": {arm: {"tree": tree, "threads": t, "processes": p}
                                             for arm, (tree, t, p) in arms.items()},
                                    "steps": args.steps, "repeats": args.repeats, "versus": versus,
                                    "env": {"cpu_model": cpu["model_name"] if cpu else platform.processor(), "cpu": cpu,
                                            "python": platform.python_version(),
                                            "cores": os.cpu_count()}}, indent=1))
    print(json.dumps(summary, indent=1))
    if len(arms) > 1:
        print(plot_summary(summary, list(arms), args.out.with_suffix(".png")))
        print(plot_paired(summary, args.out.with_name(args.out.stem + "-paired.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
