"""PLY (ascii, binary little/big endian): the vertex element's scalar properties as columns.

One file past ~400 lines on purpose: header parsing and the ascii and binary body walkers share the element
model and its checks, and split apart each would need the others' private invariants.

The whole body is walked, element by element in header order (faces may come before vertices),
and must end where the header says: a body shorter than declared, a row with the wrong number of
values or a list running past the end is refused, never read as shifted data; data after the last
declared element is read as declared, never silently (a warning asks whether a count is wrong).
Every element's rows follow its header property by property, however many list properties it has
and wherever they stand among the scalars (faces with `vertex_indices` and `texcoord` lists plus
colours, say); only the vertex element's values are kept.

What is checked of the elements pointlift does not use (faces, edges, materials, ...):
- ascii: each row is one line, so every element's row count is checked by counting lines (too few
  lines: refused as truncated; more: read as declared, with a warning). A row of such an element
  must hold its declared properties (list lengths that are non-negative integers, numbers); values
  after them are ignored when every row of that element has the same number of them - trimesh's
  fuze_ascii.ply (written by VCGLIB) has six more on each face row than its header declares, and
  trimesh reads it - but refused when only some rows have them, as a vertex row shifted into the
  face element by a vertex count one too small would. The vertex element allows no surplus.
- binary: nothing marks where a row or an element ends except the header, so every element is
  walked by it, lists included, even when it comes after the vertex element and its values are
  discarded: skipping it would leave the end of the file unknown, and with it the truncation and
  trailing-data checks. A binary file whose rows do not match its header cannot be read by anyone.

Kept as pointlift's own parser rather than plyfile because on the real-file corpus
(../shared/reference/point-files) it reads every file plyfile reads, equal (and fuze_ascii.ply,
which plyfile refuses), and its failures are size-checked before allocation (see
tests/test_point_files_reference.py).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pointlift.data.guard import PointliftDataWarning, check_available
from pointlift.errors import PointliftDataError

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class _Property:
    name: str
    dtype: str  # numpy type code without byte order ("f4", "u1", ...)
    count_dtype: str | None = None  # set for list properties


@dataclass
class _Element:
    name: str
    count: int
    props: list[_Property] = field(default_factory=list)

    @property
    def has_lists(self) -> bool:
        return any(p.count_dtype for p in self.props)


def split_header(path: Path, data: bytes, is_last) -> tuple[list[str], int]:
    """Text header lines up to and including the one `is_last` accepts; returns (lines, body offset).

    No line limit (real headers carry hundreds of comment lines); bounded by the file itself."""
    lines = []
    offset = 0
    while True:
        newline = data.find(b"\n", offset)
        if newline < 0:
            raise PointliftDataError(path, "header is truncated (no end of header)")
        raw = data[offset:newline]
        offset = newline + 1
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise PointliftDataError(path, f"header line {len(lines) + 1} is not ASCII text (corrupt file?)") from None
        lines.append(line)
        if is_last(line):
            return lines, offset


def parse_int(path: Path, text: str, what: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PointliftDataError(path, f"{what} {text!r} is not an integer") from None
    if value < minimum:
        raise PointliftDataError(path, f"{what} is {value}, must be >= {minimum}")
    return value


def _parse_header(path: Path, lines: list[str]) -> tuple[str, list[_Element]]:
    fmt = None
    elements: list[_Element] = []
    for line in lines[1:-1]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            if len(parts) != 3 or fmt is not None:
                raise PointliftDataError(path, f"bad or repeated format line {line!r}")
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3:
                raise PointliftDataError(path, f"bad element line {line!r}")
            if any(e.name == parts[1] for e in elements):
                raise PointliftDataError(path, f"element {parts[1]!r} is declared twice")
            elements.append(_Element(parts[1], parse_int(path, parts[2], f"element {parts[1]} count")))
        elif parts[0] == "property":
            if not elements:
                raise PointliftDataError(path, f"property before any element: {line!r}")
            if len(parts) == 5 and parts[1] == "list":
                if parts[2] not in PLY_TYPES or PLY_TYPES[parts[2]][0] == "f" or parts[3] not in PLY_TYPES:
                    raise PointliftDataError(path, f"bad list property line {line!r}")
                prop = _Property(parts[4], PLY_TYPES[parts[3]], PLY_TYPES[parts[2]])
            elif len(parts) == 3 and parts[1] in PLY_TYPES:
                prop = _Property(parts[2], PLY_TYPES[parts[1]])
            else:
                raise PointliftDataError(path, f"bad property line {line!r}")
            if any(p.name == prop.name for p in elements[-1].props):
                raise PointliftDataError(path, f"element {elements[-1].name!r} has property {prop.name!r} twice")
            elements[-1].props.append(prop)
        else:
            raise PointliftDataError(path, f"unexpected header line {line!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointliftDataError(path, f"unknown PLY format {fmt!r}")
    if not lines[-1] == "end_header":
        raise PointliftDataError(path, "header does not end with 'end_header'")
    return fmt, elements


def read_ply(path: Path, data: bytes) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """(vertex columns by property name, whether each column was an integer type)."""
    if not data.startswith(b"ply"):
        raise PointliftDataError(path, "does not start with 'ply' (not a PLY file)")
    lines, body_offset = split_header(path, data, lambda line: line == "end_header")
    if lines[0] != "ply":
        raise PointliftDataError(path, f"first line is {lines[0]!r}, expected 'ply'")
    fmt, elements = _parse_header(path, lines)
    vertex = next((e for e in elements if e.name == "vertex"), None)
    if vertex is None:
        raise PointliftDataError(path, "has no vertex element")
    scalars = [p for p in vertex.props if not p.count_dtype]
    missing = [n for n in ("x", "y", "z") if n not in {p.name for p in scalars}]
    if missing:
        raise PointliftDataError(
            path, f"has no {'/'.join(missing)} vertex property (properties: {', '.join(p.name for p in vertex.props)})"
        )
    if fmt == "ascii":
        columns = _ascii_body(path, data[body_offset:], elements, vertex)
    else:
        columns = _binary_body(path, data, body_offset, "<" if fmt == "binary_little_endian" else ">",
                               elements, vertex)
    integer = {p.name: p.dtype[0] in "iu" for p in scalars}
    return columns, integer


def _trailing(path: Path, what: str, elements: list[_Element]) -> None:
    """Data after the last declared element: read as declared (as plyfile does, and real files
    such as trimesh's points_emptyascii.ply need), but never silently - the count may be wrong."""
    warnings.warn(
        f"{path}: ignored {what} after the elements its header declares "
        f"({', '.join(f'{e.count} {e.name}' for e in elements)}): is a count wrong?",
        PointliftDataWarning, stacklevel=5,
    )


# ----------------------------------------------------------------------------------------------
# ascii


def _ascii_body(path: Path, body: bytes, elements: list[_Element], vertex: _Element) -> dict[str, np.ndarray]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as error:
        raise PointliftDataError(path, f"ascii body has a non-ASCII byte at body offset {error.start}") from None
    lines = [line for line in text.split("\n") if line.strip()]
    declared = sum(e.count for e in elements)
    if len(lines) < declared:
        raise PointliftDataError(
            path, f"truncated: header declares {declared} rows "
            f"({', '.join(f'{e.count} {e.name}' for e in elements)}), found {len(lines)} lines"
        )
    start = 0
    columns: dict[str, np.ndarray] = {}
    for element in elements:
        rows = lines[start:start + element.count]
        start += element.count
        if element is not vertex:
            _ascii_rows(path, element, rows, is_vertex=False)  # checked, not kept
        elif element.has_lists:
            columns = _ascii_rows(path, element, rows, is_vertex=True)
        else:
            columns = _ascii_table(path, element, rows)
    columns = _ascii_types(path, vertex, columns)
    if len(lines) > declared:  # only once the declared elements parsed: otherwise the error says it
        _trailing(path, f"{len(lines) - declared} lines", elements)
    return columns


def _check_widths(path: Path, element: _Element, widths: list[int], width: int) -> None:
    for number, found in enumerate(widths):
        if found != width:
            raise PointliftDataError(path, f"{element.name} {number} has {found} values, header declares {width}")


def _ascii_table(path: Path, element: _Element, rows: list[str]) -> dict[str, np.ndarray]:
    """Rows of scalars, parsed by NumPy's C text parser (which checks every row's width)."""
    width = len(element.props)
    if not rows:
        return {p.name: np.zeros(0) for p in element.props}
    try:
        table = np.loadtxt(io.StringIO("\n".join(rows)), dtype=np.float64, comments=None, ndmin=2)
    except ValueError:
        _check_widths(path, element, [len(row.split()) for row in rows], width)
        raise PointliftDataError(path, f"{element.name} data contains non-numeric values") from None
    if table.shape != (element.count, width):
        _check_widths(path, element, [len(row.split()) for row in rows], width)
        raise PointliftDataError(path, f"{element.name} rows parse to shape {table.shape}, expected "
                                       f"({element.count}, {width})")
    return {p.name: table[:, i] for i, p in enumerate(element.props)}


def _ascii_rows(path: Path, element: _Element, rows: list[str], is_vertex: bool) -> dict[str, np.ndarray]:
    """Rows followed property by property as the header declares them (list lengths included);
    returns the scalar columns (used for the vertex element only).

    The vertex element's rows must end where its properties do. Rows of another element may carry
    a surplus of values after its declared properties, the same number on every row (a writer that
    appended fields its header omits, as trimesh's fuze_ascii.ply does on every face row), which is
    ignored with the rest of that element; a surplus on some rows only is refused, since that is
    what a row shifted in from a neighbouring element looks like.

    Fast path: every row has the first row's list lengths (a triangle mesh), parsed as one table
    by NumPy's C parser and verified; otherwise row by row."""
    table = None
    if rows:
        try:
            table = np.loadtxt(io.StringIO("\n".join(rows)), dtype=np.float64, comments=None, ndmin=2)
        except ValueError:  # rows of different lengths (or bad values): walk them one by one
            table = None
    if table is not None and table.shape[0] == element.count:
        at, positions, counts = 0, {}, []
        for prop in element.props:
            if prop.count_dtype:
                length = table[0, at] if at < table.shape[1] else -1.0
                if not (length >= 0 and length == int(length)):
                    break
                counts.append(at)
                at += 1 + int(length)
            else:
                if at >= table.shape[1]:
                    break
                positions[prop.name] = at
                at += 1
        else:
            fits = at == table.shape[1] if is_vertex else at <= table.shape[1]
            if fits and all((table[:, c] == table[0, c]).all() for c in counts):
                return {name: table[:, column] for name, column in positions.items()} if is_vertex else {}
    return _ascii_walk_rows(path, element, rows, is_vertex)


def _ascii_walk_rows(path: Path, element: _Element, rows: list[str], is_vertex: bool) -> dict[str, np.ndarray]:
    """Walk rows with list properties value by value; returns the scalar columns (see _ascii_rows)."""
    scalars: dict[str, list[float]] = {p.name: [] for p in element.props if not p.count_dtype}
    surplus = None
    for number, row in enumerate(rows):
        values = row.split()
        at = 0
        try:
            for prop in element.props:
                if prop.count_dtype:
                    length = int(values[at])
                    if length < 0 or at + length >= len(values):
                        raise ValueError
                    at += 1 + length
                else:
                    value = float(values[at])
                    if is_vertex:
                        scalars[prop.name].append(value)
                    at += 1
        except (ValueError, IndexError):
            raise PointliftDataError(
                path, f"{element.name} {number} does not match its header's properties: {row[:80]!r}"
            ) from None
        if surplus is None:
            surplus = 0 if is_vertex else len(values) - at
        if len(values) - at != surplus:
            raise PointliftDataError(
                path, f"{element.name} {number} has {len(values)} values, its properties take {at}"
                + (f" ({element.name} 0 has {surplus} more)" if surplus else "")
            )
    return {name: np.asarray(values, dtype=np.float64) for name, values in scalars.items()}


def _ascii_types(path: Path, vertex: _Element, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Integer properties must hold integers; they keep their declared type."""
    typed = {}
    for prop in vertex.props:
        if prop.count_dtype:
            continue
        values = columns[prop.name]
        if prop.dtype[0] in "iu":
            info = np.iinfo(prop.dtype)
            if not (np.isfinite(values).all() and (values == np.round(values)).all()
                    and (values >= info.min).all() and (values <= info.max).all()):
                raise PointliftDataError(path, f"vertex property {prop.name!r} ({prop.dtype}) holds non-integer "
                                               "or out-of-range values")
            values = values.astype(prop.dtype)
        typed[prop.name] = values
    return typed


# ----------------------------------------------------------------------------------------------
# binary


def _binary_body(path: Path, data: bytes, offset: int, order: str, elements: list[_Element],
                 vertex: _Element) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for element in elements:
        remaining = len(data) - offset
        if not element.has_lists:
            dtype = np.dtype([(p.name, order + p.dtype) for p in element.props])
            check_available(path, element.count * dtype.itemsize, remaining, f"{element.count} {element.name} rows")
            if element is vertex:
                table = np.frombuffer(data, dtype=dtype, count=element.count, offset=offset)
                columns = {p.name: table[p.name].astype(p.dtype) for p in element.props}
            offset += element.count * dtype.itemsize
        else:
            smallest = sum(np.dtype(p.count_dtype or p.dtype).itemsize for p in element.props)
            check_available(path, element.count * smallest, remaining, f"{element.count} {element.name} rows")
            offset, values = _binary_list_rows(path, data, offset, order, element, keep=element is vertex)
            if element is vertex:
                columns = values
    if offset != len(data) and data[offset:].strip(b"\x00 \t\r\n"):
        _trailing(path, f"{len(data) - offset} bytes", elements)
    return columns


def _binary_list_rows(path: Path, data: bytes, offset: int, order: str, element: _Element,
                      keep: bool) -> tuple[int, dict[str, np.ndarray]]:
    """Rows with list properties (any number of them, between scalars), each list's length read
    from its own count: returns (offset after the rows, the scalar columns when `keep`).
    Fast path: every row has the first row's list lengths (a triangle mesh), read as one fixed
    record and verified; otherwise walk row by row."""
    if element.count == 0:
        return offset, {p.name: np.zeros(0, p.dtype) for p in element.props if not p.count_dtype}
    fields, at = [], offset
    for prop in element.props:
        if prop.count_dtype:
            count_type = np.dtype(order + prop.count_dtype)
            check_available(path, at + count_type.itemsize, len(data), f"{element.name} 0")
            length = int(np.frombuffer(data, count_type, 1, at)[0])
            if length < 0:
                raise PointliftDataError(path, f"{element.name} 0 has a negative list length {length}")
            fields += [(f"_n_{prop.name}", count_type), (f"_v_{prop.name}", np.dtype(order + prop.dtype), (length,))]
            at += count_type.itemsize + length * np.dtype(prop.dtype).itemsize
        else:
            fields.append((prop.name, np.dtype(order + prop.dtype)))
            at += np.dtype(prop.dtype).itemsize
    record = np.dtype(fields)
    if offset + element.count * record.itemsize <= len(data):
        table = np.frombuffer(data, record, element.count, offset)
        if all((table[f"_n_{p.name}"] == table[f"_n_{p.name}"][0]).all() for p in element.props if p.count_dtype):
            values = ({p.name: table[p.name].astype(p.dtype) for p in element.props if not p.count_dtype}
                      if keep else {})
            return offset + element.count * record.itemsize, values
    return _walk_rows(path, data, offset, order, element, keep)


def _walk_rows(path: Path, data: bytes, offset: int, order: str, element: _Element,
               keep: bool) -> tuple[int, dict[str, np.ndarray]]:
    steps = []
    for prop in element.props:
        scalar = struct.Struct(order + np.dtype(prop.count_dtype or prop.dtype).char)
        steps.append((prop, scalar, np.dtype(prop.dtype).itemsize))
    scalars: dict[str, list] = {p.name: [] for p in element.props if not p.count_dtype}
    end = len(data)
    for number in range(element.count):
        for prop, unpack, item in steps:
            if offset + unpack.size > end:
                raise PointliftDataError(path, f"truncated inside {element.name} {number} of {element.count}")
            (value,) = unpack.unpack_from(data, offset)
            offset += unpack.size
            if prop.count_dtype:
                if value < 0:
                    raise PointliftDataError(path, f"{element.name} {number} has a negative list length {value}")
                offset += value * item
                if offset > end:
                    raise PointliftDataError(path, f"truncated inside {element.name} {number} of {element.count}")
            elif keep:
                scalars[prop.name].append(value)
    if not keep:
        return offset, {}
    return offset, {p.name: np.asarray(scalars[p.name], dtype=p.dtype) for p in element.props if not p.count_dtype}
