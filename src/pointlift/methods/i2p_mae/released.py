"""Released I2P-MAE / Point-M2AE weights into pointlift's network. The parameter names are the released
ones, so there is no key mapping beyond dropping the CLIP teacher and a DataParallel prefix."""

from __future__ import annotations

from pathlib import Path

import torch

from pointlift.errors import PointliftDataError
from pointlift.methods.i2p_mae.model import I2PMAE


def load_released_state(model: I2PMAE, path: str | Path, strict: bool = True):
    """Load a released I2P-MAE / Point-M2AE state dict (`.safetensors`, or a `.pth` whose `base_model`
    holds it): the names are ours; `clip_model.*` and a leading `module.` are dropped."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("base_model", state)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("clip_model.", "module.clip_model."))}
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return model.load_state_dict(state, strict=strict)
