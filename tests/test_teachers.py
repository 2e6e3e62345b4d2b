"""2D teachers: real weights classify a real photo, layouts convert exactly, ViT saliency is the
attention the block really uses, everything stays frozen; plus the upsampling projection."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.teachers import Teacher, UpsamplingProjection

MOBILENET = "weights/mobilenet_v2.torchvision_in1k.safetensors"
DINOV2 = "weights/vit_small_patch14_dinov2.imgfocus.fp16.safetensors"
MILITARY_UNIFORM = 652  # ImageNet class of the classic Grace Hopper photo


@functools.cache
def teacher(name: str, weights: str | None = None, **kwargs) -> Teacher:
    """Build each real teacher once per test session (model creation dominates the runtime)."""
    return Teacher(name, weights, **kwargs)


@functools.cache
def grace_hopper() -> torch.Tensor:
    """The photo matplotlib ships, as (1,3,224,224) in [0,1]: resize short side to 256, centre crop."""
    import matplotlib

    image = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
    width, height = image.size
    left, top = (width - 224) // 2, (height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


def small_images(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- real weights, real photo ------------------------------------------------------------------

def test_torchvision_mobilenet_file_gives_identical_logits_to_torchvision(shared):
    import torchvision
    from safetensors.torch import load_file

    path = shared(MOBILENET)
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(load_file(str(path)))
    reference.eval()
    ours = teacher("mobilenetv2_100", str(path))
    assert ours.key_matching == "by position (torchvision mobilenet_v2)"
    images = torch.cat([ours.normalize(grace_hopper()), torch.randn(1, 3, 224, 224)])
    with torch.no_grad():
        expected = reference(images)
    torch.testing.assert_close(ours.logits(images), expected, atol=2e-4, rtol=1e-4)


def test_mobilenet_v2_classifies_grace_hopper_top1(shared):
    model = teacher("mobilenetv2_100", str(shared(MOBILENET)))
    logits = model.logits(model.normalize(grace_hopper()))
    assert logits.argmax(dim=1).item() == MILITARY_UNIFORM


def test_bundled_efficientnet_lite0_is_default_and_classifies_grace_hopper_top5():
    model = teacher("tf_efficientnet_lite0")  # no weights given: the bundled PyPI package
    assert model.key_matching == "by position (file order)"
    assert "efficientnet-lite0" in model.identity()
    top5 = model.logits(model.normalize(grace_hopper())).topk(5, dim=1).indices[0].tolist()
    # Honest: this photo is rank 3 for EfficientNet-Lite0 (after 'academic gown', 'mortarboard').
    assert MILITARY_UNIFORM in top5


def test_dinov2_patch_maps_stride14_and_saliency_on_subject(shared):
    model = teacher("vit_small_patch14_dinov2", str(shared(DINOV2)))
    assert (model.stride, model.channels) == (14, 384)
    tokens_seen = {}
    hook = model.model.blocks[-1].register_forward_pre_hook(lambda m, a: tokens_seen.__setitem__("x", a[0]))
    try:
        features, saliency = model.features_and_saliency(model.normalize(grace_hopper()))
    finally:
        hook.remove()
    assert features.shape == (1, 384, 16, 16) and saliency.shape == (1, 16, 16)
    assert torch.isfinite(features).all()
    # Softmax runs over all 257 keys: patch part + CLS->CLS part = 1 exactly; patch part <= 1.
    attention = model.last_block_attention(tokens_seen["x"])
    cls_self = attention[:, :, 0, 0].mean(dim=1)
    torch.testing.assert_close(saliency.sum(dim=(1, 2)) + cls_self, torch.ones(1), atol=1e-5, rtol=0)
    assert 0.5 < saliency.sum().item() <= 1.0 + 1e-6
    # Subject (face: rows 2-9, cols 4-11 of the 16x16 grid) vs the four 4x4 background corners.
    face = saliency[0, 2:10, 4:12].mean()
    corners = [saliency[0, r:r + 4, c:c + 4].mean() for r in (0, 12) for c in (0, 12)]
    assert face > 1.5 * max(corners)


# --- ViT attention is the block's own attention -------------------------------------------------

def test_explicit_attention_reproduces_the_vit_block_output():
    model = teacher("test_vit", "random")
    torch.manual_seed(0)
    for parameter in model.model.parameters():  # random, non-trivial weights everywhere
        parameter.data.normal_(0, 0.2)
    block = model.model.blocks[-1]
    x = torch.randn(2, 1 + 16, model.model.embed_dim)
    probs = model.last_block_attention(x)
    attn = block.attn
    b, n, c = x.shape
    v = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)[2]
    mixed = attn.proj(attn.norm((probs @ v).transpose(1, 2).reshape(b, n, c)))
    y = x + block.ls1(mixed)
    y = y + block.ls2(block.mlp(block.norm2(y)))
    with torch.no_grad():
        expected = block(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(b, attn.num_heads, n))


# --- frozen, stages, precision, identity --------------------------------------------------------

def test_teacher_is_frozen_and_stays_in_eval():
    model = teacher("tf_efficientnet_lite0")
    assert not any(p.requires_grad for p in model.parameters())
    wrapper = torch.nn.Sequential(model)
    wrapper.train()
    assert not any(module.training for module in model.modules())
    stats = [b.clone() for b in model.buffers()]
    images = small_images().requires_grad_(True)
    features = model.features(images)
    assert features.grad_fn is None and not features.requires_grad
    assert model.saliency(images).grad_fn is None
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


def test_stage_selects_feature_info_entry_and_cnn_saliency_is_feature_norm():
    model = teacher("tf_efficientnet_lite0", None, stage=2)
    info = model.model.feature_info[2]
    assert (model.stride, model.channels) == (info["reduction"], info["num_chs"]) == (8, 40)
    images = small_images(size=64)
    features, saliency = model.features_and_saliency(images)
    assert features.shape == (2, 40, 8, 8)
    torch.testing.assert_close(saliency, torch.sqrt((features ** 2).sum(dim=1)))
    last = teacher("tf_efficientnet_lite0")
    assert last.features(images).shape == (2, 320, 2, 2)


def test_half_precision_on_cpu_is_bfloat16_and_close_to_float32():
    # Small input: bfloat16 depthwise convolutions are ~15x slower than float32 on CPU.
    full = teacher("tf_efficientnet_lite0")
    half = teacher("tf_efficientnet_lite0", None, half=True)
    images = full.normalize(F.interpolate(grace_hopper(), size=(64, 64), mode="bilinear", antialias=True))
    low = half.features(images)
    assert low.dtype == torch.float32
    assert next(half.model.parameters()).dtype == torch.bfloat16
    cosine = F.cosine_similarity(low.flatten(1), full.features(images).flatten(1)).item()
    assert cosine > 0.98
    assert half.identity() != full.identity()


def test_identity_names_model_weights_and_stage(shared):
    path = str(shared(MOBILENET))
    a = teacher("mobilenetv2_100", path)
    assert a.identity() == Teacher("mobilenetv2_100", path).identity()
    assert "mobilenet_v2.torchvision_in1k.safetensors" in a.identity()
    assert a.identity() != teacher("mobilenetv2_100", path, stage=2).identity()
    assert a.identity() != teacher("tf_efficientnet_lite0").identity()


# --- local files and clear errors ---------------------------------------------------------------

def test_local_pth_and_safetensors_load_exactly(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("test_efficientnet", num_classes=7).eval()
    state = source.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "plain.safetensors"))
    images = small_images(size=32)
    with torch.no_grad():
        expected = source(images)
    for name in ("wrapped.pth", "plain.safetensors"):
        model = Teacher("test_efficientnet", tmp_path / name)
        assert model.key_matching == "by name"
        torch.testing.assert_close(model.logits(images), expected)  # head resized to the file's 7


def test_wrong_shapes_and_bad_files_raise_clear_errors(tmp_path, shared):
    import timm
    from safetensors.torch import save_file

    mobilenet = shared(MOBILENET)
    with pytest.raises(PointliftDataError, match=r"mobilenet_v2\.torchvision.*expects"):
        Teacher("mobilenetv2_050", mobilenet)  # narrower model: first conv has 16, not 32, filters

    state = timm.create_model("test_efficientnet").state_dict()
    state["conv_stem.weight"] = torch.zeros(5, 3, 3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(PointliftDataError, match=r"bad\.safetensors.*conv_stem\.weight.*\(5, 3, 3, 3\)"):
        Teacher("test_efficientnet", tmp_path / "bad.safetensors")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PointliftDataError, match="junk.pth"):
        Teacher("test_efficientnet", tmp_path / "junk.pth")
    with pytest.raises(PointliftDataError, match="does not exist"):
        Teacher("test_efficientnet", tmp_path / "missing.safetensors")
    with pytest.raises(PointliftConfigError, match="unknown timm model"):
        Teacher("no_such_net", "random")


def test_vit_rejects_images_of_another_size_and_headless_logits(shared):
    model = teacher("vit_small_patch14_dinov2", str(shared(DINOV2)))
    with pytest.raises(PointliftConfigError, match="224x224"):
        model.features(torch.zeros(1, 3, 112, 112))
    with pytest.raises(PointliftConfigError, match="no classifier"):
        model.logits(torch.zeros(1, 3, 224, 224))


# --- upsampling projection ----------------------------------------------------------------------

def test_bilinear_upl_equals_upsample_then_project_reference():
    torch.manual_seed(0)
    upl = UpsamplingProjection(12, out_dim=5)
    feature_map = torch.randn(2, 12, 4, 6)
    out = upl(feature_map, (32, 48))
    assert out.shape == (2, 5, 32, 48)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 32, 48))
    # Bilinear weights sum to 1, so projecting then upsampling == upsampling then projecting.
    upsampled = F.interpolate(feature_map, size=(32, 48), mode="bilinear", align_corners=False)
    weight = upl.projection.weight[:, :, 0, 0]
    projected = torch.einsum("dc,bchw->bdhw", weight, upsampled) + upl.projection.bias.view(1, -1, 1, 1)
    reference = projected / projected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "learned"])
def test_upl_sample_reads_the_full_maps_at_the_pixels(mode):
    """`sample` must equal indexing the full-resolution output (odd sizes, the clamped borders, gradients)."""
    torch.manual_seed(0)
    upl = UpsamplingProjection(6, out_dim=5, mode=mode)
    if mode == "learned":  # a non-zero residual, so its own upsampling is exercised too
        torch.nn.init.normal_(upl.refinements[-1].weight)
    feature_map = torch.randn(3, 6, 5, 7, requires_grad=True)
    out_hw = (37, 61)
    full = upl(feature_map, out_hw)
    views = torch.tensor([0, 1, 2, 2, 0, 1, 2])
    pixels = torch.tensor([[0, 0], [60, 36], [30, 18], [59, 1], [1, 35], [17, 0], [0, 36]])
    sampled = upl.sample(feature_map, out_hw, views, pixels)
    torch.testing.assert_close(sampled, full[views, :, pixels[:, 1], pixels[:, 0]], atol=1e-6, rtol=1e-5)
    weights = torch.randn_like(sampled)
    grad_full, = torch.autograd.grad((full[views, :, pixels[:, 1], pixels[:, 0]] * weights).sum(), feature_map)
    grad_sampled, = torch.autograd.grad((sampled * weights).sum(), feature_map)
    torch.testing.assert_close(grad_sampled, grad_full, atol=1e-5, rtol=1e-4)


def test_learned_upl_starts_as_bilinear_and_learns():
    torch.manual_seed(0)
    bilinear = UpsamplingProjection(8, out_dim=4)
    learned = UpsamplingProjection(8, out_dim=4, mode="learned")
    learned.projection.load_state_dict(bilinear.projection.state_dict())
    feature_map = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(learned(feature_map, (16, 16)), bilinear(feature_map, (16, 16)))
    # Target: a fine checkerboard of two embeddings, which bilinear upsampling of 4x4 cannot make.
    checker = (torch.arange(16).view(-1, 1) // 2 + torch.arange(16).view(1, -1) // 2) % 2
    target = F.one_hot(checker, 4).permute(2, 0, 1).float()[None]
    optimizer = torch.optim.Adam(learned.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        loss = (1 - (learned(feature_map, (16, 16)) * target).sum(dim=1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert any(step.weight.abs().sum() > 0 for step in learned.refinements)
    with pytest.raises(PointliftConfigError):
        UpsamplingProjection(8, mode="nearest")


def same_code_on_cuda_with_float16():
    cpu = teacher("tf_efficientnet_lite0")
    gpu = Teacher("tf_efficientnet_lite0", half=True).to("cuda")
    images = cpu.normalize(F.interpolate(grace_hopper(), size=(128, 128), mode="bilinear", antialias=True))
    features = gpu.features(images.cuda())
    assert features.device.type == "cuda" and features.dtype == torch.float32
    assert next(gpu.model.parameters()).dtype == torch.float16
    cosine = F.cosine_similarity(features.cpu().flatten(1), cpu.features(images).flatten(1)).item()
    assert cosine > 0.99
    upl = UpsamplingProjection(cpu.channels, mode="learned").cuda()
    assert upl(features, (128, 128)).device.type == "cuda"


if torch.cuda.is_available():  # the CUDA half-precision check exists where a GPU does
    test_same_code_on_cuda_with_float16 = same_code_on_cuda_with_float16


# --- the folded CPU copy of a CNN teacher ------------------------------------------------------------

def test_folded_cpu_copy_matches_the_eager_teacher_and_keeps_the_fingerprint():
    """BatchNorm folded into the convolutions, channels-last: the same features to float rounding; the
    teacher's own weights (cache keys hash them) are untouched."""
    from pointlift.teachers.teacher import weights_fingerprint

    model = teacher("tf_efficientnet_lite0")
    before = weights_fingerprint(model)
    images = torch.randn(4, 3, 64, 96)
    model.fold_cpu = False
    eager = model.features(images)
    model.fold_cpu = True
    folded = model.features(images)
    assert model._folded[0] is not None
    from pointlift.teachers.folding import conv_batchnorm_pairs
    probe = images[:2].contiguous(memory_format=torch.channels_last)
    assert len(conv_batchnorm_pairs(model.model, model._stage_of, images[:2])) > 10
    assert conv_batchnorm_pairs(model._folded[0], model._stage_of, probe) == []  # every BatchNorm that runs is gone
    torch.testing.assert_close(folded, eager, atol=1e-4 * float(eager.abs().max()), rtol=0)
    assert folded.is_contiguous() and weights_fingerprint(model) == before
    assert len(list(model.parameters())) == len(list(model.model.parameters()))  # the copy is no submodule
    # changed weights (in place, or a copy of the teacher that is then changed) never reuse a stale copy
    import copy
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    model.fold_cpu = False
    changed = model.features(images)
    model.fold_cpu = True
    torch.testing.assert_close(model.features(images), changed, atol=1e-4 * float(changed.abs().max()), rtol=0)
    torch.testing.assert_close(other.features(images), eager, atol=1e-4 * float(eager.abs().max()), rtol=0)


