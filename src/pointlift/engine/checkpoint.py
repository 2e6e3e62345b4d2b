"""Checkpoints: `<path>.safetensors` (tensors) + `<path>.json` (everything else), written atomically.

safetensors keeps weights loadable without unpickling code; the JSON sidecar keeps the config,
version, step and optimiser bookkeeping readable by people. Model tensors sit at the top level of
the tensor file (so it is a plain state dict); optimiser/scheduler tensors sit under `optimizer/...`
and `scheduler/...` (model keys never contain "/").

Atomicity: both files are written to temporaries and moved into place with os.replace, tensors
first. The old tensor file is kept as `<path>.prev.safetensors` until the new sidecar is in place,
and both files carry the same random checkpoint id: whatever moment a crash hits, the sidecar on
disk finds a tensor file with its own id, so the previous checkpoint stays loadable. Temporaries a
crash left behind are removed by `clean_stale_files` (the trainer calls it at start; every save
calls it when done).

Integrity (format 2): the sidecar holds a SHA-256 of the tensors (names, dtypes, shapes, bytes) and
the tensor file's header holds a SHA-256 of the sidecar's exact text, plus the step. Loading checks
both, so flipped tensor bytes and an edited sidecar (say its `step`) are refused, not trained on.
A write that fails (read-only or full disk) raises PointliftDataError and leaves the previous
checkpoint, if there is one, as it was (the message says which).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import pointlift
from pointlift.engine.seed import get_rng_state
from pointlift.errors import PointliftDataError

FORMAT = "pointlift-checkpoint"
FORMAT_VERSION = 2  # 2: content hashes (format 1 files still load, unchecked, with a warning)
_STATE_PREFIXES = ("optimizer", "scheduler")

_replace = os.replace  # module-level so tests can simulate a crash between the two writes


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(tensor file, sidecar) for a checkpoint path given with or without its suffix."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _previous_tensor_file(tensor_path: Path) -> Path:
    return tensor_path.with_name(tensor_path.name[: -len(".safetensors")] + ".prev.safetensors")


# -- nested state dicts <-> (JSON skeleton, flat tensors) -------------------------------------


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in `obj` by a reference, collecting the tensors under dotted keys."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _split(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: _join(v, tensors) for k, v in obj["__items__"]}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


# -- model state helpers -----------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def excluded_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes the model asks not to checkpoint (e.g. a frozen 2D teacher)."""
    return tuple(getattr(unwrap_model(model), "checkpoint_exclude", ()) or ())


