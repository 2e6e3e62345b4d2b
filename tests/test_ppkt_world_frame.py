"""PPKT clouds in a gravity-aligned world frame (`data.frame: world`), several RGB-D sequences at once, the
ScanNet-style layouts, and a fixed-size ViT teacher (DINOv2 ViT-S/14) at the frames' image size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from pointlift.data.gravity import estimate_up, rotation_to_z
from pointlift.data.rgbd import find_rgbd_sequences, open_rgbd_sequence
from pointlift.engine import load_config
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.geometry import invert_rigid, pixel_index, project, transform_points
from pointlift.methods.ppkt.config import PPKTConfig, PPKTDataConfig
from pointlift.methods.ppkt.dataset import rgbd_dataset
from pointlift.methods.ppkt.pairs import rgbd_pairs
from pointlift.methods.ppkt.sources import SequenceList, open_rgbd_source, split_frames


def _world(root, **data):
    return load_config({"root": str(root), "frame": "world", **data}, PPKTDataConfig)


def test_world_points_reproject_onto_their_pixels():
    """Pairs index pixels; turning points into the world frame must not move any pair: every world point,
    taken back through the inverse aligned pose and projected with K, lands on its own pixel at its depth."""
    from pointlift.data.synthetic import make_rgbd_scene

    frames = make_rgbd_scene(num_frames=3, height=24, width=32, num_objects=3, seed=1)
    turn = np.eye(4)
    turn[:3, :3] = rotation_to_z([0.3, -0.9, 0.2])  # any gravity alignment
    for frame in frames:
        frame.pose = turn @ frame.pose
    pairs = rgbd_pairs(frames, pixel_stride=2, world=True, cross_view=True, occlusion_tolerance=0.05)
    assert pairs.num_pairs > pairs.points.shape[0]  # cross-view pairs exist too
    for view, frame in enumerate(frames):
        mine = pairs.pair_view == view
        to_camera = invert_rigid(torch.as_tensor(frame.pose))
        uv, z = project(transform_points(to_camera, pairs.points[pairs.pair_point[mine]].double()),
                        torch.as_tensor(frame.intrinsics))
        assert torch.equal(pixel_index(uv), pairs.pair_pixel[mine])
        own = (torch.arange(pairs.num_pairs) < pairs.points.shape[0])[mine]  # the frame's back-projected pixels
        pixel = pairs.pair_pixel[mine][own]
        depth = torch.as_tensor(frame.depth).double()[pixel[:, 1], pixel[:, 0]]
        assert torch.allclose(z[own], depth, rtol=1e-5)
    # the camera frame (released) and the world frame differ by one rigid transform: the first pose
    camera = rgbd_pairs(frames, pixel_stride=2)
    moved = transform_points(torch.as_tensor(frames[0].pose), camera.points.double()).float()
    assert torch.allclose(moved, pairs.points, atol=1e-4)
    assert torch.equal(camera.pair_pixel, pairs.pair_pixel[:camera.num_pairs])


def test_rotation_to_z_takes_up_to_z():
    for up in ([0, 1, 0], [0, -1, 0], [0, 0, -1], [0, 0, 1], [0.2, -0.9, 0.4]):
        R = rotation_to_z(up)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1)
        assert np.allclose(R @ (np.asarray(up) / np.linalg.norm(up)), [0, 0, 1], atol=1e-12)


def test_estimated_up_of_a_synthetic_room_is_its_up():
    """make_rgbd_scene's world is z up (floor at z = 0); the estimate finds it from the surfaces even with
    the whole world tilted by a known rotation."""
    from pointlift.data.synthetic import make_rgbd_scene

    frames = make_rgbd_scene(num_frames=6, height=48, width=64, seed=2)
    tilt = np.eye(4)
    tilt[:3, :3] = rotation_to_z([0.4, 0.1, 0.9]).T  # world +z goes to (0.4, 0.1, 0.9)
    for frame in frames:
        frame.pose = tilt @ frame.pose
    up, record = estimate_up(frames, stride=2)
    expected = np.array([0.4, 0.1, 0.9]) / np.linalg.norm([0.4, 0.1, 0.9])
    assert np.degrees(np.arccos(up @ expected)) < 2.0, record


def test_two_overlapping_7scenes_frames_agree_in_the_world_frame(shared):
    """Two overlapping frames of redkitchen (frames 20 and 40, 0.7 s apart), each through its own pose: the
    same surface (median nearest distance < 2 cm; measured 0.9 cm), while without the poses they are
    several centimetres apart (measured 7 cm): the test can fail."""
    sequence = open_rgbd_source(_world(shared("data/7scenes-redkitchen")))
    a, b = (rgbd_pairs([sequence[i]], pixel_stride=4, max_depth=3.0, world=True).points.numpy() for i in (10, 20))
    distance = cKDTree(a).query(b)[0]
    assert np.median(distance) < 0.02, np.median(distance)
    camera_a, camera_b = (rgbd_pairs([sequence[i]], pixel_stride=4, max_depth=3.0).points.numpy() for i in (10, 20))
    assert np.median(cKDTree(camera_a).query(camera_b)[0]) > 3 * np.median(distance)


def test_floor_is_level_and_z_up_on_a_scannet_style_sequence(shared):
    """HoloLens office (folders per modality, like ScanNet's export; its world is y up): after alignment the
    floor - a plane fitted to the lowest 5 cm of a frame that sees it - has its normal within 10 deg of
    +z, and the camera looks at it from above."""
    root = shared("data/hololens-office")
    sequence = open_rgbd_source(_world(root))
    assert sequence.record["angle_cameras_to_surfaces_deg"] < 10
    raw_up = np.asarray(sequence.record["up"])
    assert abs(raw_up[1]) > 0.95  # the data's own world frame is y up, not z up
    best = None
    for index in range(0, len(sequence), 15):
        points = rgbd_pairs([sequence[index]], pixel_stride=4, world=True).points.numpy()
        low = np.percentile(points[:, 2], 1)
        floor = points[points[:, 2] < low + 0.05]
        if best is None or len(floor) / len(points) > best[0]:
            best = (len(floor) / len(points), floor, index, low)
    share, floor, index, low = best
    assert share > 0.2  # a frame that mostly sees floor
    normal = np.linalg.svd(floor - floor.mean(0), full_matrices=False)[2][2]
    assert np.degrees(np.arccos(abs(normal[2]))) < 10
    assert sequence[index].pose[2, 3] > low + 1.0  # the camera (head height) is above the floor: +z is up


def test_every_sequence_under_a_folder_is_found_and_split_on_its_own(shared):
    root = shared("data")
    found = find_rgbd_sequences(root)
    names = [p.relative_to(root).as_posix() for p in found]
    assert {"7scenes-redkitchen", "hololens-office", "sun3d-studyroom/fragment-1-rgbd-frames",
            "sun3d-studyroom/fragment-2-rgbd-frames"} <= set(names)
    # 3DMatch/SUN3D layout: the scene's camera-intrinsics.txt above the sequence; HoloLens: intrinsic.txt (3x3)
    assert open_rgbd_sequence(found[names.index("sun3d-studyroom/fragment-1-rgbd-frames")]).intrinsics[0, 0] == \
        pytest.approx(570.342205)
    assert open_rgbd_sequence(root / "hololens-office").intrinsics[0, 2] == pytest.approx(269.5029, abs=1e-3)

    data = load_config({"root": str(root / "sun3d-studyroom"), "roots": [str(root / "hololens-office")],
                        "frame_stride": 5, "frames_per_sample": 2, "holdout_fraction": 0.2}, PPKTDataConfig)
    sequence = open_rgbd_source(data)
    assert isinstance(sequence, SequenceList) and len(sequence) == 50 + 50 + 125
    assert sequence.labels == ["fragment-1-rgbd-frames", "fragment-2-rgbd-frames", "hololens-office"]
    train, held = split_frames(sequence, data)
    for segment in sequence.segments:  # every sequence keeps its own last fifth for held-out frames
        assert any(i in segment for i in held) and any(i in segment for i in train)
        assert max(i for i in train if i in segment) < min(i for i in held if i in segment)
    dataset = rgbd_dataset(sequence, train, data, None, "y", 2)
    for views in dataset.samples:  # a fused sample never spans two sequences
        labels = {dataset.view_names[v].split("/")[0] for v in views}
        assert len(labels) == 1
    assert sequence[0].name == "fragment-1-rgbd-frames/frame-000935"


def test_world_frame_options_are_checked_at_load(tmp_path):
    with pytest.raises(PointliftConfigError, match="up_axis"):
        load_config({"data": {"root": str(tmp_path), "frame": "world"}}, PPKTConfig)
    with pytest.raises(PointliftConfigError, match="frame"):
        load_config({"data": {"kind": "kitti", "root": str(tmp_path), "frame": "world"}}, PPKTDataConfig)
    with pytest.raises(PointliftConfigError, match="world_up"):
        load_config({"root": str(tmp_path), "frame": "world", "world_up": [0, 0, 0]}, PPKTDataConfig)
    with pytest.raises(PointliftConfigError, match="roots"):
        load_config({"kind": "kitti", "root": str(tmp_path), "roots": [str(tmp_path)]}, PPKTDataConfig)
    with pytest.raises(PointliftDataError, match="no RGB-D sequence"):
        find_rgbd_sequences(tmp_path)
    config = load_config({"data": {"root": str(tmp_path), "frame": "world"}, "model": {"up_axis": "z"}}, PPKTConfig)
    assert config.data.frame == "world" and PPKTDataConfig(root=tmp_path).frame == "camera"  # the released default


def test_world_frame_given_up_and_synthetic_run_end_to_end(tmp_path):
    """`world_up` given skips the measurement; a tiny world-frame pretraining runs and records each up."""
    from pointlift.methods.ppkt.pretrain import pretrain

    config = load_config({
        "data": {"kind": "synthetic", "synthetic_frames": 6, "synthetic_hw": [24, 32], "image_size": [24, 32],
                 "frame": "world", "world_up": [0, 0, 1]},
        "model": {"teacher_weights": "random", "teacher_stage": 1, "student": "spunet-tiny", "voxel_size": 0.2,
                  "up_axis": "z", "embed_dim": 8},
        "loss": {"num_pairs": 64}, "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 0},
        "cache": False, "eval_points_per_frame": 16, "eval_untrained": False}, PPKTConfig)
    results = pretrain(config, tmp_path / "run", progress=False)
    assert results["world_up"] == {str(config.data.root or "<synthetic>"): {"up": [0.0, 0.0, 1.0], "given": True}}
    assert results["steps"] == 2 and np.isfinite(results["history"][-1]["loss"])


def test_dinov2_teacher_serves_ppkt_at_the_frames_image_size(shared):
    """The offline DINOv2 ViT-S/14 as PPKT's teacher: built for the (H, W) of the frames (not 224 square),
    a 14-pixel patch grid, and the UPL's per-pixel embeddings at full size."""
    from pointlift.methods.ppkt.config import PPKTModelConfig
    from pointlift.methods.ppkt.model import build_teacher

    weights = shared("weights/vit_small_patch14_dinov2.imgfocus.fp16.safetensors")

    teacher = build_teacher(load_config({"teacher": "vit_small_patch14_dinov2", "teacher_weights": str(weights)},
                                        PPKTModelConfig), (56, 84))
    images = teacher.normalize(torch.rand(2, 3, 56, 84))
    features = teacher.features(images)
    assert features.shape == (2, 384, 4, 6) and teacher.stride == 14
    assert "img=56x84" in teacher.identity()
    with pytest.raises(PointliftConfigError, match="56x84"):
        teacher.features(torch.rand(1, 3, 56, 56))
