"""The segmentation network: a sparse U-Net (from scratch or a PPKT checkpoint) or the inflated-encoder U-Net,
as a module the trainer drives (batch -> loss through the voxel inverse map)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pointlift.data.scenes import IGNORE
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.sparse import SparseTensor
from pointlift.sparse.prebuilt import batch_manager
from pointlift.tasks.segmentation.config import SegDataConfig, SegmentationConfig, SegModelConfig
from pointlift.tasks.segmentation.data import feature_channels


class SegmentationModel(nn.Module):
    """A network `SparseTensor -> per-voxel logits` for the trainer: batch -> {"loss", "acc"} with
    per-point cross-entropy (IGNORE points left out) through the voxel inverse map."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes

    def input_channels(self, data: SegDataConfig) -> int:
        """Feature channels the backbone reads."""
        return feature_channels(data.features)

    def logits(self, batch: dict) -> torch.Tensor:
        """Per-point logits (N, C). A batch may bring its kernel maps (`data.kernel_maps_in_loader`)."""
        x = SparseTensor(batch["features"], batch["coords"], manager=batch_manager(batch),
                         batch_size=int(batch["batch_size"]))
        return self.backbone(x).features[batch["inverse"]]

    def forward(self, batch: dict) -> dict:
        logits = self.logits(batch).float()
        labels = batch["labels"]
        labelled = labels != IGNORE
        if not bool(labelled.any()):  # a crop with no labelled point: a zero loss that keeps the graph
            loss = logits.sum() * 0.0
        else:
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        acc = (logits.argmax(1)[labelled] == labels[labelled]).float().mean() if bool(labelled.any()) \
            else logits.new_tensor(0.0)
        return {"loss": loss, "acc": acc.detach()}


def _ppkt_student(checkpoint: Path) -> tuple[dict, dict]:
    """(student state without its head, PPKT model config) of a PPKT checkpoint."""
    from pointlift.engine.checkpoint import load_checkpoint

    state, meta = load_checkpoint(checkpoint, expect_kind="ppkt")
    student = {k[len("student."):]: v for k, v in state.items()
               if k.startswith("student.") and not k.startswith("student.head.")}
    if not student:
        raise PointliftDataError(checkpoint, "holds no student.* tensors")
    return student, meta["model_spec"]["config"]["model"]


def build_backbone(model: SegModelConfig, data: SegDataConfig, num_classes: int, seed: int = 0) -> nn.Module:
    """The network named by `model`, initialised as it says (the PPKT weights loaded here)."""
    from pointlift.models.sparse_unet import sparse_unet

    torch.manual_seed(seed)
    in_channels = feature_channels(data.features)
    if model.arch == "inflated":
        from pointlift.models.inflated_unet import InflatedUNet

        weights = model.teacher_weights if model.init == "image2point" else "random"
        return InflatedUNet(model.teacher, weights, model.inflation_mode, model.inflation_axis, num_classes,
                            in_channels=3, decoder_channels=model.decoder_channels)
    net = sparse_unet(model.unet, in_channels, num_classes)
    if model.init == "ppkt":
        student, ppkt_model = _ppkt_student(model.checkpoint)
        if ppkt_model.get("student") != model.unet:
            raise PointliftConfigError(f"model.unet: {model.unet!r} but the PPKT checkpoint holds "
                                       f"{ppkt_model.get('student')!r}")
        pretrained_features = ppkt_model.get("in_features", "rgb")
        if (pretrained_features == "rgb") != (data.features == "rgb"):
            raise PointliftConfigError(f"data.features: {data.features!r} does not fit the PPKT network's "
                                       f"{pretrained_features!r} input")
        if not math.isclose(float(ppkt_model.get("voxel_size", data.voxel_size)), data.voxel_size):
            raise PointliftConfigError(f"data.voxel_size: {data.voxel_size} differs from the PPKT network's "
                                       f"{ppkt_model.get('voxel_size')} (the scale it learned)")
        missing, unexpected = net.load_state_dict(student, strict=False)
        missing = [k for k in missing if not k.startswith("head.")]
        if missing or unexpected:
            raise PointliftDataError(model.checkpoint, f"student does not fit {model.unet}: missing {missing[:3]}, "
                                     f"unexpected {unexpected[:3]}")
    return net


def _expand_features(batch: dict, channels: int) -> dict:
    if batch["features"].shape[1] == channels:
        return batch
    return {**batch, "features": batch["features"][:, :1].expand(-1, channels).contiguous()}


class InflatedSegmentationModel(SegmentationModel):
    """The inflated U-Net takes 3 input channels (the 2D stem's RGB); 1-channel inputs are repeated."""

    def input_channels(self, data: SegDataConfig) -> int:
        return 3

    def logits(self, batch: dict) -> torch.Tensor:
        return super().logits(_expand_features(batch, 3))


def build_model(config: SegmentationConfig, num_classes: int) -> SegmentationModel:
    backbone = build_backbone(config.model, config.data, num_classes, config.train.seed)
    cls = InflatedSegmentationModel if config.model.arch == "inflated" else SegmentationModel
    return cls(backbone, num_classes)
