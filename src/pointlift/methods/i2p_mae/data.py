"""I2P-MAE pretraining data: the point sets of the configured source and the dataset that augments them
(with their cached teacher maps when the recipe caches the teacher)."""

from __future__ import annotations

import numpy as np
import torch

from pointlift.data.shape_sets import prepare_point_sets  # one resampling + normalisation for every command
from pointlift.errors import PointliftConfigError
from pointlift.geometry.render import released_depth_views
from pointlift.methods.i2p_mae.cache import TeacherMaps, released_view_maps
from pointlift.methods.i2p_mae.config import DataConfig


class PretrainShapes(torch.utils.data.Dataset):
    """Fixed point sets with scale-and-translate augmentation, plus their cached teacher maps if given.

    augment "per_axis" (the official recipe; I2P-MAE's `PointcloudScaleAndTranslate`): scale U(low, high) and shift
    U(-translate, translate) drawn per axis; "uniform" (pointlift's, keeps cached maps valid): one scale."""

    def __init__(self, points: np.ndarray, maps: TeacherMaps | None = None, scale_range=(2 / 3, 3 / 2),
                 translate: float = 0.2, augment: str = "per_axis", mask_tokens: int = 0,
                 drop_layers: int = 0):
        if maps is not None and len(maps) != len(points):
            raise PointliftConfigError(f"teacher maps for {len(maps)} shapes, but {len(points)} shapes given")
        if augment not in ("per_axis", "uniform"):
            raise PointliftConfigError(f"i2p_mae: unknown augment {augment!r}")
        if maps is not None and augment != "uniform":
            raise PointliftConfigError("i2p_mae: cached teacher maps need uniform scaling")
        self.points = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        self.maps = maps
        self.scale_range = scale_range
        self.translate = translate
        self.augment = augment
        self.mask_tokens = mask_tokens  # > 0: also draw the masking noise of that many top tokens
        self.drop_layers = drop_layers  # > 0: also draw the drop-path noise of that many layers (ddp_equivalent)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(3 if self.augment == "per_axis" else 1)
        shift = (torch.rand(3) * 2 - 1) * self.translate
        item = {"points": self.points[index] * scale + shift}
        if self.mask_tokens:
            item["mask_noise"] = torch.rand(self.mask_tokens)
        if self.drop_layers:
            item["drop_noise"] = torch.rand(self.drop_layers)
        if self.maps is not None:
            item["teacher_features"], item["teacher_saliency"] = self.maps.get(index)
        return item


class TeacherInLoader:
    """Collate for `data.teacher_in_loader`: stack the batch, render its released views and pass them through
    the teacher in one call, as the training step would (the same operations on the same batch, so the same
    maps bit for bit); in a DataLoader worker this runs beside the training step."""

    def __init__(self, teacher, image_size: int, footprint: int, with_saliency: bool):
        self.teacher, self.image_size, self.footprint = teacher, image_size, footprint
        self.with_saliency = with_saliency

    def __call__(self, items: list[dict]) -> dict:
        batch = torch.utils.data.default_collate(items)
        images, _ = released_depth_views(batch["points"], self.image_size, self.footprint)
        features, saliency = released_view_maps(self.teacher, images, self.with_saliency)
        batch["teacher_features"] = features
        if saliency is not None:
            batch["teacher_saliency"] = saliency
        return batch


def load_pretrain_points(data: DataConfig, split: str = "train"):
    """(points (S, P, 3), labels (S,), class names) for the configured format."""
    if data.format == "synthetic":
        from pointlift.data.synthetic import make_shapes

        count = data.max_shapes or 64
        classes = ("sphere", "cube", "cylinder", "cone")
        points, labels, names = make_shapes(max(1, count // len(classes)), num_points=data.num_points,
                                            classes=classes, seed=data.seed + (split == "test"))
        return prepare_point_sets(list(points), data.num_points, data.seed), labels, names
    from pointlift.data.shape_sets import ShapeSetConfig, load_points

    return load_points(ShapeSetConfig(format=data.format, path=data.path, num_points=data.num_points,
                                      variant=data.variant, columns=data.columns, max_shapes=data.max_shapes,
                                      seed=data.seed), split)
