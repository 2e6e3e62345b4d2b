"""I2P-MAE: bicubic read-back, 2D-guided masking statistics, cache exactness, short runs of both recipes
whose loss falls (the official one with the teacher run every step), the CLIP teacher's shapes, both SVM
protocols. The released-code comparisons are in test_i2p_mae_reference.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pointlift.engine.checkpoint import load_checkpoint
from pointlift.engine.config import OptimConfig, TrainConfig, load_config
from pointlift.errors import PointliftConfigError
from pointlift.data.shape_sets import prepare_point_sets
from pointlift.geometry.readback import read_back
from pointlift.geometry.render import render_depth_views
from pointlift.methods.i2p_mae.cache import build_teacher_cache, teacher_maps
from pointlift.methods.i2p_mae.config import DataConfig, I2PMAEConfig, I2PMAEExperiment
from pointlift.methods.i2p_mae.data import PretrainShapes, TeacherInLoader
from pointlift.methods.i2p_mae.embedder import build_embedder
from pointlift.methods.i2p_mae.masking import guided_top_mask
from pointlift.methods.i2p_mae.model import I2PMAE
from pointlift.methods.i2p_mae.pretrain import pretrain
from pointlift.models.point_m2ae.config import PointM2AEConfig
from pointlift.models.point_m2ae.hierarchy import random_top_mask

IMAGE = 64  # small renders keep the teacher cheap on 2 shared cores


def tiny_model() -> PointM2AEConfig:
    return PointM2AEConfig(num_points=128, num_centers=(32, 16, 8), group_sizes=(8, 4, 4),
                           encoder_dims=(32, 64, 96), encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=8,
                           decoder_dims=(96, 64), decoder_depths=(1, 1), drop_path=0.0)


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
    from pointlift.models.point_m2ae.hierarchy import group_hierarchy

    hierarchy = group_hierarchy(points, config.num_centers, config.group_sizes)
    _, saliency_maps = teacher_maps(teacher, points, IMAGE, 5)
    pixels = render_depth_views(points, IMAGE, 5).pixels
    centres = hierarchy.point_index(2)
    centre_pixels = pixels.gather(2, centres[:, None, :, None].expand(-1, 3, -1, 2))
    top_saliency = read_back(saliency_maps[:, :, None], centre_pixels, IMAGE)[..., 0].mean(dim=1)
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


def test_cache_separates_teachers_that_differ_only_in_weights(teacher, shapes, tmp_path):
    """Two teachers with the same name and weights source (same identity string) but other weights, e.g.
    two random initialisations or a fine-tuned copy, must not share cached maps (issue 24)."""
    import copy

    points = shapes[0][:2]
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        next(other.parameters()).add_(0.05)
    assert other.identity() == teacher.identity()
    maps = build_teacher_cache(teacher, points, IMAGE, 5, cache_dir=tmp_path, storage_dtype="float32")
    changed = build_teacher_cache(other, points, IMAGE, 5, cache_dir=tmp_path, storage_dtype="float32")
    assert changed.built and changed.key != maps.key
    assert not np.array_equal(np.asarray(changed.features), np.asarray(maps.features))
    direct, _ = teacher_maps(other, torch.from_numpy(points), IMAGE, 5)
    torch.testing.assert_close(torch.from_numpy(np.array(changed.features)), direct, rtol=1e-4, atol=1e-4)


def test_official_recipe_trains_with_the_teacher_every_step(teacher, shapes, tmp_path):
    """`recipe: official`: no cache, the teacher runs inside each step on the per-axis augmented batch;
    the loss (Chamfer + raw-feature MSE, 1 : 1) falls and the checkpoint embeds like the model."""
    points = np.concatenate([shapes[0]] * 2)  # 32 shapes
    experiment = I2PMAEExperiment(
        method=I2PMAEConfig(model=tiny_model(), image_size=IMAGE, mask_ratio=0.75),
        data=DataConfig(format="synthetic", cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(epochs=6, batch_size=8, log_every=4, checkpoint_every=0, seed=0,
                          optim=OptimConfig(lr=3e-3, warmup_steps=1)),
        device="cpu")
    assert experiment.method.recipe == "official" and experiment.data.augment == "per_axis"
    assert not experiment.data.cache_teacher and experiment.method.recon_weight == 1.0
    calls = []
    original = teacher.features_and_saliency

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    teacher.features_and_saliency = counted
    try:
        torch.manual_seed(0)
        model, result, info = pretrain(experiment, tmp_path / "run", progress=False, points=points, teacher=teacher)
    finally:
        del teacher.features_and_saliency
    rows = [row for row in result.history if "loss" in row]
    assert result.step == 24 and "cache_built" not in info and not (tmp_path / "cache").exists()
    assert len(calls) >= 24  # one teacher call per step at least
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"], [r["loss"] for r in rows]
    assert rows[-1]["loss_3d"] < rows[0]["loss_3d"] and rows[-1]["loss_2d"] < rows[0]["loss_2d"]

    state, meta = load_checkpoint(result.checkpoint_path)
    assert meta["model_spec"]["kind"] == "i2p_mae" and meta["model_spec"]["config"]["recipe"] == "official"
    assert not any(key.startswith("teacher.") for key in state)
    assert {"rec_head_2d.weight", "rec_head_3d.weight", "mask_token", "h_encoder.encoder_norms.2.weight"} <= set(state)
    embedder = build_embedder(meta["model_spec"]["config"])
    missing = embedder.load_state_dict(state, strict=True)
    assert not missing.missing_keys
    probe = torch.from_numpy(points[:3]) * 2.0 + 0.5
    torch.testing.assert_close(embedder.eval().embed(probe), model.eval().embed(probe))
    assert embedder.embed(probe).shape == (3, tiny_model().encoder_dims[-1])


def test_teacher_in_loader_gives_the_official_steps_and_any_worker_count_the_same_run(teacher, shapes, tmp_path):
    """`data.teacher_in_loader`: the collate renders the batch's released views and runs the teacher on them in
    one call, as the step would, so the run is the in-step run bit for bit; 0 and 2 DataLoader workers too
    (each sample's augmentation comes from its own stream)."""
    points = np.concatenate([shapes[0]] * 2)

    def run(name: str, in_loader: bool, workers: int):
        experiment = I2PMAEExperiment(
            method=I2PMAEConfig(model=tiny_model(), image_size=IMAGE, mask_ratio=0.75),
            data=DataConfig(format="synthetic", cache_dir=str(tmp_path / "cache"), teacher_in_loader=in_loader),
            train=TrainConfig(max_steps=3, batch_size=8, log_every=1, checkpoint_every=0, seed=0, num_workers=workers,
                              optim=OptimConfig(lr=3e-3, warmup_steps=1)),
            device="cpu")
        torch.manual_seed(0)
        model, result, _ = pretrain(experiment, tmp_path / name, progress=False, points=points, teacher=teacher)
        return [row["loss"] for row in result.history if "loss" in row], model.state_dict()

    in_step, state = run("in-step", False, 0)
    loader0, state0 = run("loader0", True, 0)
    loader2, state2 = run("loader2", True, 2)
    assert len(in_step) == 3 and in_step == loader0 == loader2
    assert all(torch.equal(state[k], state0[k]) and torch.equal(state0[k], state2[k]) for k in state)

    items = [PretrainShapes(points)[i] for i in (3, 5)]
    batch = TeacherInLoader(teacher, IMAGE, footprint=5, with_saliency=True)(items)
    model = I2PMAE(I2PMAEConfig(model=tiny_model(), image_size=IMAGE), teacher)
    features, saliency = model.teacher_outputs(batch["points"], {})[1:]
    assert torch.equal(batch["teacher_features"], features) and torch.equal(batch["teacher_saliency"], saliency)
    with pytest.raises(PointliftConfigError, match="teacher_in_loader"):
        I2PMAEExperiment(data=DataConfig(teacher_in_loader=True, cache_teacher=True))


def test_pointlift_recipe_trains_from_the_cache(teacher, shapes, tmp_path):
    points = np.concatenate([shapes[0]] * 2)
    experiment = I2PMAEExperiment(
        method=I2PMAEConfig(model=tiny_model(), recipe="pointlift", image_size=IMAGE, mask_ratio=0.75),
        data=DataConfig(format="synthetic", cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(epochs=4, batch_size=8, log_every=4, checkpoint_every=0, seed=0,
                          optim=OptimConfig(lr=3e-3, warmup_steps=1)),
        device="cpu")
    method = experiment.method
    assert (method.masking, method.renderer, method.target_norm, method.released_quirks) == \
        ("standardised", "invariant", "layer", False)
    assert experiment.data.cache_teacher and experiment.data.augment == "uniform"
    torch.manual_seed(0)
    model, result, info = pretrain(experiment, tmp_path / "run", progress=False, points=points, teacher=teacher)
    rows = [row for row in result.history if "loss" in row]
    assert info["cache_built"] and result.step == 16
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]


def test_augmentation_per_axis_and_uniform():
    points = np.ones((1, 50, 3), dtype=np.float32)
    torch.manual_seed(0)
    per_axis = PretrainShapes(points, scale_range=(0.5, 2.0), translate=0.0, augment="per_axis")[0]["points"]
    uniform = PretrainShapes(points, scale_range=(0.5, 2.0), translate=0.0, augment="uniform")[0]["points"]
    assert len(set(per_axis[0].tolist())) == 3 and len(set(uniform[0].tolist())) == 1
    assert all(0.5 <= v <= 2.0 for v in per_axis[0].tolist())


def test_both_switches_off_is_the_3d_only_baseline():
    config = I2PMAEConfig(model=tiny_model(), guided_masking=False, feature_target=False, image_size=IMAGE)
    model = I2PMAE(config, teacher=None)
    assert model.teacher is None and not hasattr(model, "rec_head_2d")
    points = torch.from_numpy(prepare_point_sets([np.random.default_rng(0).normal(size=(300, 3))] * 2, 128))
    out = model({"points": points})
    out["loss"].backward()
    assert "loss_2d" not in out and torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in model.parameters())


