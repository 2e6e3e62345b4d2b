"""`pointlift bench segmentation --preset {smoke,cpu,cpu-long,gpu}`: scene segmentation, the downstream task
PPKT and Image2Point are judged by, on the real scans of ../shared/data.

- ScanNet (VoteNet export, ScanNet-20), split by room: rooms scene0000-0007 train (17 scans), rooms
  scene0008-0010 test (6 scans); no room on both sides. PPKT (RGB input; pretrained on 7-Scenes redkitchen
  in the camera frame, or with `ppkt_7scenes.root: data` and `frame: world` on every RGB-D sequence in the
  gravity-aligned frame) vs the same sparse U-Net from scratch, fine-tuned on fractions of the training scans
  (`fractions`) and with N labelled points per scan (`points_per_scene`).
- SemanticKITTI (19 classes), split by sequence: 00-07 train (16 scans), 09 and 10 test (4 scans).
  PPKT from LiDAR + camera (image_2, P2 @ Tr; pretrained on the training scans, labels unused, constant
  input) vs scratch, with all labels (`kitti_full_labels`, where the Image2Point inflated-encoder U-Net -
  ImageNet EfficientNet-Lite0, `copy` inflation along z - is compared with the same architecture from
  scratch too) and with N labelled points per scan (`kitti_points_per_scene`).
Figures are the last step's test mIoU on every point of the test scans (no validation-based selection, no
early stopping), mean and std over the preset's seeds. Each PPKT network is pretrained once (seed 0) and
shared by the seeds. The seed-0 network's mIoU before training (`*_untrained`) is measured too.

Label-scarce protocols (ScanNet data-efficient benchmark): limited scenes draw a fraction of the training
scans per seed; limited annotations keep N labelled points in every training scan, drawn once per seed.
Both use `subset_seed` = seed, so both arms of a seed see the same labels in the same order. `*_gain` is the
mean per-seed PPKT-minus-scratch mIoU difference with its 95 % paired-t interval (`*_gain_low`/`*_gain_high`,
absent with one seed); the config record's `paired` holds the per-seed and per-class IoU differences,
`miou_per_seed` each arm's per-seed figures. Budgets are epochs over the labelled scans where the preset
says `epochs` (cpu-long), fixed steps otherwise. With `workers` > 1 the runs go to that many processes of
one torch thread each; a dataset's fine-tunes start as soon as its own pretraining ends.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pointlift.bench import BenchResult, Preset, shared_path, worker_pool
from pointlift.bench.stats import paired_difference, per_class_differences
from pointlift.engine.config import load_config
from pointlift.engine.rundir import write_json

SCANNET_TRAIN = ["scene0000", "scene0001", "scene0002", "scene0003", "scene0004", "scene0005", "scene0006",
                 "scene0007"]
SCANNET_TEST = ["scene0008", "scene0009", "scene0010"]
KITTI_TRAIN = ["00", "01", "02", "03", "04", "05", "06", "07"]
KITTI_TEST = ["09", "10"]


@dataclass(frozen=True)
class SegmentationPreset(Preset):
    seeds: list  # fine-tuning seeds (each PPKT network is pretrained once, seed 0)
    fractions: list  # fractions of the ScanNet training scans
    scannet: dict  # ScanNet fine-tune: unet, voxel_size, max_points, test scans, steps (or epochs), batch_size, lr
    kitti: dict  # SemanticKITTI fine-tune: unet, voxel_size, crop_radius, test, steps (or epochs), batch_size, lr,
    # inflated_lr
    ppkt_7scenes: dict  # PPKT pretraining on 7-Scenes for the ScanNet arm
    ppkt_kitti: dict  # PPKT pretraining on the SemanticKITTI training scans
    points_per_scene: tuple = ()  # ScanNet limited annotations: labelled points per training scan (every scan)
    kitti_points_per_scene: tuple = ()  # SemanticKITTI: labelled points per training scan
    kitti_full_labels: bool = True  # the SemanticKITTI full-label arms (scratch, PPKT, inflated, Image2Point)
    workers: int = 1  # fine-tunes (and the two pretrainings) in this many processes of one torch thread each


PRESETS = SegmentationPreset.table({
    "smoke": {
        "seeds": [0], "fractions": [0.2, 1.0],
        "scannet": {"unet": "spunet-tiny", "voxel_size": 0.15, "max_points": 8000, "test": ["scene0010_00"],
                    "steps": 3, "batch_size": 2, "lr": 0.01},
        "kitti": {"unet": "spunet-tiny", "voxel_size": 0.4, "crop_radius": 15.0, "test": ["10"],
                  "steps": 2, "batch_size": 2, "lr": 0.01, "inflated_lr": 0.005},
        "ppkt_7scenes": {"frame_stride": 25, "pixel_stride": 16, "image_size": [60, 80], "steps": 3,
                         "teacher_stage": 3, "num_pairs": 256},
        "ppkt_kitti": {"image_size": [47, 155], "steps": 2, "teacher_stage": 3, "num_pairs": 256},
        "points_per_scene": (20,), "kitti_points_per_scene": (20,),
    },
    "cpu": {
        "seeds": [0, 1, 2], "fractions": [0.2, 1.0],
        "scannet": {"unet": "spunet-tiny", "voxel_size": 0.1, "max_points": 20000, "test": SCANNET_TEST,
                    "steps": 40, "batch_size": 2, "lr": 0.01},
        "kitti": {"unet": "spunet-tiny", "voxel_size": 0.3, "crop_radius": 20.0, "test": KITTI_TEST,
                  "steps": 40, "batch_size": 2, "lr": 0.01, "inflated_lr": 0.005},
        "ppkt_7scenes": {"frame_stride": 2, "pixel_stride": 8, "image_size": [120, 160], "steps": 100,
                         "teacher_stage": 3, "num_pairs": 2048},
        "ppkt_kitti": {"image_size": [94, 310], "steps": 60, "teacher_stage": 3, "num_pairs": 2048},
    },
    # The label-scarce protocols on 2 CPU cores (<= 2 h, two worker processes of one torch thread): ScanNet
    # with 20 / 50 / 200 labelled points per training scan and 10 % of the scans, SemanticKITTI with 20
    # labelled points per scan; 8 seeds, budgets in epochs over the labelled scans. PPKT pretrains on every
    # RGB-D sequence of ../shared/data in the gravity-aligned world frame (z up, as ScanNet scans), 2,000
    # steps, with the DINOv2 ViT-S/14 teacher at 126 x 168 (a multiple of its 14-pixel patch). Both choices
    # were made on a validation room (scene0007, fine-tuned on rooms 0000-0006 with 20 points per scan, 3
    # seeds; the test rooms never scored while choosing; bench/results/segmentation-cpu-long-validation.json):
    # EfficientNet-Lite0 stage 3 at 150 / 1,000 steps gave PPKT - scratch +2.6 / +6.7 mIoU points; DINOv2 at
    # 1,000 steps +9.7. With EfficientNet-Lite0 at 2,000 steps this preset measured +2.6 [+1.0, +4.1] on the
    # test rooms at 20 points (bench/results/segmentation-cpu-long-efficientnet.json).
    "cpu-long": {
        "seeds": [0, 1, 2, 3, 4, 5, 6, 7], "fractions": [0.1],
        "scannet": {"unet": "spunet-tiny", "voxel_size": 0.1, "max_points": 20000, "test": SCANNET_TEST,
                    "epochs": 20, "batch_size": 2, "lr": 0.01},
        "kitti": {"unet": "spunet-tiny", "voxel_size": 0.3, "crop_radius": 20.0, "test": KITTI_TEST,
                  "epochs": 15, "batch_size": 2, "lr": 0.01, "inflated_lr": 0.005},
        "ppkt_7scenes": {"root": "data", "frame": "world", "frame_stride": 2, "pixel_stride": 8,
                         "image_size": [126, 168], "steps": 2000, "teacher": "vit_small_patch14_dinov2",
                         "teacher_weights": "weights/vit_small_patch14_dinov2.imgfocus.fp16.safetensors",
                         "teacher_stage": -1, "num_pairs": 2048},
        "ppkt_kitti": {"image_size": [94, 310], "steps": 60, "teacher_stage": 3, "num_pairs": 2048},
        "points_per_scene": (20, 50, 200), "kitti_points_per_scene": (20,), "kitti_full_labels": False,
        "workers": 2,
    },
    "gpu": {
        "seeds": [0, 1, 2], "fractions": [0.2, 1.0],
        "scannet": {"unet": "spunet-v1m1", "voxel_size": 0.02, "max_points": None, "test": SCANNET_TEST,
                    "steps": 3000, "batch_size": 4, "lr": 0.05},
        "kitti": {"unet": "spunet-v1m1", "voxel_size": 0.05, "crop_radius": None, "test": KITTI_TEST,
                  "steps": 3000, "batch_size": 4, "lr": 0.05, "inflated_lr": 0.02},
        "ppkt_7scenes": {"frame_stride": 1, "pixel_stride": 2, "image_size": [240, 320], "steps": 5000,
                         "teacher_stage": -1, "num_pairs": 4096},
        "ppkt_kitti": {"image_size": [188, 620], "steps": 3000, "teacher_stage": -1, "num_pairs": 4096},
        "points_per_scene": (20, 50, 100, 200), "kitti_points_per_scene": (20, 200),
    },
})


def _train(steps: int, batch_size: int, lr: float, seed: int, sgd: bool) -> dict:
    optim = ({"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 0.0001} if sgd else
             {"name": "adamw", "lr": lr, "weight_decay": 0.0001})
    return {"max_steps": steps, "batch_size": batch_size, "seed": seed, "log_every": max(1, steps // 10),
            "checkpoint_every": 0, "optim": {**optim, "warmup_steps": max(0, steps // 20)}}


def _finetune_train(settings: dict, lr: float, seed: int, sgd: bool) -> dict:
    """A fine-tune's budget: `epochs` over the labelled training scans when the settings name it (so 20 % of
    the scans is a shorter run than 100 %), otherwise a fixed `steps`."""
    train = _train(settings.get("steps", 1), settings["batch_size"], lr, seed, sgd)
    if settings.get("epochs") is None:
        return train
    optim = {key: value for key, value in train["optim"].items() if key != "warmup_steps"}
    return {**{key: value for key, value in train.items() if key != "max_steps"}, "epochs": settings["epochs"],
            "log_every": 1, "optim": {**optim, "warmup_epochs": 0.05 * settings["epochs"]}}


def pretrain_ppkt_7scenes(spec: SegmentationPreset, unet: str, voxel_size: float, out_dir: Path):
    """PPKT on 7-Scenes redkitchen (frames below 560): RGB input, the fine-tune's U-Net and voxel size.

    Optional keys of the preset's `ppkt_7scenes`: `root` (under ../shared, e.g. "data" = every RGB-D
    sequence there; the last quarter of each held out), `frame` ("world": gravity-aligned z-up clouds, as
    ScanNet scans), `teacher` and `teacher_weights` (under ../shared, e.g. the DINOv2 ViT-S/14 file)."""
    from pointlift.methods.ppkt.config import PPKTConfig
    from pointlift.methods.ppkt.pretrain import pretrain

    p = spec.ppkt_7scenes
    root = p.get("root", "data/7scenes-redkitchen")
    model = {"student": unet, "voxel_size": voxel_size, "teacher_stage": p["teacher_stage"], "in_features": "rgb"}
    if p.get("frame", "camera") == "world":
        model["up_axis"] = "z"
    if p.get("teacher"):
        model["teacher"] = p["teacher"]
    if p.get("teacher_weights"):
        model["teacher_weights"] = str(shared_path(p["teacher_weights"]))
    config = load_config({
        "data": {"kind": "rgbd", "root": str(shared_path(root)),
                 "train_below": 560 if root == "data/7scenes-redkitchen" else None,
                 "frame": p.get("frame", "camera"), "frame_stride": p["frame_stride"],
                 "pixel_stride": p["pixel_stride"], "image_size": p["image_size"], "max_eval_frames": 6},
        "model": model,
        "loss": {"num_pairs": p["num_pairs"]},
        "train": {**_train(p["steps"], 2, 0.003, 0, False)},
        "eval_points_per_frame": 128, "run_root": str(out_dir), "cache_dir": str(out_dir / "teacher_cache_7scenes"),
    }, PPKTConfig)
    results = pretrain(config, out_dir / "ppkt_7scenes", progress=False)
    return Path(results["checkpoint"]), results


def pretrain_ppkt_kitti(spec: SegmentationPreset, unet: str, voxel_size: float, out_dir: Path):
    """PPKT from LiDAR + camera on the SemanticKITTI training sequences (labels unused), constant input."""
    from pointlift.methods.ppkt.config import PPKTConfig
    from pointlift.methods.ppkt.pretrain import pretrain

    p = spec.ppkt_kitti
    config = load_config({
        "data": {"kind": "semantickitti", "root": str(shared_path("data/semantickitti-mini")),
                 "sequences": KITTI_TRAIN, "image_size": p["image_size"], "holdout_fraction": 0.2},
        "model": {"student": unet, "voxel_size": voxel_size, "teacher_stage": p["teacher_stage"],
                  "in_features": "constant", "up_axis": "z"},
        "loss": {"num_pairs": p["num_pairs"]},
        "train": {**_train(p["steps"], 2, 0.003, 0, False)},
        "eval_points_per_frame": 128, "run_root": str(out_dir), "cache_dir": str(out_dir / "teacher_cache_kitti"),
    }, PPKTConfig)
    results = pretrain(config, out_dir / "ppkt_kitti", progress=False)
    return Path(results["checkpoint"]), results


_SCENES: dict = {}  # per process: the loaded train/test scans of each dataset


def _scenes(dataset: str, data: dict) -> dict:
    """The dataset's train and test scans, loaded once per process."""
    from pointlift.tasks.segmentation.config import SegDataConfig
    from pointlift.tasks.segmentation.data import load_split

    if dataset not in _SCENES:
        config = load_config(data, SegDataConfig)
        _SCENES[dataset] = {"train": load_split(config, data["train"]), "test": load_split(config, data["test"]),
                            "val": []}
    return _SCENES[dataset]


