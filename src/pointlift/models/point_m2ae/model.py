"""Point-M2AE encoder and decoder, as released with I2P-MAE (GUIDE §1.3); sizes in `config`, grouping in
`hierarchy`, modules in `blocks`.

The modules, their order and their parameter names are those of the released code
(ZrrSkywalker/I2P-MAE @ 7d4e519, `models/I2P_MAE.py` and `models/modules.py`), so a released
state dict loads by name; `tests/test_i2p_mae_reference.py` checks every intermediate tensor of
one forward pass against `../shared/reference/i2p-mae/forward.npz`.

Points are grouped once per batch into a coarse-to-fine hierarchy (FPS centres, each scale sampling
the previous scale's centres; kNN groups). Scale index 0 is the finest (e.g. 512 centres), the last
index the coarsest ("top", e.g. 64). Masking is decided at the top and propagated down: a token is
visible iff it is a member of a visible parent's group.

Released structure (what differs from a textbook MAE):
- `token_embed[0]` is a mini-PointNet over centred member coordinates (Conv1d-BN-ReLU-Conv1d,
  max, concat [global, local], Conv1d-BN-ReLU-Conv1d, max); above the first scale it reads the
  members' *features* only: the previous scale's pre-LayerNorm encoder outputs for visible members
  and their own token embeddings for masked ones.
- The position MLP (Linear(3,C)-GELU-Linear(C,C)) is added to the input of *every* block.
- Attention has no qkv bias; padded keys get -1e5; one LayerNorm per scale (`encoder_norms`).
- Decoder: the top tokens [visible, mask tokens] through `h_decoder[0]`, then per lower scale
  `token_prop` (3-NN interpolation, concat with the visible encoder tokens, Conv-BN-GELU and a
  residual Conv-BN-GELU-Conv-BN block) and `h_decoder[i]`, then `decoder_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from pointlift.errors import PointliftConfigError
from pointlift.models.point_m2ae.blocks import (BlockStack, TokenEmbed, TokenPropagation, position_mlp,
                                                trunc_normal_init, xavier_init)
from pointlift.models.point_m2ae.config import PointM2AEConfig
from pointlift.models.point_m2ae.hierarchy import (Hierarchy, compact_visible, expand_rows, group_hierarchy,
                                                   propagate_visibility)
from pointlift.ops import gather


@dataclass
class Encoded:
    """Encoder output per scale (finest first): tokens (B, L_s, C_s) of the visible tokens in increasing
    token order, zero-padded to the longest row; valid (B, L_s) marks real rows; order (B, L_s) gives each
    row's token index; pre_norm the same rows before `encoder_norms`."""

    tokens: list[torch.Tensor]
    valid: list[torch.Tensor]
    order: list[torch.Tensor]
    pre_norm: list[torch.Tensor]

    def full(self, scale: int, num_tokens: int) -> torch.Tensor:
        """(B, n, C) tokens at their positions, zeros at masked ones (the decoder's skip input)."""
        x = self.tokens[scale]
        base = x.new_zeros(x.shape[0], num_tokens, x.shape[-1])
        return expand_rows(x, self.order[scale], self.valid[scale], base)


