"""The reference of a typed config's keys (dotted key, type, default, meaning), generated from the dataclasses.

A field's meaning is its comment: the one on the field's line, after the comment lines just above it (a
nested section without one takes its class docstring's first line). Reading the comments from the source
keeps the config classes as they are written and the reference unable to drift from them:
`pointlift config show KIND` prints it and docs/CONFIG.md is generated from it (tests hold both equal).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pointlift.engine.config import _INPUT, config_to_dict
from pointlift.errors import PointliftConfigError


@dataclass(frozen=True)
class KeyInfo:
    """One row of the reference; `type` is "section" for a nested config."""

    key: str
    type: str
    default: str
    meaning: str


def reference(cls: type) -> list[KeyInfo]:
    """Every key of config class `cls`, sections before their keys, in declaration order."""
    rows: list[KeyInfo] = []
    _walk(cls, None, "", rows)
    return rows


def default_dict(cls: type) -> dict:
    """The full default config of `cls` as a plain mapping (what a YAML file with every key would hold)."""
    return _default_dict(cls, None)


def _default_dict(cls: type, instance: Any) -> dict:
    values = {}
    for spec, value in _defaults(cls, instance):
        section = _section(value)
        values[spec.name] = (_default_dict(*section) if section is not None
                             else None if value is dataclasses.MISSING else config_to_dict(value))
    return values


def _defaults(cls: type, instance: Any):
    """(field, default value) of each init field: the instance's (a section made by its parent's factory,
    whose settings may differ from the class's), else the field's own default or factory. A section with
    no valid default (PPKT's data needs a `root`) is its class, walked field by field."""
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        if instance is not None:
            value = getattr(instance, spec.name)
        elif spec.default is not dataclasses.MISSING:
            value = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            try:
                value = spec.default_factory()
            except PointliftConfigError:
                value = spec.default_factory  # a dataclass whose defaults alone are not a valid config
        else:
            value = dataclasses.MISSING
        yield spec, value


def _section(value: Any) -> tuple[type, Any] | None:
    """(class, instance or None) when `value` is a nested config, else None."""
    if dataclasses.is_dataclass(value):
        return (value, None) if isinstance(value, type) else (type(value), value)
    return None


def _walk(cls: type, instance: Any, prefix: str, rows: list[KeyInfo]) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = field_docs(cls)
    for spec, value in _defaults(cls, instance):
        key = f"{prefix}.{spec.name}" if prefix else spec.name
        section = _section(value)
        if section is not None:
            meaning = docs.get(spec.name) or _first_line(section[0].__doc__)
            rows.append(KeyInfo(key, "section", "", meaning))
            _walk(*section, key, rows)
        else:
            default = "(required)" if value is dataclasses.MISSING else _format_value(value)
            rows.append(KeyInfo(key, describe_type(hints[spec.name]), default, docs.get(spec.name, "")))


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split()).split(". ")[0].rstrip(".")


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(config_to_dict(value))


def describe_type(hint: Any) -> str:
    """A type as a config user reads it: `int or null`, `one of adamw, sgd`, `[float, float]`, `list of str`,
    `input path` (resolved against the config file's folder) or `path` (against the current directory)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return "input path" if _INPUT in hint.__metadata__ else describe_type(args[0])
    if origin in (Union, types.UnionType):
        options = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return "[" + ", ".join(describe_type(a) for a in args) + "]"
        return "list of " + (describe_type(args[0]) if args else "values")
    if origin is dict:
        return "mapping"
    if hint is Path:
        return "path"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its comment} of a dataclass and the dataclasses it extends (see the module docstring)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_comments(klass))
    return docs


def _class_comments(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # no source (e.g. a class made at run time)
        return {}
    lines = source.splitlines()
    comments = {}  # line number -> (text, whether the comment is the whole line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            comments[row] = (token.string.lstrip("#").strip(), lines[row - 1].strip().startswith("#"))
    docs = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            parts, row = [], node.lineno - 1
            while row in comments and comments[row][1]:
                parts.insert(0, comments[row][0])
                row -= 1
            text, whole_line = comments.get(node.lineno, ("", True))
            if not whole_line:
                parts.append(text)
            docs[node.target.id] = " ".join(parts)
    return docs


def as_text(rows: list[KeyInfo]) -> str:
    """Rows as aligned plain-text columns (the terminal's view); meanings start on their own column."""
    widths = [max(len(getattr(r, name)) for r in rows) for name in ("key", "type", "default")]
    widths = [min(w, cap) for w, cap in zip(widths, (40, 34, 24))]
    out = []
    for row in rows:
        cells = [row.key.ljust(widths[0]), row.type.ljust(widths[1]), row.default.ljust(widths[2]), row.meaning]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def as_markdown(rows: list[KeyInfo]) -> str:
    """Rows as a Markdown table."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("<", "\\<")  # a bare <word> would read as an HTML tag

    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        key = f"**`{row.key}`**" if row.type == "section" else f"`{row.key}`"
        default = f"`{cell(row.default)}`" if row.default else ""
        out.append(f"| {key} | {cell(row.type)} | {default} | {cell(row.meaning)} |")
    return "\n".join(out) + "\n"
