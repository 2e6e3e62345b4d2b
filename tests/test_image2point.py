"""Image2Point method and voxelised shape classification: FIP freezing, data pipeline, training,
checkpoint -> embedder round trip, config file."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

import pytest
import torch

from pointlift.data.shapes import ShapeSet
from pointlift.data.synthetic import make_shapes
from pointlift.engine.checkpoint import load_checkpoint
from pointlift.engine.config import OptimConfig, TrainConfig, load_config
from pointlift.engine.metrics import read_metrics
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.methods.image2point.config import Image2PointConfig, InflationConfig
from pointlift.methods.image2point.embedder import build_embedder
from pointlift.methods.image2point.finetune import finetune
from pointlift.methods.image2point.fip import apply_fip
from pointlift.metrics import accuracy_metrics
from pointlift.models.image2point_net import build_network
from pointlift.tasks.shape_classification.data import (ShapeDataConfig, VoxelCollate, VoxelShapeDataset, augment_points,
                                                       build_datasets, build_datasets_with_validation,
                                                       few_shot_indices)
from pointlift.tasks.shape_classification.train import SparseShapeClassifier, batch_to_sparse, epochs_to_target

REPO = Path(__file__).resolve().parents[1]
TINY = "mobilenetv2_035"


def _synthetic_splits(per_class=4, test_per_class=2, classes=("sphere", "cube", "cylinder", "torus")):
    points, labels, names = make_shapes(per_class, num_points=300, classes=classes, seed=0)
    test_points, test_labels, _ = make_shapes(test_per_class, num_points=300, classes=classes, seed=1)
    return (ShapeSet(list(points), labels, names, "train", Path("<synthetic>")),
            ShapeSet(list(test_points), test_labels, names, "test", Path("<synthetic>")))


def _tiny_batch(num_classes=4):
    train, _ = _synthetic_splits()
    dataset = VoxelShapeDataset(train.points[:6], train.labels[:6], augment=True)
    return VoxelCollate(voxel_size=0.25)([dataset[i] for i in range(6)])


@pytest.fixture(scope="module")
def tiny_network_and_batch():
    torch.manual_seed(0)
    net, _ = build_network(TINY, "random", "copy", "z-axis", num_classes=4, design="imagenet-stem")
    return net, _tiny_batch()


@pytest.mark.parametrize("fip", ["io", "ioms", "iobn", "all"])
def test_fip_modes_train_exactly_the_intended_parameters_and_statistics(fip, tiny_network_and_batch):
    net, batch = tiny_network_and_batch
    model = SparseShapeClassifier(copy.deepcopy(net))
    counts = apply_fip(model, fip)
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_buffers = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    model.train()
    model(batch)["loss"].backward()

    # a frozen random network passes very little signal, so check gradients rather than updates
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    without_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert with_grad | without_grad == set(before_params)
    stats_changed = {n for n, b in model.named_buffers() if n in before_buffers and not torch.equal(b, before_buffers[n])}
    stem_conv, stem_bn, head = "backbone.conv_stem.weight", "backbone.bn1.weight", "backbone.classifier.weight"
    inner_conv, inner_bn = "backbone.blocks.1.0.conv_pw.weight", "backbone.blocks.1.0.bn1.weight"
    inner_stats = "backbone.blocks.1.0.bn1.running_mean"
    assert {stem_conv, stem_bn, head} <= with_grad
    assert (inner_conv in with_grad) == (fip == "all")
    assert (inner_bn in with_grad) == (fip in ("iobn", "all"))
    assert (inner_stats in stats_changed) == (fip != "io")
    assert "backbone.bn1.running_mean" in stats_changed  # the input layer's BN always adapts
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["trainable_params"] == trainable
    if fip == "all":
        assert trainable == counts["total_params"]
    else:
        assert trainable < counts["total_params"] / 10


def test_fip_rejects_unknown_mode(tiny_network_and_batch):
    with pytest.raises(PointliftConfigError, match="fip"):
        apply_fip(SparseShapeClassifier(copy.deepcopy(tiny_network_and_batch[0])), "everything")


def test_few_shot_indices_are_per_class_reproducible_and_seeded():
    labels = np.repeat(np.arange(4), [5, 7, 3, 9])
    a = few_shot_indices(labels, 3, seed=0)
    assert np.array_equal(a, few_shot_indices(labels, 3, seed=0))
    assert np.array_equal(np.bincount(labels[a]), [3, 3, 3, 3])
    assert any(not np.array_equal(a, few_shot_indices(labels, 3, seed=s)) for s in range(1, 5))
    with pytest.raises(PointliftDataError, match="fewer than 4"):
        few_shot_indices(labels, 4, seed=0)


def test_accuracy_metrics_match_a_loop():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    predictions[:80] = labels[:80]
    per_class = []
    for c in range(5):
        hits = [p == l for p, l in zip(predictions, labels) if l == c]
        per_class.append(sum(hits) / len(hits))
    metrics = accuracy_metrics(predictions, labels, 5)
    assert metrics["overall_acc"] == pytest.approx(sum(p == l for p, l in zip(predictions, labels)) / 200)
    assert metrics["mean_class_acc"] == pytest.approx(sum(per_class) / 5)


def test_voxel_mean_augmentation_stays_in_its_ranges():
    torch.manual_seed(0)
    ones = torch.ones(50, 3)
    for _ in range(20):
        out = augment_points(ones)  # = scale + shift + jitter per axis
        assert (out >= 0.9 - 0.2 - 0.025 - 1e-6).all() and (out <= 1.1 + 0.2 + 0.025 + 1e-6).all()
        spread = out.max(0).values - out.min(0).values  # only jitter differs between points
        assert (spread <= 0.05 + 1e-6).all()


def test_voxel_batches_of_real_modelnet10(shared):
    config = ShapeDataConfig(path=str(shared("data/modelnet10_vox32.npz")), voxel_size=0.125, train_per_class=2,
                             test_per_class=1, augment=False)
    from pointlift.tasks.shape_classification.data import load_shape_split

    split = load_shape_split(config, "train")
    train, test, names = build_datasets(config, split, split)
    assert len(train) == 20 and len(test) == 10 and names[0] == "bathtub"
    assert np.array_equal(np.bincount(train.labels), np.full(10, 2))
    batch = VoxelCollate(0.125)([train[i] for i in range(len(train))])
    coords, features = batch["coords"], batch["features"]
    assert coords.min() >= 0 and coords[:, 1:].max() <= 16  # 2 / 0.125 cells across the unit sphere
    assert features.norm(dim=1).max() <= 1 + 1e-5
    # the feature of each voxel lies inside that voxel (mean of its points)
    assert torch.equal(torch.bincount(coords[:, 0]).gt(0), torch.ones(20, dtype=torch.bool))


def _tiny_config(fip="all", weights="random", epochs=10, val_per_class=None, lr=1e-3):
    return Image2PointConfig(
        inflation=InflationConfig(teacher=TINY, weights=weights), fip=fip,
        data=ShapeDataConfig(voxel_size=0.25, augment=False, val_per_class=val_per_class),
        train=TrainConfig(epochs=epochs, batch_size=8, log_every=1, checkpoint_every=0,
                          optim=OptimConfig(name="adamw", lr=lr, weight_decay=0.0, schedule="constant")),
        eval_every_epoch=False, eval_batch_size=16)


def test_finetune_loss_falls_and_checkpoint_rebuilds_as_embedder(tmp_path):
    train, test = _synthetic_splits(per_class=5, test_per_class=2, classes=("sphere", "cube"))
    # fip io on the frozen random network: full-batch steps on fixed features, so the loss falls steadily
    summary = finetune(_tiny_config(fip="io", val_per_class=1, lr=0.1), tmp_path, progress=False, train_split=train, test_split=test)
    # one validation shape per class carved from train: 8 left to train on, the curve is on validation
    assert (summary["train_shapes"], summary["val_shapes"], summary["test_shapes"]) == (8, 2, 4)
    assert summary["curve_split"] == "val" and summary["val_overall_acc"] == summary["curve"][-1]["overall_acc"]
    losses = [row["loss"] for row in read_metrics(tmp_path / "metrics.csv")
              if "loss" in row and row["loss"] == row["loss"]]
    # full-batch steps on the same 8 shapes (no augmentation): the loss must fall
    assert len(losses) == 10 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    assert len(summary["curve"]) == 1 and 0.0 <= summary["overall_acc"] <= 1.0

    state, meta = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert meta["model_spec"]["kind"] == "image2point"
    embedder = build_embedder(meta["model_spec"]["config"])
    result = embedder.load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    points = torch.from_numpy(np.stack(test.points[:3]))
    features = embedder.embed(points)
    assert features.shape == (3, embedder.backbone.num_features)
    # the classifier head on the embedding equals the trained model's logits
    logits = embedder.backbone.get_classifier()(features)
    from pointlift.tasks.shape_classification.data import points_to_batch
    batch = points_to_batch(points, 0.25)
    batch["labels"] = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(logits, embedder.eval().logits(batch))


def test_validation_is_carved_from_train_disjoint_balanced_and_fixed_across_subset_seeds():
    points = [np.random.default_rng(i).normal(size=(20, 3)).astype(np.float32) + i for i in range(40)]
    labels = np.repeat(np.arange(4), 10)
    split = ShapeSet(points, labels, ["a", "b", "c", "d"], "train", Path("<synthetic>"))
    key = lambda dataset: {float(p[0, 0]) for p in dataset.points}  # normalised points identify a shape
    seen_val = []
    for seed in (0, 1, 2):
        config = ShapeDataConfig(train_per_class=3, val_per_class=2, subset_seed=seed, augment=False)
        train, val, test, _ = build_datasets_with_validation(config, split, split)
        assert np.array_equal(np.bincount(val.labels), [2, 2, 2, 2])
        assert np.array_equal(np.bincount(train.labels), [3, 3, 3, 3])
        assert not key(train) & key(val)
        seen_val.append(key(val))
    assert seen_val[0] == seen_val[1] == seen_val[2]


def test_random_baseline_uses_he_initialisation_with_3d_fan_out():
    """The from-scratch network gets the standard He-normal (fan-out) init, not PyTorch's ~6x smaller
    default, and BN starts from identity statistics."""
    from pointlift.sparse import SparseConv3d, SubMConv3d

    torch.manual_seed(0)
    net, _ = build_network(TINY, "random", "copy", "z-axis", num_classes=4, design="imagenet-stem")
    checked = 0
    for module in net.modules():
        if isinstance(module, (SubMConv3d, SparseConv3d)) and module.weight.numel() > 5000:
            fan_out = module.out_channels * module.kernel_size**3 // module.groups
            assert float(module.weight.detach().std()) == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
            checked += 1
    assert checked >= 5
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in net.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_config_file_loads_and_is_validated(tmp_path):
    for name in ("image2point_modelnet10.yaml", "image2point_modelnet10_mobilenetv2.yaml"):
        config = load_config(REPO / "configs" / name, Image2PointConfig)
        assert config.fip in ("io", "ioms", "iobn", "all") and config.data.voxel_size > 0
    released = load_config(REPO / "configs" / "image2point_modelnet10.yaml", Image2PointConfig)
    assert (released.inflation.teacher, released.inflation.axis, released.inflation.design, released.data.pipeline,
            released.fip, released.train.optim.lr, released.train.batch_size) == (
        "resnet18", "z-axis", "released", "released", "all", 0.1, 32)
    assert Image2PointConfig().data.pipeline == "released" and Image2PointConfig().inflation.axis == "z-axis"
    bad = tmp_path / "bad.yaml"
    bad.write_text("fip: sometimes\n")
    with pytest.raises(PointliftConfigError, match="fip"):
        load_config(bad, Image2PointConfig)


def test_benchmark_smoke_reports_every_documented_metric(shared, tmp_path):
    """`bench image2point` end to end at smoke size: each arm at its own learning rate, the documented
    metric names, a target both arms' mean validation curves reach, and the curve plot."""
    from pointlift.bench.image2point import PRESETS, run

    shared("data/modelnet10_vox32.npz")
    shared("weights/mobilenet_v2.torchvision_in1k.safetensors")
    result = run("smoke", tmp_path)
    k = PRESETS["smoke"].fewshot_k
    for name in ("acc_inflated_io", "acc_random_io", "acc_inflated_all", "acc_random_all",
                 f"fewshot{k}_inflated_mean", f"fewshot{k}_inflated_std", f"fewshot{k}_random_mean",
                 f"fewshot{k}_random_std", "epochs_to_target_inflated", "epochs_to_target_random",
                 "speedup_to_target", "target_accuracy"):
        assert np.isfinite(result.metrics[name]), name
    curves = result.config["curves"]
    assert result.metrics["target_accuracy"] <= min(curves["inflated_all_mean"][-1]["overall_acc"],
                                                    curves["random_all_mean"][-1]["overall_acc"])
    assert Path(result.config["plot"]).is_file()