class PointM2AEEncoder(nn.Module):
    """`H_Encoder`: token embedding, position MLP and a block stack per scale, over visible tokens only."""

    def __init__(self, config: PointM2AEConfig):
        super().__init__()
        self.config = config
        total = sum(config.encoder_depths)
        rates = torch.linspace(0, config.drop_path, total).tolist()
        self.token_embed = nn.ModuleList()
        self.encoder_pos_embeds = nn.ModuleList()
        self.encoder_blocks = nn.ModuleList()
        start = 0
        for scale, (dim, depth) in enumerate(zip(config.encoder_dims, config.encoder_depths)):
            in_channels = 3 if scale == 0 else config.encoder_dims[scale - 1]
            self.token_embed.append(TokenEmbed(in_channels, dim, config.embed_hidden, first=scale == 0))
            self.encoder_pos_embeds.append(position_mlp(dim))
            self.encoder_blocks.append(BlockStack(dim, depth, config.num_heads, config.mlp_ratio,
                                                  rates[start:start + depth]))
            start += depth
        self.encoder_norms = nn.ModuleList(nn.LayerNorm(dim) for dim in config.encoder_dims)
        self.apply(trunc_normal_init)

    def group(self, xyz: torch.Tensor) -> Hierarchy:
        """The hierarchy this encoder expects, for points (B, P, 3)."""
        return group_hierarchy(xyz, self.config.num_centers, self.config.group_sizes, self.config.fps_skip)

    def forward(self, hierarchy: Hierarchy, visible_masks: list[torch.Tensor] | None = None) -> Encoded:
        """Encode the visible tokens of every scale (all tokens when `visible_masks` is None)."""
        if hierarchy.num_scales != self.config.num_scales:
            raise PointliftConfigError(f"hierarchy has {hierarchy.num_scales} scales, encoder expects {self.config.num_scales}")
        out = Encoded([], [], [], [])
        members = None
        for scale in range(self.config.num_scales):
            if scale == 0:
                tokens = self.token_embed[0](hierarchy.relative[0])
            else:
                tokens = self.token_embed[scale](gather(members, hierarchy.neighbors[scale]))
            centers = hierarchy.centers[scale]
            if visible_masks is None:
                visible = torch.ones(centers.shape[:2], dtype=torch.bool, device=centers.device)
            else:
                visible = visible_masks[scale]
            order, valid = compact_visible(visible)
            keep = valid[..., None].to(tokens.dtype)
            x = gather(tokens, order) * keep
            pos = self.encoder_pos_embeds[scale](gather(centers, order) * keep)
            x = self.encoder_blocks[scale](x, pos, valid) * keep
            if scale + 1 < self.config.num_scales:
                members = expand_rows(x, order, valid, tokens)  # masked members keep their embedding
            out.pre_norm.append(x)
            out.tokens.append(self.encoder_norms[scale](x) * keep)
            out.valid.append(valid)
            out.order.append(order)
        return out


@dataclass
class Decoded:
    """first: `h_decoder[0]` output (B, n_top, C) with rows [visible, masked] in `first_order`;
    final: `decoder_norm` output at `scale` (B, n_scale, C_last) in token order;
    propagated: the `token_prop` outputs keyed by scale."""

    first: torch.Tensor
    first_order: torch.Tensor
    final: torch.Tensor
    scale: int
    propagated: dict[int, torch.Tensor] = field(default_factory=dict)


