"""Point-M2AE hierarchical point transformer, as released with I2P-MAE (GUIDE §1.3).

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
import torch.nn.functional as F

from pointlift.errors import PointliftConfigError
from pointlift.ops import farthest_point_sample, gather, knn

# pointnet2_ops' FPS kernel never picks a point with x^2 + y^2 + z^2 <= 1e-3 (index 0 excepted).
RELEASED_FPS_SKIP = 1e-3


# --------------------------------------------------------------------------- configuration

@dataclass
class PointM2AEConfig:
    """Sizes of the hierarchy, encoder and decoder. Defaults are the released pretraining config
    (`cfgs/pre-training/i2p-mae.yaml`: 17.6 M parameters with the I2P-MAE heads).

    `embed_hidden` is the first token embedding's width (released: 128 -> 256, then 512 -> dim);
    smaller values give CPU-sized networks. `fps_skip`: squared radius around the origin whose
    points FPS never picks (released kernel: 1e-3; None = no rule).
    """

    num_points: int = 2048
    num_centers: tuple[int, ...] = (512, 256, 64)
    group_sizes: tuple[int, ...] = (16, 8, 8)
    encoder_dims: tuple[int, ...] = (96, 192, 384)
    encoder_depths: tuple[int, ...] = (5, 5, 5)
    num_heads: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    embed_hidden: int = 128
    decoder_dims: tuple[int, ...] = (384, 192)
    decoder_depths: tuple[int, ...] = (1, 1)
    decoder_up_blocks: int = 1
    fps_skip: float | None = RELEASED_FPS_SKIP

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
        mirrored = tuple(reversed(self.encoder_dims))[:len(self.decoder_dims)]
        if self.decoder_dims != mirrored:
            raise PointliftConfigError(f"point_m2ae: decoder_dims must mirror encoder_dims from the top "
                                       f"(the released decoder fuses encoder tokens of equal width): expected {mirrored}")
        if not 0.0 <= self.drop_path < 1.0:
            raise PointliftConfigError(f"point_m2ae: drop_path must be in [0, 1), got {self.drop_path}")
        if self.embed_hidden < 1 or self.decoder_up_blocks < 0:
            raise PointliftConfigError("point_m2ae: embed_hidden must be >= 1 and decoder_up_blocks >= 0")
        if self.fps_skip is not None and self.fps_skip < 0:
            raise PointliftConfigError(f"point_m2ae: fps_skip must be >= 0 or null, got {self.fps_skip}")

    @property
    def num_scales(self) -> int:
        return len(self.num_centers)

    @property
    def recon_scale(self) -> int:
        """The scale the decoder ends at (released: the middle one)."""
        return self.num_scales - len(self.decoder_dims)

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

    samples[s]:   (B, n_s) long FPS indices into the previous level (input points for s = 0).
    centers[s]:   (B, n_s, 3) centres of scale s.
    neighbors[s]: (B, n_s, k_s) long indices of each group's members in the previous level, nearest first.
    relative[s]:  (B, n_s, k_s, 3) member coordinates minus their centre.
    """

    points: torch.Tensor
    centers: list[torch.Tensor] = field(default_factory=list)
    neighbors: list[torch.Tensor] = field(default_factory=list)
    relative: list[torch.Tensor] = field(default_factory=list)
    samples: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_scales(self) -> int:
        return len(self.centers)

    def members(self, scale: int) -> torch.Tensor:
        """Absolute member coordinates (B, n_s, k_s, 3) of scale `scale` (the released `neighborhood_ori`)."""
        previous = self.points if scale == 0 else self.centers[scale - 1]
        return gather(previous, self.neighbors[scale])

    def point_index(self, scale: int) -> torch.Tensor:
        """Index (B, n_s) into the input points of each centre of scale `scale`."""
        index = self.samples[0]
        for s in range(1, scale + 1):
            index = index.gather(1, self.samples[s])
        return index


def group_hierarchy(xyz: torch.Tensor, num_centers=(512, 256, 64), group_sizes=(16, 8, 8),
                    fps_skip: float | None = RELEASED_FPS_SKIP) -> Hierarchy:
    """Group points (B, P, 3) into the FPS + kNN hierarchy of Point-M2AE (`Group_v2` per scale)."""
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise PointliftConfigError(f"group_hierarchy expects (B, P, 3) points, got {tuple(xyz.shape)}")
    hierarchy = Hierarchy(points=xyz)
    previous = xyz
    for count, k in zip(num_centers, group_sizes):
        sample = farthest_point_sample(previous, count, skip_radius2=fps_skip)
        centers = gather(previous, sample)
        _, idx = knn(centers, previous, k)
        hierarchy.samples.append(sample)
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


