"""I2P-MAE: image-to-point masked autoencoding (Zhang et al., CVPR 2023; GUIDE §1.3).

A Point-M2AE hierarchical encoder learns by masked autoencoding, helped by a frozen 2D model that
looks at three orthographic depth views of the shape:

1. 2D side: depth views -> teacher feature maps and saliency; each point reads both at its pixel
   (bicubic read-back, `i2p_mae_cache`).
2. 2D-guided masking: the saliency at each top-scale centre (mean over the 3 views) is standardised
   per shape and turned into a distribution softmax(z / temperature); the visible tokens are drawn
   without replacement from it (Gumbel-top-k), so salient tokens tend to stay visible. (The official
   code softmaxes raw attention probabilities, which makes the draw almost uniform.)
3. Targets: masked tokens of the lowest decoded scale reconstruct the relative coordinates of their
   group (Chamfer-L2, through a linear head on the decoded tokens); visible top tokens regress the
   2D features of their group (their next-scale members, mean over members and the 3 views,
   layer-normalised per token) through an MLP head (MSE).
   `guided_masking=False` and `feature_target=False` together give the Point-M2AE baseline.

Reconstruction scale: with the default decoder (two levels, 384 -> 192) the decoded scale is the
middle one, whose groups are 8 next-scale centres (the official target); with a one-level decoder
it is the top scale itself. Either way every decoder weight receives a gradient (DDP-safe).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pointlift.engine.config import TrainConfig, config_to_dict, load_config, require
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry.render import render_depth_views
from pointlift.methods.i2p_mae_cache import TeacherMaps, build_teacher_cache, read_back, teacher_maps
from pointlift.models.point_m2ae import (Hierarchy, PointM2AE, PointM2AEClassifier, PointM2AEConfig,
                                         global_feature, random_top_mask)
from pointlift.ops import chamfer_l2, farthest_point_sample, gather, knn

KIND = "i2p_mae"


# --------------------------------------------------------------------------------- configuration


@dataclass
class I2PMAEConfig:
    """The method: backbone sizes, masking, targets and loss weights (stored as the checkpoint's model_spec)."""

    model: PointM2AEConfig = field(default_factory=PointM2AEConfig)
    mask_ratio: float = 0.8
    guided_masking: bool = True
    feature_target: bool = True
    temperature: float = 0.5  # softmax temperature over standardised saliency; lower = greedier
    image_size: int = 224
    footprint: int = 5
    recon_weight: float = 100.0  # Chamfer-L2 of unit-sphere shapes is ~1e-2; this brings it to ~1
    feature_weight: float = 1.0
    feature_head: Literal["linear", "mlp"] = "mlp"
    # "layer": LayerNorm per token only. "layer_batch": then standardise each channel over the batch's
    # tokens - with "layer" alone ~3/4 of the target variance is a constant shared by every token of
    # every shape, so the 2D loss mostly rewards predicting that constant (see normalize_targets).
    target_norm: Literal["layer", "layer_batch"] = "layer"
    teacher_channels: int = 0  # set from the teacher when the model is built

    def __post_init__(self):
        require(0.0 < self.mask_ratio < 1.0, "mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.image_size >= 16, "image_size", f"must be >= 16, got {self.image_size}")
        require(self.footprint >= 1 and self.footprint % 2 == 1, "footprint", "must be a positive odd integer")
        require(self.recon_weight >= 0 and self.feature_weight >= 0, "recon_weight",
                "loss weights must be >= 0")
        require(self.teacher_channels >= 0, "teacher_channels", "must be >= 0")


@dataclass
class TeacherConfig:
    name: str = "tf_efficientnet_lite0"
    weights: Optional[str] = None  # None = bundled (EfficientNet-Lite) or hub; or a local file
    stage: int = -1
    half: bool = False


@dataclass
class DataConfig:
    source: Literal["modelnet10_vox", "synthetic"] = "modelnet10_vox"
    path: str = "../shared/data/modelnet10_vox32.npz"
    num_points: int = 1024
    max_shapes: Optional[int] = None  # first N training shapes only (CPU budgets)
    scale_range: tuple[float, float] = (0.8, 1.25)
    translate: float = 0.1
    cache_dir: Optional[str] = "~/.cache/pointlift/i2p_mae"
    cache_dtype: Literal["float16", "float32"] = "float16"
    seed: int = 0

    def __post_init__(self):
        require(self.num_points >= 1, "num_points", "must be >= 1")
        require(0 < self.scale_range[0] <= self.scale_range[1], "scale_range", "need 0 < low <= high")
        require(self.translate >= 0, "translate", "must be >= 0")


@dataclass
class I2PMAEExperiment:
    """One YAML file per pretraining experiment (configs/i2p_mae_*.yaml)."""

    name: str = "i2p_mae"
    method: I2PMAEConfig = field(default_factory=I2PMAEConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: Optional[str] = None
    runs_root: str = "runs"


# --------------------------------------------------------------------------------- masking


def guided_top_mask(saliency: torch.Tensor, ratio: float, temperature: float = 0.5,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Visible mask (B, T) bool: T - int(ratio*T) tokens drawn without replacement from softmax(z / temperature),
    z = per-shape standardised saliency (B, T). Gumbel-top-k draws exactly that sequential sampling."""
    batch, tokens = saliency.shape
    num_visible = tokens - int(ratio * tokens)
    if not 0 < num_visible <= tokens:
        raise PointliftConfigError(f"mask ratio {ratio} leaves no visible token among {tokens}")
    s = saliency.float()
    z = (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, keepdim=True).clamp_min(1e-6)
    logits = torch.log_softmax(z / temperature, dim=1)
    uniform = noise if noise is not None else \
        torch.rand(s.shape, generator=generator, device=s.device if generator is None else generator.device)
    gumbel = -torch.log(-torch.log(uniform.to(s.device).clamp(1e-12, 1 - 1e-7)))
    chosen = (logits + gumbel).topk(num_visible, dim=1).indices
    return torch.zeros_like(s, dtype=torch.bool).scatter_(1, chosen, True)


# --------------------------------------------------------------------------------- 2D targets


def _point_indices(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index (B, n) of each centre among the input points (FPS centres are input points)."""
    return knn(centers, points, 1)[1][..., 0]


def token_targets(hierarchy: Hierarchy, pixels: torch.Tensor, features: torch.Tensor | None,
                  saliency: torch.Tensor | None, image_size: int):
    """2D quantities per top token, from maps (B, 3, C, h, w) / (B, 3, h, w) and point pixels (B, 3, P, 2).

    Returns (saliency at each top centre, mean over views (B, T)) and (features of each top token's
    group members, mean over members and views (B, T, C)); either is None when its map is.
    """
    top = hierarchy.num_scales - 1
    points = hierarchy.points
    views = pixels.shape[1]

    def pixels_of(index):  # (B, n) point indices -> (B, V, n, 2)
        return pixels.gather(2, index[:, None, :, None].expand(-1, views, -1, 2))

    top_saliency = token_features = None
    if saliency is not None:
        centre_index = _point_indices(points, hierarchy.centers[top])
        top_saliency = read_back(saliency[:, :, None], pixels_of(centre_index), image_size)[..., 0].mean(dim=1)
    if features is not None:
        if top > 0:
            member_index = _point_indices(points, hierarchy.centers[top - 1])  # members live at scale top-1
        else:
            member_index = torch.arange(points.shape[1], device=points.device).expand(points.shape[0], -1)
        per_member = read_back(features, pixels_of(member_index), image_size).mean(dim=1)  # (B, n, C)
        token_features = gather(per_member, hierarchy.neighbors[top]).mean(dim=2)
    return top_saliency, token_features


def normalize_targets(token_features: torch.Tensor, mode: str) -> torch.Tensor:
    """2D regression targets (B, T, C): LayerNorm per token, and for "layer_batch" also a per-channel
    standardisation over all tokens of the batch (statistics detached; the teacher is frozen anyway).

    Why: teacher features of depth renders share a large common component. After per-token LayerNorm
    the per-channel variance across tokens is only ~0.26 of the unit total, so a head that outputs the
    constant mean already reaches MSE ~0.26, and the informative part of the signal is small next to
    the reconstruction loss. Standardising per channel keeps only what distinguishes tokens/shapes."""
    target = F.layer_norm(token_features.float(), token_features.shape[-1:])
    if mode == "layer":
        return target
    if mode != "layer_batch":
        raise PointliftConfigError(f"i2p_mae: unknown target_norm {mode!r}")
    flat = target.reshape(-1, target.shape[-1])
    mean = flat.mean(dim=0)
    std = flat.std(dim=0).clamp_min(1e-3) if flat.shape[0] > 1 else torch.ones_like(mean)
    return (target - mean) / std


# --------------------------------------------------------------------------------- model


def normalize_point_sets(points: torch.Tensor) -> torch.Tensor:
    """Centre each set (B, P, 3) on its mean and scale it into the unit sphere (the pretraining frame)."""
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1).clamp_min(1e-9)
    return centred / radius[:, None, None]


class I2PMAE(nn.Module):
    """Point-M2AE + reconstruction head + 2D feature head; the teacher is frozen and never checkpointed.

    `forward(batch)` takes {"points": (B, P, 3)} and optionally cached maps {"teacher_features":
    (B, 3, C, h, w), "teacher_saliency": (B, 3, h, w)}; without them the teacher runs on the fly.
    """

    checkpoint_exclude = ("teacher.",)

    def __init__(self, config: I2PMAEConfig, teacher: nn.Module | None = None):
        super().__init__()
        needs_teacher_output = config.guided_masking or config.feature_target
        if teacher is not None and config.feature_target and config.teacher_channels in (0, teacher.channels):
            config.teacher_channels = int(teacher.channels)
        if config.feature_target and config.teacher_channels <= 0:
            raise PointliftConfigError("i2p_mae: feature_target needs teacher_channels (or a teacher)")
        self.config = config
        self.backbone = PointM2AE(config.model)
        model = config.model
        top = model.num_scales - 1
        self.recon_scale = top - (len(model.decoder_dims) - 1)
        self.recon_head = nn.Linear(model.decoder_dims[-1], model.group_sizes[self.recon_scale] * 3)
        if config.feature_target:
            width = model.decoder_dims[0]
            self.feature_head = (nn.Linear(width, config.teacher_channels) if config.feature_head == "linear" else
                                 nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                               nn.Linear(width, config.teacher_channels)))
        self.teacher = teacher if needs_teacher_output else None

    # -- 2D side --------------------------------------------------------------------------------
    def teacher_outputs(self, points: torch.Tensor):
        if self.teacher is None:
            raise PointliftConfigError("i2p_mae: this model has no teacher; pass cached teacher maps in the batch")
        return teacher_maps(self.teacher, points, self.config.image_size, self.config.footprint,
                            with_saliency=self.config.guided_masking)

    def forward(self, batch: dict) -> dict:
        config = self.config
        points = batch["points"]
        hierarchy = self.backbone.group(points)
        top = hierarchy.num_scales - 1
        num_top = hierarchy.centers[top].shape[1]
        top_saliency = token_features = None
        if config.guided_masking or config.feature_target:
            features, saliency = batch.get("teacher_features"), batch.get("teacher_saliency")
            if features is None:
                features, saliency = self.teacher_outputs(points)
            pixels = render_depth_views(points, config.image_size, config.footprint).pixels
            top_saliency, token_features = token_targets(
                hierarchy, pixels, features if config.feature_target else None,
                saliency if config.guided_masking else None, config.image_size)
        noise = batch.get("mask_noise")  # drawn per sample by the dataset: the same masks on any rank
        if config.guided_masking:
            visible = guided_top_mask(top_saliency, config.mask_ratio, config.temperature, noise=noise)
        elif noise is not None:  # random_top_mask's rule on the sample's own uniform noise
            visible = noise.argsort(dim=1).argsort(dim=1) >= int(config.mask_ratio * num_top)
        else:
            visible = random_top_mask(points.shape[0], num_top, config.mask_ratio, device=points.device)
        encoded, decoded, masks = self.backbone(hierarchy, visible)

        # (a) 3D: masked tokens of the reconstruction scale rebuild their group's relative coordinates
        scale = self.recon_scale
        group = hierarchy.relative[scale]  # (B, n, k, 3)
        prediction = self.recon_head(decoded[scale]).reshape(group.shape)
        masked = ~masks[scale]
        if bool(masked.any()):
            loss_recon = chamfer_l2(prediction[masked], group[masked].to(prediction.dtype)).mean()
        else:
            loss_recon = prediction.sum() * 0.0
        loss = config.recon_weight * loss_recon
        out = {"loss_recon": loss_recon.detach()}

        # (b) 2D: visible top tokens regress their group's teacher features
        if config.feature_target:
            target = normalize_targets(token_features, config.target_norm)
            predicted = self.feature_head(decoded[top])
            loss_2d = F.mse_loss(predicted[visible].float(), target[visible].float())
            loss = loss + config.feature_weight * loss_2d
            out["loss_2d"] = loss_2d.detach()
        if config.guided_masking:  # how salient the kept tokens are vs the average token (1 = no bias)
            ranks = top_saliency.argsort(dim=1).argsort(dim=1).float() / max(num_top - 1, 1)
            out["visible_saliency_rank"] = ranks[visible].mean().detach()
        out["loss"] = loss
        return out

    # -- frozen features ------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, points: torch.Tensor, pooling: str = "max") -> torch.Tensor:
        """Global feature (B, F) of point sets (B, P, 3): normalised to the unit sphere, FPS-subsampled
        (or cycled) to the pretraining point count, all tokens encoded, max-pooled over top tokens."""
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] == 0:
            raise PointliftDataError("<points>", f"expected point sets (B, P, 3), got {tuple(points.shape)}")
        points = normalize_point_sets(points.float())
        wanted = self.config.model.num_points
        if points.shape[1] > wanted:
            points = gather(points, farthest_point_sample(points, wanted))
        elif points.shape[1] < wanted:
            points = points[:, torch.arange(wanted, device=points.device) % points.shape[1]]
        encoder = self.backbone.encoder
        return global_feature(encoder(encoder.group(points))[-1], pooling)


def build_embedder(model_spec_config: dict) -> I2PMAE:
    """The pretraining model without its teacher; its state dict matches an I2P-MAE checkpoint."""
    config = load_config(dict(model_spec_config), I2PMAEConfig)
    return I2PMAE(config, teacher=None)


def model_spec(config: I2PMAEConfig) -> dict:
    return {"kind": KIND, "config": config_to_dict(config)}


# --------------------------------------------------------------------------------- data


def prepare_point_sets(point_sets, num_points: int, seed: int = 0) -> np.ndarray:
    """List of (Ni, 3) arrays -> (S, num_points, 3) float32 in the unit sphere, resampled once per shape
    with a fixed seed (the same points every epoch, so cached teacher maps stay valid)."""
    out = np.empty((len(point_sets), num_points, 3), dtype=np.float32)
    for index, cloud in enumerate(point_sets):
        cloud = np.asarray(cloud, dtype=np.float64)
        if cloud.ndim != 2 or cloud.shape[1] != 3 or len(cloud) == 0:
            raise PointliftDataError("<point sets>", f"shape {index} has points of shape {cloud.shape}")
        rng = np.random.default_rng([seed, index])
        if len(cloud) >= num_points:
            chosen = rng.choice(len(cloud), num_points, replace=False)
        else:
            chosen = np.concatenate([np.arange(len(cloud)), rng.choice(len(cloud), num_points - len(cloud))])
        cloud = cloud[chosen]
        cloud = cloud - cloud.mean(axis=0)
        cloud = cloud / max(np.linalg.norm(cloud, axis=1).max(), 1e-9)
        out[index] = cloud
    return out


class PretrainShapes(torch.utils.data.Dataset):
    """Fixed point sets with scale-and-translate augmentation, plus their cached teacher maps if given."""

    def __init__(self, points: np.ndarray, maps: TeacherMaps | None = None, scale_range=(0.8, 1.25),
                 translate: float = 0.1, mask_tokens: int = 0):
        if maps is not None and len(maps) != len(points):
            raise PointliftConfigError(f"teacher maps for {len(maps)} shapes, but {len(points)} shapes given")
        self.points = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        self.maps = maps
        self.scale_range = scale_range
        self.translate = translate
        self.mask_tokens = mask_tokens  # > 0: also draw the masking noise of that many top tokens

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(())
        shift = (torch.rand(3) * 2 - 1) * self.translate
        item = {"points": self.points[index] * scale + shift}
        if self.mask_tokens:
            item["mask_noise"] = torch.rand(self.mask_tokens)
        if self.maps is not None:
            item["teacher_features"], item["teacher_saliency"] = self.maps.get(index)
        return item


def load_pretrain_points(data: DataConfig, split: str = "train"):
    """(points (S, P, 3), labels (S,), class names) for the configured source."""
    if data.source == "synthetic":
        from pointlift.data.synthetic import make_shapes

        count = data.max_shapes or 64
        classes = ("sphere", "cube", "cylinder", "cone")
        points, labels, names = make_shapes(max(1, count // len(classes)), num_points=data.num_points,
                                            classes=classes, seed=data.seed + (split == "test"))
        return prepare_point_sets(list(points), data.num_points, data.seed), labels, names
    from pointlift.data.shapes import load_modelnet10_vox

    shapes = load_modelnet10_vox(Path(data.path).expanduser(), split)
    point_sets, labels = shapes.points, shapes.labels
    if data.max_shapes is not None:
        order = np.random.default_rng(data.seed).permutation(len(point_sets))[:data.max_shapes]
        point_sets, labels = [point_sets[i] for i in order], labels[order]
    return prepare_point_sets(point_sets, data.num_points, data.seed), np.asarray(labels), shapes.class_names


def build_teacher(config: TeacherConfig, image_size: int):
    from pointlift.teachers.teacher import Teacher

    return Teacher(config.name, weights=config.weights, stage=config.stage, half=config.half, img_size=image_size)


# --------------------------------------------------------------------------------- pretraining


def pretrain(experiment: I2PMAEExperiment, run_dir: str | Path, resume: bool = False, progress: bool = True,
             points: np.ndarray | None = None, teacher=None):
    """Pretrain on the configured shapes (or `points` (S, P, 3) if given). Returns (model, TrainResult, info)."""
    from pointlift.engine.seed import seed_everything
    from pointlift.engine.trainer import train

    seed_everything(experiment.train.seed)  # before anything random is built: runs repeat exactly
    method = experiment.method
    device = torch.device(experiment.device) if experiment.device else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if points is None:
        points, _, _ = load_pretrain_points(experiment.data, "train")
    info = {"num_shapes": int(len(points))}
    needs_teacher = method.guided_masking or method.feature_target
    maps = None
    if needs_teacher:
        teacher = teacher if teacher is not None else build_teacher(experiment.teacher, method.image_size)
        teacher = teacher.to(device)
        info["teacher"] = teacher.identity()
        start = time.perf_counter()
        maps = build_teacher_cache(teacher, points, method.image_size, method.footprint,
                                   cache_dir=experiment.data.cache_dir, batch_size=32,
                                   storage_dtype=experiment.data.cache_dtype, progress=progress)
        info["cache_seconds"] = time.perf_counter() - start
        info["cache_built"] = maps.built
    model = I2PMAE(method, teacher if needs_teacher else None)
    dataset = PretrainShapes(points, maps, experiment.data.scale_range, experiment.data.translate,
                             mask_tokens=method.model.num_centers[-1])
    start = time.perf_counter()
    result = train(model, dataset, experiment.train, run_dir, resume=resume, device=device, progress=progress,
                   config_for_checkpoint=config_to_dict(experiment), model_spec=model_spec(method))
    info["train_seconds"] = time.perf_counter() - start
    return model, result, info


def pretrain_command(config_path, resume: bool = False, run_dir=None) -> Path:
    """`pointlift pretrain i2p-mae --config FILE [--resume] [--run-dir DIR]`."""
    from pointlift.engine.rundir import create_run_dir

    experiment = load_config(config_path, I2PMAEExperiment)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    run_dir = create_run_dir(experiment.name, experiment.runs_root, run_dir, config=experiment)
    _, result, info = pretrain(experiment, run_dir, resume=resume)
    summary = {"step": result.step, "stop_reason": result.stop_reason,
               "checkpoint": str(result.checkpoint_path), **info}
    from pointlift.engine.distributed import is_main_process
    from pointlift.engine.rundir import write_json

    write_json(Path(run_dir) / "summary.json", summary)  # rank 0 only
    if is_main_process():
        print(f"i2p-mae: {result.step} steps, checkpoint {result.checkpoint_path}")
    return Path(run_dir)


# --------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embed_array(model: nn.Module, points: np.ndarray, batch_size: int = 64, device=None,
                pooling: str = "max") -> np.ndarray:
    """Frozen global features (S, F) of point sets (S, P, 3)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = [model.embed(torch.from_numpy(np.ascontiguousarray(points[i:i + batch_size])).to(device), pooling)
            .float().cpu().numpy() for i in range(0, len(points), batch_size)]
    model.train(was_training)
    return np.concatenate(rows)


def finetune_classifier(encoder_state: dict | None, model_config: PointM2AEConfig, train_points: np.ndarray,
                        train_labels: np.ndarray, test_points: np.ndarray, test_labels: np.ndarray,
                        num_classes: int, epochs: int = 10, batch_size: int = 32, lr: float = 5e-4,
                        weight_decay: float = 0.05, device=None, seed: int = 0) -> dict:
    """Fine-tune encoder + (LayerNorm -> concat(mean, max) -> MLP) head with AdamW and a cosine schedule.

    `encoder_state`: the encoder's weights (keys as in `PointM2AEEncoder`, e.g. from
    `model.backbone.encoder.state_dict()`), or None for random init. Returns losses and test accuracy.
    """
    torch.manual_seed(seed)
    device = torch.device(device or "cpu")
    classifier = PointM2AEClassifier(num_classes, model_config).to(device)
    if encoder_state is not None:
        classifier.encoder.load_state_dict(encoder_state)
    train_x = torch.from_numpy(np.ascontiguousarray(train_points, dtype=np.float32))
    train_y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    steps_per_epoch = max(1, len(train_x) // batch_size)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    losses = []
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x))
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            scale = 0.8 + 0.45 * torch.rand(len(index), 1, 1)
            points = (train_x[index] * scale + (torch.rand(len(index), 1, 3) - 0.5) * 0.2).to(device)
            loss = F.cross_entropy(classifier(points), train_y[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss))
    classifier.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_points), batch_size):
            points = torch.from_numpy(np.ascontiguousarray(test_points[i:i + batch_size], dtype=np.float32))
            predicted = classifier(points.to(device)).argmax(dim=-1).cpu().numpy()
            correct += int((predicted == np.asarray(test_labels)[i:i + batch_size]).sum())
    return {"losses": losses, "test_accuracy": correct / max(len(test_points), 1)}


# --------------------------------------------------------------------------------- quickstart


def quickstart_model_config() -> PointM2AEConfig:
    """A tiny backbone that pretrains for a few hundred steps within the quickstart's minute."""
    return PointM2AEConfig(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4),
                           encoder_dims=(48, 96, 192), encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=16,
                           decoder_dims=(192, 96), decoder_depths=(1, 1), drop_path=0.0)


