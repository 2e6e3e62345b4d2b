"""Optimisers and the per-step learning-rate schedule (linear warm-up, then cosine or constant).

Weight decay is not applied to biases and normalisation parameters: decaying them towards zero
only fights the normalisation and is the usual recipe of the papers we follow.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pointlift.engine.config import OptimConfig
from pointlift.errors import PointliftConfigError

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names that get no weight decay: biases, 1-d parameters, norm layers, and
    whatever the model lists in `no_weight_decay()` (timm's convention, e.g. position embeddings)."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, _NORM_TYPES) or param.ndim <= 1 or param_name.endswith("bias"):
                names.add(full)
    listed = getattr(model, "no_weight_decay", None)
    if callable(listed):
        skip = set(listed())
        for name, _ in model.named_parameters():
            if name in skip or any(name.startswith(prefix + ".") for prefix in skip):
                names.add(name)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimiser groups over the trainable parameters: with and without weight decay."""
    no_decay = _no_decay_names(model)
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if name in no_decay else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) over `model`'s trainable parameters."""
    groups = parameter_groups(model, config.weight_decay)
    if not groups:
        raise PointliftConfigError("the model has no trainable parameters to optimise")
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    raise PointliftConfigError(f"optim.name: unknown optimiser {config.name!r}")


class WarmupCosine:
    """Learning-rate factor at step s: linear warm-up to 1 over `warmup` steps, then cosine decay
    from 1 to `min_ratio` at `total` steps (or constant 1). A class, not a lambda, so LambdaLR
    can save and restore it."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0, cosine: bool = True):
        self.warmup = int(warmup)
        self.total = int(total)
        self.min_ratio = float(min_ratio)
        self.cosine = bool(cosine)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(config: OptimConfig, steps_per_epoch: int) -> int:
    return config.warmup_steps or int(round(config.warmup_epochs * steps_per_epoch))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step (not per epoch)."""
    factor = WarmupCosine(warmup_steps(config, steps_per_epoch), total_steps,
                          min_ratio=config.min_lr / config.lr, cosine=config.schedule == "cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
