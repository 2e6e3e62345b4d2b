"""Shared test fixtures.

Tests that need the real data of ../shared use the `shared` fixture: it skips with a reason when
the folder is absent, and fails instead when POINTLIFT_REQUIRE_SHARED=1 (as CI sets).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("POINTLIFT_SHARED", REPO.parent / "shared"))


def require_shared(relative: str) -> Path:
    """Path of ../shared/<relative>; skip (or fail under POINTLIFT_REQUIRE_SHARED=1) if absent."""
    path = shared_root() / relative
    if not path.exists():
        message = f"needs {path} (the shared data folder), which is absent"
        if os.environ.get("POINTLIFT_REQUIRE_SHARED") == "1":
            pytest.fail(message + " but POINTLIFT_REQUIRE_SHARED=1")
        pytest.skip(message)
    return path


@pytest.fixture
def shared():
    """Call as shared('data/modelnet10_vox32.npz') to get a path inside ../shared."""
    return require_shared


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use small tensors: one intra-op thread avoids thread hand-off overhead on shared 2-core
    machines (measured: backbone tests 20 s with one thread vs 256 s with two under load)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
