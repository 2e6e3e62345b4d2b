"""Print the dependencies (and the named extras, default `test`) of a pyproject.toml, one per line.

scripts/with-env.sh installs these into the shared virtual environment. It does not `pip install`
the project itself: the environment is shared by every checkout, and each checkout's own src/ goes
on PYTHONPATH instead.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(text: str, extras: tuple[str, ...] = ("test",)) -> list[str]:
    project = tomllib.loads(text)["project"]
    found = list(project.get("dependencies", []))
    for extra in extras:
        found += project.get("optional-dependencies", {}).get(extra, [])
    return found


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        print("\n".join(requirements(handle.read(), tuple(sys.argv[2:]) or ("test",))))
