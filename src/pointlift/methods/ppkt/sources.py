"""Where PPKT's views come from: RGB-D sequences (or a synthetic room) and LiDAR sweeps with cameras.

A source only opens frames; pairing points with pixels is `pairs`, turning frames into samples `dataset`.
"""

from __future__ import annotations

import math
from pathlib import Path

from pointlift.errors import PointliftDataError
from pointlift.methods.ppkt.config import PPKTDataConfig


class _SyntheticSequence(list):
    """`make_rgbd_scene` frames with the RGBDSequence bits PPKT uses."""

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(len(self)))

    @property
    def names(self) -> list[str]:
        return [frame.name for frame in self]


def open_rgbd_source(data: PPKTDataConfig):
    """The frame sequence of an rgbd or synthetic data config."""
    if data.kind == "synthetic":
        from pointlift.data.synthetic import make_rgbd_scene

        height, width = data.synthetic_hw
        return _SyntheticSequence(make_rgbd_scene(data.synthetic_frames, height, width, seed=data.synthetic_seed))
    from pointlift.data.rgbd import open_rgbd_sequence

    return open_rgbd_sequence(data.root)


def split_frames(sequence, data: PPKTDataConfig) -> tuple[list[int], list[int]]:
    """(train, held-out) frame indices after the frame stride."""
    indices = list(range(0, len(sequence), data.frame_stride))
    if data.train_below is not None:
        numbers = sequence.frame_numbers
        train = [i for i in indices if numbers[i] < data.train_below]
        held = [i for i in indices if numbers[i] >= data.train_below]
    else:
        cut = max(1, int(round(len(indices) * (1 - data.holdout_fraction))))
        train, held = indices[:cut], indices[cut:]
    if data.max_eval_frames:
        held = held[:: max(1, math.ceil(len(held) / data.max_eval_frames))][: data.max_eval_frames]
    return train, held


def open_lidar_frames(data: PPKTDataConfig) -> list:
    """LiDAR + camera frames of a kitti directory or a nuScenes info pickle."""
    from pointlift.data.lidar import read_kitti_frame, read_nuscenes_frame

    if data.kind == "semantickitti":
        from pointlift.data.scenes import (list_semantickitti, read_semantickitti_camera_frame,
                                           select_scenes, semantickitti_sequence_dir)

        names = list_semantickitti(data.root)
        if data.sequences:
            names = select_scenes(names, data.sequences)
            if not names:
                raise PointliftDataError(data.root, f"no scans in sequences {list(data.sequences)}")
        return [read_semantickitti_camera_frame(semantickitti_sequence_dir(data.root, n.split("/")[0]),
                                                n.split("/")[1]) for n in names]
    if data.kind == "kitti":
        root = Path(data.root)
        if not root.is_dir():
            raise PointliftDataError(root, "KITTI directory not found")
        frames = []
        for bin_path in sorted(root.glob("*.bin")):
            image = next((bin_path.with_suffix(s) for s in (".png", ".jpg") if bin_path.with_suffix(s).is_file()), None)
            # an info .pkl carries lidar2img; a .txt may be the official calib file (or P2 only)
            calib = next((bin_path.with_suffix(s) for s in (".pkl", ".txt") if bin_path.with_suffix(s).is_file()), None)
            if image is None or calib is None:
                raise PointliftDataError(bin_path, "needs an image (.png/.jpg) and a calibration (.pkl/.txt) beside it")
            frames.append(read_kitti_frame(bin_path, image, calib))
        if not frames:
            raise PointliftDataError(root, "no KITTI .bin sweeps found")
        return frames
    from pointlift.data.lidar import load_info_pickle

    count = len(load_info_pickle(data.info_pkl)["data_list"])
    return [read_nuscenes_frame(data.info_pkl, data.root, i) for i in range(count)]
