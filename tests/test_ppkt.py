"""PPKT: pair geometry, occlusion tests, the loss, the teacher cache and a small end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pointlift.engine import load_config
from pointlift.engine.checkpoint import load_checkpoint
from pointlift.geometry import invert_rigid, pixel_index, project, transform_points
from pointlift.methods.ppkt.cache import open_teacher_cache
from pointlift.cli import main as cli_main
from pointlift.commands.common import train_method
from pointlift.methods.ppkt.retrieval import evaluate_frames
from pointlift.registry import trainer
from pointlift.methods.ppkt.config import PPKTConfig
from pointlift.methods.ppkt.dataset import collate_ppkt
from pointlift.methods.ppkt.embedder import build_embedder
from pointlift.methods.ppkt.model import PPKTModel, info_nce
from pointlift.methods.ppkt.pairs import lidar_pairs, rescale_pixels, rgbd_pairs, zbuffer_depth_map
from pointlift.methods.ppkt.pretrain import build_setup

K_SMALL = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])


def _frame(depth, pose=None, K=K_SMALL, color=None):
    height, width = depth.shape
    if color is None:
        color = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return SimpleNamespace(name="f", color=color, depth=depth.astype(np.float32), intrinsics=K,
                           pose=np.eye(4) if pose is None else pose)


# ------------------------------------------------------------------------------------------ pairs


def test_rgbd_pairs_map_back_to_their_pixels():
    from pointlift.data.synthetic import make_rgbd_scene

    frames = make_rgbd_scene(num_frames=3, height=24, width=32, num_objects=3, seed=1)
    pairs = rgbd_pairs(frames, pixel_stride=2)
    reference = torch.as_tensor(frames[0].pose)
    expected_count = sum(int((f.depth[::2, ::2] > 0).sum()) for f in frames)
    assert pairs.points.shape == (expected_count, 3) and pairs.num_pairs == expected_count
    for view, frame in enumerate(frames):
        mine = pairs.pair_view == view
        # back into this frame's camera, then project: every point lands on its own pixel ...
        to_camera = invert_rigid(torch.as_tensor(frame.pose)) @ reference
        points_cam = transform_points(to_camera, pairs.points[pairs.pair_point[mine]].double())
        uv, z = project(points_cam, torch.as_tensor(frame.intrinsics))
        pixel = pairs.pair_pixel[mine]
        assert torch.equal(pixel_index(uv), pixel)
        # ... at the frame's measured depth, with the frame's colour there
        depth = torch.as_tensor(frame.depth).double()[pixel[:, 1], pixel[:, 0]]
        assert torch.allclose(z, depth, rtol=1e-5)
        colors = torch.as_tensor(frame.color)[pixel[:, 1], pixel[:, 0]].float() / 255
        assert torch.allclose(pairs.colors[pairs.pair_point[mine]], colors)
    # slow reference for the first frame: loop over pixels, pinhole model by hand
    K = frames[0].intrinsics
    manual = [[(u - K[0, 2]) * d / K[0, 0], (v - K[1, 2]) * d / K[1, 1], d]
              for v in range(0, 24, 2) for u in range(0, 32, 2) if (d := float(frames[0].depth[v, u])) > 0]
    assert np.allclose(pairs.points[pairs.pair_view == 0].numpy(), np.array(manual), atol=1e-5)


def test_cross_view_pairs_drop_points_hidden_behind_a_nearer_surface():
    far = np.full((24, 32), 3.0)
    with_box = far.copy()
    with_box[:, :16] = 1.0  # frame B sees a near surface on its left half, the far wall on the right
    frame_a, frame_b = _frame(far), _frame(with_box)
    pairs = rgbd_pairs([frame_a, frame_b], cross_view=True, occlusion_tolerance=0.1)
    extra = torch.arange(pairs.num_pairs) >= 2 * 24 * 32  # own pairs come first, one per point
    assert torch.equal(pairs.pair_point[~extra], torch.arange(2 * 24 * 32))
    a_into_b = extra & (pairs.pair_view == 1)
    # A's far-wall points are visible in B only on B's right half; the left half hides them
    assert int(a_into_b.sum()) == 24 * 16
    assert bool((pairs.pair_pixel[a_into_b, 0] >= 16).all())
    # same pose: each visible A point keeps its own pixel in B
    source_pixel = pairs.pair_pixel[pairs.pair_point[a_into_b]]
    assert torch.equal(source_pixel, pairs.pair_pixel[a_into_b])
    # B's near points are in front of A's wall: z=1 vs depth 3 fails the test; B's far points pass
    b_into_a = extra & (pairs.pair_view == 0)
    assert int(b_into_a.sum()) == 24 * 16


def test_zbuffer_depth_map_matches_a_loop():
    generator = torch.Generator().manual_seed(0)
    uv = torch.rand(200, 2, generator=generator) * torch.tensor([31.0, 23.0])
    z = torch.rand(200, generator=generator) * 10 + 1
    for cell in (1, 4):
        fast = zbuffer_depth_map(uv, z, (24, 32), cell)
        slow = torch.zeros(24, 32)
        for (u, v), depth in zip(pixel_index(uv).tolist(), z.tolist()):
            bu, bv = u // cell, v // cell
            block = slow[bv * cell:(bv + 1) * cell, bu * cell:(bu + 1) * cell]
            block[:] = torch.where((block == 0) | (block > depth), torch.tensor(depth), block)
        assert torch.allclose(fast, slow)


def test_lidar_pairs_min_depth_image_bounds_and_zbuffer_occlusion():
    # camera looking along +x of the LiDAR: camera (x, y, z) = LiDAR (-y, -z, x)
    lidar2cam = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    K = torch.eye(4)
    K[:3, :3] = torch.as_tensor(K_SMALL)
    lidar2img = K @ lidar2cam
    grid = torch.stack(torch.meshgrid(torch.linspace(-0.5, 0.5, 12), torch.linspace(-0.35, 0.35, 9),
                                      indexing="ij"), -1).reshape(-1, 2)

    def wall(distance, lateral):  # points at LiDAR x = distance, spanning (y, z) * distance
        return torch.stack([torch.full((len(grid),), distance), -grid[:, 0] * distance * lateral,
                            -grid[:, 1] * distance], 1)

    far = wall(6.0, 1.0)
    near = wall(2.0, 1.0)
    near = near[near[:, 1] > 0]  # LiDAR +y is camera -x: the near wall covers the image's left half
    behind = torch.tensor([[-3.0, 0.0, 0.0], [0.5, 0.0, 0.0], [5.0, 20.0, 0.0]])  # behind, too close, outside
    points = torch.cat([far, near, behind])
    pairs = lidar_pairs(points, [((24, 32), lidar2img)], min_depth=1.0, occlusion=True, zbuffer_cell=4)
    kept = set(pairs.pair_point.tolist())
    n_far, n_near = len(far), len(near)
    assert not kept & {n_far + n_near, n_far + n_near + 1, n_far + n_near + 2}
    assert set(range(n_far, n_far + n_near)) <= kept  # every near point stays
    uv_far = (far @ lidar2img[:3, :3].T)
    u_far = uv_far[:, 0] / uv_far[:, 2]
    # far points whose z-buffer cell holds a near point are hidden: slow reference per point
    near_uv = near @ lidar2img[:3, :3].T
    near_cells = {(int(math.floor(u / w + 0.5)) // 4, int(math.floor(v / w + 0.5)) // 4)
                  for u, v, w in near_uv.tolist()}
    expected_far = {i for i, (u, v, w) in enumerate(uv_far.tolist())
                    if (int(math.floor(u / w + 0.5)) // 4, int(math.floor(v / w + 0.5)) // 4) not in near_cells}
    assert kept & set(range(n_far)) == expected_far
    assert 0 < len(expected_far) < n_far and bool((u_far[sorted(expected_far)] > 10).all())
    without = lidar_pairs(points, [((24, 32), lidar2img)], min_depth=1.0, occlusion=False)
    assert set(without.pair_point.tolist()) == set(range(n_far + n_near))
    # the pixel of each pair is the projection of its point
    uvw = points[pairs.pair_point].double() @ lidar2img[:3, :3].double().T
    assert torch.equal(pixel_index(uvw[:, :2] / uvw[:, 2:]), pairs.pair_pixel)


def test_rescale_pixels_covers_the_same_area():
    pixels = torch.tensor([[0, 0], [1, 1], [639, 479], [320, 240]])
    assert rescale_pixels(pixels, (480, 640), (240, 320)).tolist() == [[0, 0], [0, 0], [319, 239], [160, 120]]


# ------------------------------------------------------------------------------------------- loss


def test_info_nce_matches_a_loop():
    generator = torch.Generator().manual_seed(0)
    f3d = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=1)
    f2d = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=1)
    loss, _ = info_nce(f3d, f2d, 0.07)
    slow = 0.0
    for i in range(6):
        scores = [float(f3d[i] @ f2d[j]) / 0.07 for j in range(6)]
        slow += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    assert loss.item() == pytest.approx(slow / 6, rel=1e-5)


# ------------------------------------------------------------------------------------------ cache


def test_the_logged_accuracy_is_argmax_exactly(monkeypatch):
    """`argmax_is` (argmax only on the rows whose target score is the maximum) equals `argmax(1) == target` where
    ties fall before or after the target, on NaN rows (argmax takes the first NaN), infinities and signed zeros,
    and with targets off the diagonal (the gathered columns under torchrun)."""
    from pointlift.methods.ppkt import model as model_module
    from pointlift.methods.ppkt.model import argmax_is

    random = torch.randn(300, 300, generator=torch.Generator().manual_seed(1))
    for target in (torch.arange(300), random.argmax(1)):  # few candidate rows, then every row one
        assert torch.equal(argmax_is(random, target), random.argmax(1) == target)
    monkeypatch.setattr(model_module, "ARGMAX_ROWS_SHARE", 1.0)  # the candidate rows alone, however many
    generator = torch.Generator().manual_seed(0)
    for target in (torch.arange(400) % 8, torch.randint(0, 8, (400,), generator=generator)):
        scores = torch.randint(-2, 3, (400, 8), generator=generator).float()  # many ties
        scores[::3].scatter_add_(1, target[::3, None], torch.full((134, 1), 2.0))  # the target a maximum, often tied
        scores[::7] = torch.randn(58, 8, generator=generator)
        scores[1, 5], scores[2, [2, 6]], scores[4, 5], scores[5, :] = float("nan"), float("nan"), float("inf"), -0.0
        scores[5, 7] = 0.0
        expected = scores.argmax(1) == target
        assert torch.equal(argmax_is(scores, target), expected)
        assert 40 < int(expected.sum()) < 360  # both answers occur
    assert argmax_is(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).numel() == 0


def test_teacher_cache_is_reused_and_invalidated(tmp_path):
    from pointlift.teachers.teacher import Teacher

    teacher = Teacher("tf_efficientnet_lite0", weights="random", stage=2)
    images = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    names = ["a", "b", "c"]
    cache = open_teacher_cache(tmp_path, teacher, (32, 48), names, lambda i: images[i], batch_size=2)
    assert cache.built_now and len(cache) == 3
    direct = teacher.features(teacher.normalize(images))
    for i in range(3):
        assert torch.allclose(cache[i], direct[i], atol=1e-2, rtol=1e-2)
    calls = []
    again = open_teacher_cache(tmp_path, teacher, (32, 48), names, lambda i: calls.append(i) or images[i])
    assert not again.built_now and not calls and torch.equal(again[1], cache[1])
    # another image size, another teacher stage, other views: rebuilt
    small = torch.nn.functional.interpolate(images, size=(16, 24))
    assert open_teacher_cache(tmp_path, teacher, (16, 24), names, lambda i: small[i]).built_now
    other_stage = Teacher("tf_efficientnet_lite0", weights="random", stage=1)
    rebuilt = open_teacher_cache(tmp_path, other_stage, (16, 24), names, lambda i: small[i])
    assert rebuilt.built_now and rebuilt[0].shape[0] == other_stage.channels
    assert open_teacher_cache(tmp_path, other_stage, (16, 24), ["a", "b", "x"], lambda i: small[i]).built_now
    # same identity string ("random" weights, same stage) but other parameter values: rebuilt
    other_init = Teacher("tf_efficientnet_lite0", weights="random", stage=1)
    assert other_init.identity() == other_stage.identity()
    assert open_teacher_cache(tmp_path, other_init, (16, 24), ["a", "b", "x"], lambda i: small[i]).built_now


# -------------------------------------------------------------------------------------- end to end


def _tiny_config(tmp_path: Path, **data) -> PPKTConfig:
    return load_config({
        "data": {"kind": "synthetic", "synthetic_frames": 4, "synthetic_hw": [36, 48], "pixel_stride": 2,
                 "image_size": [36, 48], "holdout_fraction": 0.25, **data},
        # random teacher weights: loading ImageNet weights adds seconds and nothing this test checks
        "model": {"student": "spunet-tiny", "voxel_size": 0.15, "teacher_stage": 3, "teacher_weights": "random"},
        "loss": {"num_pairs": 256},
        "eval_untrained": False,
        "train": {"max_steps": 12, "batch_size": 1, "log_every": 4, "checkpoint_every": 0,
                  "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}},
        "augment": {"rotate_up": False, "flip": False, "scale": [1.0, 1.0]},
        "eval_points_per_frame": 64,
        "run_root": str(tmp_path),
    }, PPKTConfig)


def _write_seven_scenes(root: Path, frames) -> None:
    from PIL import Image

    root.mkdir(parents=True)
    np.savetxt(root / "camera-intrinsics.txt", frames[0].intrinsics)
    for i, frame in enumerate(frames):
        stem = root / f"frame-{i:06d}"
        Image.fromarray(frame.color).save(f"{stem}.color.png")
        Image.fromarray((frame.depth * 1000).round().astype(np.uint16)).save(f"{stem}.depth.png")
        np.savetxt(f"{stem}.pose.txt", frame.pose)


def test_pretrain_loss_falls_cache_matches_images_and_checkpoint_loads(tmp_path):
    config = _tiny_config(tmp_path)
    setup = build_setup(config, tmp_path / "cache", torch.device("cpu"), use_cache=True)
    torch.manual_seed(0)
    model = PPKTModel(config.model, config.loss, config.data.image_size, setup.teacher)
    # cached maps give the same loss as running the teacher on the images (float16 storage)
    cached = collate_ppkt([setup.train_set[0]])
    setup.train_set.cache = None
    uncached = collate_ppkt([setup.train_set[0]])
    assert "teacher_features" in cached and "images" in uncached
    assert torch.allclose(model.pixel_maps(cached), model.pixel_maps(uncached), atol=2e-2)
    # the pair features read only the chosen pairs; they equal reading whole point and pixel maps
    from pointlift.methods.ppkt.model import student_point_features
    pairs = torch.arange(0, cached["pair_point"].shape[0], 7)
    f3d, f2d = model.pair_features(cached, pairs)
    every_point = student_point_features(model.student, model.model_config, cached["points"], cached["batch_index"],
                                         cached["colors"])
    pixel = cached["pair_pixel"][pairs]
    torch.testing.assert_close(f3d, every_point[cached["pair_point"][pairs]])
    torch.testing.assert_close(f2d, model.pixel_maps(cached)[cached["pair_view"][pairs], :, pixel[:, 1], pixel[:, 0]],
                               atol=1e-6, rtol=1e-5)

    # a short run from the CLI entry point: loss falls, checkpoint excludes the teacher
    config_path = tmp_path / "ppkt.yaml"
    from pointlift.engine import save_config

    save_config(config, config_path)
    results = train_method(trainer("pretrain", "ppkt"), config_path, run_dir=tmp_path / "run")
    losses = [row["loss"] for row in results["history"]]
    assert losses[-1] < losses[0] - 0.3, losses
    state, meta = load_checkpoint(results["checkpoint"])
    assert not any(key.startswith("teacher.") for key in state)
    assert meta["model_spec"]["kind"] == "ppkt"
    assert results["retrieval_pretrained"]["chance"] == pytest.approx(1 / 64, rel=0.2)

    # the 3D network loads into the embedder (what `pointlift embed` and fine-tuning use)
    embedder = build_embedder(meta["model_spec"]["config"])
    missing = embedder.load_state_dict(state, strict=False).missing_keys
    assert not missing
    assert torch.equal(embedder.student.head.weight, state["student.head.weight"])
    embedding = embedder.eval().embed(torch.rand(2, 100, 3))
    assert embedding.shape == (2, 2 * config.model.embed_dim) and torch.isfinite(embedding).all()

    # `pointlift eval ppkt` on an RGB-D directory in the 7-Scenes layout
    from pointlift.data.synthetic import make_rgbd_scene

    _write_seven_scenes(tmp_path / "frames", make_rgbd_scene(2, 36, 48, seed=3))
    record = evaluate_frames(results["checkpoint"], tmp_path / "frames", points_per_frame=32)
    assert record["retrieval"]["frames"] == 2 and 0 <= record["retrieval"]["top1"] <= 1
    assert record["retrieval"]["chance"] == pytest.approx(1 / 32)
    assert cli_main(["eval", "ppkt", "--checkpoint", str(results["checkpoint"]), "--frames", str(tmp_path / "frames"),
                     "--out", str(tmp_path / "eval.json")]) == 0
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["retrieval"]["frames"] == 2 and 0 <= written["retrieval"]["top1"] <= 1


def test_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("ppkt_7scenes.yaml", "ppkt_kitti.yaml", "ppkt_indoor_world.yaml"):
        config = load_config(root / name, PPKTConfig)
        assert config.loss.temperature == pytest.approx(0.07)
    assert config.data.frame == "world" and config.model.up_axis == "z"


def test_kitti_sample_gives_pairs(shared):
    from pointlift.data.lidar import read_kitti_frame

    root = shared("data/sensor-samples/kitti")
    frame = read_kitti_frame(root / "000008.bin", root / "000008.png", root / "000008.pkl")  # the .txt holds P2 only
    camera = frame.cameras[0]
    points = torch.as_tensor(frame.points)
    cameras = [(camera.image.shape[:2], torch.as_tensor(camera.lidar2img))]
    with_test = lidar_pairs(points, cameras, occlusion=True)
    without = lidar_pairs(points, cameras, occlusion=False)
    assert 1000 < with_test.num_pairs < without.num_pairs
    assert set(with_test.pair_point.tolist()) <= set(without.pair_point.tolist())


def test_held_out_lidar_sweeps_pair_their_own_points_with_their_own_views(shared):
    """Each sample of the train and held-out sets is one sweep: its points and its views (images, teacher cache
    entries) belong to that sweep. (The held-out set once paired the first sweeps' points with the last sweeps'
    images, so retrieval was scored on mismatched pairs.)"""
    from pointlift.methods.ppkt.pretrain import _lidar_sets
    from pointlift.methods.ppkt.sources import open_lidar_frames

    config = load_config({"data": {"kind": "semantickitti", "root": str(shared("data/semantickitti-mini")),
                                   "sequences": ["00", "06"], "image_size": [47, 155], "holdout_fraction": 0.5},
                          "model": {"in_features": "constant", "up_axis": "z"}}, PPKTConfig)
    frames = open_lidar_frames(config.data)
    train_set, eval_set, names, _ = _lidar_sets(config)
    assert len(train_set) + len(eval_set) == len(frames) and len(eval_set) >= 2
    for dataset, first in ((train_set, 0), (eval_set, len(train_set))):
        for index in (0, len(dataset) - 1):
            frame = frames[first + index]
            item = dataset[index]
            assert [names[v] for v in dataset.samples[index]] == [f"{frame.name}/{c.name}" for c in frame.cameras]
            if dataset is eval_set:  # not augmented: the sweep's own coordinates
                assert torch.equal(item["points"], torch.as_tensor(frame.points[:, :3]).float())
            else:
                assert item["points"].shape[0] == frame.points.shape[0]


def test_pair_cache_makes_each_sample_once_and_gives_the_same_items():
    """A sample's pairs are made once and kept within the budget; items (augmented, flipped) are the same
    with and without the cache, and reading a kept sample leaves it unchanged."""
    from pointlift.methods.ppkt.config import PPKTAugmentConfig
    from pointlift.methods.ppkt.dataset import PPKTDataset
    from pointlift.methods.ppkt.pairs import PointPixelPairs

    made = []

    def make_pairs(index):
        made.append(index)
        g = torch.Generator().manual_seed(index)
        points = torch.rand(50, 3, generator=g) * 4
        return PointPixelPairs(points, torch.rand(50, 3, generator=g), torch.arange(50), torch.zeros(50, dtype=torch.long),
                               torch.randint(0, 16, (50, 2), generator=g))

    def dataset(budget_mb):
        return PPKTDataset([[0], [1], [2]], make_pairs, lambda v: np.zeros((16, 16, 3), np.uint8), lambda v: (16, 16),
                           {0: "a", 1: "b", 2: "c"}, (8, 8), PPKTAugmentConfig(image_flip=True), up_axis="z",
                           pair_cache_mb=budget_mb)

    def items(ds):
        out = []
        for epoch in range(3):
            for index in range(3):
                torch.manual_seed(100 * epoch + index)  # the sample's random stream, as the loader seeds it
                out.append(ds[index])
        return out

    one_sample = make_pairs(0).nbytes / 2**20
    made.clear()
    uncached = items(dataset(0))
    assert made == [0, 1, 2] * 3  # without the cache every read makes the pairs
    made.clear()
    cached = items(dataset(10))
    assert made == [0, 1, 2]
    made.clear()
    partly = items(dataset(1.5 * one_sample))  # room for one sample: the first made stays, the others are remade
    assert made == [0, 1, 2, 1, 2, 1, 2]
    for a, b, c in zip(uncached, cached, partly):
        assert a.keys() == b.keys() == c.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key
    kept = dataset(10)
    before = kept.pairs_of(1).points.clone()
    items(kept)
    assert torch.equal(kept.cached_pairs[1].points, before)
