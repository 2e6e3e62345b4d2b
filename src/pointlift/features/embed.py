"""`pointlift embed`: one global feature row per point set, from any method's checkpoint.

Inputs (`read_inputs`): an npz with `points (N, P, 3)` (embedded as stored, the original format),
one point file, a folder of point files, or any shape set of `pointlift.data.shape_sets`. Files,
folders and shape sets become network input through the shape set's own resampling and
normalisation (`prepare_point_sets`), the same as at training and evaluation.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pointlift.data.guard import _npy_header, read_npz
from pointlift.data.shape_sets import (POINT_SUFFIXES, ShapeSetConfig, detect_format, list_point_files,
                                       load_named_points,
                                       prepare_point_sets)
from pointlift.engine.checkpoint import excluded_prefixes, load_checkpoint, resolve_checkpoint
from pointlift.engine.rundir import write_json
from pointlift.errors import PointliftDataError
from pointlift.registry import build_embedder

DEFAULT_NUM_POINTS = 1024


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


# ------------------------------------------------------------------------------------------ checkpoints


def load_embedder(checkpoint: str | Path, untrained: bool = False, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """(network with `.embed(points (B, P, 3)) -> (B, F)`, checkpoint sidecar).

    `untrained=True` gives the same architecture freshly initialised (seeded), not loaded: the
    counterpart a pretrained network must beat."""
    checkpoint = resolve_checkpoint(checkpoint)
    state, meta = load_checkpoint(checkpoint)
    torch.manual_seed(seed)
    model = build_embedder(meta.get("model_spec"), source=str(checkpoint))
    if untrained:
        return model.eval(), meta
    # The embedder may be a part of the trained model (an encoder without its pretraining heads):
    # every weight it has must be in the checkpoint, extra checkpoint entries are ignored.
    missing = model.load_state_dict(state, strict=False).missing_keys
    missing = [k for k in missing if not k.startswith(excluded_prefixes(model))]
    if missing:
        raise PointliftDataError(checkpoint, f"checkpoint lacks weights the network needs: {missing[:5]}")
    return model.eval(), meta


def checkpoint_num_points(meta: dict) -> int:
    """The point count the checkpoint's network was trained with (its data config, else its model's)."""
    config = meta.get("config") or {}
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, dict) and isinstance(data.get("num_points"), int):
        return data["num_points"]
    spec = (meta.get("model_spec") or {}).get("config") or {}
    model = spec.get("model") if isinstance(spec, dict) else None
    if isinstance(model, dict) and isinstance(model.get("num_points"), int):
        return model["num_points"]
    return DEFAULT_NUM_POINTS


@torch.no_grad()
def embed_points(model: torch.nn.Module, points: np.ndarray, batch_size: int = 32,
                 device: str | torch.device = "cpu") -> np.ndarray:
    from pointlift.progress import bar

    model.eval().to(device)
    rows = []
    for start in bar(range(0, len(points), batch_size), desc="embed", unit="batch"):
        batch = torch.from_numpy(np.ascontiguousarray(points[start:start + batch_size])).to(device)
        rows.append(model.embed(batch).float().cpu().numpy())
    return np.concatenate(rows, 0)


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class EmbedInput:
    """Point sets ready for a network, and what they are."""

    points: np.ndarray  # (N, P, 3) float32
    kind: str  # "npz", "file", "folder" or a shape-set format
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    names: list[str] = field(default_factory=list)  # one per row: its file (relative to the folder) or "<split>/<index>"
    data: dict | None = None  # the shape-set config used (None for a stored npz)


def _npz_keys(path: Path) -> dict[str, int]:
    """{key: ndim} of an npz's arrays ({} when unreadable: the reader that claims it reports why)."""
    keys = {}
    try:  # headers only: a corrupt or huge member must not be loaded here
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as stream:
                        keys[info.filename[:-4]] = len(_npy_header(path, stream, info.filename)[0])
    except Exception:  # noqa: BLE001 - the reader that claims the file reports why
        return {}
    return keys


