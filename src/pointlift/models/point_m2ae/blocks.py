"""Point-M2AE's building blocks with the released module and parameter names: transformer blocks, the
token embedding (mini-PointNet), the position MLP and the decoder's token propagation."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pointlift.ops import gather


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training.

    `noise` (B,) uniform, when a caller sets it for the next forward, decides the drops (sample b's branch is
    kept iff noise[b] < 1 - rate): draws from each sample's own stream, the same on any DDP process."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate
        self.noise: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0], *([1] * (x.dim() - 1)))
        if self.noise is not None:
            mask = (self.noise.to(x.device) < keep).to(x.dtype).reshape(shape)
        else:
            mask = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(keep)
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


def position_mlp(dim: int) -> nn.Module:
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


def trunc_normal_init(module: nn.Module) -> None:
    """H_Encoder init as in I2P-MAE's code (not checked against reference outputs): truncated normal (std 0.02) for Linear/Conv1d, zero bias, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def xavier_init(module: nn.Module) -> None:
    """Decoder_Block init as in I2P-MAE's code (not checked against reference outputs)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