def propagate_visibility(hierarchy: Hierarchy, top_visible: torch.Tensor, released_quirk: bool = False
                         ) -> list[torch.Tensor]:
    """Visible masks per scale (list of (B, n_s) bool, finest first) from the top-scale mask.

    A token below the top is visible only if it belongs to the kNN group of a visible parent.
    `released_quirk=True` also reproduces the released code's side effect: it zeroes the member
    indices of masked groups and scatters them, so whenever one group of the level above is masked,
    token 0 of the batch's *first* cloud becomes visible.
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
        visible = counts > 0
        if released_quirk and not bool(masks[scale].all()):
            visible[0, 0] = True
        masks[scale - 1] = visible
    return masks


def _compact(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, L) that bring each row's visible tokens to the front in increasing order, and the
    (B, L) validity mask. L is the largest visible count in the batch; shorter rows are padded."""
    counts = visible.sum(dim=-1)
    length = int(counts.max())
    order = torch.argsort((~visible).to(torch.int8), dim=-1, stable=True)[:, :length]
    valid = torch.arange(length, device=visible.device)[None, :] < counts[:, None]
    return order, valid


def _expand_rows(x: torch.Tensor, order: torch.Tensor, valid: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` (B, n, C) with the valid rows of x (B, L, C) written back at their token positions `order`."""
    written = torch.zeros_like(full).scatter(1, order[..., None].expand_as(x), x)
    taken = torch.zeros(full.shape[:2], dtype=torch.bool, device=full.device).scatter(1, order, valid)
    return torch.where(taken[..., None], written, full)


# --------------------------------------------------------------------------- building blocks (released names)

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
    """Multi-head self-attention without qkv bias; `valid` (B, L) bool: keys outside get -1e5."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if valid is not None:
            attn = attn + (~valid)[:, None, None, :].to(attn.dtype) * -100000.0
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), valid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BlockStack(nn.Module):
    """`Encoder_Block` / `Decoder_Block`: the position embedding is added before every block."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, rate) for rate in drop_paths[:depth])

    def forward(self, x: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos, valid)
        return x


def pointwise(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a released Conv1d(kernel 1) / BatchNorm1d / activation stack on channel-last x (..., C).

    Same arithmetic as the channel-first original (a kernel-1 convolution is a matrix product; BatchNorm
    statistics span all positions either way), several times faster on CPU than torch's conv1d."""
    for layer in (layers if isinstance(layers, nn.Sequential) else [layers]):
        if isinstance(layer, nn.Conv1d):
            x = F.linear(x, layer.weight[..., 0], layer.bias)
        elif isinstance(layer, nn.BatchNorm1d):
            x = layer(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        else:
            x = layer(x)
    return x


class TokenEmbed(nn.Module):
    """`Token_Embed`: mini-PointNet over groups (B, G, k, C_in) -> (B, G, C_out), BatchNorm + ReLU.

    First scale (C_in = 3): Conv(3,h)-BN-ReLU-Conv(h,2h), max, concat [global, local],
    Conv(4h,4h)-BN-ReLU-Conv(4h,C_out), max (released h = 128). Later scales (member features):
    Conv(C_in,C_in)-BN-ReLU-Conv(C_in,C_in), concat, Conv(2C_in,C_out)-BN-ReLU-Conv(C_out,C_out).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 128, first: bool = True):
        super().__init__()
        self.out_channels = out_channels
        a, b = (hidden, 2 * hidden) if first else (in_channels, in_channels)
        mid = 4 * hidden if first else out_channels
        self.first_conv = nn.Sequential(nn.Conv1d(in_channels, a, 1), nn.BatchNorm1d(a), nn.ReLU(inplace=True),
                                        nn.Conv1d(a, b, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(2 * b, mid, 1), nn.BatchNorm1d(mid), nn.ReLU(inplace=True),
                                         nn.Conv1d(mid, out_channels, 1))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        x = pointwise(self.first_conv, groups)  # (B, G, k, C)
        x = torch.cat([x.max(dim=2, keepdim=True).values.expand_as(x), x], dim=-1)
        return pointwise(self.second_conv, x).max(dim=2).values


def _position_mlp(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))


class ConvBNGELU(nn.Module):
    """`ConvBNReLU1D` of the released code (its activation is GELU despite the name)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(in_channels, out_channels, 1), nn.BatchNorm1d(out_channels), nn.GELU())

    def forward(self, x):  # channel-last (..., C)
        return pointwise(self.net, x)


class ConvBNGELURes(nn.Module):
    """`ConvBNReLURes1D`: GELU(Conv-BN(GELU(Conv-BN(x))) + x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = nn.GELU()
        self.net1 = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.BatchNorm1d(channels), nn.GELU())
        self.net2 = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.BatchNorm1d(channels))

    def forward(self, x):  # channel-last (..., C)
        return self.act(pointwise(self.net2, pointwise(self.net1, x)) + x)


class PosExtraction(nn.Module):
    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.operation = nn.Sequential(*[ConvBNGELURes(channels) for _ in range(blocks)])

    def forward(self, x):
        return self.operation(x)


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, N, M) squared distances by the released formula -2 a.b + |a|^2 + |b|^2 (same rounding)."""
    dist = -2 * torch.matmul(src, dst.transpose(1, 2))
    dist = dist + src.pow(2).sum(-1)[:, :, None]
    return dist + dst.pow(2).sum(-1)[:, None, :]


class TokenPropagation(nn.Module):
    """`PointNetFeaturePropagation`: 3-NN inverse squared distance interpolation of coarse tokens,
    concat [skip, interpolated], `fuse` Conv-BN-GELU, then `extraction` residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int = 1):
        super().__init__()
        self.fuse = ConvBNGELU(in_channels, out_channels)
        self.extraction = PosExtraction(out_channels, blocks)

    @staticmethod
    def interpolate(target: torch.Tensor, source: torch.Tensor, source_feats: torch.Tensor) -> torch.Tensor:
        if source.shape[1] == 1:
            return source_feats.expand(-1, target.shape[1], -1)
        dists, idx = square_distance(target, source).sort(dim=-1, stable=True)
        dists, idx = dists[:, :, :3], idx[:, :, :3]
        recip = 1.0 / (dists + 1e-8)
        weight = recip / recip.sum(dim=2, keepdim=True)
        return (gather(source_feats, idx) * weight[..., None]).sum(dim=2)

    def forward(self, target, source, skip, source_feats):
        x = torch.cat([skip, self.interpolate(target, source, source_feats)], dim=-1)
        return self.extraction(self.fuse(x))


def _trunc_normal_init(module: nn.Module) -> None:
    """H_Encoder init as in I2P-MAE's code (not checked against reference outputs): truncated normal (std 0.02) for Linear/Conv1d, zero bias, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _xavier_init(module: nn.Module) -> None:
    """Decoder_Block init as in I2P-MAE's code (not checked against reference outputs)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- encoder and decoder

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
        return _expand_rows(x, self.order[scale], self.valid[scale], base)


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
            self.encoder_pos_embeds.append(_position_mlp(dim))
            self.encoder_blocks.append(BlockStack(dim, depth, config.num_heads, config.mlp_ratio,
                                                  rates[start:start + depth]))
            start += depth
        self.encoder_norms = nn.ModuleList(nn.LayerNorm(dim) for dim in config.encoder_dims)
        self.apply(_trunc_normal_init)

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
            order, valid = _compact(visible)
            keep = valid[..., None].to(tokens.dtype)
            x = gather(tokens, order) * keep
            pos = self.encoder_pos_embeds[scale](gather(centers, order) * keep)
            x = self.encoder_blocks[scale](x, pos, valid) * keep
            if scale + 1 < self.config.num_scales:
                members = _expand_rows(x, order, valid, tokens)  # masked members keep their embedding
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
            stack.apply(_xavier_init)
            self.h_decoder.append(stack)
            start += depth
            self.decoder_pos_embeds.append(_position_mlp(dim))
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


# --------------------------------------------------------------------------- features and classification

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


class PointM2AEClassifier(nn.Module):
    """Fine-tuning network laid out as I2P-MAE's `I2P_MAE_ModelNet40` (its parameter names; the head is not
    checked against reference outputs): every token encoded, top tokens (before `encoder_norms`) ->
    `norm` -> mean + max -> `cls_head_finetune` MLP."""

    def __init__(self, num_classes: int, config: PointM2AEConfig | None = None, hidden: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.config = config or PointM2AEConfig()
        self.h_encoder = PointM2AEEncoder(self.config)
        width = self.config.encoder_dims[-1]
        self.norm = nn.LayerNorm(width)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    @property
    def encoder(self) -> PointM2AEEncoder:
        return self.h_encoder

    def top_tokens(self, points: torch.Tensor) -> torch.Tensor:
        return self.norm(self.h_encoder(self.h_encoder.group(points)).pre_norm[-1])

    def embed(self, points: torch.Tensor, pooling: str = "max") -> torch.Tensor:
        """Frozen-feature embedding (B, F) of points (B, P, 3)."""
        return global_feature(self.top_tokens(points), pooling)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.cls_head_finetune(global_feature(self.top_tokens(points), "mean_plus_max"))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
