"""PPKT's training samples: points, their colours, their point-pixel pairs and the views' images (or
cached teacher maps), with the augmentations that move points and not pixels; `collate_ppkt` batches them.

`rgbd_dataset` makes samples of consecutive RGB-D frames, `lidar_dataset` one sample per LiDAR sweep.
"""

from __future__ import annotations

import math

import torch

from pointlift.errors import PointliftDataError
from pointlift.geometry import rotation_about_axis, transform_points
from pointlift.methods.ppkt.config import PPKTAugmentConfig, PPKTDataConfig
from pointlift.methods.ppkt.pairs import PointPixelPairs, lidar_pairs, rescale_pixels, resize_image, rgbd_pairs


class PPKTDataset(torch.utils.data.Dataset):
    """Samples of views -> dict with points, colours, pairs and either images or cached teacher maps.

    `samples[i]` lists the global view indices of sample i; `make_pairs(i)` builds its pairs at the
    original image resolution, `view_image(v)` gives view v as uint8 (H, W, 3) and `view_hw(v)` its
    original size. Pixels are rescaled to `image_size`.

    A sample's pairs (projection, z-buffer, back-projection: about 30 ms per LiDAR sweep) depend on the
    sample alone, not on the augmentation, so they are kept after first use, up to `pair_cache_mb` per
    dataset copy (0 = off): every epoch after the first reads them, and the run is unchanged. Each DataLoader
    worker keeps its own copy (the trainer's workers last the run).
    """

    def __init__(self, samples, make_pairs, view_image, view_hw, view_names, image_size, augment: PPKTAugmentConfig | None,
                 up_axis: str = "y", cache=None, source: str = "<ppkt>", pair_cache_mb: float = 0.0):
        self.samples = samples
        self.make_pairs = make_pairs
        self.view_image = view_image
        self.view_hw = view_hw
        self.view_names = view_names
        self.image_size = tuple(image_size)
        self.augment = augment
        self.up_axis = up_axis
        self.cache = cache
        self.source = source
        self.pair_cache_bytes = int(pair_cache_mb * 2**20)
        self.cached_pairs: dict[int, PointPixelPairs] = {}  # read-only once stored: __getitem__ copies what it changes
        self.cached_bytes = 0

    def __len__(self) -> int:
        return len(self.samples)

    def load_view(self, view: int) -> torch.Tensor:
        """View `view` as float (3, H, W) in [0, 1] at `image_size` (the teacher's input)."""
        return resize_image(self.view_image(view), self.image_size)

    def __getitem__(self, index: int) -> dict:
        views = self.samples[index]
        pairs = self.pairs_of(index)
        if pairs.num_pairs < 2:
            raise PointliftDataError(self.source, f"sample {index} ({[self.view_names[v] for v in views]}) has "
                                                  f"{pairs.num_pairs} point-pixel pairs; need at least 2")
        pixels = pairs.pair_pixel.clone()
        for local, view in enumerate(views):
            mine = pairs.pair_view == local
            pixels[mine] = rescale_pixels(pixels[mine], self.view_hw(view), self.image_size)
        if self.cache is not None:
            maps = torch.stack([self.cache[v] for v in views])
            key = "teacher_features"
        else:
            maps = torch.stack([self.load_view(v) for v in views])
            key = "images"
        points = pairs.points
        if self.augment is not None:
            points = self._augment_points(points)
            if self.augment.image_flip:
                flipped = torch.rand(len(views)) < 0.5
                maps[flipped] = maps[flipped].flip(-1)
                mirror = flipped[pairs.pair_view]
                pixels[mirror, 0] = self.image_size[1] - 1 - pixels[mirror, 0]
        # a random key per pair, drawn with the sample (per-sample stream): the loss uses the pairs with
        # the smallest keys of the whole batch, so N processes pick exactly the pairs one process picks
        pair_key = torch.rand(pairs.pair_point.shape[0], dtype=torch.float64)
        return {"points": points.float(), "colors": pairs.colors.float(), "pair_point": pairs.pair_point,
                "pair_view": pairs.pair_view, "pair_pixel": pixels, "pair_key": pair_key, key: maps}

    def pairs_of(self, index: int) -> PointPixelPairs:
        """Sample `index`'s pairs: kept from an earlier call, or made (and kept while the budget allows)."""
        pairs = self.cached_pairs.get(index)
        if pairs is None:
            pairs = self.make_pairs(index)
            if self.cached_bytes + pairs.nbytes <= self.pair_cache_bytes:
                self.cached_pairs[index] = pairs
                self.cached_bytes += pairs.nbytes
        return pairs

    def _augment_points(self, points: torch.Tensor) -> torch.Tensor:
        aug = self.augment
        centre = points.mean(0, keepdim=True)
        points = points - centre
        if aug.rotate_up:
            angle = float(torch.rand(())) * 2 * math.pi
            points = transform_points(rotation_about_axis(angle, self.up_axis, dtype=points.dtype), points)
        if aug.flip and bool(torch.rand(()) < 0.5):
            axis = 0 if self.up_axis != "x" else 1
            points = points.clone()
            points[:, axis] = -points[:, axis]
        low, high = aug.scale
        points = points * (low + (high - low) * float(torch.rand(())))
        return points + centre


