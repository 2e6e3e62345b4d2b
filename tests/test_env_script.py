"""The set-up scripts keep the README's promises: the Python `requires-python` states is the one CI
runs and with-env.sh checks, and `pointlift` works on PATH after `source scripts/activate`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "requirements_from_pyproject.py"
PYPROJECT = ROOT / "pyproject.toml"


def _oldest_python() -> tuple[int, int]:
    spec = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    found = re.fullmatch(r">=(\d+)\.(\d+)", spec)
    assert found, f"requires-python {spec!r}: this test understands '>=X.Y' only"
    return int(found[1]), int(found[2])


def test_the_promised_python_is_the_one_tested():
    # CI runs this suite on Python 3.11 (no older interpreter is obtainable offline to test one), so the
    # promise starts there; the README and with-env.sh say the same.
    assert sys.version_info[:2] >= _oldest_python() == (3, 11)
    major, minor = _oldest_python()
    readme = (ROOT / "README.md").read_text()
    assert f"Python ≥ {major}.{minor}" in readme
    assert f"sys.version_info < ({major}, {minor})" in (ROOT / "scripts" / "with-env.sh").read_text()


def test_with_env_refuses_an_older_python_in_one_line(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/usr/bin/env bash\n[ \"$1\" = --version ] && echo 'Python 3.9.2' && exit 0\nexit 1\n")
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "with-env.sh"), "true"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=str(fake), POINTLIFT_VENV=str(tmp_path / "venv")), timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "needs Python >= 3.11" in out.stderr and "3.9.2" in out.stderr
    assert not (tmp_path / "venv").exists()


def test_requirements_are_the_pyproject_dependencies_and_test_extra():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    out = subprocess.run([sys.executable, str(SCRIPT), str(PYPROJECT), "test"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == project["dependencies"] + project["optional-dependencies"]["test"]


def pointlift_version() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from pointlift import __version__
    finally:
        sys.path.pop(0)
    return __version__


def _clean_env(tmp_path) -> dict:
    """A shell as a new user has it: empty HOME, no PYTHONPATH, the environment this suite runs in (so
    nothing is rebuilt) named by POINTLIFT_VENV."""
    venv = Path(sys.prefix)
    return {"HOME": str(tmp_path / "home"), "PATH": "/usr/local/bin:/usr/bin:/bin", "POINTLIFT_VENV": str(venv),
            "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}


def test_pointlift_on_path_after_source_activate(tmp_path):
    (tmp_path / "home").mkdir()
    out = subprocess.run(["bash", "-c", f"cd {tmp_path} && source {ROOT}/scripts/activate && command -v pointlift "
                          "&& pointlift --version && python -c 'import pointlift; print(pointlift.__file__)'"],
                         capture_output=True, text=True, env=_clean_env(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == str(Path(sys.prefix) / "bin" / "pointlift")
    assert lines[1:3] == ["pointlift", pointlift_version()]
    assert lines[-1] == str(ROOT / "src" / "pointlift" / "__init__.py")  # this checkout's code


def test_the_environments_own_entry_point_says_how_to_reach_a_checkout(tmp_path):
    (tmp_path / "home").mkdir()
    wrapper = Path(sys.prefix) / "bin" / "pointlift"
    out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, env=_clean_env(tmp_path),
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "source scripts/activate" in out.stderr and "with-env.sh" in out.stderr
    with_checkout = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, cwd=tmp_path,
                                   env=dict(_clean_env(tmp_path), PYTHONPATH=str(ROOT / "src")), timeout=60)
    assert with_checkout.returncode == 0, with_checkout.stderr
