"""PPKT: pixel-to-point knowledge transfer (Liu et al., arXiv 2104.04687), read beside the paper.

1. Pairs (`pairs`): every 3D point keeps the pixel it was seen at (RGB-D back-projection, or
   LiDAR projection into calibrated cameras).
2. 2D branch: a frozen timm teacher gives a low-resolution map; the trainable Upsampling Projection
   Layer (UPL) turns it into an L2-normalised D-dim embedding per pixel. The teacher maps can come
   from an on-disk cache (`cache`), since they never change.
3. 3D branch: a sparse U-Net on voxelised points (input RGB or a constant 1) with a D-dim head,
   read back per point through the voxel inverse map and L2-normalised.
4. Loss: InfoNCE point -> pixel over N sampled pairs: logits = f3d . f2d^T / tau, target = own pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pointlift.geometry import average_per_voxel, voxelize
from pointlift.methods.ppkt.config import PPKTLossConfig, PPKTModelConfig

# ------------------------------------------------------------------------------ 2D branch: the teacher


def build_teacher(model: PPKTModelConfig, image_size: tuple[int, int] | None = None):
    """The frozen 2D network (timm backbone, one feature stage) whose pixel features are transferred.
    Fixed-size networks (ViTs such as DINOv2 ViT-S/14) are built for `image_size` (H, W), the frames'
    teacher input; CNNs take any size."""
    from pointlift.teachers.teacher import Teacher

    return Teacher(model.teacher, model.teacher_weights, model.teacher_stage,
                   img_size=tuple(image_size) if image_size is not None else None)


# ---------------------------------------------------------------------------- 3D branch: the student


def student_in_channels(model: PPKTModelConfig) -> int:
    return 3 if model.in_features == "rgb" else 1


def build_student(model: PPKTModelConfig) -> nn.Module:
    """The trainable 3D network: a sparse U-Net with an `embed_dim` head (the network PPKT pretrains)."""
    from pointlift.models.sparse_unet import sparse_unet

    return sparse_unet(model.student, student_in_channels(model), model.embed_dim)


def student_voxel_features(student: nn.Module, model: PPKTModelConfig, points: torch.Tensor,
                           batch_index: torch.Tensor, colors: torch.Tensor | None,
                           prepared: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxelise and run the sparse U-Net: (voxel features (M, D), not normalised; each point's voxel (N,)).
    `prepared`: a batch that brings these points' voxels and kernel maps (`data.kernel_maps_in_loader`)."""
    from pointlift.sparse import SparseTensor
    from pointlift.sparse.prebuilt import batch_manager

    prepared = prepared if prepared is not None and "voxels" in prepared else None
    voxels = prepared["voxels"] if prepared else voxelize(points, model.voxel_size, batch_index)
    if model.in_features == "rgb":
        if colors is None:
            colors = torch.full_like(points, 0.5)
        inputs = average_per_voxel(colors, voxels)
    else:
        inputs = torch.ones(voxels.num_voxels, 1, dtype=points.dtype, device=points.device)
    batch_size = int(batch_index.max()) + 1 if batch_index.numel() else 1
    manager = batch_manager(prepared) if prepared else None
    out = student(SparseTensor(inputs, voxels.coords, manager=manager, batch_size=batch_size))
    return out.features, voxels.inverse


def student_point_features(student: nn.Module, model: PPKTModelConfig, points: torch.Tensor,
                           batch_index: torch.Tensor, colors: torch.Tensor | None) -> torch.Tensor:
    """Each point's voxel feature, (N, D) L2-normalised."""
    features, inverse = student_voxel_features(student, model, points, batch_index, colors)
    return F.normalize(features[inverse], dim=1)


# ----------------------------------------------------------------------------------- the two branches