def test_config_file_loads_and_rejects_bad_values(tmp_path):
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    experiment = load_config(configs / "i2p_mae_modelnet10.yaml", I2PMAEExperiment)
    assert experiment.method.guided_masking and experiment.method.feature_target
    paper = load_config(configs / "i2p_mae_paper.yaml", I2PMAEExperiment)
    assert paper.method.recipe == "official" and paper.method.masking == "released"
    assert paper.teacher.name == "vit_base_patch16_clip_224.openai" and paper.teacher.project
    assert paper.method.model == PointM2AEConfig() and paper.data.augment == "per_axis"
    with pytest.raises(PointliftConfigError, match="cache_teacher"):
        load_config({"data": {"cache_teacher": True}}, I2PMAEExperiment)  # released views + cache
    with pytest.raises(PointliftConfigError, match="method.temperature"):
        load_config({"method": {"temperature": 0.0}}, I2PMAEExperiment)
    with pytest.raises(PointliftConfigError, match="teacher_channels"):
        I2PMAE(I2PMAEConfig(model=tiny_model()), teacher=None)


def test_layer_batch_targets_remove_the_shared_component():
    """"layer_batch" = per-token LayerNorm, then per-channel z-score over the batch's tokens (reference
    computed channel by channel); a component shared by every token disappears from the targets."""
    from pointlift.methods.i2p_mae.model import normalize_targets

    generator = torch.Generator().manual_seed(0)
    shared_part = 5.0 * torch.randn(1, 1, 12, generator=generator)
    features = shared_part + 0.3 * torch.randn(4, 6, 12, generator=generator, dtype=torch.float32)
    torch.testing.assert_close(normalize_targets(features, "none"), features)  # official: raw
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
    """`bench i2p-mae` end to end at a few steps, two seeds, both recipes and both SVM protocols: the
    documented metric names, SVM figures that are the mean (and std) of the per-seed accuracies, gaps
    paired by seed, and the cache speed-up measured side by side."""
    from pointlift.bench.i2p_mae import run

    shared("data/modelnet10_vox32.npz")
    result = run("smoke", tmp_path, seeds=(0, 1), measure_timing=True,
                 spec_overrides={"steps": 2, "pretrain_shapes": 32, "train_per_class": 12})
    metrics = result.metrics
    names = ("official_i2pmae", "official_3d_only", "pointlift_i2pmae", "random")
    for name in names:
        for prefix in ("svm_acc", "svm_paper_acc"):
            per_seed = result.config[f"{prefix}_per_seed"][name]
            assert len(per_seed) == 2 and all(0 < a <= 1 for a in per_seed)
            assert metrics[f"{prefix}_{name}"] == pytest.approx(np.mean(per_seed))
            assert metrics[f"{prefix}_{name}_std"] == pytest.approx(np.std(per_seed))
    per_seed = result.config["svm_acc_per_seed"]
    assert metrics["svm_gap_official_vs_3d_only"] == pytest.approx(
        np.mean(np.array(per_seed["official_i2pmae"]) - np.array(per_seed["official_3d_only"])))
    for name in ("fewshot_10w10s_mean", "samples_per_s_official", "samples_per_s_pointlift",
                 "samples_per_s_teacher_each_step", "samples_per_s_cached"):
        assert np.isfinite(metrics[name]) and metrics[name] > 0, name
    assert result.config["methods"]["official_i2pmae"]["masking"] == "released"
    assert result.config["methods"]["pointlift_i2pmae"]["masking"] == "standardised"


