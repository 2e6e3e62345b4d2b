"""Tiny CLI configs of the three training commands, shared by tests/test_runs.py and tests/test_ddp.py.

Each builder returns a plain dict (written as YAML by the tests) small enough that a run takes a few
seconds on one CPU core.
"""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_M2AE = {"num_points": 128, "num_centers": [32, 16, 8], "group_sizes": [8, 4, 4],
             "encoder_dims": [32, 64, 96], "encoder_depths": [1, 1, 1], "num_heads": 4, "embed_hidden": 8,
             "decoder_dims": [96, 64], "decoder_depths": [1, 1], "drop_path": 0.0}


def ppkt_config(root: Path, **train) -> dict:
    return {
        "data": {"kind": "synthetic", "synthetic_frames": 5, "synthetic_hw": [36, 48], "pixel_stride": 3,
                 "image_size": [36, 48], "holdout_fraction": 0.2},
        "model": {"student": "spunet-tiny", "voxel_size": 0.15, "teacher_stage": 3, "teacher_weights": "random"},
        "loss": {"num_pairs": 128},
        "eval_untrained": False,
        "eval_points_per_frame": 32,
        "train": {"max_steps": 4, "batch_size": 2, "log_every": 2, "checkpoint_every": 2,
                  "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}, **train},
        "cache_dir": str(root / "ppkt_cache"),
        "run_root": str(root / "runs"),
    }


def i2p_mae_config(root: Path, **train) -> dict:
    return {
        "method": {"model": TINY_M2AE, "image_size": 64, "mask_ratio": 0.75},
        "teacher": {"stage": -2},
        "data": {"format": "synthetic", "num_points": 128, "max_shapes": 8, "cache_dir": str(root / "i2p_cache")},
        "train": {"max_steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 2,
                  "optim": {"lr": 0.003, "warmup_steps": 1}, **train},
        "device": "cpu",
        "run_root": str(root / "runs"),
    }


def image2point_config(root: Path, modelnet10: Path, **train) -> dict:
    return {
        "inflation": {"teacher": "mobilenetv2_035", "weights": "random"},
        "fip": "all",
        "data": {"path": str(modelnet10), "voxel_size": 0.25, "train_per_class": 1, "test_per_class": 1,
                 "max_points": 256},
        "train": {"epochs": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 2,
                  "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}, **train},
        "eval_every_epoch": True,
        "eval_batch_size": 10,
        "device": "cpu",
    }


def segmentation_config(root: Path, scannet: Path, **train) -> dict:
    """The tiny ScanNet fine-tune of tests/test_segmentation.py: the three scans of room scene0000, one test scan."""
    return {
        "name": "tiny",
        "data": {"layout": "scannet-votenet", "root": str(scannet), "train": ["scene0000"], "test": ["scene0010_00"],
                 "voxel_size": 0.15, "max_points": 10000},
        "model": {"unet": "spunet-tiny"},
        "train": {"max_steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 2,
                  "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0001}, **train},
        "eval_untrained": False,
        "run_root": str(root / "runs"),
    }


def write(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ddp_config(method: str, root: Path, modelnet10: Path) -> tuple[list[str], dict]:
    """(CLI words, config) of the 2-process comparison runs. SGD, not AdamW: AdamW's first steps move every
    weight by about +-lr whatever its gradient's size, so weights whose true gradient is zero (e.g. the key
    bias of attention) would move by +-lr on float noise alone and hide the comparison; and a learning
    rate large enough that a wrong gradient shows. Image2Point uses
    its released default FIP mode `io`: with every BN on batch statistics (`all`, `ioms`) this tiny network
    is so ill-conditioned that even one process's float32 gradient differs from float64 by over 100 %."""
    sgd = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
    if method == "ppkt":
        return ["pretrain", "ppkt"], ppkt_config(root, optim=sgd)
    if method == "i2p-mae-ddp-equivalent":  # method.ddp_equivalent on, with drop-path and the released quirk
        config = i2p_mae_config(root, optim=sgd, grad_clip=1.0, max_steps=2, checkpoint_every=1)
        config["method"].update(ddp_equivalent=True, model={**TINY_M2AE, "drop_path": 0.3})
        return ["pretrain", "i2p-mae"], config
    if method == "i2p-mae":
        # loss ~150: clipped steps. 2 steps, not 4: the Chamfer nearest-neighbour assignments flip on float
        # noise, so the 1-vs-2-process gap grows ~50x a step (1e-7, 8e-6, ..., 1e-4 after 4), while
        # per-process masks (the old behaviour) give 3e-4 after 2 steps
        # released_quirks off: the released "token 0 of the batch's first cloud is always visible" rule
        # depends on how the batch is split over processes (each rank has its own first cloud)
        config = i2p_mae_config(root, optim=sgd, grad_clip=1.0, max_steps=2, checkpoint_every=1)
        config["method"]["released_quirks"] = False
        return ["pretrain", "i2p-mae"], config
    if method == "segmentation":
        # the shared data folder holds ScanNet beside ModelNet10; batch 2 = one scan per process
        return ["finetune", "segmentation"], segmentation_config(root, modelnet10.parent / "scannet-votenet", optim=sgd)
    config = image2point_config(root, modelnet10)
    config["fip"] = "io"
    return ["finetune", "image2point"], config
