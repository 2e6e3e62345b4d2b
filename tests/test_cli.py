"""The command-line contract: one-line errors with exit code 2, and the JSON a benchmark writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pointlift.cli import main
from pointlift.errors import PointliftDataError


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pointlift.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["bench", "nonexistent", "--out", "x.json"], "invalid choice"),
        (["bench", "sparse", "--preset", "huge", "--out", "x.json"], "invalid choice"),
        (["embed", "--checkpoint", "c", "--points", "missing.npz", "--out", "f.npy"], "missing.npz"),
        (["pretrain", "ppkt", "--config", "missing.yaml"], "missing.yaml"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, needle):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "content, problem",
    [
        (dict(points=np.zeros((2, 5, 4), np.float32)), "shape"),
        (dict(points=np.full((2, 5, 3), np.nan, np.float32)), "NaN"),
        (dict(other=np.zeros((2, 5, 3), np.float32)), "no key 'points'"),
        (None, "npz"),
    ],
)
def test_embed_rejects_bad_point_files(tmp_path, capsys, content, problem):
    from pointlift.tasks.embed import read_point_sets

    path = tmp_path / "bad.npz"
    if content is None:
        path.write_bytes(b"PK\x03\x04 truncated")
    else:
        np.savez(path, **content)
    with pytest.raises(PointliftDataError) as info:
        read_point_sets(path)
    assert "bad.npz" in str(info.value) and problem in str(info.value)
    # The CLI turns the same error into one line and exit code 2 (the checkpoint is read first,
    # so give it a missing one and check that it is named).
    code = main(["embed", "--checkpoint", str(tmp_path / "none"), "--points", str(path), "--out", str(tmp_path / "f.npy")])
    assert code == 2
    assert "none" in capsys.readouterr().err
