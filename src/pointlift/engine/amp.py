"""Mixed precision for the trainer: which autocast dtype and whether a GradScaler, per device."""

from __future__ import annotations

import contextlib
import warnings

import torch

from pointlift.engine.config import TrainConfig


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or no-op context when AMP is off (`dtype` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def amp_setup(config: TrainConfig, device: torch.device):
    """(autocast dtype or None, GradScaler or None): fp16 + scaler on CUDA, bf16 on CPU."""
    if not config.amp:
        return None, None
    if device.type == "cuda":
        return torch.float16, torch.amp.GradScaler("cuda")
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            pass
        return torch.bfloat16, None
    except (RuntimeError, ValueError):
        warnings.warn(f"amp requested but autocast is not supported on {device}; training in float32")
        return None, None
