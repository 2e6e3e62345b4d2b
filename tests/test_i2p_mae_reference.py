"""`recipe: official` against the released I2P-MAE (../shared/reference/i2p-mae, its README says what each
array is): the randomly initialised released model loads by name and reproduces one forward pass tensor
by tensor (indices and masks exactly, tensors within 1e-5 relative), the evaluation features, the depth
views and pixels, the masking probabilities and the FPS skip rule. The mutation tests show the
comparison fails when a weight, a module or a view axis changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointlift.geometry.render import (RELEASED_VIEW_PERM, bicubic_read, released_depth_views,
                                       released_teacher_input)
from pointlift.geometry.readback import read_back
from pointlift.methods.i2p_mae.config import I2PMAEConfig
from pointlift.methods.i2p_mae.masking import released_top_mask
from pointlift.methods.i2p_mae.model import I2PMAE
from pointlift.methods.i2p_mae.released import load_released_state
from pointlift.models.point_m2ae.config import PointM2AEConfig
from pointlift.models.point_m2ae.hierarchy import propagate_visibility
from pointlift.models.point_m2ae.model import count_parameters, encode_for_features
from pointlift.ops import farthest_point_sample

REF = "reference/i2p-mae"
RTOL = 1e-5


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual.detach() if torch.is_tensor(actual) else actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def view_major(array) -> torch.Tensor:
    """Reference rows [v*8+b] -> (8, 3, ...)."""
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float32))
    return tensor.reshape(3, -1, *tensor.shape[1:]).transpose(0, 1)


@pytest.fixture(scope="module")
def ref():
    from conftest import require_shared

    root = require_shared(REF)
    return {name: np.load(root / f"{name}.npz") for name in ("inputs", "forward", "render", "masking", "fps_rule")} | \
        {"weights": root / "model_random_init.safetensors"}


@pytest.fixture(scope="module")
def model(ref):
    network = I2PMAE(I2PMAEConfig(model=PointM2AEConfig(), teacher_channels=512))
    result = load_released_state(network, ref["weights"])
    assert not result.missing_keys and not result.unexpected_keys
    return network.eval()


def released_batch(ref, clouds=slice(None)):
    forward = ref["forward"]
    return {"points": torch.from_numpy(ref["inputs"]["points"][clouds]),
            "teacher_features": view_major(forward["teacher_feat"])[clouds],
            "teacher_saliency": view_major(forward["teacher_sal"]).reshape(8, 3, 14, 14)[clouds],
            "top_visible": torch.from_numpy(~forward["masked_s2"][clouds])}


@pytest.fixture(scope="module")
def parts(model, ref):
    with torch.no_grad():
        return model.run(released_batch(ref))


def test_released_state_dict_loads_by_name(model, ref):
    from safetensors.torch import load_file

    released = load_file(str(ref["weights"]))
    assert set(released) == set(model.state_dict()) and len(released) == 295
    assert count_parameters(model) == 17_622_808
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, released[name].to(tensor.dtype)), name


def test_grouping_is_exact(parts, ref):
    forward, hierarchy = ref["forward"], parts["hierarchy"]
    for s in range(3):
        assert np.array_equal(hierarchy.samples[s].numpy(), forward[f"fps_idx_s{s}"])
        assert np.array_equal(hierarchy.neighbors[s].numpy(), forward[f"knn_idx_s{s}"])
        assert np.array_equal(hierarchy.centers[s].numpy(), forward[f"center_s{s}"])


def test_saliency_and_masks_are_exact(parts, ref):
    forward = ref["forward"]
    assert relative_error(parts["saliency_per_view"], forward["spatial_sal_view"]) < RTOL
    assert relative_error(parts["top_saliency"], forward["spatial_sal"]) < RTOL
    for s in range(3):
        assert np.array_equal(~parts["visible"][s].numpy(), forward[f"masked_s{s}"]), s


def test_encoder_matches(parts, ref):
    forward, encoded = ref["forward"], parts["encoded"]
    for s in range(3):
        assert np.array_equal(encoded.valid[s].sum(1).numpy(), forward[f"enc_nvis_s{s}"])
        assert relative_error(encoded.tokens[s], forward[f"enc_s{s}"]) < RTOL, s


def test_decoder_matches(parts, ref):
    forward, decoded = ref["forward"], parts["decoded"]
    assert np.array_equal(decoded.first_order.numpy(), forward["dec_s2_order"])
    assert relative_error(decoded.first, forward["dec_s2"]) < RTOL
    assert relative_error(decoded.propagated[1], forward["dec_s1_prop"]) < RTOL
    assert relative_error(decoded.final, forward["dec_s1"]) < RTOL


def test_heads_targets_and_losses_match(parts, ref):
    forward = ref["forward"]
    assert relative_error(parts["pred_3d"], forward["rec3d_pred"]) < RTOL
    assert relative_error(parts["gt_3d"], forward["rec3d_gt"]) < RTOL
    assert relative_error(parts["loss_3d"], forward["loss_3d"]) < RTOL
    rows = np.argwhere(parts["visible"][1].numpy())  # (cloud, token), row-major = the reference's rows
    assert np.array_equal(rows, forward["rec2d_rows"])
    member_points = parts["member_points"][parts["visible"][1]].numpy()
    assert np.array_equal(member_points, forward["rec2d_member_point"])
    pred = parts["pred_2d"].double().reshape(-1, 8, 3, 512)
    target = parts["target_2d"].double().reshape(-1, 8, 3, 512)
    assert relative_error(parts["pred_2d"][:48], forward["rec2d_pred_head"]) < RTOL
    assert relative_error(parts["target_2d"][:48], forward["rec2d_target_head"]) < RTOL
    assert relative_error(pred.sum(-1), forward["rec2d_pred_chsum"]) < RTOL
    assert relative_error(target.sum(-1), forward["rec2d_target_chsum"]) < RTOL
    assert relative_error((pred - target).pow(2).sum(-1), forward["rec2d_sqerr_chsum"]) < RTOL
    assert relative_error(parts["loss_2d"], forward["loss_2d"]) < RTOL
    assert relative_error(parts["loss"], forward["loss_3d"] + forward["loss_2d"]) < RTOL  # 1 : 1


def test_targets_equal_full_bicubic_upsampling(ref):
    """The separable read-back equals the released literal F.interpolate + gather."""
    forward, render = ref["forward"], ref["render"]
    maps = view_major(forward["teacher_feat"])[:2, :, :16]
    pixels = torch.from_numpy(render["pixel"][:2, :, :300].astype(np.int64))
    slow = bicubic_read(maps, pixels, 224)
    fast = read_back(maps, pixels.flip(-1), 224)
    assert relative_error(fast, slow.numpy()) < 1e-6


def test_evaluation_features_match(model, ref):
    forward = ref["forward"]
    points = torch.from_numpy(ref["inputs"]["points"])
    encoder = model.h_encoder
    hierarchy = encoder.group(points)
    top = torch.ones(8, 64, dtype=torch.bool)
    masks = propagate_visibility(hierarchy, top, released_quirk=True)
    for s in range(3):
        assert np.array_equal(~masks[s].numpy(), forward[f"eval_masked_s{s}"]), s
    # the released evaluation drops the 7 middle tokens that belong to no top group
    assert int((~masks[1]).sum()) == 7
    with torch.no_grad():
        encoded = encoder(hierarchy, masks)
        features = encode_for_features(encoder, points[:2], released_quirk=True).max(dim=1).values
    for s in range(3):
        assert np.array_equal(encoded.valid[s].sum(1).numpy(), forward[f"enc_eval_nvis_s{s}"])
        assert relative_error(encoded.tokens[s], forward[f"enc_eval_s{s}"]) < RTOL
    assert relative_error(encoded.tokens[2].max(dim=1).values, forward["global_feat"]) < RTOL
    assert relative_error(features, forward["global_feat"][:2]) < RTOL


def test_token_zero_quirk_is_the_only_difference(ref):
    """Official quirk, isolated: without it the masks differ from the released ones exactly at
    token 0 of cloud 0 (middle scale here), nowhere else."""
    forward = ref["forward"]
    encoder = I2PMAE(I2PMAEConfig(model=PointM2AEConfig(), teacher_channels=512)).h_encoder
    hierarchy = encoder.group(torch.from_numpy(ref["inputs"]["points"]))
    top = torch.from_numpy(~forward["masked_s2"])
    plain = propagate_visibility(hierarchy, top, released_quirk=False)
    released = propagate_visibility(hierarchy, top, released_quirk=True)
    difference = (plain[1] != released[1]).nonzero().tolist()
    assert difference == [[0, 0]] and bool(released[1][0, 0]) and not bool(plain[1][0, 0])
    assert np.array_equal(~released[1].numpy(), forward["masked_s1"])


def test_render_matches_reference(ref):
    render, points = ref["render"], torch.from_numpy(ref["inputs"]["points"])
    assert [list(p) for p in render["view_perm"]] == [list(p) for p in RELEASED_VIEW_PERM]
    images, projection = released_depth_views(points)
    assert relative_error(images, render["raw_depth"]) < RTOL
    assert np.array_equal(projection.pixels(points).numpy(), render["pixel"])
    assert np.array_equal(projection.pc_min.numpy(), render["pc_min"])
    assert np.array_equal(projection.grid.numpy(), render["grid_size"])
    assert np.array_equal(projection.offset.numpy(), render["offset"])
    teacher_input = released_teacher_input(images).reshape(8, 3, 3, 224, 224).transpose(0, 1).reshape(24, 3, 224, 224)
    assert float((teacher_input - torch.from_numpy(render["teacher_input"].astype(np.float32))).abs().max()) <= 1e-3


def test_render_fails_when_an_axis_changes(ref, monkeypatch):
    """pointlift's views 0 and 2 are transposes of the released ones: the comparison must see it."""
    import pointlift.geometry.render as render_module

    render, points = ref["render"], torch.from_numpy(ref["inputs"]["points"][:2])
    swapped = ((1, 0, 2), (2, 0, 1), (2, 1, 0))
    monkeypatch.setattr(render_module, "RELEASED_VIEW_PERM", swapped)
    images, projection = render_module.released_depth_views(points)
    assert not np.array_equal(projection.pixels(points).numpy()[:, 0], render["pixel"][:2, 0])
    assert relative_error(images, render["raw_depth"][:2]) > 0.1