def test_benchmark_in_two_worker_processes_equals_one_process(shared, tmp_path, monkeypatch):
    """`workers: 2` (cpu-full) runs the same seeded runs in two processes: the same figures as in one; a
    resumed benchmark re-scores its finished runs from their checkpoints with the same figures."""
    from pointlift.bench import image2point as bench

    shared("data/modelnet10_vox32.npz")
    shared("weights/mobilenet_v2.torchvision_in1k.safetensors")
    small = replace(bench.PRESETS["smoke"], seeds=(0,), compare_design=False, fewshot_seeds=(0,))
    monkeypatch.setitem(bench.PRESETS, "tiny", small)
    one = bench.run("tiny", tmp_path / "one")
    monkeypatch.setitem(bench.PRESETS, "tiny", replace(small, workers=2))
    two = bench.run("tiny", tmp_path / "two")
    figures = [name for name in one.metrics if name != "wall_s"]
    assert figures and {name: one.metrics[name] for name in figures} == {name: two.metrics[name] for name in figures}
    assert set(json.loads((tmp_path / "two" / "progress.json").read_text())["runs"]) == set(one.config["run_seconds"])

    # --resume: every finished run is reloaded from its last checkpoint and scored again, same figures
    import importlib

    method = importlib.import_module("pointlift.methods.image2point.finetune")  # the module, not its function

    calls = []
    original = method.finetune
    monkeypatch.setattr(method, "finetune", lambda *a, **k: calls.append(k["resume"]) or original(*a, **k))
    monkeypatch.setitem(bench.PRESETS, "tiny", small)
    again = bench.run("tiny", tmp_path / "one", resume=True)
    assert calls and all(calls)
    assert {name: again.metrics[name] for name in figures} == {name: one.metrics[name] for name in figures}


