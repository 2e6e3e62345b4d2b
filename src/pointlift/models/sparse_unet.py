"""Sparse U-Net (the SpUNet-v1m1 layout of Pointcept, the usual PPKT / scene backbone).

stem (submanifold k=5) -> 4 x [2x2x2 stride-2 conv, basic blocks] -> 4 x [2x2x2 transposed conv
back onto the cached finer sites, concat the skip, basic blocks] -> optional 1x1 head.
The decoder reuses the encoder's kernel maps through the shared coordinate manager.
"""

from __future__ import annotations

from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.models.sparse_resnet import BasicBlock
from pointlift.sparse import (
    SparseBatchNorm,
    SparseConv3d,
    SparseInverseConv3d,
    SparseReLU,
    SparseTensor,
    SubMConv3d,
)

# name -> (base_channels, channels (4 encoder + 4 decoder widths), blocks per stage)
CONFIGS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "spunet-v1m1": (32, (32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2)),
    "spunet-small": (16, (16, 32, 64, 128, 128, 64, 48, 48), (1, 1, 2, 2, 1, 1, 1, 1)),
    "spunet-tiny": (8, (8, 16, 16, 32, 32, 16, 16, 16), (1, 1, 1, 1, 1, 1, 1, 1)),
}


def _down_or_up(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, SparseBatchNorm(channels), SparseReLU())


class SparseUNet(nn.Module):
    """forward(x: SparseTensor at stride 1) -> SparseTensor at stride 1 on the same sites.

    Output channels: `out_channels` through a 1x1 head, or the last decoder width
    (`feature_channels`) when out_channels = 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 0,
        channels: tuple[int, ...] = CONFIGS["spunet-v1m1"][1],
        layers: tuple[int, ...] = CONFIGS["spunet-v1m1"][2],
        base_channels: int = 32,
        stem_kernel: int = 5,
    ):
        super().__init__()
        if len(channels) != len(layers) or len(channels) % 2:
            raise PointliftConfigError(
                f"SparseUNet: channels {channels} and layers {layers} need the same even length (encoder + decoder)"
            )
        stages = len(channels) // 2
        self.stem = nn.Sequential(
            SubMConv3d(in_channels, base_channels, stem_kernel), SparseBatchNorm(base_channels), SparseReLU()
        )
        self.down, self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        enc_channels, dec_channels = base_channels, channels[-1]
        for s in range(stages):
            self.down.append(_down_or_up(SparseConv3d(enc_channels, channels[s], kernel_size=2, stride=2), channels[s]))
            self.enc.append(nn.Sequential(*(BasicBlock(channels[s], channels[s]) for _ in range(layers[s]))))
            up_in = channels[len(channels) - s - 2]
            self.up.append(_down_or_up(SparseInverseConv3d(up_in, dec_channels, kernel_size=2, stride=2), dec_channels))
            depth = layers[len(channels) - s - 1]
            self.dec.append(
                nn.Sequential(
                    *(BasicBlock(dec_channels + enc_channels if i == 0 else dec_channels, dec_channels) for i in range(depth))
                )
            )
            enc_channels, dec_channels = channels[s], channels[len(channels) - s - 2]
        self.feature_channels = channels[-1]
        self.head = SubMConv3d(channels[-1], out_channels, kernel_size=1, bias=True) if out_channels > 0 else nn.Identity()
        self.out_channels = out_channels or channels[-1]

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = self.stem(x)
        skips = [x]
        for down, enc in zip(self.down, self.enc):
            x = enc(down(x))
            skips.append(x)
        x = skips.pop()
        for s in reversed(range(len(self.up))):
            x = self.up[s](x)
            x = self.dec[s](x.cat(skips.pop()))
        return self.head(x)


def sparse_unet(name: str, in_channels: int, out_channels: int = 0) -> SparseUNet:
    """Build a named config: spunet-v1m1, spunet-small or spunet-tiny."""
    if name not in CONFIGS:
        raise PointliftConfigError(f"unknown sparse U-Net {name!r}; choose from {sorted(CONFIGS)}")
    base, channels, layers = CONFIGS[name]
    return SparseUNet(in_channels, out_channels, channels, layers, base)
