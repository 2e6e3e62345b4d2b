"""Print the dependencies (and the test extra) of a pyproject.toml, one per line.

Used by scripts/with-env.sh to build the virtual environment. It must run on every Python the
README promises (>= 3.10), before anything is installed: `tomllib` exists only from 3.11, so on
3.10 it falls back to `tomli` if present, else to a small reader of the two string arrays it needs
(`[project] dependencies` and `[project.optional-dependencies] <extra>`), which is enough for this
project's pyproject.toml and fails loudly on anything it does not understand.
"""

from __future__ import annotations

import ast
import re
import sys


def _load_toml(text: str) -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        try:
            import tomli as tomllib  # the same parser, from PyPI
        except ImportError:
            return _minimal_toml(text)
    return tomllib.loads(text)


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` inside a quoted string is kept)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index]
    return line


def _minimal_toml(text: str) -> dict:
    """Tables, and `key = value` where value is a string, number/bool or a (multi-line) string array."""
    data: dict = {}
    table = data
    lines = iter(text.splitlines())
    for number, raw in enumerate(lines, 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([A-Za-z0-9_.\-]+)\]", line)
        if header:
            table = data
            for part in header.group(1).split("."):
                table = table.setdefault(part, {})
            continue
        if line.startswith("[["):
            table = {}  # arrays of tables are not needed here: skip their keys
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SystemExit(f"pyproject.toml:{number}: cannot parse {raw!r} (install tomli)")
        value = value.strip()
        if value.startswith("["):
            while value.count("[") > value.count("]"):
                value += " " + _strip_comment(next(lines)).strip()
        if value.startswith("{"):
            table[key.strip().strip('"')] = value  # inline tables kept as text (unused)
            continue
        try:
            parsed = {"true": True, "false": False}[value] if value in ("true", "false") else ast.literal_eval(value)
            table[key.strip().strip('"')] = parsed
        except (ValueError, SyntaxError):
            raise SystemExit(f"pyproject.toml:{number}: cannot parse value {value!r} (install tomli)") from None
    return data


def requirements(text: str, extras: tuple[str, ...] = ("test",)) -> list[str]:
    project = _load_toml(text)["project"]
    found = list(project.get("dependencies", []))
    for extra in extras:
        found += project.get("optional-dependencies", {}).get(extra, [])
    return found


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        print("\n".join(requirements(handle.read(), tuple(sys.argv[2:]) or ("test",))))