def test_benchmark_fewshot_rate_is_chosen_on_validation(shared, tmp_path, monkeypatch):
    """`fewshot_lrs` (cpu-full-long): each arm runs every rate; the reported few-shot figure is the test
    accuracy at the rate with the best mean validation accuracy. No other FIP mode where `fips` is empty;
    at target fraction 1.0 the weaker arm reaches the target by its last epoch."""
    from pointlift.bench import image2point as bench

    shared("data/modelnet10_vox32.npz")
    shared("weights/mobilenet_v2.torchvision_in1k.safetensors")
    sweep = replace(bench.PRESETS["smoke"], fips=(), fewshot_lrs=(0.05, 0.001), target_fraction=1.0)
    monkeypatch.setitem(bench.PRESETS, "tiny", sweep)
    result = bench.run("tiny", tmp_path)
    assert set(result.config["run_seconds"]) == {"inflated_all_seed0", "random_all_seed0", *(
        f"fewshot_{arm}_lr{lr}_seed0" for arm in ("inflated", "random") for lr in ("0.05", "0.001"))}
    assert not [name for name in result.metrics if name.endswith("_io")]
    k = sweep.fewshot_k
    for arm in ("inflated", "random"):
        rates = result.config["fewshot_sweep"][arm]
        best = max(rates, key=lambda lr: rates[lr]["val_mean"])
        assert result.metrics[f"fewshot{k}_{arm}_lr"] == float(best)
        assert result.metrics[f"fewshot{k}_{arm}_mean"] == rates[best]["test_mean"]
    slower = max(result.metrics["epochs_to_target_inflated"], result.metrics["epochs_to_target_random"])
    assert slower <= sweep.epochs


