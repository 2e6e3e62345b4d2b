#!/usr/bin/env bash
# Run a command inside pointlift's virtual environment, building it first if needed.
#
# The environment lives outside the checkout (~/.cache/pointlift/venv-<hash of pyproject.toml>), so
# fresh clones reuse it and a change of dependencies gets a new one. It holds the dependencies only;
# this checkout's src/ is put first on PYTHONPATH, so every clone runs its own code.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HASH="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
VENV="${POINTLIFT_VENV:-$HOME/.cache/pointlift/venv-$HASH}"
PY="${PYTHON:-python3}"
# The Python pyproject.toml's requires-python promises (and CI tests); say so before building anything.
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    found="$( (command -v "$PY" >/dev/null && "$PY" --version 2>&1) || echo 'not found')"
    echo "pointlift: needs Python >= 3.11 (pyproject.toml requires-python); '$PY' is $found. Set PYTHON=/path/to/python3.11 or newer." >&2
    exit 2
fi
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9  # one builder at a time; concurrent callers wait for it
if [ ! -f "$VENV/.complete" ]; then
    echo "[pointlift] building the virtual environment in $VENV (first run only, a few minutes)" >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # Dependencies (with the test extra) straight from pyproject.toml.
    "$VENV/bin/python" "$ROOT/scripts/requirements_from_pyproject.py" "$ROOT/pyproject.toml" test \
        > "$VENV/requirements.txt"
    "$VENV/bin/python" -m pip install --quiet -r "$VENV/requirements.txt"
    # The console script, resolved through PYTHONPATH to the calling checkout (with-env.sh or
    # `source scripts/activate` put it there); outside them it says how to get there.
    cat > "$VENV/bin/pointlift" <<WRAPPER
#!/usr/bin/env bash
if ! "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("pointlift") is None)'; then
    echo "pointlift: this environment holds pointlift's dependencies, shared by every checkout; in your checkout run 'source scripts/activate' (then pointlift ...) or 'bash scripts/with-env.sh pointlift ...'" >&2
    exit 2
fi
exec "$VENV/bin/python" -m pointlift.cli "\$@"
WRAPPER
    chmod +x "$VENV/bin/pointlift"
    touch "$VENV/.complete"
fi
flock -u 9
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
