"""`pointlift bench segmentation --preset {smoke,cpu,gpu}`: scene segmentation, the downstream task PPKT
and Image2Point are judged by, on the real scans of ../shared/data.

- ScanNet (VoteNet export, ScanNet-20), split by room: rooms scene0000-0007 train (17 scans), rooms
  scene0008-0010 test (6 scans); no room on both sides. PPKT (pretrained on 7-Scenes redkitchen RGB-D,
  RGB input) vs the same sparse U-Net from scratch, fine-tuned on 20 % and 100 % of the training scans.
- SemanticKITTI (19 classes), split by sequence: 00-07 train (16 scans), 09 and 10 test (4 scans).
  PPKT from LiDAR + camera (image_2, P2 @ Tr; pretrained on the training scans, labels unused, constant
  input) vs scratch; and the Image2Point inflated-encoder U-Net (ImageNet EfficientNet-Lite0, `copy`
  inflation along z) vs the same architecture from scratch.
Each fine-tune: 3 seeds (smoke: 1); figures are the mean and std over seeds of the last step's test
mIoU on every point of the test scans (no validation-based selection, no early stopping). Each PPKT
network is pretrained once (seed 0) and shared by the seeds. The seed-0 network's mIoU before training
(`*_untrained`) is measured too. Fractions of scans are drawn per seed (`subset_seed` = seed).

Limited annotations (`points_per_scene`, `kitti_points_per_scene`: the ScanNet data-efficient protocol):
every training scan, N labelled points each, drawn once per seed (`subset_seed` = seed) and shared by both
arms of that seed. Every pretrained-vs-scratch comparison is paired by seed (same labels, same data order):
`*_gain` is the mean per-seed mIoU difference with its 95 % paired-t interval (`*_gain_low`/`*_gain_high`,
absent with one seed); the config record's `paired` holds the per-seed differences and per-class IoU
differences, `miou_per_seed` each arm's per-seed figures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pointlift.bench import BenchResult, Preset, shared_path
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


def _finetune(name: str, data: dict, model: dict, train: dict, scenes: dict, out_dir: Path) -> dict:
    from pointlift.tasks.segmentation.config import SegmentationConfig
    from pointlift.tasks.segmentation.finetune import finetune

    config = load_config({"name": name, "data": data, "model": model, "train": train,
                          "write_predictions": train["seed"] == 0, "eval_untrained": train["seed"] == 0,
                          "run_root": str(out_dir)}, SegmentationConfig)
    summary = finetune(config, out_dir / name, progress=False, scenes=scenes)
    return {"miou": summary["test"]["miou"], "overall_acc": summary["test"]["overall_acc"],
            "untrained_miou": summary["untrained"]["miou"] if "untrained" in summary else None, "loss_first": summary["loss_first"],
            "loss_last": summary["loss_last"], "train_seconds": summary["train_seconds"],
            "train_scans": len(summary["train_scans"]), "per_class_iou": summary["test"]["per_class_iou"]}


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


def _scenes_and_ppkt(prefix: str, data: dict, metrics: dict, pretrain) -> tuple[dict, Path]:
    """The dataset's train/test scenes, then its PPKT pretraining (timed, retrieval recorded)."""
    from pointlift.tasks.segmentation.config import SegDataConfig
    from pointlift.tasks.segmentation.data import load_split

    config = load_config(data, SegDataConfig)
    scenes = {"train": load_split(config, data["train"]), "test": load_split(config, data["test"]), "val": []}
    start = time.perf_counter()
    checkpoint, results = pretrain()
    metrics[f"{prefix}_ppkt_pretrain_s"] = time.perf_counter() - start
    metrics[f"{prefix}_ppkt_retrieval_top1"] = results["retrieval_pretrained"]["top1"]
    metrics[f"{prefix}_ppkt_retrieval_chance"] = results["retrieval_chance"]
    return scenes, checkpoint