def test_mean_curve_averages_epochs_across_runs():
    from pointlift.bench.image2point import mean_curve

    runs = [[{"epoch": e, "overall_acc": a} for e, a in enumerate(accs)] for accs in ([0.1, 0.5], [0.3, 0.7])]
    assert mean_curve(runs) == [{"epoch": 0, "overall_acc": pytest.approx(0.2)},
                                {"epoch": 1, "overall_acc": pytest.approx(0.6)}]
    assert epochs_to_target(mean_curve(runs), 0.55) == 2.0


# ------------------------------------------------------------------------- the released recipe and design


def test_released_augmentation_probabilities_and_ranges():
    """Shift, scale and jitter are each applied with their released probability (0.9, 0.9, 0.7)."""
    from pointlift.tasks.shape_classification.data import released_augment

    torch.manual_seed(0)
    cloud = torch.cat([torch.zeros(40, 3), torch.ones(40, 3)])
    trials, counts = 3000, {"scale": 0, "shift": 0, "jitter": 0}
    for _ in range(trials):
        out = released_augment(cloud)
        high = out.sum(1) > 1.5  # the points that were at 1 (shuffled, but still identifiable)
        assert high.sum() == 40
        lo, hi = out[~high], out[high]
        jitter = (lo - lo.mean(0)).abs().max()
        scale, shift = hi.mean(0) - lo.mean(0), lo.mean(0)
        assert jitter <= 0.025 and (scale - 1).abs().max() <= 0.1 + 0.01 and shift.abs().max() <= 0.2 + 0.01
        counts["jitter"] += bool(jitter > 1e-6)
        counts["scale"] += bool((scale - 1).abs().max() > 0.006)
        counts["shift"] += bool(shift.abs().max() > 0.006)
    rates = {k: v / trials for k, v in counts.items()}
    assert abs(rates["jitter"] - 0.7) < 0.03 and abs(rates["scale"] - 0.9) < 0.03 and abs(rates["shift"] - 0.9) < 0.03, rates


