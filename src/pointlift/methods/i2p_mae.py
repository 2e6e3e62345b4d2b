"""I2P-MAE: image-to-point masked autoencoding (Zhang et al., CVPR 2023; GUIDE §1.3).

A Point-M2AE hierarchical encoder learns by masked autoencoding, helped by a frozen 2D model that
looks at three orthographic depth views of the shape.

`recipe: official` (the default) is the released method (ZrrSkywalker/I2P-MAE @ 7d4e519), checked
tensor by tensor against ../shared/reference/i2p-mae by tests/test_i2p_mae_reference.py:
1. Released depth views of the augmented batch (raw signed depth, border clamp, ImageNet
   normalisation, `pointlift.geometry.render.released_depth_views`); the frozen teacher runs on them
   at every step; each point reads the bicubically upsampled feature / saliency at its pixel.
2. 2D-guided masking: saliency at each top centre, mean over the 3 views; the visible top tokens are
   the first num_keep of `torch.multinomial(softmax(saliency), T, replacement=False)` (with CLIP
   attention values this is close to uniform). Lower scales: visible iff in a visible parent's group,
   with the released side effect that token 0 of the batch's first cloud is always visible.
3. Targets on the final decoder output at the middle scale: masked tokens predict their members'
   centred coordinates (`rec_head_3d`, Chamfer-L2); visible tokens predict the raw teacher feature
   of each member point in each view (`rec_head_2d`, members x views x C outputs, MSE); loss 1 : 1.
4. Augmentation: per-axis scale U(2/3, 3/2) and translation U(-0.2, 0.2) per cloud and step.
5. Evaluation features: the released `forward(eval=True)`: max over the top tokens with no mask
   (tokens in no group one scale up are dropped, as released).

`recipe: pointlift` sets pointlift's own choices, each also a named option on its own:
`masking: standardised` (softmax of per-shape standardised saliency / `temperature`, Gumbel-top-k),
`renderer: invariant` with `data.cache_teacher` (views that do not change under uniform scaling and
translation, so the teacher runs once per shape; augmentation is then uniform scaling),
`target_norm: layer | layer_batch` (normalised 2D targets), `recon_weight` 100, no released quirks.
`guided_masking=False` and `feature_target=False` together give the 3D-only Point-M2AE baseline.
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

from pointlift.data.shape_sets import prepare_point_sets  # one resampling + normalisation for every command
from pointlift.engine.config import TrainConfig, config_to_dict, load_config, require
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry.render import released_depth_views, released_teacher_input, render_depth_views
from pointlift.methods.i2p_mae_cache import TeacherMaps, build_teacher_cache, read_back, teacher_maps
from pointlift.models.point_m2ae import (PointM2AE, PointM2AEClassifier, PointM2AEConfig, encode_for_features,
                                         global_feature, pointwise, random_top_mask)
from pointlift.ops import chamfer_l2, farthest_point_sample, gather

KIND = "i2p_mae"

# Settings each recipe gives to the options left unset (None).
RECIPES = {
    "official": dict(masking="released", renderer="released", target_norm="none", recon_weight=1.0,
                     feature_weight=1.0, released_quirks=True),
    "pointlift": dict(masking="standardised", renderer="invariant", target_norm="layer", recon_weight=100.0,
                      feature_weight=1.0, released_quirks=False),
}
DATA_RECIPES = {
    "official": dict(augment="per_axis", scale_range=(2 / 3, 3 / 2), translate=0.2, cache_teacher=False),
    "pointlift": dict(augment="uniform", scale_range=(0.8, 1.25), translate=0.1, cache_teacher=True),
}


# --------------------------------------------------------------------------------- configuration


@dataclass
class I2PMAEConfig:
    """The method (stored as the checkpoint's model_spec). Options left None take the recipe's value."""

    model: PointM2AEConfig = field(default_factory=PointM2AEConfig)
    recipe: Literal["official", "pointlift"] = "official"
    mask_ratio: float = 0.8
    guided_masking: bool = True
    feature_target: bool = True
    masking: Optional[Literal["released", "standardised"]] = None
    temperature: float = 0.5  # masking "standardised" only; lower = greedier
    renderer: Optional[Literal["released", "invariant"]] = None
    target_norm: Optional[Literal["none", "layer", "layer_batch"]] = None
    recon_weight: Optional[float] = None
    feature_weight: Optional[float] = None
    released_quirks: Optional[bool] = None  # token 0 of cloud 0 visible; ungrouped tokens dropped at eval
    image_size: int = 224
    footprint: int = 5
    teacher_channels: int = 0  # set from the teacher when the model is built

    def __post_init__(self):
        require(self.recipe in RECIPES, "recipe", f"must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        require(0.0 < self.mask_ratio < 1.0, "mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.image_size >= 16, "image_size", f"must be >= 16, got {self.image_size}")
        require(self.footprint >= 1 and self.footprint % 2 == 1, "footprint", "must be a positive odd integer")
        require(self.recon_weight >= 0 and self.feature_weight >= 0, "recon_weight", "loss weights must be >= 0")
        require(self.teacher_channels >= 0, "teacher_channels", "must be >= 0")
        require(self.model.num_scales >= 2 or not self.feature_target, "model",
                "the 2D target needs at least two scales (members of the reconstructed tokens)")


@dataclass
class TeacherConfig:
    """The frozen 2D network. The paper's: `vit_base_patch16_clip_224.openai` with `project: true`
    (patch tokens after CLIP's projection, 512-d) - hub weights, needs internet the first time."""

    name: str = "tf_efficientnet_lite0"
    weights: Optional[str] = None  # None = bundled (EfficientNet-Lite) or hub; or a local file
    stage: int = -1
    half: bool = False
    project: bool = False  # ViT: apply the model's head (CLIP: visual projection) to every patch token


@dataclass
class DataConfig:
    """Pretraining shapes and augmentation. augment/scale_range/translate/cache_teacher left None take
    the recipe's value: official = per-axis scale U(2/3, 3/2) + translate 0.2, teacher every step;
    pointlift = uniform scale U(0.8, 1.25) + translate 0.1, cached teacher maps."""

    # "synthetic", or any shape set of pointlift.data.shape_sets (format name or "auto")
    source: str = "modelnet10_vox"
    path: str = "../shared/data/modelnet10_vox32.npz"
    variant: str = "PB_T50_RS"  # ScanObjectNN file variant (shape_sets)
    columns: Optional[int] = None  # values per point of raw .bin point files (shape_sets)
    num_points: int = 1024
    max_shapes: Optional[int] = None  # first N training shapes only (CPU budgets)
    augment: Optional[Literal["per_axis", "uniform"]] = None
    scale_range: Optional[tuple[float, float]] = None
    translate: Optional[float] = None
    cache_teacher: Optional[bool] = None
    cache_dir: Optional[str] = "~/.cache/pointlift/i2p_mae"
    cache_dtype: Literal["float16", "float32"] = "float16"
    seed: int = 0

    def __post_init__(self):
        require(self.num_points >= 1, "num_points", "must be >= 1")
        if self.scale_range is not None:
            require(0 < self.scale_range[0] <= self.scale_range[1], "scale_range", "need 0 < low <= high")
        require(self.translate is None or self.translate >= 0, "translate", "must be >= 0")

        from pointlift.data.shape_sets import FORMATS
        require(self.source in ("synthetic", "auto", *FORMATS), "source",
                f"must be 'synthetic', 'auto' or one of {', '.join(FORMATS)}; got {self.source!r}")

    def resolve(self, recipe: str) -> "DataConfig":
        for key, value in DATA_RECIPES[recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        return self


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

    def __post_init__(self):
        self.data.resolve(self.method.recipe)
        if self.data.cache_teacher and (self.method.guided_masking or self.method.feature_target):
            require(self.method.renderer == "invariant", "data.cache_teacher",
                    "a cached teacher needs method.renderer: invariant (released views change with the augmentation)")
            require(self.data.augment == "uniform", "data.cache_teacher",
                    "a cached teacher needs data.augment: uniform (per-axis scaling changes the views)")


# --------------------------------------------------------------------------------- masking


def released_top_mask(saliency: torch.Tensor, ratio: float, generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """Visible mask (B, T) bool, the released `mask_2D_guided`: the first T - int(ratio*T) tokens of
    `torch.multinomial(softmax(saliency), T, replacement=False)` stay visible.

    With `noise` (B, T) uniform (drawn per sample by the dataset, so that every DDP rank draws the same
    masks), the same sequential draw is made by Gumbel-top-k on log softmax(saliency): the same
    distribution as the released call, from the sample's own random stream."""
    batch, tokens = saliency.shape
    num_keep = tokens - int(ratio * tokens)
    if not 0 < num_keep <= tokens:
        raise PointliftConfigError(f"mask ratio {ratio} leaves no visible token among {tokens}")
    probs = F.softmax(saliency.float(), dim=1)
    if noise is not None:
        gumbel = -torch.log(-torch.log(noise.to(probs.device).float().clamp(1e-12, 1 - 1e-7)))
        drawn = (torch.log_softmax(saliency.float(), dim=1) + gumbel).topk(num_keep, dim=1).indices
        return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, drawn, True)
    drawn = torch.multinomial(probs, tokens, replacement=False, generator=generator)
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, drawn[:, :num_keep], True)


def guided_top_mask(saliency: torch.Tensor, ratio: float, temperature: float = 0.5,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """pointlift's `masking: standardised`. Visible mask (B, T) bool: T - int(ratio*T) tokens drawn
    without replacement from softmax(z / temperature), z = per-shape standardised saliency (B, T).
    Gumbel-top-k draws exactly that sequential sampling; `noise` (B, T) uniform, when given, is the
    per-sample draw (the same mask on any DDP rank)."""
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


def normalize_targets(targets: torch.Tensor, mode: str) -> torch.Tensor:
    """2D regression targets (..., C): "none" = raw teacher features (official); "layer" = LayerNorm
    over C per vector; "layer_batch" = then a per-channel standardisation over all vectors of the
    batch (statistics detached; the teacher is frozen anyway).

    Why normalise (pointlift's option): teacher features of depth renders share a large common
    component, so a head that outputs the constant mean already reaches most of the attainable MSE."""
    if mode == "none":
        return targets.float()
    if mode not in ("layer", "layer_batch"):
        raise PointliftConfigError(f"i2p_mae: unknown target_norm {mode!r}")
    target = F.layer_norm(targets.float(), targets.shape[-1:])
    if mode == "layer":
        return target
    flat = target.reshape(-1, target.shape[-1])
    mean = flat.mean(dim=0)
    std = flat.std(dim=0).clamp_min(1e-3) if flat.shape[0] > 1 else torch.ones_like(mean)
    return (target - mean) / std


def point_pixels(points: torch.Tensor, renderer: str, image_size: int, footprint: int):
    """(u, v) pixels (B, 3, P, 2) of every input point under the chosen renderer, and for the released
    renderer its raw views (B, 3, H, W) (None for the invariant one, whose views the teacher cache owns)."""
    if renderer == "released":
        images, projection = released_depth_views(points, image_size, footprint)
        return projection.pixels(points).flip(-1), images
    return render_depth_views(points, image_size, footprint).pixels, None


# --------------------------------------------------------------------------------- model


def normalize_point_sets(points: torch.Tensor) -> torch.Tensor:
    """Centre each set (B, P, 3) on its mean and scale it into the unit sphere (the pretraining frame)."""
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1).clamp_min(1e-9)
    return centred / radius[:, None, None]


class I2PMAE(PointM2AE):
    """Point-M2AE + `rec_head_3d` + `rec_head_2d`, with the released parameter names: a released
    I2P-MAE state dict (without `clip_model.*`) loads with `load_state_dict`. The teacher is frozen and
    never checkpointed.

    `forward(batch)` takes {"points": (B, P, 3)}, optionally cached maps {"teacher_features":
    (B, 3, C, h, w), "teacher_saliency": (B, 3, h, w)} and a fixed {"top_visible": (B, T) bool};
    without maps the teacher runs on the fly.
    """

    checkpoint_exclude = ("teacher.",)

    def __init__(self, config: I2PMAEConfig, teacher: nn.Module | None = None):
        if teacher is not None and config.feature_target and config.teacher_channels in (0, teacher.channels):
            config.teacher_channels = int(teacher.channels)
        if config.feature_target and config.teacher_channels <= 0:
            raise PointliftConfigError("i2p_mae: feature_target needs teacher_channels (or a teacher)")
        super().__init__(config.model)
        self.config = self.method = config
        model = config.model
        width, scale = model.decoder_dims[-1], model.recon_scale
        self.rec_head_3d = nn.Conv1d(width, 3 * model.group_sizes[scale], 1)
        if config.feature_target:
            self.rec_head_2d = nn.Conv1d(width, config.teacher_channels * model.group_sizes[scale] * 3, 1)
        self.teacher = teacher if (config.guided_masking or config.feature_target) else None

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}  # I2P-MAE's optimiser skips `*token*`

    # -- 2D side --------------------------------------------------------------------------------
    def teacher_on_views(self, images: torch.Tensor):
        """Teacher features (B, 3, C, h, w) and saliency (B, 3, h, w) of raw released views (B, 3, H, W)."""
        if self.teacher is None:
            raise PointliftConfigError("i2p_mae: this model has no teacher; pass teacher maps in the batch")
        with torch.no_grad():
            features, saliency = self.teacher.features_and_saliency(released_teacher_input(images),
                                                                    with_saliency=self.method.guided_masking)
        batch = images.shape[0]
        features = features.float().reshape(batch, 3, *features.shape[1:])
        if saliency is not None:
            saliency = saliency.float().reshape(batch, 3, *saliency.shape[1:])
        return features, saliency

    def run(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Every intermediate of one pretraining forward pass (the reference tests read them)."""
        config = self.method
        points = batch["points"]
        hierarchy = self.group(points)
        top = hierarchy.num_scales - 1
        scale = config.model.recon_scale
        num_top = hierarchy.centers[top].shape[1]
        parts = {"hierarchy": hierarchy}
        features = saliency = pixels = None
        if config.guided_masking or config.feature_target:
            pixels, images = point_pixels(points, config.renderer, config.image_size, config.footprint)
            features, saliency = batch.get("teacher_features"), batch.get("teacher_saliency")
            if features is None:
                if images is None:
                    features, saliency = teacher_maps(self.teacher, points, config.image_size, config.footprint,
                                                      with_saliency=config.guided_masking)
                else:
                    features, saliency = self.teacher_on_views(images)

        def pixels_of(index):  # (B, n) input-point indices -> (B, V, n, 2)
            return pixels.gather(2, index[:, None, :, None].expand(-1, pixels.shape[1], -1, 2))

        visible = batch.get("top_visible")
        noise = batch.get("mask_noise")  # drawn per sample by the dataset: the same masks on any rank
        if config.guided_masking:
            centre_pixels = pixels_of(hierarchy.point_index(top))
            per_view = read_back(saliency[:, :, None].float(), centre_pixels, config.image_size)[..., 0]
            parts["saliency_per_view"] = per_view
            parts["top_saliency"] = top_saliency = per_view.mean(dim=1)
            if visible is None and config.masking == "released":
                visible = released_top_mask(top_saliency, config.mask_ratio, generator, noise=noise)
            elif visible is None:
                visible = guided_top_mask(top_saliency, config.mask_ratio, config.temperature, generator, noise=noise)
        elif visible is None and noise is not None:  # random_top_mask's rule on the sample's own uniform noise
            visible = noise.argsort(dim=1).argsort(dim=1) >= int(config.mask_ratio * num_top)
        elif visible is None:
            visible = random_top_mask(points.shape[0], num_top, config.mask_ratio, generator,
                                      device=None if generator is not None else points.device)
        visible = visible.to(points.device)
        encoded, decoded, masks = self.encode_decode(hierarchy, visible, bool(config.released_quirks))
        parts.update(encoded=encoded, decoded=decoded, visible=masks)
        final = decoded.final  # (B, n, C) at the reconstruction scale, token order

        # 3D: masked tokens rebuild their members' centred coordinates (Chamfer-L2)
        masked = ~masks[scale]
        group = hierarchy.relative[scale]
        rows = final[masked]
        pred_3d = pointwise(self.rec_head_3d, rows).reshape(rows.shape[0], -1, 3)
        gt_3d = group[masked].to(pred_3d.dtype)
        loss_3d = chamfer_l2(pred_3d, gt_3d).mean() if len(rows) else final.sum() * 0.0
        parts.update(pred_3d=pred_3d, gt_3d=gt_3d, loss_3d=loss_3d)
        loss = config.recon_weight * loss_3d

        # 2D: visible tokens predict each member's teacher feature in each view (MSE)
        if config.feature_target:
            kept = masks[scale]
            members = hierarchy.neighbors[scale]  # (B, n, k) into scale - 1 (or the input points)
            member_points = members if scale == 0 else hierarchy.point_index(scale - 1).gather(
                1, members.flatten(1)).reshape(members.shape)
            batch_size, count, k = member_points.shape
            values = read_back(features.float(), pixels_of(member_points.flatten(1)), config.image_size)  # (B,V,n*k,C)
            values = values.reshape(batch_size, -1, count, k, values.shape[-1]).permute(0, 2, 3, 1, 4)  # (B,n,k,V,C)
            target = normalize_targets(values[kept], config.target_norm).flatten(-2)  # (L, k, V*C)
            vis_rows = final[kept]
            pred_2d = pointwise(self.rec_head_2d, vis_rows).reshape(target.shape)
            loss_2d = F.mse_loss(pred_2d.float(), target)
            parts.update(pred_2d=pred_2d, target_2d=target, member_points=member_points, loss_2d=loss_2d)
            loss = loss + config.feature_weight * loss_2d
        # Scales below the reconstruction scale feed no loss (as released); a zero term gives their final
        # LayerNorm a (zero) gradient so DDP sees every parameter used.
        for unused in encoded.tokens[:scale]:
            loss = loss + 0.0 * unused.sum()
        parts["loss"] = loss
        return parts

    def forward(self, batch: dict) -> dict:
        parts = self.run(batch)
        out = {"loss": parts["loss"], "loss_3d": parts["loss_3d"].detach()}
        if "loss_2d" in parts:
            out["loss_2d"] = parts["loss_2d"].detach()
        if "top_saliency" in parts:  # how salient the kept tokens are vs the average token (0.5 = no bias)
            sal, visible = parts["top_saliency"], parts["visible"][-1]
            ranks = sal.argsort(dim=1).argsort(dim=1).float() / max(sal.shape[1] - 1, 1)
            out["visible_saliency_rank"] = ranks[visible].mean().detach()
        return out

    # -- frozen features ------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, points: torch.Tensor, pooling: str = "max") -> torch.Tensor:
        """Global feature (B, F) of point sets (B, P, 3): normalised to the unit sphere, FPS-subsampled
        (or repeated) to the configured point count, then the released evaluation encoding (no mask)
        and "max" pooling of the top tokens after `encoder_norms` (the released SVM features)."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise PointliftDataError("<points>", f"expected (B, P, 3) point sets, got {tuple(points.shape)}")
        points = normalize_point_sets(points.float())
        wanted = self.method.model.num_points
        if points.shape[1] > wanted:
            points = gather(points, farthest_point_sample(points, wanted))
        elif points.shape[1] < wanted:
            points = points[:, torch.arange(wanted, device=points.device) % points.shape[1]]
        return global_feature(encode_for_features(self.h_encoder, points, bool(self.method.released_quirks)), pooling)


def build_embedder(model_spec_config: dict) -> I2PMAE:
    """The pretraining model without its teacher; its state dict matches an I2P-MAE checkpoint."""
    config = load_config(dict(model_spec_config), I2PMAEConfig)
    return I2PMAE(config, teacher=None)


def model_spec(config: I2PMAEConfig) -> dict:
    return {"kind": KIND, "config": config_to_dict(config)}


def load_released_state(model: I2PMAE, path: str | Path, strict: bool = True):
    """Load a released I2P-MAE / Point-M2AE state dict (`.safetensors`, or a `.pth` whose `base_model`
    holds it): the names are ours; `clip_model.*` and a leading `module.` are dropped."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("base_model", state)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("clip_model.", "module.clip_model."))}
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return model.load_state_dict(state, strict=strict)


# --------------------------------------------------------------------------------- data


class PretrainShapes(torch.utils.data.Dataset):
    """Fixed point sets with scale-and-translate augmentation, plus their cached teacher maps if given.

    augment "per_axis" (the official recipe; I2P-MAE's `PointcloudScaleAndTranslate`): scale U(low, high) and shift
    U(-translate, translate) drawn per axis; "uniform" (pointlift's, keeps cached maps valid): one scale."""

    def __init__(self, points: np.ndarray, maps: TeacherMaps | None = None, scale_range=(2 / 3, 3 / 2),
                 translate: float = 0.2, augment: str = "per_axis", mask_tokens: int = 0):
        if maps is not None and len(maps) != len(points):
            raise PointliftConfigError(f"teacher maps for {len(maps)} shapes, but {len(points)} shapes given")
        if augment not in ("per_axis", "uniform"):
            raise PointliftConfigError(f"i2p_mae: unknown augment {augment!r}")
        if maps is not None and augment != "uniform":
            raise PointliftConfigError("i2p_mae: cached teacher maps need uniform scaling")
        self.points = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        self.maps = maps
        self.scale_range = scale_range
        self.translate = translate
        self.augment = augment
        self.mask_tokens = mask_tokens  # > 0: also draw the masking noise of that many top tokens

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(3 if self.augment == "per_axis" else 1)
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
    from pointlift.data.shape_sets import ShapeSetConfig, load_points

    return load_points(ShapeSetConfig(format=data.source, path=data.path, num_points=data.num_points,
                                      variant=data.variant, columns=data.columns, max_shapes=data.max_shapes,
                                      seed=data.seed), split)


def build_teacher(config: TeacherConfig, image_size: int):
    from pointlift.teachers.teacher import Teacher

    return Teacher(config.name, weights=config.weights, stage=config.stage, half=config.half, img_size=image_size,
                   project=config.project)


# --------------------------------------------------------------------------------- pretraining


def pretrain(experiment: I2PMAEExperiment, run_dir: str | Path, resume: bool = False, progress: bool = True,
             points: np.ndarray | None = None, teacher=None):
    """Pretrain on the configured shapes (or `points` (S, P, 3) if given). Returns (model, TrainResult, info).

    With `data.cache_teacher` the teacher runs once per shape before training (pointlift's option);
    otherwise it runs inside every training step on the augmented batch (the released recipe)."""
    from pointlift.engine.seed import seed_everything
    from pointlift.engine.trainer import train

    seed_everything(experiment.train.seed)  # before anything random is built: runs repeat exactly
    method, data = experiment.method, experiment.data
    device = torch.device(experiment.device) if experiment.device else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if points is None:
        points, _, _ = load_pretrain_points(data, "train")
    info = {"num_shapes": int(len(points)), "recipe": method.recipe}
    needs_teacher = method.guided_masking or method.feature_target
    maps = None
    if needs_teacher:
        teacher = teacher if teacher is not None else build_teacher(experiment.teacher, method.image_size)
        teacher = teacher.to(device)
        info["teacher"] = teacher.identity()
        if data.cache_teacher:
            start = time.perf_counter()
            maps = build_teacher_cache(teacher, points, method.image_size, method.footprint,
                                       cache_dir=data.cache_dir, batch_size=32,
                                       storage_dtype=data.cache_dtype, progress=progress)
            info["cache_seconds"] = time.perf_counter() - start
            info["cache_built"] = maps.built
    model = I2PMAE(method, teacher if needs_teacher else None)
    dataset = PretrainShapes(points, maps, data.scale_range, data.translate, data.augment,
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
    """Fine-tune encoder + I2P-MAE's fine-tuning head layout (LayerNorm -> mean + max -> MLP) with AdamW and a cosine schedule.

    `encoder_state`: the encoder's weights (keys as in `PointM2AEEncoder`, e.g. from
    `model.h_encoder.state_dict()`), or None for random init. Returns losses and test accuracy.
    """
    torch.manual_seed(seed)
    device = torch.device(device or "cpu")
    classifier = PointM2AEClassifier(num_classes, model_config).to(device)
    if encoder_state is not None:
        classifier.h_encoder.load_state_dict(encoder_state)
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
        method=I2PMAEConfig(model=quickstart_model_config(), recipe="pointlift", image_size=96, temperature=0.5),
        teacher=TeacherConfig(stage=-2),
        data=DataConfig(source="synthetic", num_points=256, max_shapes=48, cache_dir=None),
        train=TrainConfig(epochs=8, batch_size=16, log_every=3, checkpoint_every=0,
                          optim=OptimConfig(lr=1e-3, weight_decay=0.05, warmup_steps=10)),
        device="cpu")
    train_points, train_labels, _ = load_pretrain_points(experiment.data, "train")
    test_points, test_labels, class_names = load_pretrain_points(experiment.data, "test")
    untrained = I2PMAE(I2PMAEConfig(model=quickstart_model_config(), recipe="pointlift", feature_target=False,
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
