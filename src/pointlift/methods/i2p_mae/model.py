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

`ddp_equivalent: true` (off by default; see I2PMAEConfig) makes N torchrun processes take the steps of
one process: losses over the global batch's token counts, drop-path from each sample's own stream, the
token-0 quirk on the global batch's first cloud only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pointlift.engine.distributed import get_rank, get_world_size, global_count
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry.readback import point_pixels, read_back
from pointlift.methods.i2p_mae.cache import released_view_maps, teacher_maps
from pointlift.methods.i2p_mae.config import I2PMAEConfig
from pointlift.methods.i2p_mae.masking import guided_top_mask, released_top_mask
from pointlift.models.point_m2ae.blocks import DropPath, pointwise
from pointlift.models.point_m2ae.hierarchy import Hierarchy, random_top_mask
from pointlift.models.point_m2ae.model import PointM2AE, encode_for_features, global_feature
from pointlift.ops import chamfer_l2, farthest_point_sample, gather


# --------------------------------------------------------------------------------- targets

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


def normalize_point_sets(points: torch.Tensor) -> torch.Tensor:
    """Centre each set (B, P, 3) on its mean and scale it into the unit sphere (the pretraining frame)."""
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1).clamp_min(1e-9)
    return centred / radius[:, None, None]


# --------------------------------------------------------------------------------- model


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
        return released_view_maps(self.teacher, images, with_saliency=self.method.guided_masking)

    def teacher_outputs(self, points: torch.Tensor, batch: dict):
        """What the 2D teacher sees (item 1 above): every point's pixel (B, 3, P, 2) in each view, and the
        teacher's features (B, 3, C, h, w) and saliency (B, 3, h, w), from the batch's cached maps or
        computed now (released views of the augmented batch, or the invariant views)."""
        config = self.method
        pixels, images = point_pixels(points, config.renderer, config.image_size, config.footprint)
        features, saliency = batch.get("teacher_features"), batch.get("teacher_saliency")
        if features is None:
            if images is None:
                features, saliency = teacher_maps(self.teacher, points, config.image_size, config.footprint,
                                                  with_saliency=config.guided_masking)
            else:
                features, saliency = self.teacher_on_views(images)
        return pixels, features, saliency

    def top_visible(self, hierarchy: Hierarchy, batch: dict, pixels, saliency, parts: dict,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Masking (item 2): the visible top tokens (B, T) bool - the batch's fixed `top_visible`, else
        2D-guided (saliency read at each top centre, mean over views; kept in `parts`), else random."""
        config = self.method
        top = hierarchy.num_scales - 1
        num_top = hierarchy.centers[top].shape[1]
        visible = batch.get("top_visible")
        noise = batch.get("mask_noise")  # drawn per sample by the dataset: the same masks on any rank
        if config.guided_masking:
            centre_pixels = _pixels_of(pixels, hierarchy.point_index(top))
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
            points = batch["points"]
            visible = random_top_mask(points.shape[0], num_top, config.mask_ratio, generator,
                                      device=None if generator is not None else points.device)
        return visible

    def reconstruction_loss(self, hierarchy: Hierarchy, final: torch.Tensor, masks: list) -> dict:
        """3D target (item 3): masked tokens at the reconstruction scale rebuild their members' centred
        coordinates (Chamfer-L2)."""
        scale = self.method.model.recon_scale
        masked = ~masks[scale]
        group = hierarchy.relative[scale]
        rows = final[masked]
        pred_3d = pointwise(self.rec_head_3d, rows).reshape(rows.shape[0], -1, 3)
        gt_3d = group[masked].to(pred_3d.dtype)
        if self.method.ddp_equivalent:
            loss_3d = global_mean(chamfer_l2(pred_3d, gt_3d), final)
        else:
            loss_3d = chamfer_l2(pred_3d, gt_3d).mean() if len(rows) else final.sum() * 0.0
        return dict(pred_3d=pred_3d, gt_3d=gt_3d, loss_3d=loss_3d)

    def feature_loss(self, hierarchy: Hierarchy, final: torch.Tensor, masks: list, pixels,
                     features: torch.Tensor) -> dict:
        """2D target (item 3): visible tokens predict each member's teacher feature in each view (MSE)."""
        config = self.method
        scale = config.model.recon_scale
        kept = masks[scale]
        members = hierarchy.neighbors[scale]  # (B, n, k) into scale - 1 (or the input points)
        member_points = members if scale == 0 else hierarchy.point_index(scale - 1).gather(
            1, members.flatten(1)).reshape(members.shape)
        batch_size, count, k = member_points.shape
        member_pixels = _pixels_of(pixels, member_points.flatten(1))
        values = read_back(features.float(), member_pixels, config.image_size)  # (B, V, n*k, C)
        values = values.reshape(batch_size, -1, count, k, values.shape[-1]).permute(0, 2, 3, 1, 4)  # (B,n,k,V,C)
        target = normalize_targets(values[kept], config.target_norm).flatten(-2)  # (L, k, V*C)
        vis_rows = final[kept]
        pred_2d = pointwise(self.rec_head_2d, vis_rows).reshape(target.shape)
        if config.ddp_equivalent:
            loss_2d = global_mean((pred_2d.float() - target) ** 2, final)
        else:
            loss_2d = F.mse_loss(pred_2d.float(), target)
        return dict(pred_2d=pred_2d, target_2d=target, member_points=member_points, loss_2d=loss_2d)

    def drop_path_layers(self) -> list[DropPath]:
        """The stochastic-depth modules that drop anything, in a fixed order (one noise column each)."""
        return [m for m in self.modules() if isinstance(m, DropPath) and m.rate > 0]

    def run(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Every intermediate of one pretraining forward pass (the reference tests read them)."""
        layers = self.drop_path_layers() if self.method.ddp_equivalent and "drop_noise" in batch else []
        for column, layer in enumerate(layers):  # each sample's drops from its own stream (the dataset's)
            layer.noise = batch["drop_noise"][:, column]
        try:
            return self._run(batch, generator)
        finally:
            for layer in layers:
                layer.noise = None

    def _run(self, batch: dict, generator: torch.Generator | None) -> dict:
        config = self.method
        points = batch["points"]
        hierarchy = self.group(points)
        scale = config.model.recon_scale
        parts = {"hierarchy": hierarchy}
        features = saliency = pixels = None
        if config.guided_masking or config.feature_target:
            pixels, features, saliency = self.teacher_outputs(points, batch)
        visible = self.top_visible(hierarchy, batch, pixels, saliency, parts, generator).to(points.device)
        # encode the visible tokens, decode [visible, mask tokens] down to the reconstruction scale
        # ddp_equivalent: the quirk's "first cloud" is the global batch's, which rank 0 holds
        quirk = bool(config.released_quirks) and (not config.ddp_equivalent or get_rank() == 0)
        encoded, decoded, masks = self.encode_decode(hierarchy, visible, quirk)
        parts.update(encoded=encoded, decoded=decoded, visible=masks)
        final = decoded.final  # (B, n, C) at the reconstruction scale, token order
        parts.update(self.reconstruction_loss(hierarchy, final, masks))
        loss = config.recon_weight * parts["loss_3d"]
        if config.feature_target:
            parts.update(self.feature_loss(hierarchy, final, masks, pixels, features))
            loss = loss + config.feature_weight * parts["loss_2d"]
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

    # -- features (callers that only read them wrap this in torch.no_grad) ---------------------------
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



def global_mean(values: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over every process's elements, scaled by the process count: DDP averages the
    processes' gradients, so their sum of (local sum x N / global count) / N is the gradient of the
    global batch's mean, as one process computes it. `anchor` keeps the graph when this process holds none."""
    total = global_count(values.numel(), values.device)
    local = values.sum() if values.numel() else anchor.sum() * 0.0
    return local * (get_world_size() / max(total, 1))


def _pixels_of(pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The pixels (B, V, n, 2) of input points `index` (B, n), from every point's pixels (B, V, P, 2)."""
    return pixels.gather(2, index[:, None, :, None].expand(-1, pixels.shape[1], -1, 2))