def test_fold_is_refused_when_a_convolution_output_is_also_read_elsewhere():
    """A skip that reads the convolution's output before its BatchNorm would change if the BatchNorm were
    folded into the convolution: the probe comparison must catch it and keep the eager model."""
    from pointlift.teachers.folding import conv_batchnorm_pairs, folded_inference_copy

    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) + y

    torch.manual_seed(0)
    model = Skip().eval()
    model.norm.running_mean.uniform_(-1, 1)
    model.norm.running_var.uniform_(0.5, 2)
    probe = torch.randn(2, 3, 8, 8)
    run = lambda module, x: module(x)  # noqa: E731
    assert conv_batchnorm_pairs(model, run, probe) == [("conv", "norm")]
    assert folded_inference_copy(model, run, probe) is None
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    plain[1].running_mean.uniform_(-1, 1)
    fast = folded_inference_copy(plain, run, probe)
    assert isinstance(fast[1], torch.nn.Identity)
    torch.testing.assert_close(fast(probe), plain(probe), atol=1e-5, rtol=1e-5)


def test_folded_cpu_copy_runs_a_large_batch_in_calls_and_gives_each_image_its_own_map():
    """The CPU copy splits a batch into calls of at most CPU_PIXELS_PER_CALL pixels: every image's map is
    the one it gets alone (a dropped, repeated or misplaced image fails this)."""
    model = teacher("tf_efficientnet_lite0")
    model.CPU_PIXELS_PER_CALL = 3 * 32 * 48  # calls of 3 images: 7 images -> 3 + 3 + 1
    images = torch.randn(7, 3, 32, 48)
    calls = []
    stage_of = model._stage_of
    model._stage_of = lambda net, x: (calls.append(len(x)), stage_of(net, x))[1]
    batched = model.features(images)
    assert calls[-3:] == [3, 3, 1]
    alone = torch.cat([model.features(image[None]) for image in images])
    torch.testing.assert_close(batched, alone, atol=1e-5 * float(alone.abs().max()), rtol=0)
