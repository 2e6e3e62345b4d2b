"""Point-M2AE hierarchical point transformer (GUIDE §1.3): the I2P-MAE 3D student.

Points are grouped once per batch into a coarse-to-fine hierarchy (FPS centres, each scale
sampling the previous scale's centres; kNN groups). Each scale embeds its groups with a
mini-PointNet, then runs a transformer stage. Masking is decided at the top (coarsest) scale
and propagated down, so a visible token only ever sees visible tokens below it. The decoder
fills masked top tokens with a learned mask token and upsamples by 3-NN feature propagation.

Scale index 0 is the finest (e.g. 512 centres), the last index the coarsest ("top", e.g. 64).
Norms are LayerNorms everywhere in the encoder, so no statistic mixes masked and visible tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from pointlift.errors import PointliftConfigError
from pointlift.ops import farthest_point_sample, gather, knn, three_nn_interpolate


# --------------------------------------------------------------------------- configuration

@dataclass
class PointM2AEConfig:
    """Sizes of the hierarchy, encoder and decoder. Defaults are the paper's (about 15 M parameters)."""

    num_points: int = 2048
    num_centers: tuple[int, ...] = (512, 256, 64)
    group_sizes: tuple[int, ...] = (16, 8, 8)
    encoder_dims: tuple[int, ...] = (96, 192, 384)
    encoder_depths: tuple[int, ...] = (5, 5, 5)
    num_heads: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    embed_hidden: int = 128  # mini-PointNet widths: hidden -> 2*hidden, then 4*hidden -> dim
    decoder_dims: tuple[int, ...] = (384, 192)
    decoder_depths: tuple[int, ...] = (1, 1)

    def __post_init__(self):
        for name in ("num_centers", "group_sizes", "encoder_dims", "encoder_depths", "decoder_dims", "decoder_depths"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        scales = len(self.num_centers)
        if scales == 0 or not (len(self.group_sizes) == len(self.encoder_dims) == len(self.encoder_depths) == scales):
            raise PointliftConfigError("point_m2ae: num_centers, group_sizes, encoder_dims and encoder_depths "
                                       "must have the same non-zero length")
        sizes = (self.num_points, *self.num_centers)
        if any(later > earlier for earlier, later in zip(sizes, sizes[1:])):
            raise PointliftConfigError(f"point_m2ae: centre counts must not grow: num_points, num_centers = {sizes}")
        if any(k > n for k, n in zip(self.group_sizes, sizes)):
            raise PointliftConfigError(f"point_m2ae: a group size exceeds the points it groups: {self.group_sizes} vs {sizes}")
        for dim in (*self.encoder_dims, *self.decoder_dims):
            if dim % self.num_heads:
                raise PointliftConfigError(f"point_m2ae: width {dim} is not divisible by num_heads={self.num_heads}")
        if not self.decoder_dims or len(self.decoder_dims) != len(self.decoder_depths) or len(self.decoder_dims) > scales:
            raise PointliftConfigError("point_m2ae: decoder_dims and decoder_depths need equal length, 1..number of scales")
        if not 0.0 <= self.drop_path < 1.0:
            raise PointliftConfigError(f"point_m2ae: drop_path must be in [0, 1), got {self.drop_path}")

    @property
    def num_scales(self) -> int:
        return len(self.num_centers)

    @classmethod
    def small(cls) -> "PointM2AEConfig":
        """A CPU-friendly configuration for tests and the quickstart."""
        return cls(num_points=1024, num_centers=(128, 64, 32), group_sizes=(16, 8, 8),
                   encoder_dims=(64, 128, 256), encoder_depths=(1, 1, 2), num_heads=4,
                   embed_hidden=32, decoder_dims=(256, 128), decoder_depths=(1, 1))


# --------------------------------------------------------------------------- grouping and masking

@dataclass
class Hierarchy:
    """Multi-scale grouping of one batch, computed once and shared by encoder, decoder and losses.

    centers[s]:   (B, n_s, 3) centres of scale s.
    neighbors[s]: (B, n_s, k_s) long indices of each group's members in the previous level
                  (the input points for s = 0, the centres of scale s-1 otherwise), nearest first.
    relative[s]:  (B, n_s, k_s, 3) member coordinates minus their centre.
    """

    points: torch.Tensor
    centers: list[torch.Tensor] = field(default_factory=list)
    neighbors: list[torch.Tensor] = field(default_factory=list)
    relative: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_scales(self) -> int:
        return len(self.centers)


def group_hierarchy(xyz: torch.Tensor, num_centers=(512, 256, 64), group_sizes=(16, 8, 8)) -> Hierarchy:
    """Group points (B, P, 3) into the FPS + kNN hierarchy of Point-M2AE."""
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise PointliftConfigError(f"group_hierarchy expects (B, P, 3) points, got {tuple(xyz.shape)}")
    hierarchy = Hierarchy(points=xyz)
    previous = xyz
    for count, k in zip(num_centers, group_sizes):
        centers = gather(previous, farthest_point_sample(previous, count))
        _, idx = knn(centers, previous, k)
        hierarchy.centers.append(centers)
        hierarchy.neighbors.append(idx)
        hierarchy.relative.append(gather(previous, idx) - centers[:, :, None, :])
        previous = centers
    return hierarchy


def random_top_mask(batch: int, num_tokens: int, ratio: float, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Visible mask (B, num_tokens) bool with int(ratio * num_tokens) tokens masked in every row."""
    num_masked = int(ratio * num_tokens)
    if not 0 <= num_masked < num_tokens:
        raise PointliftConfigError(f"mask ratio {ratio} leaves no visible token among {num_tokens}")
    if generator is not None:
        device = generator.device
    scores = torch.rand(batch, num_tokens, generator=generator, device=device)
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks >= num_masked


def propagate_visibility(hierarchy: Hierarchy, top_visible: torch.Tensor) -> list[torch.Tensor]:
    """Visible masks per scale (list of (B, n_s) bool, finest first) from the top-scale mask.

    A token below the top is visible only if it belongs to the kNN group of a visible parent.
    """
    top = hierarchy.num_scales - 1
    expected = hierarchy.centers[top].shape[:2]
    if tuple(top_visible.shape) != tuple(expected):
        raise PointliftConfigError(f"top visible mask has shape {tuple(top_visible.shape)}, expected {tuple(expected)}")
    masks = [None] * hierarchy.num_scales
    masks[top] = top_visible.bool()
    for scale in range(top, 0, -1):
        idx = hierarchy.neighbors[scale]  # members in scale - 1
        votes = masks[scale][..., None].expand_as(idx).to(torch.int32)
        counts = torch.zeros(idx.shape[0], hierarchy.centers[scale - 1].shape[1], dtype=torch.int32, device=idx.device)
        counts.scatter_add_(1, idx.flatten(1), votes.flatten(1))
        masks[scale - 1] = counts > 0
    return masks


# --------------------------------------------------------------------------- building blocks

class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention; `key_mask` (B, L) bool excludes keys (padded or masked tokens)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), key_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """A stack of blocks followed by a LayerNorm."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, rate) for rate in drop_paths[:depth])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


class TokenEmbed(nn.Module):
    """Mini-PointNet over one group (B, L, k, C_in) -> (B, L, C_out): per-member MLP, max-pool,
    concatenate the pooled vector back to each member, second MLP, max-pool."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(in_channels, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                   nn.Linear(hidden, 2 * hidden))
        self.second = nn.Sequential(nn.Linear(4 * hidden, 4 * hidden), nn.LayerNorm(4 * hidden), nn.GELU(),
                                    nn.Linear(4 * hidden, out_channels))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        members = self.first(groups)
        pooled = members.max(dim=-2, keepdim=True).values.expand_as(members)
        return self.second(torch.cat([pooled, members], dim=-1)).max(dim=-2).values


def _position_mlp(dim: int) -> nn.Module:
    """Positional embedding of centres (x, y, z) -> dim."""
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


def _compact(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, L) that bring each row's visible tokens to the front, and the (B, L) validity mask.

    L is the largest visible count in the batch; shorter rows are padded (validity False).
    """
    counts = visible.sum(dim=-1)
    length = int(counts.max())
    order = torch.argsort((~visible).to(torch.int8), dim=-1, stable=True)[:, :length]
    valid = torch.arange(length, device=visible.device)[None, :] < counts[:, None]
    return order, valid


# --------------------------------------------------------------------------- encoder and decoder

class PointM2AEEncoder(nn.Module):
    """Hierarchical encoder: per scale, mini-PointNet token embedding, + position MLP, transformer stage."""

    def __init__(self, config: PointM2AEConfig):
        super().__init__()
        self.config = config
        total_depth = sum(config.encoder_depths)
        rates = torch.linspace(0, config.drop_path, total_depth).tolist() if total_depth > 1 else [0.0]
        self.token_embeds = nn.ModuleList()
        self.pos_embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        start = 0
        for scale, (dim, depth) in enumerate(zip(config.encoder_dims, config.encoder_depths)):
            in_channels = 3 if scale == 0 else 3 + config.encoder_dims[scale - 1]
            self.token_embeds.append(TokenEmbed(in_channels, dim, config.embed_hidden))
            self.pos_embeds.append(_position_mlp(dim))
            self.stages.append(Stage(dim, depth, config.num_heads, config.mlp_ratio, rates[start:start + depth]))
            start += depth

    def group(self, xyz: torch.Tensor) -> Hierarchy:
        """The hierarchy this encoder expects, for points (B, P, 3)."""
        return group_hierarchy(xyz, self.config.num_centers, self.config.group_sizes)

    def forward(self, hierarchy: Hierarchy, visible_masks: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Token features per scale, list of (B, n_s, C_s) finest first.

        With visible_masks (from `propagate_visibility`) only visible tokens are embedded and
        attended; masked positions of the outputs are zero. Without, every token is encoded.
        """
        if hierarchy.num_scales != self.config.num_scales:
            raise PointliftConfigError(f"hierarchy has {hierarchy.num_scales} scales, encoder expects {self.config.num_scales}")
        outputs: list[torch.Tensor] = []
        for scale in range(self.config.num_scales):
            groups = hierarchy.relative[scale]  # (B, n, k, 3)
            if scale > 0:
                member_feats = gather(outputs[scale - 1], hierarchy.neighbors[scale])
                groups = torch.cat([groups, member_feats], dim=-1)
            centers = hierarchy.centers[scale]
            if visible_masks is None:
                tokens = self.token_embeds[scale](groups) + self.pos_embeds[scale](centers)
                outputs.append(self.stages[scale](tokens))
                continue
            order, valid = _compact(visible_masks[scale])
            tokens = self.token_embeds[scale](gather(groups.flatten(2), order).unflatten(-1, groups.shape[2:]))
            tokens = tokens + self.pos_embeds[scale](gather(centers, order))
            tokens = self.stages[scale](tokens, key_mask=valid) * valid[..., None]
            full = tokens.new_zeros(*centers.shape[:2], tokens.shape[-1])
            full = full.scatter(1, order[..., None].expand_as(tokens), tokens)
            outputs.append(full)
        return outputs


class PointM2AEDecoder(nn.Module):
    """Decoder from the top scale downwards: masked top tokens become a learned mask token, then
    each lower scale gets 3-NN propagated features fused with the encoder's (visible) skip tokens."""

    def __init__(self, config: PointM2AEConfig):
        super().__init__()
        self.config = config
        top = config.num_scales - 1
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.encoder_dims[top]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.inputs = nn.ModuleList()
        self.pos_embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        previous = config.encoder_dims[top]
        for level, (dim, depth) in enumerate(zip(config.decoder_dims, config.decoder_depths)):
            skip = config.encoder_dims[top - level]
            in_channels = skip if level == 0 else previous + skip
            self.inputs.append(nn.Identity() if in_channels == dim and level == 0 else
                               nn.Sequential(nn.Linear(in_channels, dim), nn.GELU(), nn.Linear(dim, dim)))
            self.pos_embeds.append(_position_mlp(dim))
            self.stages.append(Stage(dim, depth, config.num_heads, config.mlp_ratio, [0.0] * depth))
            previous = dim

    def forward(self, hierarchy: Hierarchy, encoded: list[torch.Tensor],
                visible_masks: list[torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Decoded tokens keyed by scale index: {top: (B, n_top, D_0), top-1: (B, n_{top-1}, D_1), ...}."""
        top = self.config.num_scales - 1
        decoded: dict[int, torch.Tensor] = {}
        x = None
        for level, stage in enumerate(self.stages):
            scale = top - level
            skip = encoded[scale]
            if level == 0:
                if visible_masks is not None:
                    skip = torch.where(visible_masks[top][..., None], skip, self.mask_token.to(skip.dtype))
                x = self.inputs[0](skip)
            else:
                up = three_nn_interpolate(hierarchy.centers[scale], hierarchy.centers[scale + 1], x)
                x = self.inputs[level](torch.cat([up, skip], dim=-1))
            x = stage(x + self.pos_embeds[level](hierarchy.centers[scale]))
            decoded[scale] = x
        return decoded


class PointM2AE(nn.Module):
    """Encoder + decoder, the masked-autoencoder backbone; reconstruction heads belong to the method."""

    def __init__(self, config: PointM2AEConfig | None = None):
        super().__init__()
        self.config = config or PointM2AEConfig()
        self.encoder = PointM2AEEncoder(self.config)
        self.decoder = PointM2AEDecoder(self.config)

    def group(self, xyz: torch.Tensor) -> Hierarchy:
        return self.encoder.group(xyz)

    def forward(self, hierarchy: Hierarchy, top_visible: torch.Tensor | None = None):
        """(encoded per scale, decoded per scale, visible masks per scale or None)."""
        masks = None if top_visible is None else propagate_visibility(hierarchy, top_visible)
        encoded = self.encoder(hierarchy, masks)
        return encoded, self.decoder(hierarchy, encoded, masks), masks


# --------------------------------------------------------------------------- classification

def global_feature(tokens: torch.Tensor, pooling: str = "max") -> torch.Tensor:
    """Pool tokens (B, n, C): "max" -> (B, C) (the SVM protocol), "mean_max" -> (B, 2C) (the head's)."""
    if pooling == "max":
        return tokens.max(dim=1).values
    if pooling == "mean_max":
        return torch.cat([tokens.mean(dim=1), tokens.max(dim=1).values], dim=-1)
    raise PointliftConfigError(f"unknown pooling {pooling!r}; expected 'max' or 'mean_max'")


class PointM2AEClassifier(nn.Module):
    """Encoder (ending in LayerNorm) -> concat(mean, max) of top tokens -> MLP head, for fine-tuning."""

    def __init__(self, num_classes: int, config: PointM2AEConfig | None = None, hidden: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.config = config or PointM2AEConfig()
        self.encoder = PointM2AEEncoder(self.config)
        width = 2 * self.config.encoder_dims[-1]
        self.head = nn.Sequential(
            nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def top_tokens(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.encoder.group(points))[-1]

    def embed(self, points: torch.Tensor, pooling: str = "max") -> torch.Tensor:
        """Frozen-feature embedding (B, F) of points (B, P, 3); "max" gives F = C_top (SVM protocol)."""
        return global_feature(self.top_tokens(points), pooling)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(global_feature(self.top_tokens(points), "mean_max"))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