def test_released_voxelize_keeps_the_first_point_of_each_voxel_in_lexicographic_order():
    from pointlift.tasks.shape_classification.data import released_voxelize

    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, size=(500, 3)).astype(np.float32)
    coords, features, index = released_voxelize(points, 0.25)
    grid = np.round(points / np.float32(0.25))
    grid = (grid - grid.min(0)).astype(np.int64)
    first = {}
    for i, cell in enumerate(map(tuple, grid)):  # slow, obvious reference
        first.setdefault(cell, i)
    assert [tuple(c) for c in coords] == sorted(first)
    assert list(index) == [first[tuple(c)] for c in coords]
    assert np.array_equal(features, points[index])


def test_released_cut_to_max_points_keeps_a_subset_of_the_whole_shape():
    """`xyz[:num_points]` means a random subset for the released (shuffled) h5 clouds; sorted voxel centres
    must not be cut to one end of the shape at evaluation (no shuffling augmentation there)."""
    from pointlift.tasks.shape_classification.data import ReleasedShapeDataset

    grid = np.stack(np.meshgrid(*[np.linspace(-0.5, 0.5, 16)] * 3, indexing="ij"), -1).reshape(-1, 3)  # sorted
    data = ReleasedShapeDataset([grid, grid[:100]], np.array([0, 1]), augment=False, max_points=512)
    kept = data[0]["points"].numpy()
    assert len(kept) == 512 and torch.equal(data[0]["points"], data[0]["points"])  # fixed across reads
    assert kept[:, 0].min() == -0.5 and kept[:, 0].max() == 0.5  # spans the shape, not its first slab
    assert {tuple(row) for row in kept} <= {tuple(row) for row in grid.astype(np.float32)}
    assert np.array_equal(data[1]["points"].numpy(), grid[:100].astype(np.float32))  # small sets untouched


