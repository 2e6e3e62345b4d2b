"""The validation pilot behind the `cpu-long` segmentation preset's PPKT budget: scratch vs PPKT with N labelled
points per scan, trained on ScanNet rooms scene0000-0006 and scored on room scene0007 - never on the test rooms
(scene0008-0010), which the preset alone scores.

    OMP_NUM_THREADS=1 POINTLIFT_SHARED=../shared bash scripts/with-env.sh \
        python bench/segmentation_validation.py OUT_DIR PPKT_STEPS EPOCHS POINTS_PER_SCENE [--teacher NAME
        --teacher-weights PATH_UNDER_SHARED --teacher-stage S --image-size H W]

Figures: bench/results/segmentation-cpu-long-validation.json (PPKT 150 and 1,000 steps, 20 epochs, 20 points;
the DINOv2 ViT-S/14 teacher beside EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from pointlift.bench import segmentation as bench

VALIDATION_ROOM = "scene0007"


def main(out_dir: Path, ppkt_steps: int, epochs: int, points_per_scene: int, seeds=(0, 1, 2), **teacher) -> None:
    """`teacher`: keys of the preset's ppkt_7scenes to change (teacher, teacher_weights, teacher_stage,
    image_size)."""
    cpu_long = bench.PRESETS["cpu-long"]
    spec = dataclasses.replace(cpu_long, ppkt_7scenes={**cpu_long.ppkt_7scenes, "steps": ppkt_steps, **teacher})
    settings = {**spec.scannet, "epochs": epochs}
    data = {**bench._datasets(spec)["scannet"], "test": [VALIDATION_ROOM],
            "train": [room for room in bench.SCANNET_TRAIN if room != VALIDATION_ROOM]}
    start = time.perf_counter()
    checkpoint, results = bench.pretrain_ppkt_7scenes(spec, settings["unet"], settings["voxel_size"], out_dir)
    print(f"PPKT {ppkt_steps} steps: retrieval top-1 {results['retrieval_pretrained']['top1']:.4f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    for seed in seeds:
        for arm, init in (("scratch", {}), ("ppkt", {"init": "ppkt", "checkpoint": str(checkpoint)})):
            job = {"key": arm, "name": f"val-{arm}-seed{seed}", "dataset": "scannet-validation", "scene_data": data,
                   "data": {**data, "points_per_scene": points_per_scene, "subset_seed": seed},
                   "model": {"unet": settings["unet"], **init},
                   "train": bench._finetune_train(settings, settings["lr"], seed, False), "out_dir": str(out_dir),
                   "threads": 1}
            _, result = bench._finetune(job)
            print(f"{arm} seed {seed}: validation mIoU {result['miou']:.4f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("ppkt_steps", type=int)
    parser.add_argument("epochs", type=int)
    parser.add_argument("points_per_scene", type=int)
    parser.add_argument("--teacher")
    parser.add_argument("--teacher-weights", help="a path under the shared folder")
    parser.add_argument("--teacher-stage", type=int)
    parser.add_argument("--image-size", type=int, nargs=2)
    args = parser.parse_args()
    teacher = {key: value for key, value in (("teacher", args.teacher), ("teacher_weights", args.teacher_weights),
                                             ("teacher_stage", args.teacher_stage), ("image_size", args.image_size))
               if value is not None}
    main(args.out_dir, args.ppkt_steps, args.epochs, args.points_per_scene, **teacher)