def subset_error(model, ref, clouds=slice(0, 2)) -> float:
    with torch.no_grad():
        parts = model.run(released_batch(ref, clouds))
    return relative_error(parts["decoded"].final, ref["forward"]["dec_s1"][clouds])


def test_subset_matches_then_fails_when_a_weight_changes(model, ref):
    assert subset_error(model, ref) < RTOL
    weight = model.h_encoder.encoder_blocks[1].blocks[2].mlp.fc1.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0] += 0.05
        assert subset_error(model, ref) > 1e-4
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_fails_when_the_position_embedding_is_added_once_per_stage(model, ref, monkeypatch):
    """A module change (pointlift's former encoder: position embedding only before the first block)."""
    from pointlift.models.point_m2ae import blocks

    def once(self, x, pos, valid=None):
        x = x + pos
        for block in self.blocks:
            x = block(x, valid)
        return x

    monkeypatch.setattr(blocks.BlockStack, "forward", once)
    assert subset_error(model, ref) > 1e-3


@pytest.mark.parametrize("sampler", ["multinomial", "per_sample_noise"])
def test_released_masking_probabilities(ref, sampler):
    """Both draws of the released masking (torch.multinomial, and Gumbel-top-k on the per-sample noise
    that training uses so that DDP ranks agree) give the released visibility probabilities."""
    masking = ref["masking"]
    saliency = torch.from_numpy(masking["sal"])
    probs = torch.softmax(saliency, dim=1)
    assert relative_error(probs, masking["probs"]) < RTOL
    draws = 10000
    generator = torch.Generator().manual_seed(0)
    repeated = saliency.repeat_interleave(draws, 0)
    noise = torch.rand(repeated.shape, generator=generator) if sampler == "per_sample_noise" else None
    visible = released_top_mask(repeated, 0.8, generator, noise=noise).reshape(20, draws, 64)
    assert bool((visible.sum(-1) == int(masking["num_keep"])).all())
    frequency = visible.double().mean(1).numpy()
    expected = masking["visible_prob"]
    variance = expected * (1 - expected) / draws
    normal = draws * expected * (1 - expected) >= 10  # z-scores only where the normal approximation holds
    z = (frequency - expected)[normal] / np.sqrt(variance[normal])
    assert np.abs(z).max() < 5.0, np.abs(z).max()
    # near-certain cells (p or 1 - p below ~1e-3): at most a handful of surprises in 10,000 draws
    assert np.abs(frequency - expected)[~normal].max() < 2e-3
    # the draw really is biased by saliency on the sharp rows (the test can fail): most salient token
    sharp = 19  # saliency scale 8
    top_token = int(np.argmax(masking["sal"][sharp]))
    assert frequency[sharp, top_token] > 0.5 and expected[sharp, top_token] > 0.5


