"""scripts/with-env.sh must work on every Python the README promises (>= 3.10; tomllib is 3.11+)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "requirements_from_pyproject.py"
PYPROJECT = ROOT / "pyproject.toml"


def _expected() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["test"]


def _oldest_promised_python() -> str | None:
    """A Python 3.10 interpreter (the oldest `requires-python` allows), if this machine has one."""
    found = shutil.which("python3.10")
    candidates = ([found] if found else []) + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for candidate in candidates:
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 10)":
            return candidate
    return None


def test_requires_python_is_310():
    # If the promise changes, the interpreter this file looks for must change with it.
    assert tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"] == ">=3.10"


def test_with_env_uses_the_portable_reader():
    text = (ROOT / "scripts" / "with-env.sh").read_text()
    assert "requirements_from_pyproject.py" in text and "import tomllib" not in text


def test_reader_on_python_310():
    python = _oldest_promised_python()
    if python is None:
        pytest.skip("no Python 3.10 interpreter on this machine")
    out = subprocess.run([python, str(SCRIPT), str(PYPROJECT), "test"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == _expected()


def test_reader_without_tomllib_or_tomli():
    # The fallback parser, on this interpreter, with both TOML libraries made unimportable.
    code = ("import sys, runpy; sys.modules['tomllib'] = None; sys.modules['tomli'] = None; "
            f"sys.argv = [{str(SCRIPT)!r}, {str(PYPROJECT)!r}, 'test']; runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == _expected()


def test_fallback_parser_matches_tomllib_on_tricky_arrays():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import requirements_from_pyproject as reader
    finally:
        sys.path.pop(0)
    text = ('[build-system]\nrequires = ["setuptools>=64"]  # comment\n\n[project]\nname = "x"\n'
            'dynamic = false\nlicense = {text = "MIT"}\ndependencies = [\n  "torch>=2.1",  # the # is a comment\n'
            '  "numpy; python_version>=\'3.10\'",\n  \'a # not a comment\',\n]\n'
            '[project.optional-dependencies]\ntest = ["pytest"]\n')
    assert reader._minimal_toml(text)["project"]["dependencies"] == tomllib.loads(text)["project"]["dependencies"]
    assert reader._minimal_toml(text)["project"]["optional-dependencies"] == {"test": ["pytest"]}
    with pytest.raises(SystemExit, match="cannot parse"):
        reader._minimal_toml("[project]\ndependencies\n")