def run(preset: str, out_dir: Path) -> BenchResult:
    spec = PRESETS[preset]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    runs: dict[str, list[dict]] = {}
    paired: dict[str, dict] = {}
    start = time.perf_counter()

    # ------------------------------------------------------------------------------- ScanNet
    s = spec.scannet
    root = shared_path("data/scannet-votenet")
    sdata = {"layout": "scannet-votenet", "root": str(root), "train": SCANNET_TRAIN, "test": s["test"],
             "features": "rgb", "voxel_size": s["voxel_size"], "max_points": s["max_points"]}
    scenes, ppkt_ckpt = _scenes_and_ppkt(
        "scannet", sdata, metrics, lambda: pretrain_ppkt_7scenes(spec, s["unet"], s["voxel_size"], out_dir))
    for fraction in spec.fractions:
        pct = int(round(100 * fraction))
        for arm, model in (("scratch", {"unet": s["unet"]}),
                           ("ppkt", {"unet": s["unet"], "init": "ppkt", "checkpoint": str(ppkt_ckpt)})):
            key = f"scannet_miou_{arm}_{pct}pct"
            runs[key] = []
            for seed in spec.seeds:
                data = {**sdata, "scene_fraction": fraction, "subset_seed": seed}
                train = _finetune_train(s, s["lr"], seed, preset == "gpu")
                runs[key].append(_finetune(f"scannet-{arm}-{pct}pct-seed{seed}", data, model, train, scenes, out_dir))
            _aggregate(metrics, key, runs[key])
        _compare(metrics, paired, f"scannet_ppkt_{pct}pct", runs[f"scannet_miou_ppkt_{pct}pct"],
                 runs[f"scannet_miou_scratch_{pct}pct"])
    _label_budgets(metrics, runs, paired, "scannet", sdata, spec.points_per_scene, s,
                   {"unet": s["unet"]}, str(ppkt_ckpt), scenes, out_dir, spec, preset == "gpu")

    # ------------------------------------------------------------------------- SemanticKITTI
    k = spec.kitti
    root = shared_path("data/semantickitti-mini")
    kdata = {"layout": "semantickitti", "root": str(root), "train": KITTI_TRAIN, "test": k["test"],
             "features": "constant", "voxel_size": k["voxel_size"], "crop_radius": k["crop_radius"]}
    scenes, kitti_ckpt = _scenes_and_ppkt(
        "kitti", kdata, metrics, lambda: pretrain_ppkt_kitti(spec, k["unet"], k["voxel_size"], out_dir))
    arms = (("scratch", {"unet": k["unet"]}, k["lr"]),
            ("ppkt", {"unet": k["unet"], "init": "ppkt", "checkpoint": str(kitti_ckpt)}, k["lr"]),
            ("inflated_scratch", {"arch": "inflated"}, k["inflated_lr"]),
            ("image2point", {"arch": "inflated", "init": "image2point"}, k["inflated_lr"]))
    for arm, model, lr in arms:
        key = f"kitti_miou_{arm}"
        runs[key] = []
        for seed in spec.seeds:
            train = _finetune_train(k, lr, seed, preset == "gpu")
            runs[key].append(_finetune(f"kitti-{arm}-seed{seed}", kdata, model, train, scenes, out_dir))
        _aggregate(metrics, key, runs[key])
    _compare(metrics, paired, "kitti_ppkt", runs["kitti_miou_ppkt"], runs["kitti_miou_scratch"])
    _compare(metrics, paired, "kitti_image2point", runs["kitti_miou_image2point"], runs["kitti_miou_inflated_scratch"])
    _label_budgets(metrics, runs, paired, "kitti", kdata, spec.kitti_points_per_scene, k,
                   {"unet": k["unet"]}, str(kitti_ckpt), scenes, out_dir, spec, preset == "gpu")

    metrics["seconds"] = time.perf_counter() - start
    write_json(out_dir / "runs.json", runs, indent=1)
    _plot(metrics, spec, out_dir)
    return BenchResult(metrics, {"preset": preset, **asdict(spec), "paired": paired,
                                 "miou_per_seed": {key: [r["miou"] for r in values] for key, values in runs.items()},
                                 "scannet_split": {"train": SCANNET_TRAIN, "test": spec.scannet["test"]},
                                 "kitti_split": {"train": KITTI_TRAIN, "test": spec.kitti["test"]}})


def _label_budgets(metrics: dict, runs: dict, paired: dict, prefix: str, data: dict, budgets, settings: dict,
                   scratch: dict, checkpoint: str, scenes: dict, out_dir: Path, spec: SegmentationPreset,
                   gpu: bool) -> None:
    """Limited annotations: every training scan with N labelled points (drawn per seed, the same for both
    arms), scratch vs PPKT for each N of `budgets`, paired by seed."""
    for budget in budgets:
        for arm, model in (("scratch", scratch), ("ppkt", {**scratch, "init": "ppkt", "checkpoint": checkpoint})):
            key = f"{prefix}_miou_{arm}_{budget}pts"
            runs[key] = []
            for seed in spec.seeds:
                train = _finetune_train(settings, settings["lr"], seed, gpu)
                runs[key].append(_finetune(f"{prefix}-{arm}-{budget}pts-seed{seed}",
                                           {**data, "points_per_scene": budget, "subset_seed": seed}, model, train,
                                           scenes, out_dir))
            _aggregate(metrics, key, runs[key])
        _compare(metrics, paired, f"{prefix}_ppkt_{budget}pts", runs[f"{prefix}_miou_ppkt_{budget}pts"],
                 runs[f"{prefix}_miou_scratch_{budget}pts"])


def _plot(metrics: dict, spec: SegmentationPreset, out_dir: Path) -> None:
    from pointlift.report import plot_bars

    groups = {}
    for fraction in spec.fractions:
        pct = int(round(100 * fraction))
        groups[f"ScanNet {pct}%"] = {arm: metrics[f"scannet_miou_{arm}_{pct}pct"] for arm in ("scratch", "ppkt")}
    for budget in spec.points_per_scene:
        groups[f"ScanNet {budget} pts"] = {arm: metrics[f"scannet_miou_{arm}_{budget}pts"] for arm in ("scratch", "ppkt")}
    groups["SemanticKITTI"] = {arm: metrics[f"kitti_miou_{arm}"]
                               for arm in ("scratch", "ppkt", "inflated_scratch", "image2point")}
    for budget in spec.kitti_points_per_scene:
        groups[f"KITTI {budget} pts"] = {arm: metrics[f"kitti_miou_{arm}_{budget}pts"] for arm in ("scratch", "ppkt")}
    plot_bars(groups, out_dir / "segmentation_miou.png", title="test mIoU (mean over seeds)", ylabel="mIoU")