def test_depthwise_network_on_the_released_design_has_stride_8_and_the_released_head():
    from pointlift.sparse import SparseConv3d, SubMConv3d
    from pointlift.tasks.shape_classification.data import ReleasedCollate, ReleasedShapeDataset

    torch.manual_seed(0)
    net, _ = build_network(TINY, "random", "copy", "z-axis", num_classes=4, design="released")
    assert isinstance(net.conv_stem, SubMConv3d) and net.conv_stem.in_channels == 3
    assert isinstance(net.classifier, torch.nn.Sequential) and isinstance(net.classifier[1], torch.nn.BatchNorm1d)
    strided = [m for m in net.modules() if isinstance(m, SparseConv3d) and m.stride > 1]
    assert len(strided) == 3  # 2^3 = 8 (the earlier design: stem + 4 blocks = 32)
    train, _ = _synthetic_splits()
    data = ReleasedShapeDataset(train.points[:4], train.labels[:4], augment=True, normalize=True)
    batch = ReleasedCollate(0.2)([data[i] for i in range(4)])
    model = SparseShapeClassifier(net)
    counts = apply_fip(model, "io")
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"conv_stem", "bn1", "classifier"} and counts["frozen_bn_layers"] > 10
    model.train()
    out = model(batch)
    out["loss"].backward()
    assert net.conv_stem.weight.grad is not None and net.conv_stem.weight.grad.abs().sum() > 0
    assert model.backbone.forward_features(batch_to_sparse(batch)).stride == 8


def test_released_resnet50_inflates_every_stage_tensor_and_runs():
    """ResNet-50 on the released design: bottleneck blocks, the stride-1 2x2x2 shortcut of stage 1."""
    import timm

    from pointlift.models.image2point_net import Image2PointResNet, inflate_resnet_state
    from pointlift.sparse import SparseTensor

    torch.manual_seed(0)
    state_2d = timm.create_model("resnet50", pretrained=False).state_dict()
    net = Image2PointResNet("resnet50", num_classes=5)
    inflated = inflate_resnet_state(state_2d, "copy", "z-axis")
    result = net.load_state_dict(inflated, strict=False)
    assert not result.unexpected_keys
    assert {k.split(".")[0] for k in result.missing_keys} == {"stem", "classifier"}
    shortcut = net.stage1[0].downsample[0]
    assert shortcut.kernel_size == 2 and shortcut.stride == 1
    assert torch.equal(shortcut.weight[:, :, 1, 0, 1], state_2d["layer1.0.downsample.0.weight"][:, :, 0, 0])
    coords = torch.unique(torch.cat([torch.randint(0, 2, (300, 1)), torch.randint(0, 12, (300, 3))], 1), dim=0)
    net.eval()
    with torch.no_grad():
        features = net.forward_features(SparseTensor(torch.randn(len(coords), 3), coords, batch_size=2))
        assert features.stride == 8 and features.num_channels == 2048
        assert net.forward_head(features).shape == (2, 5)
