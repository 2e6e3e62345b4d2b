"""CLI layer; moves to pointlift/commands in phase 2.

`pointlift pretrain ppkt` and `pointlift eval ppkt`: config loading, the resume check, the run directory,
printing; the work is `pretrain.pretrain`, `embedder.load_pretrained` and `retrieval.retrieval_accuracy`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pointlift.data.rgbd import open_rgbd_sequence
from pointlift.engine.config import load_config
from pointlift.engine.device import resolve_device
from pointlift.engine.distributed import is_main_process
from pointlift.engine.rundir import create_run_dir, write_json
from pointlift.errors import PointliftConfigError
from pointlift.methods.ppkt.config import PPKTConfig, PPKTDataConfig
from pointlift.methods.ppkt.dataset import rgbd_dataset
from pointlift.methods.ppkt.embedder import load_pretrained
from pointlift.methods.ppkt.pretrain import pretrain
from pointlift.methods.ppkt.retrieval import retrieval_accuracy


def pretrain_command(config_path: str | Path, resume: bool = False, run_dir: str | Path | None = None) -> dict:
    """`pointlift pretrain ppkt --config FILE [--resume] [--run-dir DIR]`."""
    config = load_config(config_path, PPKTConfig)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    run_dir = create_run_dir("ppkt", config.run_root, run_dir, config=config)
    results = pretrain(config, run_dir, resume=resume)
    summary = {k: results[k] for k in ("retrieval_pretrained", "retrieval_untrained", "checkpoint") if k in results}
    if is_main_process():
        print(json.dumps({"run_dir": str(run_dir), **summary}, indent=1, default=str))
    return results


def eval_command(checkpoint: str | Path, frames_dir: str | Path, out: str | Path,
                 points_per_frame: int = 256, max_frames: int = 50) -> dict:
    """`pointlift eval ppkt --checkpoint CKPT --frames DIR --out FILE.json`: retrieval on an RGB-D directory
    (at most `max_frames` frames, evenly spread)."""
    device = resolve_device(None)
    model, spec_config = load_pretrained(checkpoint, device)
    data = load_config({**spec_config["data"], "kind": "rgbd", "root": str(frames_dir), "frame_stride": 1,
                        "train_below": None, "frames_per_sample": 1, "cross_view_pairs": False}, PPKTDataConfig)
    sequence = open_rgbd_sequence(frames_dir)
    frames = list(range(len(sequence)))[:: max(1, math.ceil(len(sequence) / max_frames))]
    dataset = rgbd_dataset(sequence, frames, data, None, model.model_config.up_axis, 1)
    result = retrieval_accuracy(model, dataset, points_per_frame, device=device)
    record = {"checkpoint": str(checkpoint), "frames_dir": str(frames_dir), "retrieval": result}
    write_json(out, record, indent=1)
    print(json.dumps(record, indent=1))
    return record
