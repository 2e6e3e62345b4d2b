"""Typed configuration: nested dataclasses checked key by key when they are loaded.

A typo in a YAML file should fail at load time with the file and the dotted key, not an hour
into a run. `load_config` walks the dataclass type hints and checks every value; dataclasses
check their own value ranges in `__post_init__` by raising `ConfigValueError(field, problem)`.

Command-line overrides (`train.max_steps=4`) are merged into the file's mapping before that check, so
they are typed and validated exactly like the file. Input paths (fields typed `InputPath`/`InputPathStr`)
written in a file are relative to the file's folder, those of an override to the current directory (a
dict config's stay relative to the current directory); outputs (`run_root`, cache folders) are always
relative to the current directory. Each field's meaning is the comment on its line (or the comment lines
just above it): `pointlift config show` and docs/CONFIG.md are generated from them (config_reference.py).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, TypeVar, Union

import yaml

from pointlift.errors import PointliftConfigError

T = TypeVar("T")

_INPUT = "input path"
# A file or folder the run reads: relative values are resolved against the config file's folder.
InputPath = Annotated[Path, _INPUT]
InputPathStr = Annotated[str, _INPUT]
# Values of path keys that name a choice, not a file (e.g. `weights: random`).
PATH_WORDS = ("random",)


class ConfigValueError(PointliftConfigError):
    """A value out of range, raised by a dataclass's `__post_init__`; `key` names the field."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


