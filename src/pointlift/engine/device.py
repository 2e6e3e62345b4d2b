"""Where a run computes: the device a config names, or the first GPU when there is one, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(name: str | None) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:1", ...) when given; otherwise CUDA if available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
