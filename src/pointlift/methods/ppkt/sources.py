"""Where PPKT's views come from: RGB-D sequences (or a synthetic room) and LiDAR sweeps with cameras.

A source only opens frames; pairing points with pixels is `pairs`, turning frames into samples `dataset`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.methods.ppkt.config import PPKTDataConfig


class _SyntheticSequence(list):
    """`make_rgbd_scene` frames with the RGBDSequence bits PPKT uses."""

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(len(self)))

    @property
    def names(self) -> list[str]:
        return [frame.name for frame in self]


class GravityAligned:
    """A sequence whose frames' poses are turned so that the world's up is +z: pose' = [R 0; 0 1] @ pose.
    Depth, colour and pixels are untouched, so point-pixel pairs are the same; only coordinates turn."""

    def __init__(self, sequence, rotation: np.ndarray, record: dict):
        self.sequence = sequence
        self.alignment = np.eye(4)
        self.alignment[:3, :3] = rotation
        self.record = record

    def __len__(self) -> int:
        return len(self.sequence)

    def __getitem__(self, index: int):
        frame = self.sequence[index]
        return replace(frame, pose=self.alignment @ np.asarray(frame.pose, dtype=np.float64))

    @property
    def names(self) -> list[str]:
        return self.sequence.names

    @property
    def frame_numbers(self) -> list[int]:
        return self.sequence.frame_numbers


class SequenceList:
    """Several sequences as one: frame i of the whole is a frame of one of them; names are prefixed with
    the sequence's label (`label/frame`), `segments` gives each sequence's index range."""

    def __init__(self, sequences: list, labels: list[str]):
        if len(set(labels)) != len(labels):
            raise PointliftConfigError(f"data.roots: two sequences share a name ({labels}); list each folder once")
        self.sequences = sequences
        self.labels = labels
        self.segments, start = [], 0
        for sequence in sequences:
            self.segments.append(range(start, start + len(sequence)))
            start += len(sequence)

    def __len__(self) -> int:
        return self.segments[-1].stop

    def _locate(self, index: int) -> tuple[int, int]:
        for which, segment in enumerate(self.segments):
            if index in segment:
                return which, index - segment.start
        raise IndexError(index)

    def __getitem__(self, index: int):
        which, local = self._locate(index)
        frame = self.sequences[which][local]
        return replace(frame, name=f"{self.labels[which]}/{frame.name}")

    @property
    def names(self) -> list[str]:
        return [f"{label}/{name}" for label, seq in zip(self.labels, self.sequences) for name in seq.names]

    @property
    def frame_numbers(self) -> list[int]:
        return [number for seq in self.sequences for number in seq.frame_numbers]


def gravity_aligned(sequence, data: PPKTDataConfig, max_frames: int = 20) -> GravityAligned:
    """`sequence` turned z up: up from `data.world_up`, or measured on up to `max_frames` evenly spread frames."""
    from pointlift.data.gravity import estimate_up, rotation_to_z

    if data.world_up is not None:
        up = np.asarray(data.world_up, dtype=np.float64)
        record = {"up": (up / np.linalg.norm(up)).tolist(), "given": True}
    else:
        step = max(1, math.ceil(len(sequence) / max_frames))
        up, record = estimate_up(sequence[i] for i in range(0, len(sequence), step))
    return GravityAligned(sequence, rotation_to_z(up), record)


def open_rgbd_source(data: PPKTDataConfig):
    """The frame sequence of an rgbd or synthetic data config: one sequence as it is (`root` alone names
    one), or a `SequenceList` of every sequence under `root` and `roots`; each turned z up with `frame: world`."""
    if data.kind == "synthetic":
        from pointlift.data.synthetic import make_rgbd_scene

        height, width = data.synthetic_hw
        sequence = _SyntheticSequence(make_rgbd_scene(data.synthetic_frames, height, width, seed=data.synthetic_seed))
        return gravity_aligned(sequence, data) if data.frame == "world" else sequence
    from pointlift.data.rgbd import find_rgbd_sequences, open_rgbd_sequence

    found = []  # (label, folder)
    for root in [data.root, *data.roots]:
        root = Path(root)
        folders = find_rgbd_sequences(root)
        found += [(root.name if folder == root else folder.relative_to(root).as_posix(), folder) for folder in folders]
    sequences = [open_rgbd_sequence(folder) for _, folder in found]
    if data.frame == "world":
        sequences = [gravity_aligned(sequence, data) for sequence in sequences]
    if len(found) == 1 and Path(data.root) == found[0][1]:
        return sequences[0]  # one sequence named directly: frame names as before
    return SequenceList(sequences, [label for label, _ in found])


def split_frames(sequence, data: PPKTDataConfig) -> tuple[list[int], list[int]]:
    """(train, held-out) frame indices after the frame stride; each sequence of a `SequenceList` is split
    on its own (its last frames, or frames numbered from `train_below`, held out)."""
    train, held = [], []
    numbers = sequence.frame_numbers
    for segment in getattr(sequence, "segments", [range(len(sequence))]):
        indices = list(segment)[:: data.frame_stride]
        if data.train_below is not None:
            train += [i for i in indices if numbers[i] < data.train_below]
            held += [i for i in indices if numbers[i] >= data.train_below]
        else:
            cut = max(1, int(round(len(indices) * (1 - data.holdout_fraction))))
            train, held = train + indices[:cut], held + indices[cut:]
    if data.max_eval_frames:
        held = held[:: max(1, math.ceil(len(held) / data.max_eval_frames))][: data.max_eval_frames]
    return train, held


def segment_of(sequence, index: int) -> int:
    """Which sequence of a `SequenceList` frame `index` belongs to (0 for a single sequence)."""
    for which, segment in enumerate(getattr(sequence, "segments", ())):
        if index in segment:
            return which
    return 0


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
