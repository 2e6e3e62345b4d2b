"""I2P-MAE: bicubic read-back, 2D-guided masking statistics, cache exactness, a short run whose loss falls."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pointlift.engine.checkpoint import load_checkpoint
from pointlift.engine.config import OptimConfig, TrainConfig, load_config
from pointlift.errors import PointliftConfigError
from pointlift.methods.i2p_mae import (I2PMAE, DataConfig, I2PMAEConfig, I2PMAEExperiment, TeacherConfig,
                                       build_embedder, guided_top_mask, prepare_point_sets, pretrain,
                                       token_targets)
from pointlift.methods.i2p_mae_cache import build_teacher_cache, read_back, teacher_maps
from pointlift.geometry.render import render_depth_views
from pointlift.models.point_m2ae import PointM2AEConfig, random_top_mask

IMAGE = 64  # small renders keep the teacher cheap on 2 shared cores


def tiny_model() -> PointM2AEConfig:
    return PointM2AEConfig(num_points=128, num_centers=(32, 16, 8), group_sizes=(8, 4, 4),
                           encoder_dims=(32, 64, 96), encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=8,
                           decoder_dims=(96, 48), decoder_depths=(1, 1), drop_path=0.0)


@pytest.fixture(scope="module")
def teacher():
    from pointlift.teachers.teacher import Teacher

    return Teacher("tf_efficientnet_lite0", stage=-2)  # bundled ImageNet weights, stride 16


@pytest.fixture(scope="module")
def shapes():
    from pointlift.data.synthetic import make_shapes

    points, labels, _ = make_shapes(4, num_points=200, classes=("cube", "table", "cone", "torus"), seed=0)
    return prepare_point_sets(list(points), 128, seed=0), labels


def test_read_back_equals_full_bicubic_upsampling():
    torch.manual_seed(0)
    maps = torch.randn(2, 3, 5, 7, 6, dtype=torch.float64)
    pixels = torch.randint(0, 40, (2, 3, 11, 2))
    values = read_back(maps, pixels, 40)  # (B, V, N, C)
    full = F.interpolate(maps.flatten(0, 1), size=(40, 40), mode="bicubic", align_corners=False)
    full = full.reshape(2, 3, 5, 40, 40)
    for b in range(2):
        for v in range(3):
            for n in range(11):
                u, row = pixels[b, v, n].tolist()
                torch.testing.assert_close(values[b, v, n], full[b, v, :, row, u])


def test_gumbel_top_k_draws_with_softmax_probabilities():
    """One visible token: P(token i visible) must be softmax(z / T)_i of the standardised saliency."""
    saliency = torch.tensor([0.1, 0.2, 0.4, 0.8, 1.6])
    draws = 40000
    generator = torch.Generator().manual_seed(0)
    visible = guided_top_mask(saliency.expand(draws, -1), ratio=0.8, temperature=0.7, generator=generator)
    assert bool((visible.sum(1) == 1).all())
    z = (saliency - saliency.mean()) / saliency.std()
    expected = torch.softmax(z / 0.7, 0)
    observed = visible.float().mean(0)
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert bool(((observed - expected).abs() < 5 * sigma).all()), (observed, expected)


def test_guided_masking_keeps_salient_tokens_visible(teacher, shapes):
    """Acceptance: with real teacher saliency, the most salient 25 % of top tokens are kept visible
    far more often than random masking keeps them (binomial margin of 6 standard deviations)."""
    points = torch.from_numpy(shapes[0])
    config = tiny_model()
    from pointlift.models.point_m2ae import group_hierarchy

    hierarchy = group_hierarchy(points, config.num_centers, config.group_sizes)
    _, saliency_maps = teacher_maps(teacher, points, IMAGE, 5)
    pixels = render_depth_views(points, IMAGE, 5).pixels
    top_saliency, _ = token_targets(hierarchy, pixels, None, saliency_maps, IMAGE)
    batch, tokens = top_saliency.shape
    salient = top_saliency >= top_saliency.quantile(0.75, dim=1, keepdim=True)  # (B, T)
    repeats = 300
    generator = torch.Generator().manual_seed(1)
    guided = guided_top_mask(top_saliency.repeat(repeats, 1), 0.75, temperature=0.5, generator=generator)
    random = random_top_mask(batch * repeats, tokens, 0.75, generator=generator)
    mask = salient.repeat(repeats, 1)
    trials = int(mask.sum())
    p_guided = guided[mask].float().mean().item()
    p_random = random[mask].float().mean().item()
    sigma = math.sqrt(p_random * (1 - p_random) / trials + p_guided * (1 - p_guided) / trials)
    assert p_random == pytest.approx(0.25, abs=0.03)
    assert p_guided - p_random > 6 * sigma and p_guided > 0.4, (p_guided, p_random)


def test_cache_is_exact_under_scale_and_translation(teacher, shapes, tmp_path):
    points = shapes[0][:4]
    maps = build_teacher_cache(teacher, points, IMAGE, 5, cache_dir=tmp_path, storage_dtype="float32")
    assert maps.built
    again = build_teacher_cache(teacher, points, IMAGE, 5, cache_dir=tmp_path, storage_dtype="float32")
    assert not again.built and again.key == maps.key
    for changed in (dict(image_size=IMAGE + 16), dict(footprint=3)):  # rendering settings key the cache
        settings = {"image_size": IMAGE, "footprint": 5, **changed}
        assert build_teacher_cache(teacher, points, cache_dir=tmp_path, storage_dtype="float32",
                                   **settings).key != maps.key
    from pointlift.teachers.teacher import Teacher

    other = Teacher("tf_efficientnet_lite0", stage=-1)  # another teacher identity
    assert build_teacher_cache(other, points, IMAGE, 5, cache_dir=tmp_path, storage_dtype="float32").key != maps.key

    # end to end: targets from the cached maps of the original shapes == teacher run on augmented shapes
    augmented = torch.from_numpy(points) * torch.tensor([1.37, 0.61, 2.2, 0.9])[:, None, None] \
        + torch.tensor([[0.3, -1.1, 0.25]])
    cached_features = torch.from_numpy(np.array(maps.features))
    cached_saliency = torch.from_numpy(np.array(maps.saliency))
    direct_features, direct_saliency = teacher_maps(teacher, augmented, IMAGE, 5)
    torch.testing.assert_close(cached_features, direct_features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached_saliency, direct_saliency, rtol=1e-4, atol=1e-4)
    pixels_aug = render_depth_views(augmented, IMAGE, 5).pixels
    pixels_orig = render_depth_views(torch.from_numpy(points), IMAGE, 5).pixels
    assert torch.equal(pixels_aug, pixels_orig)
    from pointlift.models.point_m2ae import group_hierarchy

    config = tiny_model()
    hierarchy = group_hierarchy(augmented, config.num_centers, config.group_sizes)
    via_cache = token_targets(hierarchy, pixels_aug, cached_features, cached_saliency, IMAGE)
    direct = token_targets(hierarchy, pixels_aug, direct_features, direct_saliency, IMAGE)
    for a, b in zip(via_cache, direct):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_short_pretraining_lowers_the_loss_and_checkpoint_embeds(teacher, shapes, tmp_path):
    points = np.concatenate([shapes[0]] * 2)  # 32 shapes
    experiment = I2PMAEExperiment(
        method=I2PMAEConfig(model=tiny_model(), image_size=IMAGE, mask_ratio=0.75),
        data=DataConfig(source="synthetic", cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(epochs=3, batch_size=8, log_every=3, checkpoint_every=0, seed=0,
                          optim=OptimConfig(lr=3e-3, warmup_steps=1)),
        device="cpu")
    torch.manual_seed(0)
    model, result, info = pretrain(experiment, tmp_path / "run", progress=False, points=points, teacher=teacher)
    rows = [row for row in result.history if "loss" in row]
    assert result.step == 12 and info["cache_built"]
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], [r["loss"] for r in rows]
    assert rows[-1]["loss_2d"] < rows[0]["loss_2d"]

    state, meta = load_checkpoint(result.checkpoint_path)
    assert meta["model_spec"]["kind"] == "i2p_mae"
    assert not any(key.startswith("teacher.") for key in state)
    embedder = build_embedder(meta["model_spec"]["config"])
    missing = embedder.load_state_dict(state, strict=True)
    assert not missing.missing_keys
    probe = torch.from_numpy(points[:3]) * 2.0 + 0.5
    torch.testing.assert_close(embedder.embed(probe), model.embed(probe))
    assert embedder.embed(probe).shape == (3, tiny_model().encoder_dims[-1])


def test_both_switches_off_is_the_3d_only_baseline():
    config = I2PMAEConfig(model=tiny_model(), guided_masking=False, feature_target=False, image_size=IMAGE)
    model = I2PMAE(config, teacher=None)
    assert model.teacher is None and not hasattr(model, "feature_head")
    points = torch.from_numpy(prepare_point_sets([np.random.default_rng(0).normal(size=(300, 3))] * 2, 128))
    out = model({"points": points})
    out["loss"].backward()
    assert "loss_2d" not in out and torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in model.parameters())


def test_config_file_loads_and_rejects_bad_values(tmp_path):
    from pathlib import Path

    experiment = load_config(Path(__file__).resolve().parents[1] / "configs/i2p_mae_modelnet10.yaml",
                             I2PMAEExperiment)
    assert experiment.method.guided_masking and experiment.method.feature_target
    with pytest.raises(PointliftConfigError, match="method.temperature"):
        load_config({"method": {"temperature": 0.0}}, I2PMAEExperiment)
    with pytest.raises(PointliftConfigError, match="teacher_channels"):
        I2PMAE(I2PMAEConfig(model=tiny_model()), teacher=None)


def test_layer_batch_targets_remove_the_shared_component():
    """"layer_batch" = per-token LayerNorm, then per-channel z-score over the batch's tokens (reference
    computed channel by channel); a component shared by every token disappears from the targets."""
    from pointlift.methods.i2p_mae import normalize_targets

    generator = torch.Generator().manual_seed(0)
    shared_part = 5.0 * torch.randn(1, 1, 12, generator=generator)
    features = shared_part + 0.3 * torch.randn(4, 6, 12, generator=generator, dtype=torch.float32)
    layer = normalize_targets(features, "layer")
    both = normalize_targets(features, "layer_batch")
    reference = torch.empty_like(layer)
    for channel in range(12):
        column = layer[..., channel]
        reference[..., channel] = (column - column.mean()) / column.std()
    torch.testing.assert_close(both, reference, rtol=1e-5, atol=1e-5)
    # with "layer" alone the constant mean target already explains most of the variance; not after
    assert float(layer.var(dim=(0, 1)).mean()) < 0.2
    torch.testing.assert_close(both.var(dim=(0, 1)), torch.ones(12), rtol=1e-4, atol=1e-4)
    with pytest.raises(PointliftConfigError, match="target_norm"):
        normalize_targets(features, "channel")


def test_benchmark_averages_seeds_and_reports_every_documented_metric(shared, tmp_path):
    """`bench i2p-mae` end to end at a few steps, two seeds: the documented metric names, and SVM figures
    that are the mean (and std) of the per-seed accuracies, with the gap paired by seed."""
    from pointlift.bench.i2p_mae import run

    shared("data/modelnet10_vox32.npz")
    result = run("smoke", tmp_path, seeds=(0, 1), spec_overrides={"steps": 2, "pretrain_shapes": 32},
                 measure_timing=True)
    metrics, per_seed = result.metrics, result.config["svm_acc_per_seed"]
    for name in ("svm_acc_i2pmae", "svm_acc_3d_only", "svm_acc_random", "fewshot_10w10s_mean",
                 "fewshot_10w10s_std", "samples_per_s", "overhead_ratio"):
        assert np.isfinite(metrics[name]) and metrics[name] > 0, name
    for name in ("i2pmae", "3d_only", "random"):
        assert len(per_seed[name]) == 2
        assert metrics[f"svm_acc_{name}"] == pytest.approx(np.mean(per_seed[name]))
        assert metrics[f"svm_acc_{name}_std"] == pytest.approx(np.std(per_seed[name]))
    assert metrics["svm_gap_i2pmae_vs_3d_only"] == pytest.approx(
        np.mean(np.array(per_seed["i2pmae"]) - np.array(per_seed["3d_only"])))
