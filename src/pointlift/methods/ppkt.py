"""PPKT: pixel-to-point knowledge transfer (Liu et al., arXiv 2104.04687), read beside the paper.

1. Pairs (`ppkt_pairs`): every 3D point keeps the pixel it was seen at (RGB-D back-projection, or
   LiDAR projection into calibrated cameras).
2. 2D branch: a frozen timm teacher gives a low-resolution map; the trainable Upsampling Projection
   Layer (UPL) turns it into an L2-normalised D-dim embedding per pixel. The teacher maps can come
   from an on-disk cache (`ppkt_cache`), since they never change.
3. 3D branch: a sparse U-Net on voxelised points (input RGB or a constant 1) with a D-dim head,
   read back per point through the voxel inverse map and L2-normalised.
4. Loss: InfoNCE point -> pixel over N sampled pairs: logits = f3d . f2d^T / tau, target = own pixel.

Entry points: `pretrain(config, run_dir)` / `pretrain_command` (CLI `pointlift pretrain ppkt`),
`eval_command` (CLI `pointlift eval ppkt`), `retrieval_accuracy`, `build_embedder`, `quickstart`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pointlift.engine.config import TrainConfig, config_to_dict, load_config, require
from pointlift.engine.device import resolve_device
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry import average_per_voxel, rotation_about_axis, transform_points, voxelize
from pointlift.methods.ppkt_pairs import (PointPixelPairs, lidar_pairs, rescale_pixels, resize_image,
                                          rgbd_pairs)

# ------------------------------------------------------------------------------------------ config


@dataclass
class PPKTDataConfig:
    """Where pairs come from. kind: an RGB-D directory (7-Scenes/ScanNet layout), a KITTI-style
    directory of `NAME.bin/.png/.txt` triples, a SemanticKITTI root (`sequences/SS/velodyne`, `image_2`,
    `calib.txt`; labels unused), one nuScenes info pickle, or a synthetic scene."""

    kind: Literal["rgbd", "kitti", "semantickitti", "nuscenes", "synthetic"] = "rgbd"
    root: Optional[Path] = None
    sequences: list[str] = field(default_factory=list)  # semantickitti: sequences to use (empty = all)
    info_pkl: Optional[Path] = None  # nuscenes only
    train_below: Optional[int] = None  # rgbd: frame numbers below this train, the rest are held out
    holdout_fraction: float = 0.25  # otherwise: the last fraction of frames is held out
    frame_stride: int = 1  # use every k-th frame
    frames_per_sample: int = 1  # fuse this many consecutive (strided) frames into one sample
    cross_view_pairs: bool = False  # fused frames: also pair points with other frames' pixels (occlusion-tested)
    pixel_stride: int = 4  # back-project every k-th depth row/column
    image_size: tuple[int, int] = (240, 320)  # (H, W) of the teacher's input and of the pixel grid
    max_depth: float = 0.0  # rgbd: drop points farther than this (0 = keep all)
    min_depth: float = 1.0  # lidar: keep camera depth > this
    occlusion: bool = True  # lidar: z-buffer occlusion test
    occlusion_tolerance: float = 0.25  # |depth(u, v) - z| <= tolerance * z
    zbuffer_cell: int = 4  # lidar z-buffer cell size in pixels
    max_eval_frames: int = 0  # 0 = every held-out frame
    synthetic_frames: int = 16
    synthetic_hw: tuple[int, int] = (96, 128)
    synthetic_seed: int = 0

    def __post_init__(self):
        require(self.frame_stride >= 1, "frame_stride", "must be >= 1")
        require(self.frames_per_sample >= 1, "frames_per_sample", "must be >= 1")
        require(self.pixel_stride >= 1, "pixel_stride", "must be >= 1")
        require(min(self.image_size) >= 8, "image_size", f"must be at least 8x8, got {self.image_size}")
        require(0 < self.holdout_fraction < 1, "holdout_fraction", "must be in (0, 1)")
        require(self.occlusion_tolerance >= 0, "occlusion_tolerance", "must be >= 0")
        require(self.zbuffer_cell >= 1, "zbuffer_cell", "must be >= 1")
        require(self.kind == "synthetic" or self.root is not None, "root", f"required for kind '{self.kind}'")
        require(self.kind != "nuscenes" or self.info_pkl is not None, "info_pkl", "required for kind 'nuscenes'")


@dataclass
class PPKTModelConfig:
    teacher: str = "tf_efficientnet_lite0"
    teacher_weights: Optional[str] = None  # None = bundled/hub weights, a path, or "random"
    teacher_stage: int = -1
    embed_dim: int = 64
    upl_mode: Literal["bilinear", "learned"] = "bilinear"
    student: str = "spunet-v1m1"
    in_features: Literal["rgb", "constant"] = "rgb"
    voxel_size: float = 0.05
    up_axis: Literal["x", "y", "z"] = "y"  # camera frames: y (down); LiDAR: z

    def __post_init__(self):
        require(self.embed_dim >= 1, "embed_dim", "must be >= 1")
        require(self.voxel_size > 0, "voxel_size", "must be > 0")


@dataclass
class PPKTLossConfig:
    num_pairs: int = 4096
    temperature: float = 0.07

    def __post_init__(self):
        require(self.num_pairs >= 2, "num_pairs", "must be >= 2")
        require(self.temperature > 0, "temperature", "must be > 0")


@dataclass
class PPKTAugmentConfig:
    """Augmentations the teacher cache is exact under: they move points, not pixels."""

    rotate_up: bool = True  # random rotation about the up axis
    flip: bool = True  # random mirror of a horizontal axis
    scale: tuple[float, float] = (0.9, 1.1)
    image_flip: bool = False  # mirror image (cached map) and pixel u together, p = 0.5


@dataclass
class PPKTConfig:
    data: PPKTDataConfig = field(default_factory=PPKTDataConfig)
    model: PPKTModelConfig = field(default_factory=PPKTModelConfig)
    loss: PPKTLossConfig = field(default_factory=PPKTLossConfig)
    augment: PPKTAugmentConfig = field(default_factory=PPKTAugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: bool = True
    cache_dir: Optional[Path] = None  # default: <run_dir>/teacher_cache
    eval_points_per_frame: int = 256  # retrieval candidates per frame (chance = 1 / this)
    eval_untrained: bool = True  # also measure the untrained network (same seed) for comparison
    device: Optional[str] = None
    run_root: Path = Path("runs")

    def __post_init__(self):
        require(self.eval_points_per_frame >= 2, "eval_points_per_frame", "must be >= 2")


# -------------------------------------------------------------------------------------- data sources


class _SyntheticSequence(list):
    """`make_rgbd_scene` frames with the RGBDSequence bits PPKT uses."""

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(len(self)))

    @property
    def names(self) -> list[str]:
        return [frame.name for frame in self]


def open_rgbd_source(data: PPKTDataConfig):
    """The frame sequence of an rgbd or synthetic data config."""
    if data.kind == "synthetic":
        from pointlift.data.synthetic import make_rgbd_scene

        height, width = data.synthetic_hw
        return _SyntheticSequence(make_rgbd_scene(data.synthetic_frames, height, width, seed=data.synthetic_seed))
    from pointlift.data.rgbd import open_rgbd_sequence

    return open_rgbd_sequence(data.root)


def split_frames(sequence, data: PPKTDataConfig) -> tuple[list[int], list[int]]:
    """(train, held-out) frame indices after the frame stride."""
    indices = list(range(0, len(sequence), data.frame_stride))
    if data.train_below is not None:
        numbers = sequence.frame_numbers
        train = [i for i in indices if numbers[i] < data.train_below]
        held = [i for i in indices if numbers[i] >= data.train_below]
    else:
        cut = max(1, int(round(len(indices) * (1 - data.holdout_fraction))))
        train, held = indices[:cut], indices[cut:]
    if data.max_eval_frames:
        held = held[:: max(1, math.ceil(len(held) / data.max_eval_frames))][: data.max_eval_frames]
    return train, held


def open_lidar_frames(data: PPKTDataConfig) -> list:
    """LiDAR + camera frames of a kitti directory or a nuScenes info pickle."""
    from pointlift.data.lidar import read_kitti_frame, read_nuscenes_frame

    if data.kind == "semantickitti":
        from pointlift.data.scenes import (list_semantickitti, read_semantickitti_camera_frame,
                                           select_scenes, semantickitti_sequence_dir)

        names = list_semantickitti(data.root)
        if data.sequences:
            names = select_scenes(names, data.sequences)
            if not names:
                raise PointliftDataError(data.root, f"no scans in sequences {list(data.sequences)}")
        return [read_semantickitti_camera_frame(semantickitti_sequence_dir(data.root, n.split("/")[0]),
                                                n.split("/")[1]) for n in names]
    if data.kind == "kitti":
        root = Path(data.root)
        if not root.is_dir():
            raise PointliftDataError(root, "KITTI directory not found")
        frames = []
        for bin_path in sorted(root.glob("*.bin")):
            image = next((bin_path.with_suffix(s) for s in (".png", ".jpg") if bin_path.with_suffix(s).is_file()), None)
            # an info .pkl carries lidar2img; a .txt may be the official calib file (or P2 only)
            calib = next((bin_path.with_suffix(s) for s in (".pkl", ".txt") if bin_path.with_suffix(s).is_file()), None)
            if image is None or calib is None:
                raise PointliftDataError(bin_path, "needs an image (.png/.jpg) and a calibration (.pkl/.txt) beside it")
            frames.append(read_kitti_frame(bin_path, image, calib))
        if not frames:
            raise PointliftDataError(root, "no KITTI .bin sweeps found")
        return frames
    from pointlift.data.lidar import load_info_pickle

    count = len(load_info_pickle(data.info_pkl)["data_list"])
    return [read_nuscenes_frame(data.info_pkl, data.root, i) for i in range(count)]


# -------------------------------------------------------------------------------------------- datasets


class PPKTDataset(torch.utils.data.Dataset):
    """Samples of views -> dict with points, colours, pairs and either images or cached teacher maps.

    `samples[i]` lists the global view indices of sample i; `make_pairs(i)` builds its pairs at the
    original image resolution, `view_image(v)` gives view v as uint8 (H, W, 3) and `view_hw(v)` its
    original size. Pixels are rescaled to `image_size`.
    """

    def __init__(self, samples, make_pairs, view_image, view_hw, view_names, image_size, augment: PPKTAugmentConfig | None,
                 up_axis: str = "y", cache=None, source: str = "<ppkt>"):
        self.samples = samples
        self.make_pairs = make_pairs
        self.view_image = view_image
        self.view_hw = view_hw
        self.view_names = view_names
        self.image_size = tuple(image_size)
        self.augment = augment
        self.up_axis = up_axis
        self.cache = cache
        self.source = source

    def __len__(self) -> int:
        return len(self.samples)

    def load_view(self, view: int) -> torch.Tensor:
        """View `view` as float (3, H, W) in [0, 1] at `image_size` (the teacher's input)."""
        return resize_image(self.view_image(view), self.image_size)

    def __getitem__(self, index: int) -> dict:
        views = self.samples[index]
        pairs: PointPixelPairs = self.make_pairs(index)
        if pairs.num_pairs < 2:
            raise PointliftDataError(self.source, f"sample {index} ({[self.view_names[v] for v in views]}) has "
                                                  f"{pairs.num_pairs} point-pixel pairs; need at least 2")
        pixels = pairs.pair_pixel.clone()
        for local, view in enumerate(views):
            mine = pairs.pair_view == local
            pixels[mine] = rescale_pixels(pixels[mine], self.view_hw(view), self.image_size)
        if self.cache is not None:
            maps = torch.stack([self.cache[v] for v in views])
            key = "teacher_features"
        else:
            maps = torch.stack([self.load_view(v) for v in views])
            key = "images"
        points = pairs.points
        if self.augment is not None:
            points = self._augment_points(points)
            if self.augment.image_flip:
                flipped = torch.rand(len(views)) < 0.5
                maps[flipped] = maps[flipped].flip(-1)
                mirror = flipped[pairs.pair_view]
                pixels[mirror, 0] = self.image_size[1] - 1 - pixels[mirror, 0]
        # a random key per pair, drawn with the sample (per-sample stream): the loss uses the pairs with
        # the smallest keys of the whole batch, so N processes pick exactly the pairs one process picks
        pair_key = torch.rand(pairs.pair_point.shape[0], dtype=torch.float64)
        return {"points": points.float(), "colors": pairs.colors.float(), "pair_point": pairs.pair_point,
                "pair_view": pairs.pair_view, "pair_pixel": pixels, "pair_key": pair_key, key: maps}

    def _augment_points(self, points: torch.Tensor) -> torch.Tensor:
        aug = self.augment
        centre = points.mean(0, keepdim=True)
        points = points - centre
        if aug.rotate_up:
            angle = float(torch.rand(())) * 2 * math.pi
            points = transform_points(rotation_about_axis(angle, self.up_axis, dtype=points.dtype), points)
        if aug.flip and bool(torch.rand(()) < 0.5):
            axis = 0 if self.up_axis != "x" else 1
            points = points.clone()
            points[:, axis] = -points[:, axis]
        low, high = aug.scale
        points = points * (low + (high - low) * float(torch.rand(())))
        return points + centre


def collate_ppkt(samples: list[dict]) -> dict:
    """Concatenate samples: points get a batch index, pair indices are offset into the batch."""
    batch = {"points": [], "colors": [], "batch_index": [], "pair_point": [], "pair_view": [], "pair_pixel": []}
    if "pair_key" in samples[0]:
        batch["pair_key"] = [sample["pair_key"] for sample in samples]
    maps_key = "teacher_features" if "teacher_features" in samples[0] else "images"
    maps = []
    point_offset = view_offset = 0
    for b, sample in enumerate(samples):
        count = sample["points"].shape[0]
        batch["points"].append(sample["points"])
        batch["colors"].append(sample["colors"])
        batch["batch_index"].append(torch.full((count,), b, dtype=torch.long))
        batch["pair_point"].append(sample["pair_point"] + point_offset)
        batch["pair_view"].append(sample["pair_view"] + view_offset)
        batch["pair_pixel"].append(sample["pair_pixel"])
        maps.append(sample[maps_key])
        point_offset += count
        view_offset += sample[maps_key].shape[0]
    out = {key: torch.cat(values) for key, values in batch.items()}
    out[maps_key] = torch.cat(maps)
    return out


def _rgbd_dataset(sequence, frame_indices: list[int], data: PPKTDataConfig, augment, up_axis, group: int,
                  cache=None, view_offset: dict | None = None) -> PPKTDataset:
    """Samples = consecutive groups of `group` frames of `frame_indices` (views = frames)."""
    groups = [frame_indices[i:i + group] for i in range(0, len(frame_indices) - group + 1, group)]
    position = {frame: i for i, frame in enumerate(frame_indices)} if view_offset is None else view_offset
    samples = [[position[f] for f in g] for g in groups]
    view_frames = {position[f]: f for f in frame_indices}
    shapes = {}

    def frame(view):
        return sequence[view_frames[view]]

    def make_pairs(index):
        frames = [sequence[f] for f in groups[index]]
        for view, fr in zip(samples[index], frames):
            shapes[view] = fr.depth.shape
        return rgbd_pairs(frames, data.pixel_stride, data.max_depth, data.cross_view_pairs, data.occlusion_tolerance)

    def view_hw(view):
        if view not in shapes:
            shapes[view] = frame(view).depth.shape
        return shapes[view]

    def view_image(view):
        return frame(view).color

    names = {position[f]: sequence.names[f] for f in frame_indices}
    return PPKTDataset(samples, make_pairs, view_image, view_hw, names, data.image_size, augment, up_axis, cache,
                       source=str(data.root or "<synthetic>"))


def _lidar_dataset(frames: list, data: PPKTDataConfig, augment, up_axis, cache=None) -> PPKTDataset:
    """Samples = LiDAR sweeps; views = their cameras, numbered sweep by sweep."""
    samples, names, images = [], {}, {}
    for frame in frames:
        views = []
        for camera in frame.cameras:
            view = len(images)
            images[view] = camera.image
            names[view] = f"{frame.name}/{camera.name}"
            views.append(view)
        samples.append(views)

    def make_pairs(index):
        frame = frames[index]
        cameras = [(camera.image.shape[:2], torch.as_tensor(camera.lidar2img)) for camera in frame.cameras]
        return lidar_pairs(torch.as_tensor(frame.points), cameras, data.min_depth, data.occlusion,
                           data.occlusion_tolerance, data.zbuffer_cell)

    return PPKTDataset(samples, make_pairs, lambda v: images[v], lambda v: images[v].shape[:2], names,
                       data.image_size, augment, up_axis, cache, source=str(data.info_pkl or data.root))


# ---------------------------------------------------------------------------------------------- model


def _student_in_channels(model: PPKTModelConfig) -> int:
    return 3 if model.in_features == "rgb" else 1


def build_student(model: PPKTModelConfig) -> nn.Module:
    from pointlift.models.sparse_unet import sparse_unet

    return sparse_unet(model.student, _student_in_channels(model), model.embed_dim)


def student_point_features(student: nn.Module, model: PPKTModelConfig, points: torch.Tensor,
                           batch_index: torch.Tensor, colors: torch.Tensor | None) -> torch.Tensor:
    """Voxelise, run the sparse U-Net, read each point's voxel feature back: (N, D) L2-normalised."""
    from pointlift.sparse import SparseTensor

    voxels = voxelize(points, model.voxel_size, batch_index)
    if model.in_features == "rgb":
        if colors is None:
            colors = torch.full_like(points, 0.5)
        inputs = average_per_voxel(colors, voxels)
    else:
        inputs = torch.ones(voxels.num_voxels, 1, dtype=points.dtype, device=points.device)
    batch_size = int(batch_index.max()) + 1 if batch_index.numel() else 1
    out = student(SparseTensor(inputs, voxels.coords, batch_size=batch_size))
    return F.normalize(out.features[voxels.inverse], dim=1)


class PPKTModel(nn.Module):
    """Frozen teacher + UPL (2D) and sparse U-Net (3D); `forward(batch)` -> {"loss", "pair_accuracy"}."""

    checkpoint_exclude = ("teacher.",)

    def __init__(self, model: PPKTModelConfig, loss: PPKTLossConfig, image_size: tuple[int, int], teacher=None):
        super().__init__()
        from pointlift.teachers.teacher import Teacher
        from pointlift.teachers.upl import UpsamplingProjection

        self.model_config = model
        self.loss_config = loss
        self.image_size = tuple(image_size)
        self.teacher = teacher if teacher is not None else build_teacher(model)
        self.upl = UpsamplingProjection(self.teacher.channels, model.embed_dim, model.upl_mode)
        self.student = build_student(model)
        assert isinstance(self.teacher, Teacher)

    def pixel_maps(self, batch: dict) -> torch.Tensor:
        """(V, D, H, W) per-pixel embeddings from cached teacher maps or from images."""
        if "teacher_features" in batch:
            low = batch["teacher_features"].float()
        else:
            low = self.teacher.features(self.teacher.normalize(batch["images"].float()))
        return self.upl(low, self.image_size)

    def point_features(self, batch: dict) -> torch.Tensor:
        return student_point_features(self.student, self.model_config, batch["points"], batch["batch_index"],
                                      batch.get("colors"))

    def pair_features(self, batch: dict, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f3d, f2d), each (P, D), for the pair rows `pairs`."""
        points = self.point_features(batch)
        maps = self.pixel_maps(batch)
        pixel = batch["pair_pixel"][pairs]
        f2d = maps[batch["pair_view"][pairs], :, pixel[:, 1], pixel[:, 0]]
        return points[batch["pair_point"][pairs]], f2d

    def forward(self, batch: dict) -> dict:
        if "pair_key" in batch:
            chosen = select_pairs(batch["pair_key"], self.loss_config.num_pairs)
        else:
            count = batch["pair_point"].shape[0]
            chosen = torch.randperm(count, device=batch["pair_point"].device)[: self.loss_config.num_pairs]
        f3d, f2d = self.pair_features(batch, chosen)
        loss, accuracy = info_nce_global(f3d, f2d, self.loss_config.temperature)
        return {"loss": loss, "pair_accuracy": accuracy}


def select_pairs(keys: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """Indices of this process's pairs among the `num_pairs` smallest keys of the global batch (all
    processes together under torchrun): a uniform draw of `num_pairs` pairs without replacement."""
    from pointlift.engine.distributed import all_gather_rows

    every, _ = all_gather_rows(keys.detach())
    if every.numel() <= num_pairs:
        return torch.arange(keys.numel(), device=keys.device)
    threshold = every.kthvalue(num_pairs).values
    return torch.nonzero(keys <= threshold).squeeze(1)


def info_nce_global(f3d: torch.Tensor, f2d: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`info_nce` over the pairs of the global batch: under torchrun each process's points are scored
    against the pixels of every process (gathered, with gradients), and the loss is scaled so that the
    DDP gradient average equals the one-process gradient of the mean over all pairs."""
    from pointlift.engine.distributed import all_gather_rows, get_rank, get_world_size, is_distributed

    if not is_distributed():
        return info_nce(f3d, f2d, temperature)
    keys, counts = all_gather_rows(f2d)
    offset, total, world = sum(counts[: get_rank()]), sum(counts), get_world_size()
    logits = f3d @ keys.T / temperature
    target = torch.arange(f3d.shape[0], device=f3d.device) + offset
    loss = F.cross_entropy(logits.float(), target, reduction="sum") * (world / total)
    accuracy = (logits.argmax(1) == target).float().sum().detach() * (world / total)
    return loss, accuracy


