"""PPKT's held-out measure: does a point's 3D feature find its own pixel among the frame's pixels?"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pointlift.engine.config import load_config
from pointlift.engine.device import resolve_device
from pointlift.errors import PointliftDataError
from pointlift.methods.ppkt.config import PPKTDataConfig
from pointlift.methods.ppkt.dataset import PPKTDataset, collate_ppkt, rgbd_dataset
from pointlift.methods.ppkt.model import PPKTModel


@torch.no_grad()
def retrieval_accuracy(model: PPKTModel, dataset: PPKTDataset, points_per_frame: int = 256, seed: int = 0,
                       device: str | torch.device = "cpu") -> dict:
    """Held-out pixel <-> point retrieval: each sampled point's 3D feature against the UPL features of the
    frame's sampled pixels; top-1/top-5 accuracy over `candidates` = min(points_per_frame, pairs) pixels
    (distinct pixels; chance = 1 / candidates)."""
    from pointlift.progress import bar

    model.eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    hits1 = hits5 = total = 0
    chance = []
    for index in bar(range(len(dataset)), desc="retrieval", unit="frame", leave=False):
        sample = collate_ppkt([dataset[index]])
        sample = {k: v.to(device) for k, v in sample.items()}
        width = dataset.image_size[1]
        key = sample["pair_view"].cpu() * (width * dataset.image_size[0]) + \
            sample["pair_pixel"][:, 1].cpu() * width + sample["pair_pixel"][:, 0].cpu()
        _, first = np.unique(key.numpy(), return_index=True)  # one pair per distinct pixel
        first = torch.as_tensor(first)
        chosen = first[torch.randperm(len(first), generator=generator)[:points_per_frame]].to(device)
        if chosen.numel() < 2:
            continue
        f3d, f2d = model.pair_features(sample, chosen)
        similarity = f3d @ f2d.T
        target = torch.arange(chosen.numel(), device=similarity.device)
        top = similarity.topk(min(5, chosen.numel()), dim=1).indices
        hits1 += int((top[:, 0] == target).sum())
        hits5 += int((top == target[:, None]).any(1).sum())
        total += chosen.numel()
        chance.append(1.0 / chosen.numel())
    if total == 0:
        raise PointliftDataError(dataset.source, "no held-out frame has pairs to evaluate retrieval on")
    return {"top1": hits1 / total, "top5": hits5 / total, "chance": float(np.mean(chance)),
            "candidates": points_per_frame, "frames": len(chance), "queries": total}


def evaluate_frames(checkpoint: str | Path, frames_dir: str | Path, points_per_frame: int = 256,
                    max_frames: int = 50) -> dict:
    """Retrieval of a PPKT checkpoint on an RGB-D directory (at most `max_frames` frames, evenly spread):
    the record `pointlift eval ppkt` writes."""
    from pointlift.methods.ppkt.embedder import load_pretrained

    device = resolve_device(None)
    model, spec_config = load_pretrained(checkpoint, device)
    from pointlift.methods.ppkt.sources import open_rgbd_source

    data = load_config({**spec_config["data"], "kind": "rgbd", "root": str(frames_dir), "roots": [],
                        "frame_stride": 1, "train_below": None, "frames_per_sample": 1, "cross_view_pairs": False},
                       PPKTDataConfig)
    sequence = open_rgbd_source(data)  # the checkpoint's coordinate frame (camera, or world turned z up)
    frames = list(range(len(sequence)))[:: max(1, math.ceil(len(sequence) / max_frames))]
    dataset = rgbd_dataset(sequence, frames, data, None, model.model_config.up_axis, 1)
    result = retrieval_accuracy(model, dataset, points_per_frame, device=device)
    return {"checkpoint": str(checkpoint), "frames_dir": str(frames_dir), "retrieval": result}
