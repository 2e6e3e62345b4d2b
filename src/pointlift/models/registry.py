"""Rebuild a network from the `model_spec` stored in a checkpoint sidecar.

A checkpoint's sidecar carries `model_spec = {"kind": ..., "config": {...}}`. Each kind maps to the
method module whose `build_embedder(config)` returns a module with `.embed(points (B,P,3)) -> (B,F)`.
The table is explicit so an unknown kind fails with the list of known ones.
"""

from __future__ import annotations

import importlib

from torch import nn

from pointlift.errors import PointliftDataError

EMBEDDER_MODULES = {
    "image2point": "pointlift.methods.image2point.embedder",
    "ppkt": "pointlift.methods.ppkt",
    "i2p_mae": "pointlift.methods.i2p_mae.embedder",
    "i2p_mae_classifier": "pointlift.tasks.point_classification",  # `pointlift finetune i2p-mae` output
}


def build_embedder(model_spec: dict, source: str = "<checkpoint>") -> nn.Module:
    """The embedding network described by a checkpoint's `model_spec`."""
    if not isinstance(model_spec, dict) or "kind" not in model_spec:
        raise PointliftDataError(source, "checkpoint has no model_spec; it was not written by a pointlift method")
    kind = model_spec["kind"]
    if kind not in EMBEDDER_MODULES:
        raise PointliftDataError(source, f"unknown model kind {kind!r}; known kinds: {sorted(EMBEDDER_MODULES)}")
    module = importlib.import_module(EMBEDDER_MODULES[kind])
    return module.build_embedder(model_spec.get("config", {}))