def info_nce(f3d: torch.Tensor, f2d: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Point -> pixel InfoNCE: row i's positive is column i, the other sampled pixels are negatives."""
    logits = f3d @ f2d.T / temperature
    target = torch.arange(f3d.shape[0], device=f3d.device)
    loss = F.cross_entropy(logits.float(), target)
    accuracy = (logits.argmax(1) == target).float().mean().detach()
    return loss, accuracy


def build_teacher(model: PPKTModelConfig):
    from pointlift.teachers.teacher import Teacher

    return Teacher(model.teacher, model.teacher_weights, model.teacher_stage)


# ------------------------------------------------------------------------------------------ retrieval


@torch.no_grad()
def retrieval_accuracy(model: PPKTModel, dataset: PPKTDataset, points_per_frame: int = 256, seed: int = 0,
                       device: str | torch.device = "cpu") -> dict:
    """Held-out pixel <-> point retrieval: each sampled point's 3D feature against the UPL features of the
    frame's sampled pixels; top-1/top-5 accuracy over `candidates` = min(points_per_frame, pairs) pixels
    (distinct pixels; chance = 1 / candidates)."""
    model.eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    hits1 = hits5 = total = 0
    chance = []
    for index in range(len(dataset)):
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


# ------------------------------------------------------------------------------------------ pretrain


def model_spec(config: PPKTConfig) -> dict:
    return {"kind": "ppkt", "config": {"model": config_to_dict(config.model), "loss": config_to_dict(config.loss),
                                       "data": config_to_dict(config.data)}}


@dataclass
class PPKTSetup:
    """Everything `pretrain` builds before training: datasets (train with augmentation, held-out
    without), the teacher, and the cache (None when disabled)."""

    train_set: PPKTDataset
    eval_set: PPKTDataset
    teacher: object
    cache: object


def build_setup(config: PPKTConfig, cache_dir: Path | None, device: torch.device, progress: bool = False,
                use_cache: bool | None = None) -> PPKTSetup:
    data = config.data
    teacher = build_teacher(config.model)
    use_cache = config.cache if use_cache is None else use_cache
    if data.kind in ("rgbd", "synthetic"):
        sequence = open_rgbd_source(data)
        train_frames, eval_frames = split_frames(sequence, data)
        if not train_frames or not eval_frames:
            raise PointliftConfigError(f"data: {len(train_frames)} training and {len(eval_frames)} held-out frames; "
                                       "both must be non-empty (check train_below / holdout_fraction)")
        all_frames = train_frames + eval_frames
        position = {f: i for i, f in enumerate(all_frames)}
        train_set = _rgbd_dataset(sequence, train_frames, data, config.augment, config.model.up_axis,
                                  data.frames_per_sample, view_offset=position)
        eval_set = _rgbd_dataset(sequence, eval_frames, data, None, config.model.up_axis, 1, view_offset=position)
        names = [sequence.names[f] for f in all_frames]
        load_view = lambda v: resize_image(sequence[all_frames[v]].color, data.image_size)  # noqa: E731
    else:
        frames = open_lidar_frames(data)
        cut = max(1, int(round(len(frames) * (1 - data.holdout_fraction))))
        full = _lidar_dataset(frames, data, config.augment, config.model.up_axis)
        train_set = _lidar_dataset(frames, data, config.augment, config.model.up_axis)
        eval_set = _lidar_dataset(frames, data, None, config.model.up_axis)
        train_set.samples = full.samples[:cut]
        eval_set.samples = full.samples[cut:] or full.samples[-1:]  # a single sweep evaluates on itself
        names = [full.view_names[v] for v in range(len(full.view_names))]
        load_view = full.load_view
    cache = None
    if use_cache:
        from pointlift.methods.ppkt_cache import open_teacher_cache

        cache = open_teacher_cache(cache_dir, teacher, data.image_size, names, load_view, device=device,
                                   progress=progress)
        train_set.cache = eval_set.cache = cache
    return PPKTSetup(train_set, eval_set, teacher, cache)


def pretrain(config: PPKTConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
             device: str | None = None) -> dict:
    """Pretrain the 3D network; returns (and writes to run_dir/ppkt_results.json) the retrieval results."""
    from pointlift.engine import seed_everything, train
    from pointlift.engine.rundir import write_json

    seed_everything(config.train.seed)  # before anything random is built: runs repeat exactly
    run_dir = Path(run_dir)
    device = resolve_device(device or config.device)
    cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "teacher_cache"
    setup = build_setup(config, cache_dir, device, progress)
    seed_everything(config.train.seed)  # the cache build may have drawn numbers (it does not when reused)
    model = PPKTModel(config.model, config.loss, config.data.image_size, setup.teacher)
    results = {"retrieval_chance": None}
    if config.eval_untrained:
        untrained = retrieval_accuracy(model, setup.eval_set, config.eval_points_per_frame, device=device)
        results["retrieval_untrained"] = untrained
    start = time.perf_counter()
    outcome = train(model, setup.train_set, config.train, run_dir, collate_fn=collate_ppkt, resume=resume,
                    device=device, progress=progress, config_for_checkpoint=config, model_spec=model_spec(config))
    results["train_seconds"] = time.perf_counter() - start
    results["steps"] = outcome.step
    results["checkpoint"] = str(outcome.checkpoint_path) if outcome.checkpoint_path else None
    results["history"] = [row for row in outcome.history if "loss" in row]
    results["retrieval_pretrained"] = retrieval_accuracy(model, setup.eval_set, config.eval_points_per_frame,
                                                         device=device)
    results["retrieval_chance"] = results["retrieval_pretrained"]["chance"]
    results["cache"] = None if setup.cache is None else {"dir": str(setup.cache.directory), "key": setup.cache.key,
                                                         "built_now": setup.cache.built_now,
                                                         "build_seconds": setup.cache.build_seconds}
    write_json(run_dir / "ppkt_results.json", results, indent=1)  # rank 0 only
    return results


def pretrain_command(config_path: str | Path, resume: bool = False, run_dir: str | Path | None = None) -> dict:
    """`pointlift pretrain ppkt --config FILE [--resume] [--run-dir DIR]`."""
    from pointlift.engine import create_run_dir

    config = load_config(config_path, PPKTConfig)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    run_dir = create_run_dir("ppkt", config.run_root, run_dir, config=config)
    results = pretrain(config, run_dir, resume=resume)
    summary = {k: results[k] for k in ("retrieval_pretrained", "retrieval_untrained", "checkpoint") if k in results}
    from pointlift.engine.distributed import is_main_process

    if is_main_process():
        print(json.dumps({"run_dir": str(run_dir), **summary}, indent=1, default=str))
    return results


def load_pretrained(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[PPKTModel, dict]:
    """PPKTModel (teacher rebuilt from its config, trained parts from the checkpoint) and the spec config."""
    from pointlift.engine.checkpoint import checkpoint_files, load_checkpoint, load_model_state

    state, meta = load_checkpoint(checkpoint)
    spec = meta.get("model_spec") or {}
    if spec.get("kind") != "ppkt":
        raise PointliftDataError(checkpoint, f"not a PPKT checkpoint (model kind {spec.get('kind')!r})")
    spec_config = spec["config"]
    model_cfg = load_config(spec_config["model"], PPKTModelConfig)
    loss_cfg = load_config(spec_config["loss"], PPKTLossConfig)
    image_size = tuple(spec_config["data"]["image_size"])
    model = PPKTModel(model_cfg, loss_cfg, image_size)
    load_model_state(model, state, checkpoint_files(checkpoint)[0])
    return model.to(device).eval(), spec_config


def eval_command(checkpoint: str | Path, frames_dir: str | Path, out: str | Path,
                 points_per_frame: int = 256, max_frames: int = 50) -> dict:
    """`pointlift eval ppkt --checkpoint CKPT --frames DIR --out FILE.json`: retrieval on an RGB-D directory
    (at most `max_frames` frames, evenly spread)."""
    device = resolve_device(None)
    model, spec_config = load_pretrained(checkpoint, device)
    data = load_config({**spec_config["data"], "kind": "rgbd", "root": str(frames_dir), "frame_stride": 1,
                        "train_below": None, "frames_per_sample": 1, "cross_view_pairs": False}, PPKTDataConfig)
    from pointlift.data.rgbd import open_rgbd_sequence

    sequence = open_rgbd_sequence(frames_dir)
    frames = list(range(len(sequence)))[:: max(1, math.ceil(len(sequence) / max_frames))]
    dataset = _rgbd_dataset(sequence, frames, data, None, model.model_config.up_axis, 1)
    result = retrieval_accuracy(model, dataset, points_per_frame, device=device)
    record = {"checkpoint": str(checkpoint), "frames_dir": str(frames_dir), "retrieval": result}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return record


# ----------------------------------------------------------------------------------------- embedding


class PPKTEmbedder(nn.Module):
    """The pretrained 3D network as a global descriptor: max and mean of the per-point embeddings.

    Point sets carry no colour, so RGB-input networks get a mid-grey (0.5) for every point.
    Parameter names match PPKTModel's `student.` so a PPKT checkpoint loads directly.
    """

    def __init__(self, model: PPKTModelConfig):
        super().__init__()
        self.model_config = model
        self.student = build_student(model)

    def embed(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, P, 3) -> (B, 2 * embed_dim)."""
        batch, count, _ = points.shape
        flat = points.reshape(-1, 3).float()
        batch_index = torch.arange(batch, device=points.device).repeat_interleave(count)
        features = student_point_features(self.student, self.model_config, flat, batch_index, None)
        features = features.view(batch, count, -1)
        return torch.cat([features.amax(1), features.mean(1)], dim=1)


def build_embedder(model_spec_config: dict) -> nn.Module:
    """`pointlift embed` hook: the PPKT 3D network from a checkpoint's model_spec config."""
    return PPKTEmbedder(load_config(model_spec_config.get("model", {}), PPKTModelConfig))


# ---------------------------------------------------------------------------------------- quickstart


def quickstart_config(run_root: Path | str = "runs", steps: int = 100) -> PPKTConfig:
    """A ~1 minute CPU run on a synthetic room: small images, a tiny U-Net, cached teacher maps
    (100 steps: 30 left held-out retrieval at chance, 120 reached 13x chance, measured)."""
    return load_config({
        "data": {"kind": "synthetic", "synthetic_frames": 10, "synthetic_hw": [72, 96], "pixel_stride": 2,
                 "image_size": [72, 96], "holdout_fraction": 0.2},
        "model": {"student": "spunet-tiny", "voxel_size": 0.1, "teacher_stage": 3},
        "loss": {"num_pairs": 1024},
        "train": {"max_steps": steps, "batch_size": 2, "log_every": 5, "checkpoint_every": 0,
                  "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0001}},
        "eval_points_per_frame": 128,
        "run_root": str(run_root),
    }, PPKTConfig)


def quickstart(run_dir: str | Path, progress: bool = True) -> dict:
    """PPKT on a synthetic room for ~1 minute: retrieval of the pretrained vs the untrained network,
    with the pixel-point pairs of one frame and the loss curve as plots."""
    from pointlift.data.synthetic import make_rgbd_scene
    from pointlift.methods.ppkt_pairs import rgbd_pairs
    from pointlift.report import plot_correspondences, plot_curves, read_metrics_csv

    run_dir = Path(run_dir)
    config = quickstart_config(run_dir.parent)
    results = pretrain(config, run_dir, progress=progress, device="cpu")
    history = results["history"]
    frame = make_rgbd_scene(num_frames=1, height=config.data.synthetic_hw[0], width=config.data.synthetic_hw[1])[0]
    pairs = rgbd_pairs([frame], pixel_stride=config.data.pixel_stride)
    plots = [
        ("pixel-point pairs of one frame (colour = point depth in metres)",
         plot_correspondences(frame.color, pairs.pair_pixel.numpy(), pairs.points[pairs.pair_point, 2].numpy(),
                              run_dir / "ppkt_pairs.png", title="3D points drawn at their pixels")),
    ]
    curves = {k: v for k, v in read_metrics_csv(run_dir / "metrics.csv").items() if k in ("loss", "pair_accuracy")}
    if curves:
        plots.append(("pretraining curves", plot_curves(curves, run_dir / "ppkt_curves.png", title="PPKT pretraining")))
    figures = {
        "retrieval_top1_pretrained": results["retrieval_pretrained"]["top1"],
        "retrieval_top1_untrained": results["retrieval_untrained"]["top1"],
        "retrieval_chance": results["retrieval_chance"],
        "loss_first": history[0]["loss"] if history else float("nan"),
        "loss_last": history[-1]["loss"] if history else float("nan"),
    }
    return {"figures": figures, "plots": plots}