def _finetune(job: dict) -> tuple[str, dict]:
    """One fine-tune of the plan (in this process or a worker process of one torch thread)."""
    import torch

    from pointlift.tasks.segmentation.config import SegmentationConfig
    from pointlift.tasks.segmentation.finetune import finetune

    torch.set_num_threads(job["threads"])  # a worker runs as its parent would: same results
    name, train, out_dir = job["name"], job["train"], Path(job["out_dir"])
    config = load_config({"name": name, "data": job["data"], "model": job["model"], "train": train,
                          "write_predictions": train["seed"] == 0, "eval_untrained": train["seed"] == 0,
                          "run_root": str(out_dir)}, SegmentationConfig)
    summary = finetune(config, out_dir / name, progress=False, scenes=_scenes(job["dataset"], job["scene_data"]))
    return job["key"], {
        "name": name, "seed": train["seed"], "miou": summary["test"]["miou"],
        "overall_acc": summary["test"]["overall_acc"],
        "untrained_miou": summary["untrained"]["miou"] if "untrained" in summary else None,
        "loss_first": summary["loss_first"], "loss_last": summary["loss_last"],
        "train_seconds": summary["train_seconds"], "train_scans": len(summary["train_scans"]),
        "per_class_iou": summary["test"]["per_class_iou"]}