def quickstart(run_dir, progress: bool = True) -> dict:
    """~1 minute on 2 CPU cores: pretrain a tiny I2P-MAE on synthetic shapes (bundled EfficientNet-Lite0
    teacher), then compare linear-SVM accuracy of its frozen features with the untrained network's."""
    from pointlift.engine.config import OptimConfig
    from pointlift.tasks.svm import svm_accuracy

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    experiment = I2PMAEExperiment(
        name="quickstart",
        method=I2PMAEConfig(model=quickstart_model_config(), image_size=96, temperature=0.5),
        teacher=TeacherConfig(stage=-2),
        data=DataConfig(source="synthetic", num_points=256, max_shapes=48, cache_dir=None),
        train=TrainConfig(epochs=8, batch_size=16, log_every=3, checkpoint_every=0,
                          optim=OptimConfig(lr=1e-3, weight_decay=0.05, warmup_steps=10)),
        device="cpu")
    train_points, train_labels, _ = load_pretrain_points(experiment.data, "train")
    test_points, test_labels, class_names = load_pretrain_points(experiment.data, "test")
    untrained = I2PMAE(I2PMAEConfig(model=quickstart_model_config(), feature_target=False,
                                    guided_masking=False))
    model, result, info = pretrain(experiment, run_dir / "pretrain", progress=progress, points=train_points)
    scores, features = {}, {}
    for name, network in (("untrained", untrained), ("i2p_mae", model)):
        features[name] = embed_array(network, test_points)
        accuracy, _ = svm_accuracy(embed_array(network, train_points), train_labels,
                                   features[name], test_labels, folds=3)
        scores[name] = accuracy
    losses = [row["loss"] for row in result.history if "loss" in row]
    plots = _quickstart_plots(run_dir, model, test_points, test_labels, class_names, features, experiment)
    figures = {"svm_acc_untrained": scores["untrained"], "svm_acc_i2p_mae": scores["i2p_mae"],
               "loss_first": losses[0] if losses else float("nan"),
               "loss_last": losses[-1] if losses else float("nan")}
    return {"figures": figures, "plots": plots}


