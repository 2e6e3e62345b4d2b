"""A segmentation U-Net whose encoder is an inflated 2D ImageNet ConvNet (Image2Point's idea applied to
scenes; the decoder and skip layout are pointlift's own, not a released architecture).

Encoder: `pointlift.models.inflate.inflate_network` of a timm network (EfficientNet / MobileNet family:
`conv_stem, bn1, blocks`; ResNet family: `conv1, bn1, act1, maxpool, layer1..4`), run stage by stage;
the last feature map at each tensor stride is kept as a skip. A small stride-1 stem of our own gives the
finest skip, since every ImageNet stem downsamples. Decoder: per stride, a 2x2x2 transposed convolution
back onto the finer sites, concatenation with the skip, one basic block; a 1x1x1 head gives per-voxel
logits. `weights="random"` is the same architecture from scratch (3D He initialisation).
"""

from __future__ import annotations

import torch
from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.models.sparse_resnet import BasicBlock
from pointlift.sparse import (SparseBatchNorm, SparseConv3d, SparseInverseConv3d, SparseReLU, SparseTensor,
                              SubMConv3d)


def _encoder_stages(net: nn.Module) -> list[nn.Module]:
    """The inflated network's modules in forward order up to (not including) its head."""
    if hasattr(net, "conv_stem") and hasattr(net, "blocks"):
        return [net.conv_stem, net.bn1, *net.blocks]
    if hasattr(net, "conv1") and hasattr(net, "layer4"):
        return [net.conv1, net.bn1, net.act1, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
    raise PointliftConfigError(f"inflated U-Net: unsupported network {type(net).__name__} "
                               "(use an EfficientNet/MobileNet or ResNet from timm)")


class InflatedUNet(nn.Module):
    """forward(x: SparseTensor at stride 1, 3 channels) -> per-voxel logits SparseTensor on the same sites."""

    def __init__(self, teacher: str = "tf_efficientnet_lite0", weights: str | None = None, mode: str = "copy",
                 axis: str = "z-axis", num_classes: int = 20, in_channels: int = 3, decoder_channels: int = 32,
                 stem_channels: int = 16):
        super().__init__()
        from pointlift.models.inflate import create_2d_network, he_init_, inflate_network

        net_2d = create_2d_network(teacher, weights=weights)
        net_3d, _ = inflate_network(net_2d, mode=mode, axis=axis)
        if weights == "random":
            he_init_(net_3d)
        self.in_channels = in_channels
        self.encoder = nn.ModuleList(_encoder_stages(net_3d))
        first_conv = next(m for m in self.encoder.modules() if isinstance(m, (SubMConv3d, SparseConv3d)))
        if first_conv.in_channels != in_channels:
            raise PointliftConfigError(f"inflated U-Net: {teacher} takes {first_conv.in_channels} input channels, "
                                       f"the data gives {in_channels}")
        self.stem = nn.Sequential(SubMConv3d(in_channels, stem_channels, 3), SparseBatchNorm(stem_channels),
                                  SparseReLU())
        # Widths per stride, found by a dry run on a tiny input (strides are powers of two).
        widths = self._skip_widths()
        self.strides = sorted(widths)
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        coarse = widths[self.strides[-1]]
        for fine_stride in reversed([1] + self.strides[:-1]):
            skip = stem_channels if fine_stride == 1 else widths[fine_stride]
            self.up.append(nn.Sequential(SparseInverseConv3d(coarse, decoder_channels, kernel_size=2, stride=2),
                                         SparseBatchNorm(decoder_channels), SparseReLU()))
            self.dec.append(BasicBlock(decoder_channels + skip, decoder_channels))
            coarse = decoder_channels
        self.head = SubMConv3d(decoder_channels, num_classes, kernel_size=1, bias=True)
        self.num_classes = num_classes

    @torch.no_grad()
    def _skip_widths(self) -> dict[int, int]:
        was = self.training
        self.eval()
        coords = torch.stack(torch.meshgrid(*(torch.arange(40),) * 3, indexing="ij"), -1).reshape(-1, 3)[::7]
        coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1)
        skips = self._encode(SparseTensor(torch.zeros(len(coords), self.in_channels), coords, batch_size=1))
        self.train(was)
        for stride in skips:
            if stride & (stride - 1):
                raise PointliftConfigError(f"inflated U-Net: tensor stride {stride} is not a power of two")
        return {stride: x.num_channels for stride, x in skips.items()}

    def _encode(self, x: SparseTensor) -> dict[int, SparseTensor]:
        skips: dict[int, SparseTensor] = {}
        for module in self.encoder:
            x = module(x)
            if x.stride > 1:
                skips[x.stride] = x  # the last map at each stride
        return skips

    def forward(self, x: SparseTensor) -> SparseTensor:
        fine = self.stem(x)
        skips = self._encode(x)
        y = skips[self.strides[-1]]
        for up, dec in zip(self.up, self.dec):
            y = up(y)
            # a stride with no encoder output (e.g. ResNet's stride 2 before its max-pool) gets none;
            # stride 1 always has the stem
            skip = fine if y.stride == 1 else skips[y.stride]
            y = dec(y.cat(skip))
        return self.head(y)
