"""Shape classification with a sparse 3D network (Image2Point; PPKT's downstream check): the model wrapper,
training with the engine's trainer, evaluation and BN recalibration.

`SparseShapeClassifier` (cross-entropy, trained by the engine's trainer) -> `evaluate_classifier`
(overall and mean-class accuracy). The data side (datasets, collates) is `.data`.
Accuracies are those of the last epoch: nothing here selects a model by its test score.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pointlift.engine.device import resolve_device
from pointlift.metrics import accuracy_metrics
from pointlift.sparse import SparseTensor
from pointlift.sparse.prebuilt import WithKernelMaps, batch_manager, plan_for_loader
from pointlift.tasks.shape_classification.data import ShapeDataConfig, VoxelCollate, VoxelShapeDataset, make_collate


def batch_to_sparse(batch: dict) -> SparseTensor:
    """The batch's voxels; with the kernel maps it brings (`data.kernel_maps_in_loader`) where it has them."""
    return SparseTensor(batch["features"], batch["coords"], manager=batch_manager(batch),
                        batch_size=int(batch["labels"].shape[0]))


class SparseShapeClassifier(nn.Module):
    """Wraps a backbone `SparseTensor -> logits (B, classes)` for the trainer: batch -> {"loss", "acc"}.

    `frozen_norms` names modules that stay in eval mode even while training (frozen BN statistics).
    """

    def __init__(self, backbone: nn.Module, frozen_norms: tuple[str, ...] = ()):
        super().__init__()
        self.backbone = backbone
        self.frozen_norms = tuple(frozen_norms)
        self.checkpoint_exclude: tuple[str, ...] = ()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_norms:
            modules = dict(self.backbone.named_modules())
            for name in self.frozen_norms:
                modules[name].eval()
        return self

    def logits(self, batch: dict) -> torch.Tensor:
        return self.backbone(batch_to_sparse(batch))

    def forward(self, batch: dict) -> dict:
        logits = self.logits(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        acc = (logits.argmax(1) == batch["labels"]).float().mean()
        return {"loss": loss, "acc": acc.detach()}


@torch.no_grad()
def evaluate_classifier(model: SparseShapeClassifier, dataset: VoxelShapeDataset, collate: VoxelCollate,
                        batch_size: int = 64, device: str | torch.device | None = None) -> dict[str, float]:
    """Overall / mean-class accuracy of `model` on `dataset` (eval mode restored to the previous mode)."""
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        predictions.append(model.logits(batch).argmax(1).cpu())
    model.train(was_training)
    num_classes = int(dataset.labels.max()) + 1 if len(dataset) else 0
    return accuracy_metrics(torch.cat(predictions).numpy(), dataset.labels, num_classes)


@torch.no_grad()
def recalibrate_batchnorm(model: SparseShapeClassifier, dataset: VoxelShapeDataset, collate: VoxelCollate,
                          batch_size: int = 64) -> int:
    """"Precise BN": re-estimate the running statistics of every BN layer that trains its statistics, as
    the exact average over one pass of `dataset` (frozen-statistics layers, `model.frozen_norms`, are
    left alone). Why: after a few dozen steps the momentum-0.1 running averages still carry much of the
    ImageNet (or initial) statistics, which do not fit voxelised xyz, so eval-mode accuracy can sit at
    chance while the training loss falls. Running statistics do not affect train-mode steps, so this
    changes evaluation only. Returns the number of recalibrated layers."""
    device = next(model.parameters()).device
    was_training = model.training
    model.train()  # frozen norms stay in eval mode (SparseShapeClassifier.train)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        model.logits({k: v.to(device) for k, v in batch.items()})
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


def train_classifier(model: SparseShapeClassifier, train_set: VoxelShapeDataset, test_set: VoxelShapeDataset,
                     data: ShapeDataConfig, train_config, run_dir: str | Path, *, eval_every_epoch: bool = True,
                     eval_batch_size: int = 64, resume: bool = False, progress: bool = True,
                     config_for_checkpoint=None, model_spec: dict | None = None,
                     device: str | torch.device | None = None, val_set: VoxelShapeDataset | None = None,
                     precise_bn: bool = False) -> dict:
    """Train with the engine's trainer; returns {"history", "final": last-epoch test metrics, "curve",
    "curve_split"}. With `val_set`, the per-epoch curve is on validation and the test set is scored once,
    after the last epoch; without it, the curve is on the test set (for reporting only, never selection).
    `precise_bn`: before each evaluation, re-estimate the trainable BN statistics on the (unaugmented)
    training shapes (`recalibrate_batchnorm`)."""
    from pointlift.engine.trainer import train

    collate = make_collate(data)
    if data.kernel_maps_in_loader:
        collate = WithKernelMaps(collate, plan_for_loader(model.backbone, 3, resolve_device(device),
                                                          train_config.num_workers))
    eval_collate = make_collate(data)
    curve: list[dict] = []
    final: dict = {}
    curve_set = val_set if val_set is not None else test_set

    calibration_set = None
    if precise_bn:
        calibration_set = copy.copy(train_set)  # the same shapes, without augmentation
        calibration_set.augment = False

    def eval_fn(module, epoch):
        last = train_config.epochs is not None and epoch >= train_config.epochs - 1  # epochs null: max_steps ends it
        logged = {}
        if precise_bn and (eval_every_epoch or last):
            recalibrate_batchnorm(module, calibration_set, eval_collate, eval_batch_size)
        if eval_every_epoch or last:
            metrics = evaluate_classifier(module, curve_set, eval_collate, eval_batch_size)
            curve.append({"epoch": epoch, **metrics})
            logged.update({("val_" if val_set is not None else "") + k: v for k, v in metrics.items()})
        if last:
            final.update(metrics if val_set is None else
                         evaluate_classifier(module, test_set, eval_collate, eval_batch_size))
            if val_set is not None:
                logged.update({f"test_{k}": v for k, v in final.items()})
        return logged

    result = train(model, train_set, train_config, run_dir, collate_fn=collate, resume=resume, device=device,
                   progress=progress, eval_fn=eval_fn, config_for_checkpoint=config_for_checkpoint,
                   model_spec=model_spec)
    if not final:  # e.g. stopped early by max_steps
        final = evaluate_classifier(model, test_set, eval_collate, eval_batch_size)
    return {"history": result.history, "final": final, "curve": curve, "step": result.step,
            "curve_split": "val" if val_set is not None else "test", "checkpoint": result.checkpoint_path}


def epochs_to_target(curve: list[dict], target: float, key: str = "overall_acc") -> float:
    """First epoch count (1-based) whose accuracy reaches `target`; NaN if never reached."""
    for row in curve:
        if row[key] >= target:
            return float(row["epoch"] + 1)
    return float("nan")