def collate_ppkt(samples: list[dict]) -> dict:
    """Concatenate samples: points get a batch index, pair indices are offset into the batch."""
    batch = {"points": [], "colors": [], "batch_index": [], "pair_point": [], "pair_view": [], "pair_pixel": []}
    if "pair_key" in samples[0]:
        batch["pair_key"] = [sample["pair_key"] for sample in samples]
    maps_key = "teacher_features" if "teacher_features" in samples[0] else "images"
    maps = []
    point_offset = view_offset = 0
    for b, sample in enumerate(samples):
        count = sample["points"].shape[0]
        batch["points"].append(sample["points"])
        batch["colors"].append(sample["colors"])
        batch["batch_index"].append(torch.full((count,), b, dtype=torch.long))
        batch["pair_point"].append(sample["pair_point"] + point_offset)
        batch["pair_view"].append(sample["pair_view"] + view_offset)
        batch["pair_pixel"].append(sample["pair_pixel"])
        maps.append(sample[maps_key])
        point_offset += count
        view_offset += sample[maps_key].shape[0]
    out = {key: torch.cat(values) for key, values in batch.items()}
    out[maps_key] = torch.cat(maps)
    return out


class CollateWithKernelMaps:
    """`collate_ppkt`, plus the student's voxels of the batch and their kernel maps, packed
    (`data.kernel_maps_in_loader`: a DataLoader worker then makes them beside the step)."""

    def __init__(self, voxel_size: float, plan):
        self.voxel_size, self.plan = voxel_size, plan

    def __call__(self, samples: list[dict]) -> dict:
        from pointlift.geometry import voxelize
        from pointlift.sparse.prebuilt import PackedManager, build_manager

        batch = collate_ppkt(samples)
        voxels = voxelize(batch["points"], self.voxel_size, batch["batch_index"])
        batch_size = int(batch["batch_index"].max()) + 1 if batch["batch_index"].numel() else 1  # as the model counts
        batch["voxels"] = voxels
        batch["kernel_maps"] = PackedManager(build_manager(voxels.coords, batch_size, self.plan))
        return batch


def rgbd_dataset(sequence, frame_indices: list[int], data: PPKTDataConfig, augment, up_axis, group: int,
                  cache=None, view_offset: dict | None = None) -> PPKTDataset:
    """Samples = consecutive groups of `group` frames of `frame_indices` (views = frames), never across two
    sequences of a `SequenceList`."""
    from pointlift.methods.ppkt.sources import segment_of

    groups = []
    for which in dict.fromkeys(segment_of(sequence, f) for f in frame_indices):
        run = [f for f in frame_indices if segment_of(sequence, f) == which]
        groups += [run[i:i + group] for i in range(0, len(run) - group + 1, group)]
    position = {frame: i for i, frame in enumerate(frame_indices)} if view_offset is None else view_offset
    samples = [[position[f] for f in g] for g in groups]
    view_frames = {position[f]: f for f in frame_indices}
    shapes = {}

    def frame(view):
        return sequence[view_frames[view]]

    def make_pairs(index):
        frames = [sequence[f] for f in groups[index]]
        for view, fr in zip(samples[index], frames):
            shapes[view] = fr.depth.shape
        return rgbd_pairs(frames, data.pixel_stride, data.max_depth, data.cross_view_pairs, data.occlusion_tolerance,
                          world=data.frame == "world")

    def view_hw(view):
        if view not in shapes:
            shapes[view] = frame(view).depth.shape
        return shapes[view]

    def view_image(view):
        return frame(view).color

    all_names = sequence.names
    names = {position[f]: all_names[f] for f in frame_indices}
    dataset = PPKTDataset(samples, make_pairs, view_image, view_hw, names, data.image_size, augment, up_axis, cache,
                          source=str(data.root or "<synthetic>"), pair_cache_mb=data.pair_cache_mb)
    dataset.sequence = sequence  # its sequences' up directions are recorded with world-frame runs
    return dataset


def lidar_dataset(frames: list, data: PPKTDataConfig, augment, up_axis, cache=None,
                  sample_frames: list[int] | None = None) -> PPKTDataset:
    """Samples = the LiDAR sweeps `sample_frames` (indices into `frames`; default all of them); views = the
    cameras of every sweep of `frames`, numbered sweep by sweep, so that the train and held-out sets of one
    sweep list share one view numbering (and one teacher cache)."""
    views_of, names, images = [], {}, {}
    for frame in frames:
        views = []
        for camera in frame.cameras:
            view = len(images)
            images[view] = camera.image
            names[view] = f"{frame.name}/{camera.name}"
            views.append(view)
        views_of.append(views)
    sample_frames = list(range(len(frames))) if sample_frames is None else list(sample_frames)

    def make_pairs(index):
        frame = frames[sample_frames[index]]  # sample `index` is this sweep: its points pair with its own views
        cameras = [(camera.image.shape[:2], torch.as_tensor(camera.lidar2img)) for camera in frame.cameras]
        return lidar_pairs(torch.as_tensor(frame.points), cameras, data.min_depth, data.occlusion,
                           data.occlusion_tolerance, data.zbuffer_cell)

    return PPKTDataset([views_of[f] for f in sample_frames], make_pairs, lambda v: images[v],
                       lambda v: images[v].shape[:2], names, data.image_size, augment, up_axis, cache,
                       source=str(data.info_pkl or data.root), pair_cache_mb=data.pair_cache_mb)