class PPKTModel(nn.Module):
    """Frozen teacher + UPL (2D) and sparse U-Net (3D); `forward(batch)` -> {"loss", "pair_accuracy"}."""

    checkpoint_exclude = ("teacher.",)

    def __init__(self, model: PPKTModelConfig, loss: PPKTLossConfig, image_size: tuple[int, int], teacher=None):
        super().__init__()
        from pointlift.teachers.teacher import Teacher
        from pointlift.teachers.upl import UpsamplingProjection

        self.model_config = model
        self.loss_config = loss
        self.image_size = tuple(image_size)
        self.teacher = teacher if teacher is not None else build_teacher(model, image_size)
        self.upl = UpsamplingProjection(self.teacher.channels, model.embed_dim, model.upl_mode)
        self.student = build_student(model)
        assert isinstance(self.teacher, Teacher)

    def teacher_maps(self, batch: dict) -> torch.Tensor:
        """(V, C, h, w) low-resolution teacher maps, cached or computed from the images."""
        if "teacher_features" in batch:
            return batch["teacher_features"].float()
        return self.teacher.features(self.teacher.normalize(batch["images"].float()))

    def pixel_maps(self, batch: dict) -> torch.Tensor:
        """(V, D, H, W) per-pixel embeddings of every view."""
        return self.upl(self.teacher_maps(batch), self.image_size)

    def pair_features(self, batch: dict, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f3d, f2d), each (P, D) L2-normalised, for the pair rows `pairs`. Only the chosen pairs' points and
        pixels are read out: the same values as normalising every point and upsampling whole maps, which
        on a LiDAR sweep (~250k points, 2k pairs) cost more than the U-Net's layers."""
        voxel_features, inverse = student_voxel_features(self.student, self.model_config, batch["points"],
                                                         batch["batch_index"], batch.get("colors"), batch)
        f3d = F.normalize(voxel_features[inverse[batch["pair_point"][pairs]]], dim=1)
        f2d = self.upl.sample(self.teacher_maps(batch), self.image_size, batch["pair_view"][pairs],
                              batch["pair_pixel"][pairs])
        return f3d, f2d

    def forward(self, batch: dict) -> dict:
        if "pair_key" in batch:
            chosen = select_pairs(batch["pair_key"], self.loss_config.num_pairs)
        else:
            count = batch["pair_point"].shape[0]
            chosen = torch.randperm(count, device=batch["pair_point"].device)[: self.loss_config.num_pairs]
        f3d, f2d = self.pair_features(batch, chosen)
        loss, accuracy = info_nce_global(f3d, f2d, self.loss_config.temperature)
        return {"loss": loss, "pair_accuracy": accuracy}


# ---------------------------------------------------------------------------------------- the loss


def select_pairs(keys: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """Indices of this process's pairs among the `num_pairs` smallest keys of the global batch (all
    processes together under torchrun): a uniform draw of `num_pairs` pairs without replacement."""
    from pointlift.engine.distributed import all_gather_rows

    every, _ = all_gather_rows(keys.detach())
    if every.numel() <= num_pairs:
        return torch.arange(keys.numel(), device=keys.device)
    threshold = every.kthvalue(num_pairs).values
    return torch.nonzero(keys <= threshold).squeeze(1)


def info_nce(f3d: torch.Tensor, f2d: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Point -> pixel InfoNCE: row i's positive is column i, the other sampled pixels are negatives."""
    logits = f3d @ f2d.T / temperature
    target = torch.arange(f3d.shape[0], device=f3d.device)
    loss = F.cross_entropy(logits.float(), target)
    accuracy = argmax_is(logits.detach(), target).float().mean()
    return loss, accuracy


def info_nce_global(f3d: torch.Tensor, f2d: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`info_nce` over the pairs of the global batch: under torchrun each process's points are scored
    against the pixels of every process (gathered, with gradients), and the loss is scaled so that the
    DDP gradient average equals the one-process gradient of the mean over all pairs."""
    from pointlift.engine.distributed import all_gather_rows, get_rank, get_world_size, is_distributed

    if not is_distributed():
        return info_nce(f3d, f2d, temperature)
    keys, counts = all_gather_rows(f2d)
    offset, total, world = sum(counts[: get_rank()]), sum(counts), get_world_size()
    logits = f3d @ keys.T / temperature
    target = torch.arange(f3d.shape[0], device=f3d.device) + offset
    loss = F.cross_entropy(logits.float(), target, reduction="sum") * (world / total)
    accuracy = argmax_is(logits.detach(), target).float().sum() * (world / total)
    return loss, accuracy


# argmax_is runs argmax on the candidate rows alone while they are at most this share of the rows (copying more
# rows costs more than one argmax over all of them)
ARGMAX_ROWS_SHARE = 0.25


def argmax_is(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(1) == target` (the logged pair accuracy), exactly, with argmax run on few rows: a row's argmax
    can be its target only where the target's score is the row's maximum or the row holds a NaN (argmax's maximum).
    amax is a vectorised reduction and argmax is not: over random 2048 x 2048 scores 0.2 ms against 2.7 ms."""
    rows = torch.arange(len(target), device=scores.device)
    best = scores.amax(1)
    maybe = ((scores[rows, target] == best) | best.isnan()).nonzero().squeeze(1)
    if len(maybe) > ARGMAX_ROWS_SHARE * len(target):
        return scores.argmax(1) == target
    hits = torch.zeros(len(target), dtype=torch.bool, device=scores.device)
    hits[maybe] = scores[maybe].argmax(1) == target[maybe]
    return hits