def _pretrain(job: tuple) -> tuple[str, str, dict, float]:
    """One PPKT pretraining (in this process or a worker process): (dataset, checkpoint, results, seconds)."""
    import torch

    dataset, spec, out_dir, threads = job
    torch.set_num_threads(threads)
    pretrain = pretrain_ppkt_7scenes if dataset == "scannet" else pretrain_ppkt_kitti
    settings = spec.scannet if dataset == "scannet" else spec.kitti
    start = time.perf_counter()
    checkpoint, results = pretrain(spec, settings["unet"], settings["voxel_size"], Path(out_dir))
    return dataset, str(checkpoint), results, time.perf_counter() - start


def _aggregate(metrics: dict, key: str, runs: list[dict]) -> None:
    values = np.array([r["miou"] for r in runs], dtype=float)
    metrics[f"{key}"] = float(values.mean())
    metrics[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    metrics[f"{key}_untrained"] = runs[0]["untrained_miou"]  # the seed-0 network before training
    metrics[f"{key}_loss_first"] = float(np.mean([r["loss_first"] for r in runs]))
    metrics[f"{key}_loss_last"] = float(np.mean([r["loss_last"] for r in runs]))


def _compare(metrics: dict, paired: dict, key: str, treated: list[dict], baseline: list[dict]) -> None:
    """`key`_gain (+ _low/_high with several seeds): treated minus baseline mIoU paired by seed, and the
    per-seed and per-class differences into `paired[key]`."""
    difference = paired_difference([r["miou"] for r in treated], [r["miou"] for r in baseline])
    metrics[f"{key}_gain"] = difference["mean"]
    if difference["low"] is not None:
        metrics[f"{key}_gain_low"], metrics[f"{key}_gain_high"] = difference["low"], difference["high"]
    paired[key] = {"miou": difference, "per_class_iou": per_class_differences(
        [r["per_class_iou"] for r in treated], [r["per_class_iou"] for r in baseline])}


def _datasets(spec: SegmentationPreset) -> dict[str, dict]:
    """The two datasets' segmentation data settings (before any label budget)."""
    s, k = spec.scannet, spec.kitti
    return {
        "scannet": {"layout": "scannet-votenet", "root": str(shared_path("data/scannet-votenet")),
                    "train": SCANNET_TRAIN, "test": s["test"], "features": "rgb", "voxel_size": s["voxel_size"],
                    "max_points": s["max_points"]},
        "kitti": {"layout": "semantickitti", "root": str(shared_path("data/semantickitti-mini")),
                  "train": KITTI_TRAIN, "test": k["test"], "features": "constant", "voxel_size": k["voxel_size"],
                  "crop_radius": k["crop_radius"]}}


def _plan(spec: SegmentationPreset, dataset: str, checkpoint: str) -> list[tuple]:
    """The dataset's comparisons as (dataset, budget, arm, data, model, settings) before seeds - ScanNet:
    fractions of scans and labelled points per scan; SemanticKITTI: full labels (four arms) and labelled points
    per scan. The pretrained arm starts from the dataset's PPKT network (`checkpoint`)."""
    ppkt = {"init": "ppkt", "checkpoint": checkpoint}
    data = _datasets(spec)[dataset]
    plan = []
    if dataset == "scannet":
        s = spec.scannet
        for fraction in spec.fractions:
            for arm, init in (("scratch", {}), ("ppkt", ppkt)):
                plan.append(("scannet", f"{int(round(100 * fraction))}pct", arm, {**data, "scene_fraction": fraction},
                             {"unet": s["unet"], **init}, {**s}))
        budgets = spec.points_per_scene
    else:
        k = spec.kitti
        if spec.kitti_full_labels:
            for arm, model, lr in (("scratch", {"unet": k["unet"]}, k["lr"]),
                                   ("ppkt", {"unet": k["unet"], **ppkt}, k["lr"]),
                                   ("inflated_scratch", {"arch": "inflated"}, k["inflated_lr"]),
                                   ("image2point", {"arch": "inflated", "init": "image2point"}, k["inflated_lr"])):
                plan.append(("kitti", "", arm, dict(data), model, {**k, "lr": lr}))
        budgets = spec.kitti_points_per_scene
    settings = spec.scannet if dataset == "scannet" else spec.kitti
    for budget in budgets:
        for arm, init in (("scratch", {}), ("ppkt", ppkt)):
            plan.append((dataset, f"{budget}pts", arm, {**data, "points_per_scene": budget},
                         {"unet": settings["unet"], **init}, {**settings}))
    return plan


def _run_key(dataset: str, budget: str, arm: str) -> str:
    return f"{dataset}_miou_{arm}" + (f"_{budget}" if budget else "")


def _jobs(spec: SegmentationPreset, plan: list, out_dir: Path, gpu: bool) -> list[dict]:
    """One fine-tune per (comparison, arm, seed); labelled subsets drawn with `subset_seed` = seed, so both
    arms of a seed see the same labels in the same order."""
    datasets = _datasets(spec)
    jobs = []
    for seed in spec.seeds:
        for dataset, budget, arm, data, model, settings in plan:
            name = f"{dataset}-{arm}" + (f"-{budget}" if budget else "") + f"-seed{seed}"
            jobs.append({"key": _run_key(dataset, budget, arm), "name": name, "dataset": dataset,
                         "scene_data": datasets[dataset], "data": {**data, "subset_seed": seed}, "model": model,
                         "train": _finetune_train(settings, settings["lr"], seed, gpu), "out_dir": str(out_dir),
                         "threads": _threads()})
    return jobs


def run(preset: str | SegmentationPreset, out_dir: Path) -> BenchResult:
    """PPKT pretraining on each dataset, then every fine-tune of the plan (in `workers` processes of one torch
    thread each where the preset says so; finished runs listed in `<out>/progress.json`), then the paired
    comparisons and the plots."""
    from concurrent.futures import FIRST_COMPLETED, wait

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    preset = preset if isinstance(preset, str) else "custom"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    compared = {"scannet": bool(spec.fractions or spec.points_per_scene),
                "kitti": spec.kitti_full_labels or bool(spec.kitti_points_per_scene)}
    plan, runs = [], {}
    with worker_pool(spec.workers) as executor:
        # a dataset's fine-tunes are queued as soon as its own pretraining ends, so no worker waits for the other
        pending = {executor.submit(_pretrain, (dataset, spec, str(out_dir), _threads())): "pretrain"
                   for dataset in compared if compared[dataset]}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if pending.pop(future) == "pretrain":
                    dataset, checkpoint, results, seconds = future.result()
                    metrics[f"{dataset}_ppkt_pretrain_s"] = seconds
                    metrics[f"{dataset}_ppkt_retrieval_top1"] = results["retrieval_pretrained"]["top1"]
                    metrics[f"{dataset}_ppkt_retrieval_chance"] = results["retrieval_chance"]
                    print(f"[bench segmentation] PPKT {dataset}: retrieval top-1 "
                          f"{metrics[f'{dataset}_ppkt_retrieval_top1']:.4f} ({seconds:.0f} s)", flush=True)
                    dataset_plan = _plan(spec, dataset, checkpoint)
                    plan += dataset_plan
                    for job in _jobs(spec, dataset_plan, out_dir, preset == "gpu"):
                        pending[executor.submit(_finetune, job)] = "finetune"
                else:
                    key, result = future.result()
                    runs.setdefault(key, []).append(result)
                    write_json(out_dir / "progress.json", runs, indent=1)
                    print(f"[bench segmentation] {result['name']}: test mIoU {result['miou']:.4f} "
                          f"({result['train_seconds']:.0f} s)", flush=True)

    paired: dict[str, dict] = {}
    for key in runs:
        runs[key].sort(key=lambda r: r["seed"])  # workers finish in any order; pairs are by seed
        _aggregate(metrics, key, runs[key])
    for dataset, budget, arm, *_ in plan:
        if arm == "scratch":
            _compare(metrics, paired, f"{dataset}_ppkt" + (f"_{budget}" if budget else ""),
                     runs[_run_key(dataset, budget, "ppkt")], runs[_run_key(dataset, budget, "scratch")])
    if spec.kitti_full_labels:
        _compare(metrics, paired, "kitti_image2point", runs["kitti_miou_image2point"],
                 runs["kitti_miou_inflated_scratch"])

    metrics["seconds"] = time.perf_counter() - start
    write_json(out_dir / "runs.json", runs, indent=1)
    _plot(metrics, spec, out_dir)
    if len(spec.seeds) > 1 and spec.points_per_scene:
        _plot_label_curve(runs, spec, out_dir)
    return BenchResult(metrics, {"preset": preset, **asdict(spec), "paired": paired,
                                 "miou_per_seed": {key: [r["miou"] for r in values] for key, values in runs.items()},
                                 "scannet_split": {"train": SCANNET_TRAIN, "test": spec.scannet["test"]},
                                 "kitti_split": {"train": KITTI_TRAIN, "test": spec.kitti["test"]},
                                 "cpu_threads": _threads()})


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _plot(metrics: dict, spec: SegmentationPreset, out_dir: Path) -> None:
    from pointlift.report import plot_bars

    groups = {}
    for fraction in spec.fractions:
        pct = int(round(100 * fraction))
        groups[f"ScanNet {pct}%"] = {arm: metrics[f"scannet_miou_{arm}_{pct}pct"] for arm in ("scratch", "ppkt")}
    for budget in spec.points_per_scene:
        groups[f"ScanNet {budget} pts"] = {arm: metrics[f"scannet_miou_{arm}_{budget}pts"] for arm in ("scratch", "ppkt")}
    if spec.kitti_full_labels:
        groups["SemanticKITTI"] = {arm: metrics[f"kitti_miou_{arm}"]
                                   for arm in ("scratch", "ppkt", "inflated_scratch", "image2point")}
    for budget in spec.kitti_points_per_scene:
        groups[f"KITTI {budget} pts"] = {arm: metrics[f"kitti_miou_{arm}_{budget}pts"] for arm in ("scratch", "ppkt")}
    plot_bars(groups, out_dir / "segmentation_miou.png", title="test mIoU (mean over seeds)", ylabel="mIoU")


def _plot_label_curve(runs: dict, spec: SegmentationPreset, out_dir: Path) -> Path:
    """ScanNet mIoU vs labelled points per scan: each arm's mean over seeds with its 95 % band, and PPKT minus
    scratch paired by seed with its 95 % interval."""
    from pointlift.report import plot_paired_arms

    budgets = sorted(spec.points_per_scene)
    values = {arm: [[r["miou"] for r in runs[f"scannet_miou_{arm}_{b}pts"]] for b in budgets] for arm in ("scratch", "ppkt")}
    gains = [paired_difference(ppkt, scratch) for ppkt, scratch in zip(values["ppkt"], values["scratch"])]
    return plot_paired_arms(budgets, {"scratch": (values["scratch"], "tab:gray"), "ppkt": (values["ppkt"], "tab:blue")},
                            gains, out_dir / "scannet_miou_vs_labels.png", "labelled points per training scan",
                            "test mIoU", f"ScanNet, mean of {len(spec.seeds)} seeds, 95 % band",
                            "PPKT - scratch, paired by seed, 95 % interval", log_x=True)
