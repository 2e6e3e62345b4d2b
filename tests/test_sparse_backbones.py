"""Sparse ResNet / U-Net backbones: every config runs forward and backward on CPU and every
parameter gets a gradient; tiny classification and segmentation runs must lower their loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pointlift.errors import PointliftConfigError
from pointlift.models.sparse_resnet import CONFIGS as RESNET_CONFIGS
from pointlift.models.sparse_resnet import sparse_resnet
from pointlift.models.sparse_unet import CONFIGS as UNET_CONFIGS
from pointlift.models.sparse_unet import SparseUNet, sparse_unet
from pointlift.sparse import SparseTensor



def shell(kind: str, grid: int, gen: torch.Generator) -> torch.Tensor:
    """Voxel coords (M, 3) of a random sphere or box surface inside a grid^3 cube."""
    centre = grid / 2 + (torch.rand(3, generator=gen) - 0.5) * 2
    radius = grid * (0.25 + 0.15 * torch.rand(1, generator=gen))
    direction = torch.randn(1500, 3, generator=gen)
    if kind == "sphere":
        points = direction / direction.norm(dim=1, keepdim=True)
    else:  # box: push each direction onto the cube surface
        points = direction / direction.abs().max(dim=1, keepdim=True).values
    coords = torch.floor(centre + radius * points).long().clamp(0, grid - 1)
    return torch.unique(coords, dim=0)


def batch_of(kinds: list[str], grid: int = 16, seed: int = 0) -> SparseTensor:
    gen = torch.Generator().manual_seed(seed)
    coords = [torch.cat([torch.full((len(c), 1), b), c], 1) for b, c in enumerate(shell(k, grid, gen) for k in kinds)]
    coords = torch.cat(coords)
    features = torch.cat([torch.ones(len(coords), 1), coords[:, 1:].float() / grid - 0.5], 1)
    return SparseTensor(features, coords)


def assert_all_parameters_have_gradients(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without finite gradient: {missing}"
    # Biases right before a training-mode BatchNorm may get exactly zero gradient where all sites
    # are isolated (a constant shift passes the convs unchanged and BN removes it); weights may not.
    zero = [n for n, p in model.named_parameters() if p.ndim >= 2 and p.grad.abs().sum() == 0]
    assert not zero, f"weights whose gradient is all zero: {zero}"


@pytest.mark.parametrize("name", sorted(RESNET_CONFIGS))
def test_resnet_forward_backward(name):
    torch.manual_seed(0)
    model = sparse_resnet(name, in_channels=4, num_classes=3)
    x = batch_of(["sphere", "box"], grid=12)
    logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert_all_parameters_have_gradients(model)


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_unet_forward_backward(name):
    torch.manual_seed(0)
    model = sparse_unet(name, in_channels=4, out_channels=5)
    x = batch_of(["sphere", "box"], grid=16)
    y = model(x)
    assert y.stride == 1 and torch.equal(y.coords, x.coords) and y.features.shape == (len(x), 5)
    (y.features.square().mean()).backward()
    assert_all_parameters_have_gradients(model)
    features_only = sparse_unet(name, in_channels=4)(x)
    assert features_only.features.shape == (len(x), features_only.num_channels) and features_only.num_channels == model.feature_channels


def test_unet_widths_match_spunet_v1m1():
    model = sparse_unet("spunet-v1m1", in_channels=6, out_channels=20)
    assert model.stem[0].weight.shape == (32, 6, 5, 5, 5)
    assert [m[0].out_channels for m in model.down] == [32, 64, 128, 256]
    assert [len(e) for e in model.enc] == [2, 3, 4, 6]
    assert [m[0].in_channels for m in model.up] == [96, 128, 256, 256]
    assert [m[0].out_channels for m in model.up] == [96, 96, 128, 256]
    assert [len(d) for d in model.dec] == [2, 2, 2, 2]
    assert [d[0].conv1.in_channels for d in model.dec] == [96 + 32, 96 + 32, 128 + 64, 256 + 128]
    assert model.head.weight.shape == (20, 96, 1, 1, 1)
    with pytest.raises(PointliftConfigError):
        SparseUNet(3, 2, channels=(8, 8, 8), layers=(1, 1, 1))
    with pytest.raises(PointliftConfigError):
        sparse_unet("spunet-huge", 3)


def test_tiny_classification_loss_falls():
    torch.manual_seed(0)
    kinds = ["sphere", "box"] * 4
    x = batch_of(kinds, grid=14, seed=1)
    labels = torch.tensor([0, 1] * 4)
    model = sparse_resnet("mobilenet-tiny", in_channels=4, num_classes=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0], losses


def test_tiny_segmentation_loss_falls():
    """Per-voxel labels that need context: which of the two shapes in a scene a voxel belongs to."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    sphere, box = shell("sphere", 10, gen), shell("box", 10, gen) + torch.tensor([12, 0, 0])
    coords = torch.unique(torch.cat([sphere, box]), dim=0)
    labels = (coords[:, 0] >= 11).long()
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1)
    model = sparse_unet("spunet-tiny", in_channels=1, out_channels=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        optimiser.zero_grad()
        x = SparseTensor(torch.ones(len(coords), 1), coords)
        loss = F.cross_entropy(model(x).features, labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0], losses