def require(condition: bool, key: str, problem: str) -> None:
    """Raise ConfigValueError(key, problem) unless condition holds (for `__post_init__`)."""
    if not condition:
        raise ConfigValueError(key, problem)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule shared by every method."""

    name: Literal["adamw", "sgd"] = "adamw"  # the optimiser
    lr: float = 1e-3  # peak learning rate (after warm-up)
    weight_decay: float = 0.05  # decoupled (AdamW) or L2 (SGD) weight decay
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps
    warmup_epochs: float = 0.0  # warm-up in epochs instead; converted to steps once the epoch length is known
    schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up: cosine decay to min_lr, or constant
    min_lr: float = 0.0  # the cosine schedule's final learning rate

    def __post_init__(self):
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(all(0 <= b < 1 for b in self.betas), "betas", f"must be in [0, 1), got {self.betas}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        require(not (self.warmup_steps > 0 and self.warmup_epochs > 0), "warmup_epochs",
                "set either warmup_steps or warmup_epochs, not both")
        require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")


@dataclass
class TrainConfig:
    """The training loop's settings. `batch_size` is global: each of N processes gets batch_size / N."""

    epochs: Optional[int] = 1  # passes over the training set; null = the run's length is max_steps
    max_steps: Optional[int] = None  # when set, overrides epochs: train exactly this many optimiser steps
    batch_size: int = 32  # global batch (all processes together)
    num_workers: int = 0  # DataLoader worker processes per training process
    seed: int = 0  # seeds initialisation, shuffling and every per-sample random draw
    amp: bool = False  # mixed precision (CUDA only)
    grad_clip: Optional[float] = None  # clip the gradient's global norm to this (null = no clipping)
    checkpoint_every: int = 1000  # optimiser steps; 0 = only at the end
    log_every: int = 10  # optimiser steps between rows of metrics.csv
    max_nonfinite: int = 10  # consecutive non-finite losses before a clean stop
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and learning-rate schedule

    def __post_init__(self):
        require(self.epochs is not None or self.max_steps is not None, "epochs",
                "null needs train.max_steps (one of the two sets the run's length)")
        require(self.epochs is None or self.epochs >= 1, "epochs", f"must be >= 1 or null, got {self.epochs}")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be > 0, got {self.grad_clip}")
        require(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        require(self.max_nonfinite >= 1, "max_nonfinite", f"must be >= 1, got {self.max_nonfinite}")


# ----------------------------------------------------------------------------------------------
# Loading and checking


class _KeyError(Exception):
    """Internal: a problem at a dotted key, turned into PointliftConfigError at the top."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem


def load_config(source: str | Path | dict, cls: type[T], overrides: Sequence[str] = ()) -> T:
    """Build a `cls` dataclass from a YAML file or a dict, checking every key, type and value.

    `overrides` are command-line items `key.sub=value` (value parsed as YAML), set in the mapping before
    the check. Errors name the file (or "<dict>", or "command line" for an override's key) and the dotted
    key, e.g. `exp.yaml: optim.lr: expected float`. Relative input paths of a file are made absolute
    against its folder, those of overrides against the current directory (see `check_input_paths`).
    """
    if isinstance(source, dict):
        origin, data, base = "<dict>", source, None
    else:
        origin = str(source)
        path = Path(source)
        if not path.is_file():
            raise PointliftConfigError(f"{origin}: config file not found")
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:  # a non-UTF-8 file is not YAML either
            raise PointliftConfigError(f"{origin}: not valid YAML ({error})") from None
        data = {} if data is None else data
        base = path.resolve().parent
    given = {}
    if overrides and isinstance(data, dict):  # a file that is not a mapping fails below, naming the file
        data, given = apply_overrides(data, overrides)
    context = _Context(base, given)
    try:
        config = _build_dataclass(cls, data, "", context)
    except _KeyError as error:
        key = f"{error.key}: " if error.key else ""
        item = context.override_for(error.key)
        if item is not None:
            raise PointliftConfigError(f"command line: {key}{error.problem} (from the override {item!r})") from None
        raise PointliftConfigError(f"{origin}: {key}{error.problem}") from None
    object.__setattr__(config, "_input_paths", context.resolved)
    return config


def apply_overrides(data: Any, overrides: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """(a copy of `data` with each `key.sub=value` set, {dotted key: the item as given}). Values are YAML
    scalars or lists (`4`, `null`, `[1, 2]`); missing mappings on the way are created."""
    if not isinstance(data, dict):
        raise PointliftConfigError(f"command line: cannot apply overrides: the config is a "
                                   f"{type(data).__name__}, not a mapping")
    data, given = copy.deepcopy(data), {}
    for item in overrides:
        key, equals, text = item.partition("=")
        parts = key.split(".")
        if not equals or not all(parts):
            raise PointliftConfigError(f"command line: {item!r}: expected KEY=VALUE with a dotted key, "
                                       "e.g. train.max_steps=4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PointliftConfigError(f"command line: {item!r}: value is not valid YAML ({error})") from None
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise PointliftConfigError(f"command line: {item!r}: {'.'.join(parts[:depth + 1])} is {child!r}, "
                                           f"not a mapping, so it has no key {parts[depth + 1]!r}")
            node = child
        node[parts[-1]] = value
        given[key] = item
    return data, given


@dataclasses.dataclass
class _Context:
    """Where relative input paths are resolved: `base` (the config file's folder; None for a dict config)
    or, for keys set on the command line (`given`), the current directory. `resolved` records each."""

    base: Optional[Path]
    given: dict
    resolved: dict = dataclasses.field(default_factory=dict)  # dotted key -> (as written, against, absolute)

    def override_for(self, key: str) -> Optional[str]:
        """The command-line item that set `key` (or a mapping above it, or a key below it), if any."""
        for given, item in self.given.items():
            if key == given or key.startswith((given + ".", given + "[")) or given.startswith(key + "."):
                return item
        return None

    def resolve(self, key: str, value: Any) -> Any:
        if isinstance(value, (list, tuple)):  # a list of input paths: each resolved the same way
            return type(value)(self.resolve(f"{key}[{index}]", item) for index, item in enumerate(value))
        if value is None or str(value) in ("", *PATH_WORDS):
            return value
        expanded = Path(str(value)).expanduser()
        if expanded.is_absolute():
            return value
        if self.override_for(key) is not None:
            against = f"the current directory {Path.cwd()}"
            absolute = Path(os.path.abspath(expanded))
        elif self.base is not None:
            against = f"the config file's folder {self.base}"
            absolute = Path(os.path.abspath(self.base / expanded))
        else:
            return value  # a dict config: relative to the current directory, as written
        self.resolved[key] = (str(value), against, absolute)
        return absolute if isinstance(value, Path) else str(absolute)


def check_input_paths(config: Any) -> None:
    """Raise for a relative input path of the file or the command line that does not exist, saying what
    it was resolved against (called before a run directory is made; loading alone does not need data)."""
    for key, (written, against, absolute) in getattr(config, "_input_paths", {}).items():
        if not absolute.exists():
            raise PointliftConfigError(f"{key}: {written} not found (relative paths are resolved against "
                                       f"{against}: {absolute})")


def _is_input_path(hint: Any) -> bool:
    if typing.get_origin(hint) is Annotated:
        return _INPUT in hint.__metadata__
    return any(_is_input_path(arg) for arg in typing.get_args(hint))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build_dataclass(cls: type, data: Any, prefix: str, context: Optional[_Context] = None):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise _KeyError(prefix, f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            if RENAMED_KEYS.get(key) in fields:
                raise _KeyError(_join(prefix, str(key)),
                                f"was renamed {RENAMED_KEYS[key]!r} (one name in every config)")
            known = ", ".join(sorted(fields))
            raise _KeyError(_join(prefix, str(key)), f"unknown key (known keys: {known})")
    paths = {name for name, hint in typing.get_type_hints(cls, include_extras=True).items() if _is_input_path(hint)}
    values = {}
    for name, spec in fields.items():
        if name in data:
            key = _join(prefix, name)
            values[name] = _convert(hints[name], data[name], key, context)
            if name in paths and context is not None:
                values[name] = context.resolve(key, values[name])
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise _KeyError(_join(prefix, name), "missing required key")
    try:
        return cls(**values)
    except ConfigValueError as error:
        raise _KeyError(_join(prefix, error.key), error.problem) from None
    except (TypeError, ValueError) as error:
        raise _KeyError(prefix, str(error)) from None


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# Keys that older configs spelled otherwise: a clear error naming the new key, not "unknown key".
RENAMED_KEYS = {"runs_root": "run_root", "source": "format"}


# Scalar config types: (YAML values accepted, conversion, name in messages). A bool is never an int/float here.
_SCALARS = {
    bool: (bool, lambda v: v, "bool"),
    int: (int, lambda v: v, "int"),
    float: ((int, float), float, "float"),
    str: (str, lambda v: v, "str"),
    Path: ((str, Path), Path, "a path"),
}


def _convert(tp: Any, value: Any, key: str, context: Optional[_Context] = None):
    """Check `value` against type `tp` and return it in that type (lists become tuples etc.)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key, context)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [option for option in args if option is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own, more precise, message
            return _convert(options[0], value, key, context)
        for option in options:
            try:
                return _convert(option, value, key)
            except _KeyError:
                pass
        raise _KeyError(key, f"expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if any(type(value) is type(option) and value == option for option in args):
            return value
        raise _KeyError(key, f"must be one of {list(args)}, got {value!r}")
    if tp in _SCALARS:
        accepts, convert, name = _SCALARS[tp]
        if isinstance(value, accepts) and (tp is bool or not isinstance(value, bool)):
            return convert(value)
        raise _KeyError(key, f"expected {name}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _KeyError(key, f"expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _KeyError(key, f"expected {len(args)} items, got {len(value)}")
            items = [_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_type = args[0] if args else Any
            items = [_convert(item_type, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _KeyError(key, f"expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {_convert(key_type, k, key): _convert(value_type, v, _join(key, str(k)))
                for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _KeyError(key, f"expected {_describe(tp)}, got {value!r}")
    raise _KeyError(key, f"unsupported type annotation {tp!r}")


# ----------------------------------------------------------------------------------------------
# Saving


def config_to_dict(config: Any) -> Any:
    """A dataclass (or nested containers of them) as plain YAML/JSON-safe dicts and lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


def save_config(config: Any, path: str | Path) -> Path:
    """Write a config (dataclass or dict) as YAML, keys in declaration order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