def test_clip_teacher_gives_projected_patch_features_and_cls_attention():
    """The paper's teacher by timm name, random weights (offline): 512-d features after the visual
    projection on the 14 x 14 patch grid (stride 16) and the last block's CLS->patch attention."""
    from pointlift.teachers.teacher import Teacher

    torch.manual_seed(0)
    clip = Teacher("vit_base_patch16_clip_224.openai", weights="random", project=True)
    assert (clip.channels, clip.stride) == (512, 16) and "projected" in clip.identity()
    images = torch.randn(2, 3, 224, 224)
    features, saliency = clip.features_and_saliency(images)
    assert features.shape == (2, 512, 14, 14) and saliency.shape == (2, 14, 14)
    with torch.no_grad():
        tokens = clip.model.forward_features(images)  # final-normed tokens (CLIP's ln_post)
        expected = clip.model.head(tokens[:, 1:]).reshape(2, 14, 14, 512).permute(0, 3, 1, 2)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    # attention over 197 keys: the patch part sums to 1 minus the CLS->CLS weight
    assert bool(((saliency.sum(dim=(1, 2)) > 0) & (saliency.sum(dim=(1, 2)) < 1)).all())
    with pytest.raises(PointliftConfigError):
        Teacher("tf_efficientnet_lite0", project=True)


def test_paper_svm_protocol_uses_raw_features():
    """SVC(linear, C=0.01) on unscaled features: separable blobs are solved, but when the informative
    features are 1000x smaller than noise features (no scaling inside, as released) the fixed C fails,
    while pointlift's protocol (scaler + C by CV) still solves it."""
    from pointlift.tasks.svm import paper_svm_accuracy, svm_accuracy

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    labels = np.repeat(np.arange(3), 40)
    features = centres[labels] + rng.normal(size=(120, 8))
    train, test = np.arange(120) % 2 == 0, np.arange(120) % 2 == 1
    assert paper_svm_accuracy(features[train], labels[train], features[test], labels[test]) > 0.95
    mixed = np.concatenate([features * 1e-3, rng.normal(size=(120, 8))], axis=1)
    assert paper_svm_accuracy(mixed[train], labels[train], mixed[test], labels[test]) < 0.6
    assert svm_accuracy(mixed[train], labels[train], mixed[test], labels[test], folds=3)[0] > 0.95
