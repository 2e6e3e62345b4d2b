"""`pointlift embed`: one global feature row per point set, from any method's checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pointlift.data.guard import read_npz
from pointlift.engine.checkpoint import excluded_prefixes, load_checkpoint
from pointlift.errors import PointliftDataError
from pointlift.models.registry import build_embedder


def read_point_sets(path: str | Path) -> np.ndarray:
    """The `points` array (N, P, 3) of an npz, checked."""
    path = Path(path)
    # Header and sizes checked before allocation; any corruption is a PointliftDataError.
    points = read_npz(path, ["points"])["points"]
    if points.ndim != 3 or points.shape[2] != 3:
        raise PointliftDataError(path, f"'points' must have shape (N, P, 3), got {points.shape}")
    if points.shape[0] == 0 or points.shape[1] == 0:
        raise PointliftDataError(path, f"'points' is empty (shape {points.shape})")
    if not np.issubdtype(points.dtype, np.number):
        raise PointliftDataError(path, f"'points' must be numeric, got {points.dtype}")
    if not np.isfinite(points).all():
        raise PointliftDataError(path, "'points' contains NaN or infinite values")
    return points.astype(np.float32)


@torch.no_grad()
def embed_points(model: torch.nn.Module, points: np.ndarray, batch_size: int = 32,
                 device: str | torch.device = "cpu") -> np.ndarray:
    model.eval().to(device)
    rows = []
    for start in range(0, len(points), batch_size):
        batch = torch.from_numpy(points[start:start + batch_size]).to(device)
        rows.append(model.embed(batch).float().cpu().numpy())
    return np.concatenate(rows, 0)


def embed_file(checkpoint: str | Path, points_path: str | Path, out: str | Path,
               batch_size: int = 32, device: str | None = None) -> np.ndarray:
    """Embed every point set of `points_path` with the network of `checkpoint`; write (N, F) .npy."""
    if batch_size < 1:
        raise PointliftDataError(points_path, f"batch size must be >= 1, got {batch_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    state, meta = load_checkpoint(checkpoint)
    model = build_embedder(meta.get("model_spec"), source=str(checkpoint))
    # The embedder may be a part of the trained model (an encoder without its pretraining heads):
    # every weight it has must be in the checkpoint, extra checkpoint entries are ignored.
    missing = model.load_state_dict(state, strict=False).missing_keys
    missing = [k for k in missing if not k.startswith(excluded_prefixes(model))]
    if missing:
        raise PointliftDataError(checkpoint, f"checkpoint lacks weights the network needs: {missing[:5]}")
    features = embed_points(model, read_point_sets(points_path), batch_size, device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, features)
    os.replace(tmp, out)
    return features
