"""An I2P-MAE checkpoint as a shape encoder: the network rebuilt from its `model_spec` (the `pointlift
embed` / probe hook of the model registry) and frozen global features of point sets."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pointlift.engine.config import load_config
from pointlift.methods.i2p_mae.config import I2PMAEConfig
from pointlift.methods.i2p_mae.model import I2PMAE


def build_embedder(model_spec_config: dict) -> I2PMAE:
    """The pretraining model without its teacher; its state dict matches an I2P-MAE checkpoint."""
    config = load_config(dict(model_spec_config), I2PMAEConfig)
    return I2PMAE(config, teacher=None)


@torch.no_grad()
def embed_array(model: nn.Module, points: np.ndarray, batch_size: int = 64, device=None,
                pooling: str = "max") -> np.ndarray:
    """Frozen global features (S, F) of point sets (S, P, 3)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = [model.embed(torch.from_numpy(np.ascontiguousarray(points[i:i + batch_size])).to(device), pooling)
            .float().cpu().numpy() for i in range(0, len(points), batch_size)]
    model.train(was_training)
    return np.concatenate(rows)