def _quickstart_plots(run_dir: Path, model: "I2PMAE", points: np.ndarray, labels: np.ndarray,
                      class_names: list, features: dict, experiment: I2PMAEExperiment) -> list:
    """What the 2D teacher sees (depth views + saliency), the loss curves, and a t-SNE of frozen
    features before and after pretraining."""
    from pointlift.geometry.render import render_depth_views, views_to_teacher_input
    from pointlift.report import plot_curves, plot_depth_views, plot_tsne, read_metrics_csv

    plots = []
    views = render_depth_views(torch.from_numpy(points[:1]), experiment.method.image_size, experiment.method.footprint)
    saliency = None
    if model.teacher is not None:
        images = views_to_teacher_input(views.images, model.teacher.mean, model.teacher.std)
        saliency = model.teacher.saliency(images).numpy()
    plots.append(("the three depth views of a shape and the teacher's saliency",
                  plot_depth_views(views.images[0].numpy(), saliency, run_dir / "i2p_mae_views.png",
                                   title=f"a {class_names[int(labels[0])]} as the 2D teacher sees it")))
    curves = {k: v for k, v in read_metrics_csv(run_dir / "pretrain" / "metrics.csv").items()
              if k.startswith("loss")}
    if curves:
        plots.append(("pretraining losses", plot_curves(curves, run_dir / "i2p_mae_losses.png",
                                                        title="I2P-MAE pretraining")))
    plots.append(("t-SNE of frozen encoder features on test shapes, before and after pretraining",
                  plot_tsne({"untrained": features["untrained"], "after I2P-MAE": features["i2p_mae"]},
                            labels, class_names, run_dir / "i2p_mae_tsne.png")))
    return plots