def model_state_for_checkpoint(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the `checkpoint_exclude` prefixes."""
    skip = excluded_prefixes(model)
    state = unwrap_model(model).state_dict()
    return {k: v for k, v in state.items() if not any(k.startswith(p) for p in skip)}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path = "<state>") -> None:
    """Load `state` strictly, except that keys under `checkpoint_exclude` may be missing."""
    skip = excluded_prefixes(model)
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in skip)}
    result = unwrap_model(model).load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not any(k.startswith(p) for p in skip)]
    if missing or result.unexpected_keys:
        raise PointliftDataError(source, f"checkpoint does not match the model: missing keys "
                                         f"{missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")


# -- save / load -------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, model_state: dict[str, torch.Tensor], optimizer=None, scheduler=None,
                    config: Any = None, step: int = 0, extra: dict | None = None,
                    model_spec: dict | None = None, rng_states: Any = None) -> Path:
    """Write `<path>.safetensors` + `<path>.json` atomically; returns the tensor file's path.

    `optimizer`/`scheduler`: objects with `state_dict()` (or state dicts). `config`, `extra`,
    `model_spec`: JSON-safe. `rng_states`: defaults to this process's random states.
    """
    from pointlift.engine.config import config_to_dict

    tensor_path, sidecar_path = checkpoint_files(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_id = uuid.uuid4().hex

    tensors: dict[str, torch.Tensor] = {}
    for key, value in model_state.items():
        if "/" in key:
            raise ValueError(f"model state key {key!r} contains '/', reserved for optimiser state")
        tensors[key] = value.detach().cpu().contiguous().clone()
    skeletons = {}
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None:
            state = obj.state_dict() if hasattr(obj, "state_dict") else obj
            skeletons[name] = _split(state, name, tensors)

    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "checkpoint_id": checkpoint_id,
        "tensor_sha256": tensor_digest(tensors),
        "pointlift_version": pointlift.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": int(step),
        "config": config_to_dict(config),
        "model_spec": model_spec,
        "model_keys": list(model_state.keys()),
        "optimizer": skeletons.get("optimizer"),
        "scheduler": skeletons.get("scheduler"),
        "rng": rng_states if rng_states is not None else get_rng_state(),
        "extra": extra or {},
    }
    sidecar_text = json.dumps(sidecar, indent=1)  # fail before touching the disk if not JSON-safe

    header = {"checkpoint_id": checkpoint_id, "format": FORMAT, "step": str(int(step)),
              "sidecar_sha256": hashlib.sha256(sidecar_text.encode()).hexdigest()}
    suffix = f"{_TMP_MARK}{os.getpid()}-{checkpoint_id[:8]}"
    had_previous = _sidecar_id(sidecar_path) is not None  # what a failed write can honestly promise
    tensor_tmp = tensor_path.with_name(tensor_path.name + suffix)
    sidecar_tmp = sidecar_path.with_name(sidecar_path.name + suffix)
    try:
        try:
            save_file(tensors, str(tensor_tmp), metadata=header)
        except Exception as error:  # safetensors reports a full disk as its own error type, not OSError
            if isinstance(error, OSError):
                raise
            raise OSError(str(error)) from None
        _fsync_file(tensor_tmp)
        sidecar_tmp.write_text(sidecar_text)
        _fsync_file(sidecar_tmp)
        previous = _previous_tensor_file(tensor_path)
        if tensor_path.exists() and _tensor_file_id(tensor_path) == _sidecar_id(sidecar_path):
            _replace(tensor_path, previous)  # the old sidecar still finds its tensors here
        # (otherwise an earlier save crashed midway and the old sidecar's tensors already sit
        # in `previous`, or there is no valid old checkpoint at all: leave `previous` alone)
        _replace(tensor_tmp, tensor_path)
        _replace(sidecar_tmp, sidecar_path)  # the commit point
        _fsync_dir(tensor_path.parent)
        previous.unlink(missing_ok=True)
    except OSError as error:
        kept = "the previous checkpoint is kept" if had_previous else "there is no earlier checkpoint"
        raise PointliftDataError(tensor_path, f"cannot write the checkpoint ({error.strerror or error}); {kept}") \
            from None
    finally:
        for tmp in (tensor_tmp, sidecar_tmp):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    clean_stale_files(tensor_path)
    return tensor_path


_TMP_MARK = ".tmp-"
_SAFETENSORS_TMP = re.compile(r"^\.tmp[A-Za-z0-9_]{6,}$")  # safetensors' own hidden temporary


def clean_stale_files(path: str | Path) -> list[Path]:
    """Remove what interrupted saves of checkpoint `path` left behind: our `*.tmp-PID-ID`
    temporaries, safetensors' hidden `.tmpXXXXXX` files in the checkpoint folder, and a
    `.prev.safetensors` the sidecar no longer needs. Returns the removed paths.

    Call it only where no other process is saving into the same folder (the trainer: rank 0)."""
    tensor_path, sidecar_path = checkpoint_files(path)
    folder = tensor_path.parent
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    stems = (tensor_path.name + _TMP_MARK, sidecar_path.name + _TMP_MARK)
    for entry in folder.iterdir():
        if entry.is_file() and (entry.name.startswith(stems) or _SAFETENSORS_TMP.match(entry.name)):
            removed.append(entry)
    previous = _previous_tensor_file(tensor_path)
    if previous.exists() and tensor_path.exists() and _sidecar_id(sidecar_path) is not None \
            and _tensor_file_id(tensor_path) == _sidecar_id(sidecar_path):
        removed.append(previous)  # the sidecar's own tensors are in place: `.prev` is stale
    for entry in removed:
        try:
            entry.unlink(missing_ok=True)
        except OSError:
            pass
    return removed


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _tensor_file_header(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:
        return {}


def _tensor_file_id(path: Path) -> str | None:
    return _tensor_file_header(path).get("checkpoint_id")


def _sidecar_id(sidecar_path: Path) -> str | None:
    try:
        return json.loads(sidecar_path.read_text()).get("checkpoint_id")
    except (OSError, ValueError, AttributeError):
        return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint path (with or without suffix), or a run directory (its `checkpoints/last`)."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints" / "last.json").is_file():
        return path / "checkpoints" / "last"
    return path


def read_checkpoint_meta(path: str | Path) -> dict:
    """The sidecar of a checkpoint, checked (without loading any tensor)."""
    _, sidecar_path = checkpoint_files(path)
    if not sidecar_path.is_file():
        raise PointliftDataError(sidecar_path, "checkpoint sidecar not found")
    try:
        meta = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PointliftDataError(sidecar_path, f"corrupt checkpoint sidecar ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "checkpoint_id" not in meta:
        raise PointliftDataError(sidecar_path, "not a pointlift checkpoint sidecar")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise PointliftDataError(sidecar_path, f"checkpoint format {meta.get('format_version')!r} is not one this "
                                               f"pointlift ({pointlift.__version__}) reads")
    return meta


def checkpoint_kind(meta: dict) -> str | None:
    """The model kind a checkpoint's sidecar declares (`model_spec.kind`), None when it declares none."""
    return (meta.get("model_spec") or {}).get("kind")


def check_kind(path: str | Path, meta: dict, expect_kind: str | tuple[str, ...], hint: str = "") -> str:
    """The checkpoint's kind, which must be `expect_kind` (or one of them): else one PointliftDataError that
    names the file, the kind found and the kind needed (`hint` says where such a checkpoint goes instead)."""
    expected = (expect_kind,) if isinstance(expect_kind, str) else tuple(expect_kind)
    kind = checkpoint_kind(meta)
    if kind not in expected:
        wanted = " or ".join(repr(k) for k in expected)
        raise PointliftDataError(path, f"is a {kind or 'unknown'!r} checkpoint, not a {wanted} one"
                                       + (f": {hint}" if hint else ""))
    return kind


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expect_kind: str | tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """(model state dict, meta). meta is the sidecar, with `optimizer`/`scheduler` rebuilt as
    state dicts ready for `load_state_dict` (or None when not saved). `expect_kind`: the model kind(s)
    the caller can use; another kind is refused (see `check_kind`) before any tensor is read."""
    tensor_path, sidecar_path = checkpoint_files(path)
    meta = read_checkpoint_meta(path)
    if expect_kind is not None:
        check_kind(path, meta, expect_kind)
    source = None
    for candidate in (tensor_path, _previous_tensor_file(tensor_path)):
        if candidate.is_file() and _tensor_file_id(candidate) == meta["checkpoint_id"]:
            source = candidate
            break
    if source is None:
        problem = "tensor file missing" if not tensor_path.exists() else \
            "tensor file is corrupt or does not belong to this sidecar"
        raise PointliftDataError(tensor_path, f"{problem} (checkpoint {sidecar_path.name})")
    checked = meta["format_version"] >= 2
    if checked:
        header = _tensor_file_header(source)
        if header.get("sidecar_sha256") != hashlib.sha256(sidecar_path.read_bytes()).hexdigest():
            raise PointliftDataError(sidecar_path, f"sidecar does not match its tensor file {source.name} "
                                                   "(edited or damaged); refusing to load it")
        if header.get("step") != str(meta.get("step")):
            raise PointliftDataError(sidecar_path, f"sidecar step {meta.get('step')} differs from the tensor "
                                                   f"file's step {header.get('step')}")
    else:
        warnings.warn(f"{sidecar_path}: checkpoint format 1 has no content hash; loaded unchecked")
    try:
        tensors = load_file(str(source), device="cpu")
    except Exception as error:  # safetensors raises its own error types for truncated files
        raise PointliftDataError(source, f"corrupt checkpoint tensors ({error})") from None
    if checked and tensor_digest(tensors) != meta.get("tensor_sha256"):
        raise PointliftDataError(source, "tensor bytes do not match the checkpoint's content hash (corrupt file)")
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    model_state = {k: v for k, v in tensors.items() if "/" not in k}
    missing = [k for k in meta.get("model_keys", []) if k not in model_state]
    if missing:
        raise PointliftDataError(source, f"checkpoint lacks model tensors {missing[:5]}")
    extra = [k for k in model_state if k not in set(meta.get("model_keys", []))]
    if extra:
        raise PointliftDataError(source, f"tensor file has model tensors the sidecar does not list: {extra[:5]}")
    for name in _STATE_PREFIXES:
        if meta.get(name) is not None:
            try:
                meta[name] = _join(meta[name], tensors)
            except KeyError as error:
                raise PointliftDataError(source, f"checkpoint lacks {name} tensor {error}") from None
    return model_state, meta


def load_init_checkpoint(model: nn.Module, path: str | Path, kind: str, reinit: tuple[str, ...] = ()) -> int:
    """Initialise `model` from the checkpoint at `path`, which must be a `kind` checkpoint whose tensors
    fit the model; only keys under the `reinit` prefixes (say a new classifier head) may differ in
    shape or be absent, and keep their fresh values. Anything else - another method's checkpoint, or
    another architecture - is a PointliftDataError naming both sides. Returns the number of tensors loaded."""
    state, meta = load_checkpoint(path)
    spec = meta.get("model_spec") or {}
    if spec.get("kind") != kind:
        raise PointliftDataError(path, f"is a {spec.get('kind') or 'unknown'!r} checkpoint, but a {kind!r} "
                                       f"model is being initialised from it")
    own = model_state_for_checkpoint(model)
    flexible = lambda key: any(key.startswith(p) for p in reinit)  # noqa: E731
    problems = []
    for key, value in own.items():
        if key not in state:
            if not flexible(key):
                problems.append(f"{key} missing")
        elif state[key].shape != value.shape and not flexible(key):
            problems.append(f"{key} is {tuple(state[key].shape)} in the checkpoint, {tuple(value.shape)} in the model")
    problems += [f"{key} unexpected" for key in state if key not in own and not flexible(key)]
    if problems:
        described = spec.get("config") or {}
        raise PointliftDataError(path, f"{kind} checkpoint of another shape ({json.dumps(described)[:200]}) "
                                       f"does not fit the model: {'; '.join(problems[:3])}"
                                       f"{f' (+{len(problems) - 3} more)' if len(problems) > 3 else ''}")
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    unwrap_model(model).load_state_dict(usable, strict=False)
    return len(usable)
