"""Which implementation runs the sparse convolutions: "pure" (default), "spconv" or "compiled".

"pure" is PyTorch only and runs wherever torch runs. "spconv" is used where it is installed and
selected; operations it lacks (grouped convolutions, sites it would place differently) fall back
to "pure" transparently. "compiled" is pointlift's own fused C++ kernels for the CPU, built on first
use where a C++ compiler is present (`pointlift.sparse.compiled`); layers they do not cover run on
"pure". Modules take `backend=None` to follow the process-wide default.
"""

from __future__ import annotations

import contextlib
import importlib.util

from pointlift.errors import PointliftConfigError

BACKENDS = ("pure", "spconv", "compiled")
_default = "pure"


def check_backend_name(name: str) -> None:
    if name not in BACKENDS:
        raise PointliftConfigError(f"unknown sparse backend {name!r}; choose from {BACKENDS}")


def spconv_available() -> bool:
    return importlib.util.find_spec("spconv") is not None


SPCONV_MISSING = (
    "sparse backend 'spconv' selected but spconv is not installed: `pip install spconv` (CPU) or "
    "spconv-cu12x (CUDA), or use the default backend 'pure'"
)


def require_spconv() -> None:
    """One clear line (PointliftConfigError) instead of an ImportError traceback."""
    if not spconv_available():
        raise PointliftConfigError(SPCONV_MISSING)


def require(name: str) -> None:
    """Check that backend `name` can run here (building the compiled kernels on first use): one clear
    PointliftConfigError where it cannot, when it is chosen rather than deep in a run."""
    check_backend_name(name)
    if name == "spconv":
        require_spconv()
    elif name == "compiled":
        from pointlift.sparse.compiled import kernels

        kernels()


def set_backend(name: str) -> None:
    """Select the process-wide default backend."""
    global _default
    require(name)
    _default = name


def get_backend() -> str:
    return _default


def compiled_integers_on(tensor) -> bool:
    """Whether the compiled kernels do the integer work for this tensor (voxelisation, downsampling, kernel maps):
    where they are the process-wide backend and the tensor is on the CPU. The integers are the pure path's."""
    return _default == "compiled" and tensor.device.type == "cpu"


def resolve(module_choice: str | None) -> str:
    return _default if module_choice is None else module_choice


@contextlib.contextmanager
def use_backend(name: str):
    """Temporarily select a default backend: `with use_backend("spconv"): model(x)`."""
    previous = _default
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