def read_inputs(path: str | Path, data: ShapeSetConfig, split: str = "all") -> EmbedInput:
    """Whatever `path` is (see the module docstring) as point sets, prepared as `data` says."""
    from dataclasses import asdict, replace

    from pointlift.data.points import read_point_file

    path = Path(path)
    if not path.exists():
        raise PointliftDataError(path, "no such file or directory")
    if data.format == "auto" and path.is_file() and path.suffix.lower() != ".h5":
        keys = _npz_keys(path) if path.suffix.lower() == ".npz" else {}
        if path.suffix.lower() == ".npz" and not {"X_train", "X_test"} & set(keys) and keys.get("points") != 2:
            points = read_point_sets(path)  # (N, P, 3) under "points"; anything else is reported here
            return EmbedInput(points, "npz", names=[f"{path.name}[{i}]" for i in range(len(points))])
        if not {"X_train", "X_test"} & set(keys):
            if not path.name.lower().endswith(POINT_SUFFIXES):
                raise PointliftDataError(path, f"not a point file ({', '.join(POINT_SUFFIXES)}) nor a shape set")
            cloud = read_point_file(path, data.columns, num_samples=data.num_points, seed=data.seed).xyz
            return EmbedInput(prepare_point_sets([cloud], data.num_points, data.seed, data.normalize), "file",
                              names=[path.name], data=asdict(data))
    if data.format == "auto" and path.is_dir() and list_point_files(path):
        files = list_point_files(path)
        clouds = [read_point_file(f, data.columns, num_samples=data.num_points, seed=data.seed).xyz for f in files]
        return EmbedInput(prepare_point_sets(clouds, data.num_points, data.seed, data.normalize), "folder",
                          names=[f.name for f in files], data=asdict(data))
    data = replace(data, path=str(path))
    fmt = detect_format(path) if data.format == "auto" else data.format
    splits = ("train", "test") if split == "all" else (split,)
    points, labels, names, class_names = [], [], [], None
    for which in splits:
        split_points, split_labels, class_names, split_names = load_named_points(data, which)
        points.append(split_points)
        labels.append(split_labels)
        names += split_names
    return EmbedInput(np.concatenate(points), fmt, np.concatenate(labels), class_names, names,
                      {**asdict(data), "format": fmt, "split": split})


def embed_file(checkpoint: str | Path, points_path: str | Path, out: str | Path, batch_size: int = 32,
               device: str | None = None, data: ShapeSetConfig | None = None, split: str = "all") -> np.ndarray:
    """Embed every point set of `points_path` with the network of `checkpoint`; write (N, F) .npy,
    plus `<out>.json` (e.g. feats.npy.json: each row's file, the checkpoint, the data settings) and, when the
    input has labels, `<out without .npy>.labels.npy` (feats.labels.npy)."""
    if batch_size < 1:
        raise PointliftDataError(points_path, f"batch size must be >= 1, got {batch_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_embedder(checkpoint)
    if data is None:
        data = ShapeSetConfig(num_points=checkpoint_num_points(meta))
    inputs = read_inputs(points_path, data, split)
    features = embed_points(model, inputs.points, batch_size, device)
    out = Path(out)
    _save_npy(out, features)
    stem = out.with_suffix("")
    if inputs.labels is not None:
        _save_npy(stem.with_name(stem.name + ".labels.npy"), inputs.labels)
    record = {"checkpoint": str(checkpoint), "kind": (meta.get("model_spec") or {}).get("kind"),
              "input": str(points_path), "input_kind": inputs.kind, "data": inputs.data,
              "rows": inputs.names, "class_names": inputs.class_names, "feature_dim": int(features.shape[1])}
    sidecar = out.with_name(out.name + ".json")
    write_json(sidecar, record, indent=1)
    return features


def _save_npy(path: Path, array: np.ndarray) -> None:
    """`array` as .npy at `path`, atomically (the engine's `atomic_file`: a temporary of this process's own)."""
    from pointlift.engine.rundir import atomic_file

    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)