class PointM2AE(nn.Module):
    """Encoder + hierarchical decoder with the released attribute names (`h_encoder`, `mask_token`,
    `h_decoder`, `decoder_pos_embeds`, `token_prop`, `decoder_norm`): its state dict keys are the
    released ones. Reconstruction heads belong to the method (`pointlift.methods.i2p_mae`)."""

    def __init__(self, config: PointM2AEConfig | None = None):
        super().__init__()
        config = config or PointM2AEConfig()
        self.config = self.m2ae_config = config  # subclasses may rebind `config`; the decoder reads m2ae_config
        self.h_encoder = PointM2AEEncoder(config)
        self.mask_token = nn.Parameter(torch.zeros(1, config.decoder_dims[0]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        rates = torch.linspace(0, config.drop_path, sum(config.decoder_depths)).tolist()
        self.h_decoder = nn.ModuleList()
        self.decoder_pos_embeds = nn.ModuleList()
        self.token_prop = nn.ModuleList()
        start = 0
        for level, (dim, depth) in enumerate(zip(config.decoder_dims, config.decoder_depths)):
            stack = BlockStack(dim, depth, config.num_heads, config.mlp_ratio, rates[start:start + depth])
            stack.apply(xavier_init)
            self.h_decoder.append(stack)
            start += depth
            self.decoder_pos_embeds.append(position_mlp(dim))
            if level > 0:
                self.token_prop.append(TokenPropagation(dim + config.decoder_dims[level - 1], dim,
                                                        config.decoder_up_blocks))
        self.decoder_norm = nn.LayerNorm(config.decoder_dims[-1])

    @property
    def encoder(self) -> PointM2AEEncoder:
        return self.h_encoder

    @property
    def backbone(self) -> "PointM2AE":
        """Compatibility alias: `model.backbone.encoder` is `model.h_encoder`."""
        return self

    def group(self, xyz: torch.Tensor) -> Hierarchy:
        return self.h_encoder.group(xyz)

    def decode(self, hierarchy: Hierarchy, encoded: Encoded, visible_masks: list[torch.Tensor]) -> Decoded:
        """The released decoder. Every cloud must have the same number of visible top tokens."""
        top = self.m2ae_config.num_scales - 1
        top_visible = visible_masks[top]
        if not bool(encoded.valid[top].all()):
            raise PointliftConfigError("point_m2ae decoder: clouds have different numbers of visible top tokens")
        batch, num_top = top_visible.shape
        first_order = torch.argsort((~top_visible).to(torch.int8), dim=-1, stable=True)
        centers = gather(hierarchy.centers[top], first_order)
        num_masked = num_top - encoded.tokens[top].shape[1]
        x = torch.cat([encoded.tokens[top], self.mask_token.to(encoded.tokens[top].dtype).expand(batch, num_masked, -1)], 1)
        x = self.h_decoder[0](x, self.decoder_pos_embeds[0](centers))
        first = x
        propagated = {}
        scale = top
        for level in range(1, len(self.h_decoder)):
            scale = top - level
            target = hierarchy.centers[scale]
            skip = encoded.full(scale, target.shape[1])
            x = self.token_prop[level - 1](target, centers, skip, x)
            propagated[scale] = x
            x = self.h_decoder[level](x, self.decoder_pos_embeds[level](target))
            centers = target
        if scale == top:  # one decoder level: back to token order
            x = torch.zeros_like(x).scatter(1, first_order[..., None].expand_as(x), x)
        return Decoded(first=first, first_order=first_order, final=self.decoder_norm(x), scale=scale,
                       propagated=propagated)

    def forward(self, hierarchy: Hierarchy, top_visible: torch.Tensor, released_quirk: bool = True):
        return self.encode_decode(hierarchy, top_visible, released_quirk)

    def encode_decode(self, hierarchy: Hierarchy, top_visible: torch.Tensor, released_quirk: bool = True):
        """(encoded, decoded, visible masks per scale)."""
        masks = propagate_visibility(hierarchy, top_visible, released_quirk)
        encoded = self.h_encoder(hierarchy, masks)
        return encoded, self.decode(hierarchy, encoded, masks), masks


# --------------------------------------------------------------------------- evaluation features

def encode_for_features(encoder: PointM2AEEncoder, points: torch.Tensor, released_quirk: bool = True) -> torch.Tensor:
    """Top-scale tokens (B, n_top, C) after `encoder_norms`, no masking: the released `forward(eval=True)`.

    With `released_quirk` the lower scales drop tokens that belong to no group one scale up (and
    token 0 of the first cloud stays in), exactly as the released evaluation does; without it every
    token of every scale is encoded."""
    hierarchy = encoder.group(points)
    masks = None
    if released_quirk:
        top = hierarchy.centers[-1]
        masks = propagate_visibility(hierarchy, torch.ones(top.shape[:2], dtype=torch.bool, device=top.device), True)
    return encoder(hierarchy, masks).tokens[-1]


def global_feature(tokens: torch.Tensor, pooling: str = "max") -> torch.Tensor:
    """Pool tokens (B, n, C): "max" -> (B, C) (the SVM protocol), "mean_max" -> (B, 2C) (concat),
    "mean_plus_max" -> (B, C) (the input of I2P-MAE's fine-tuning head)."""
    if pooling == "max":
        return tokens.max(dim=1).values
    if pooling == "mean_max":
        return torch.cat([tokens.mean(dim=1), tokens.max(dim=1).values], dim=-1)
    if pooling == "mean_plus_max":
        return tokens.mean(dim=1) + tokens.max(dim=1).values
    raise PointliftConfigError(f"unknown pooling {pooling!r}; expected 'max', 'mean_max' or 'mean_plus_max'")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