def test_fixed_mask_is_the_released_draw(parts, ref):
    """The reference mask is one official draw under torch.manual_seed(4) on CPU; the same call on our
    saliency reproduces it (same sampler, same random stream)."""
    torch.manual_seed(4)
    visible = released_top_mask(parts["top_saliency"], 0.8)
    assert np.array_equal(~visible.numpy(), ref["forward"]["masked_s2"])


def test_fps_skip_rule(ref):
    fps = ref["fps_rule"]
    points = torch.from_numpy(fps["points"])[None]
    with_rule = farthest_point_sample(points, 512, skip_radius2=1e-3)[0].numpy()
    without = farthest_point_sample(points, 512)[0].numpy()
    assert np.array_equal(with_rule, fps["fps_idx_official"])
    assert np.array_equal(without, fps["fps_idx_without_skip"])
    assert int((with_rule != without).sum()) == 419


class ImageStatisticsTeacher(torch.nn.Module):
    """A fixed image function standing in for CLIP (channels = 512): 16x16 average pooling mixed by a
    fixed matrix, and a softmax saliency. Lets the on-the-fly path be compared with the reference's
    teacher input images."""

    channels = 512

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Parameter(torch.randn(512, 3, generator=torch.Generator().manual_seed(0)),
                                      requires_grad=False)

    def features_and_saliency(self, images, with_saliency=True):
        pooled = torch.nn.functional.avg_pool2d(images.float(), 16)  # (N, 3, 14, 14)
        features = torch.einsum("oc,nchw->nohw", self.mix, pooled)
        return features, torch.softmax(pooled.mean(1).flatten(1), dim=1).reshape(-1, 14, 14)


def test_teacher_on_the_fly_sees_the_released_images(model, ref):
    """The official step renders and runs the teacher itself: its 2D targets and saliency equal those
    from the same teacher applied to the reference's `teacher_input` images ([v*8+b] order)."""
    clouds = slice(0, 2)
    teacher = ImageStatisticsTeacher()
    batch = released_batch(ref, clouds)
    images = torch.from_numpy(ref["render"]["teacher_input"].astype(np.float32))  # (24, 3, 224, 224)
    features, saliency = teacher.features_and_saliency(images)
    given = {"points": batch["points"], "top_visible": batch["top_visible"],
             "teacher_features": features.reshape(3, 8, 512, 14, 14).transpose(0, 1)[clouds],
             "teacher_saliency": saliency.reshape(3, 8, 14, 14).transpose(0, 1)[clouds]}
    model.teacher = teacher
    try:
        with torch.no_grad():
            on_the_fly = model.run({"points": batch["points"], "top_visible": batch["top_visible"]})
            from_images = model.run(given)
    finally:
        model.teacher = None
    assert relative_error(on_the_fly["target_2d"], from_images["target_2d"].numpy()) < 2e-3
    assert relative_error(on_the_fly["top_saliency"], from_images["top_saliency"].numpy()) < 2e-3
