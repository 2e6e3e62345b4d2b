"""Inflation of 2D CNNs into sparse 3D ones: kernels against loops, whole networks against 2D.

The key equivalence: an image laid flat as a sheet of voxels (z = 0) through the `center`-inflated
network reproduces the 2D network's activation at every layer (same module names on both sides).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

from pointlift.errors import PointliftConfigError
from pointlift.models.inflate import (create_2d_network, inflate_kernel, inflate_network, sheet_tensor,
                                      sheet_to_image)
from pointlift.sparse import SparseTensor, SubMConv3d

MOBILENET = "weights/mobilenet_v2.torchvision_in1k.safetensors"


def _reference_inflation(weight, mode, axis):
    """Slow, explicit version of inflate_kernel: loop over every 3D kernel index, with the released axis
    definitions written out literally (W3[o, i, x, y, z] = W2[o, i, row, col])."""
    cout, cin, k, _ = weight.shape
    out = torch.zeros(cout, cin, k, k, k)
    for x in range(k):
        for y in range(k):
            for z in range(k):
                row, col, new = {"z-axis": (z, x, y), "y-axis": (y, x, z), "x-axis": (y, z, x)}[axis]
                value = weight[:, :, row, col]
                if mode == "copy":
                    out[:, :, x, y, z] = value
                elif mode == "average":
                    out[:, :, x, y, z] = value / k
                elif new == k // 2:
                    out[:, :, x, y, z] = value
    return out


@pytest.mark.parametrize("mode", ["copy", "center", "average"])
@pytest.mark.parametrize("axis", ["z-axis", "y-axis", "x-axis"])
def test_inflate_kernel_matches_loop_reference(mode, axis):
    weight = torch.randn(4, 2, 3, 3)
    assert torch.equal(inflate_kernel(weight, mode, axis), _reference_inflation(weight, mode, axis))


def test_unknown_axis_is_a_config_error():
    with pytest.raises(PointliftConfigError):
        inflate_kernel(torch.randn(2, 2, 3, 3), "copy", "z")


def _random_batchnorm_statistics(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN parameters/statistics, so a mistake in copying them cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)


def _compare_on_sheet(model_2d: nn.Module, images: torch.Tensor, tolerance: float = 1e-4) -> int:
    """Run 2D on images and the centre-inflated 3D model on the flat sheet; compare every layer."""
    model_2d.eval()
    model_3d, report = inflate_network(model_2d, mode="center", axis="y-axis")
    model_3d.eval()
    outputs_2d, outputs_3d = {}, {}

    def keep(store, name):
        def hook(module, inputs, output):
            store[name] = output.clone() if isinstance(output, torch.Tensor) else output.replace(output.features.clone())
        return hook

    for name, module in model_2d.named_modules():
        if name:
            module.register_forward_hook(keep(outputs_2d, name))
    for name, module in model_3d.named_modules():
        if name:
            module.register_forward_hook(keep(outputs_3d, name))
    with torch.no_grad():
        logits_2d = model_2d(images)
        logits_3d = model_3d(sheet_tensor(images, "y-axis"))
    compared = 0
    for name, out_2d in outputs_2d.items():
        if name not in outputs_3d:  # internals of modules replaced as a whole (e.g. global pool)
            continue
        out_3d = outputs_3d[name]
        if isinstance(out_3d, SparseTensor):
            assert out_3d.coords[:, 3].eq(0).all(), f"{name}: activation left the sheet"
            out_3d = sheet_to_image(out_3d, out_2d.shape[2], out_2d.shape[3], "y-axis")
        error = ((out_3d - out_2d).abs().max() / out_2d.abs().max().clamp(min=1e-6)).item()
        assert error < tolerance, f"layer {name}: relative error {error:.2e}"
        compared += 1
    error = ((logits_3d - logits_2d).abs().max() / logits_2d.abs().max()).item()
    assert error < tolerance, f"logits: relative error {error:.2e}"
    assert len(report) > 0
    return compared


def test_center_inflated_resnet18_reproduces_2d_on_a_flat_sheet():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=7)
    _random_batchnorm_statistics(model)
    compared = _compare_on_sheet(model, torch.randn(2, 3, 13, 15))
    assert compared > 40  # every conv, BN, activation, pool and block output


def test_center_inflated_real_mobilenetv2_reproduces_2d_on_a_flat_sheet(shared):
    model = create_2d_network("mobilenetv2_100", weights=str(shared(MOBILENET)))
    torch.manual_seed(1)
    compared = _compare_on_sheet(model, torch.randn(1, 3, 22, 19))
    assert compared > 150


def test_center_inflated_squeeze_excite_network_reproduces_2d():
    """efficientnet_b0 (random init): SiLU, squeeze-excite, depthwise-separable and inverted residuals."""
    torch.manual_seed(2)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=5)
    _random_batchnorm_statistics(model, seed=3)
    assert _compare_on_sheet(model, torch.randn(1, 3, 14, 17)) > 150


@pytest.mark.parametrize("mode,factor", [("average", 1.0), ("copy", 3.0)])
def test_copy_and_average_on_a_z_constant_slab(mode, factor):
    """A slab constant along z: at its middle slice a 3x3 conv sees all 3 z-neighbours, so the
    average-inflated kernel gives the 2D response and the copied kernel 3x it."""
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    image = torch.randn(1, 2, 5, 6)
    model_3d, _ = inflate_network(nn.Sequential(conv), mode=mode, axis="y-axis")  # copies along z; row y, column x
    depth = 3
    b, x, y, z = torch.meshgrid(torch.arange(1), torch.arange(6), torch.arange(5), torch.arange(depth), indexing="ij")
    coords = torch.stack([b, x, y, z], -1).reshape(-1, 4)
    features = image[0].permute(1, 2, 0)[coords[:, 2], coords[:, 1]]
    out = model_3d(SparseTensor(features, coords))
    middle = out.coords[:, 3] == 1
    expected = F.conv2d(image, conv.weight, padding=1)[0].permute(1, 2, 0)[out.coords[middle, 2], out.coords[middle, 1]]
    torch.testing.assert_close(out.features[middle], factor * expected, rtol=1e-4, atol=1e-5)


def test_strided_pointwise_downsample_modes():
    conv = nn.Conv2d(3, 5, 1, stride=2, bias=False)
    copy_3d, report = inflate_network(nn.Sequential(conv), mode="copy")
    centre_3d, _ = inflate_network(nn.Sequential(conv), mode="center")
    assert copy_3d[0].weight.shape == (5, 3, 2, 2, 2) and centre_3d[0].weight.shape == (5, 3, 1, 1, 1)
    assert torch.equal(copy_3d[0].weight[:, :, 1, 0, 1], conv.weight[:, :, 0, 0])
    assert report[0].shape_2d == (5, 3, 1, 1) and report[0].shape_3d == (5, 3, 2, 2, 2)


def test_efficientnet_lite0_bundled_weights_inflate_with_depthwise_kernels_and_train():
    model_2d = create_2d_network("tf_efficientnet_lite0", num_classes=4)  # bundled ImageNet weights
    model_3d, report = inflate_network(model_2d, mode="copy", axis="x-axis")  # x-axis: W3[:, :, x] = W2
    depthwise = [r for r in report if r.kind == "conv" and r.shape_2d[1] == 1 and r.shape_2d[2] > 1]
    assert depthwise and all(r.shape_3d == (r.shape_2d[0], 1, *(r.shape_2d[2],) * 3) for r in depthwise)
    name = depthwise[0].name_3d
    weight_3d = dict(model_3d.named_parameters())[name + ".weight"]
    weight_2d = dict(model_2d.named_parameters())[name + ".weight"]
    assert torch.equal(weight_3d[:, :, 0], weight_2d) and torch.equal(weight_3d[:, :, -1], weight_2d)
    bn_name = next(r.name_3d for r in report if r.kind == "norm")
    assert torch.equal(dict(model_3d.named_buffers())[bn_name + ".running_var"],
                       dict(model_2d.named_buffers())[bn_name + ".running_var"])
    # forward + backward on a small random sparse batch; every parameter gets a gradient
    torch.manual_seed(0)
    coords = torch.unique(torch.cat([torch.randint(0, 2, (60, 1)), torch.randint(0, 9, (60, 3))], 1), dim=0)
    model_3d.train()
    logits = model_3d(SparseTensor(torch.randn(len(coords), 3), coords, batch_size=2))
    assert logits.shape == (2, 4)
    logits.sum().backward()
    missing = [n for n, p in model_3d.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_unsupported_layers_raise_naming_the_layer():
    class Odd(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(PointliftConfigError, match="'1'.*Odd"):
        inflate_network(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Odd()))
    with pytest.raises(PointliftConfigError, match="'0'.*dilation"):
        inflate_network(nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2)))
    with pytest.raises(PointliftConfigError, match="mode"):
        inflate_network(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), mode="stretch")


def test_submanifold_layers_used_for_stride_one():
    model_3d, _ = inflate_network(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)))
    assert isinstance(model_3d[0], SubMConv3d)
