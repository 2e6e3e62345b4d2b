"""Generic point-file readers: PLY, PCD, NPY/NPZ, OFF meshes and raw float32 `.bin`.

Every reader returns a `PointFile` with `xyz (N, 3) float32` and named extra columns, and raises
`PointliftDataError(path, problem)` for anything missing, truncated, corrupt, non-finite or
inconsistent, so a bad file fails at the reader with its name instead of deep inside training.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pointlift.errors import PointliftConfigError, PointliftDataError

__all__ = ["PointFile", "read_point_file", "read_raw_bin", "sample_mesh_surface"]


@dataclass
class PointFile:
    """Points of one file: `xyz (N, 3) float32` plus extra per-point columns.

    Known field names: `rgb (N, 3) float32 in [0, 1]`, `normal (N, 3) float32`,
    `intensity (N,) float32`; other columns keep their file names (raw `.bin` and `.npy` extras
    go to `features (N, C-3)`).
    """

    xyz: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def read_point_file(
    path: str | Path,
    columns: int | None = None,
    *,
    num_samples: int = 2048,
    seed: int = 0,
) -> PointFile:
    """Read a point file, choosing the format by suffix.

    `columns` is required for raw `.bin` (float32 values per point) and, when given for `.npy`/
    `.npz`, is checked against the array. `num_samples`/`seed` apply to `.off` meshes, which are
    sampled on their surface (area-weighted, reproducible).
    """
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    if path.stat().st_size == 0:
        raise PointliftDataError(path, "file is empty")
    name = path.name.lower()
    if name.endswith(".ply"):
        result = _read_ply(path)
    elif name.endswith(".pcd"):
        result = _read_pcd(path)
    elif name.endswith(".npy") or name.endswith(".npz"):
        result = _read_numpy(path, columns)
    elif name.endswith(".off"):
        result = _read_off(path, num_samples, seed)
    elif name.endswith(".bin"):
        if columns is None:
            raise PointliftConfigError(f"{path}: raw .bin point files need columns= (float32 values per point)")
        result = _fields_from_matrix(path, read_raw_bin(path, columns))
    else:
        raise PointliftDataError(path, "unknown point file type (expected .ply, .pcd, .npy, .npz, .off or .bin)")
    _check_points(path, result)
    return result


# ----------------------------------------------------------------------------------------------
# shared checks


def _check_points(path: Path, result: PointFile) -> None:
    """One place that enforces the PointFile contract for every format."""
    xyz = result.xyz
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise PointliftDataError(path, f"points have shape {xyz.shape}, expected (N, 3)")
    if xyz.shape[0] == 0:
        raise PointliftDataError(path, "contains no points")
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz).all(axis=1)).sum())
        raise PointliftDataError(path, f"{bad} points have non-finite (NaN/inf) coordinates")
    for key, values in result.fields.items():
        if values.shape[0] != xyz.shape[0]:
            raise PointliftDataError(path, f"field {key!r} has {values.shape[0]} rows for {xyz.shape[0]} points")
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise PointliftDataError(path, f"field {key!r} has non-finite values")
    result.xyz = np.ascontiguousarray(xyz, dtype=np.float32)


def _colour_to_unit(values: np.ndarray, integer_source: bool) -> np.ndarray:
    """Colours come as 0..255 integers or as floats in either [0, 1] or [0, 255]."""
    values = values.astype(np.float32)
    if integer_source or (values.size and values.max() > 1.0):
        values = values / 255.0
    return np.clip(values, 0.0, 1.0)


def _named_fields(columns: dict[str, np.ndarray], integer_colour: dict[str, bool]) -> PointFile:
    """Group per-property columns (PLY/PCD names) into xyz, rgb, normal, intensity and the rest."""
    xyz = np.stack([columns.pop("x"), columns.pop("y"), columns.pop("z")], axis=1).astype(np.float32)
    fields: dict[str, np.ndarray] = {}
    for names in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(n in columns for n in names):
            integer = integer_colour.get(names[0], False)
            fields["rgb"] = _colour_to_unit(np.stack([columns.pop(n) for n in names], axis=1), integer)
            break
    for names in (("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z")):
        if all(n in columns for n in names):
            fields["normal"] = np.stack([columns.pop(n) for n in names], axis=1).astype(np.float32)
            break
    for name in ("intensity", "scalar_intensity", "reflectance"):
        if name in columns:
            fields["intensity"] = columns.pop(name).astype(np.float32)
            break
    for name, values in columns.items():
        fields[name] = values.astype(np.float32) if values.dtype.kind == "f" else values
    return PointFile(xyz, fields)


def _require_xyz(path: Path, names: list[str]) -> None:
    missing = [n for n in ("x", "y", "z") if n not in names]
    if missing:
        raise PointliftDataError(path, f"has no {'/'.join(missing)} field (fields: {', '.join(names)})")


# ----------------------------------------------------------------------------------------------
# PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _read_header(path: Path, data: bytes, end_marker: bytes, max_lines: int = 200) -> tuple[list[str], int]:
    """Split a text header off a file; returns (lines, byte offset of the body)."""
    lines = []
    offset = 0
    for _ in range(max_lines):
        newline = data.find(b"\n", offset)
        if newline < 0:
            raise PointliftDataError(path, "header is truncated (no end of header)")
        raw = data[offset:newline]
        offset = newline + 1
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise PointliftDataError(path, "header is not ASCII text (corrupt file?)") from None
        lines.append(line)
        if end_marker is not None and line.split(" ")[0].encode() == end_marker:
            return lines, offset
    raise PointliftDataError(path, "header is too long or has no end marker (corrupt file?)")


def _read_ply(path: Path) -> PointFile:
    data = path.read_bytes()
    if not data.startswith(b"ply"):
        raise PointliftDataError(path, "does not start with 'ply' (not a PLY file)")
    lines, body_offset = _read_header(path, data, b"end_header")
    fmt = None
    elements: list[dict] = []
    for line in lines[1:-1]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1] if len(parts) > 1 else None
        elif parts[0] == "element" and len(parts) == 3:
            try:
                count = int(parts[2])
            except ValueError:
                raise PointliftDataError(path, f"bad element line {line!r}") from None
            elements.append({"name": parts[1], "count": count, "props": []})
        elif parts[0] == "property" and elements:
            if parts[1] == "list":
                if len(parts) != 5:
                    raise PointliftDataError(path, f"bad property line {line!r}")
                elements[-1]["props"].append(("list", parts[4], parts[2], parts[3]))
            else:
                if len(parts) != 3 or parts[1] not in _PLY_TYPES:
                    raise PointliftDataError(path, f"bad property line {line!r}")
                elements[-1]["props"].append(("scalar", parts[2], parts[1], None))
        else:
            raise PointliftDataError(path, f"unexpected header line {line!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointliftDataError(path, f"unknown PLY format {fmt!r}")
    vertex_index = next((i for i, e in enumerate(elements) if e["name"] == "vertex"), None)
    if vertex_index is None:
        raise PointliftDataError(path, "has no vertex element")
    vertex = elements[vertex_index]
    if any(kind == "list" for kind, *_ in vertex["props"]):
        raise PointliftDataError(path, "vertex element has list properties (unsupported)")
    names = [p[1] for p in vertex["props"]]
    _require_xyz(path, names)
    integer_colour = {p[1]: _PLY_TYPES[p[2]][0] in "iu" for p in vertex["props"]}
    count = vertex["count"]

    if fmt == "ascii":
        columns = _ply_ascii_vertices(path, data[body_offset:], elements[:vertex_index], vertex)
    else:
        byte_order = "<" if fmt == "binary_little_endian" else ">"
        skip = 0
        for element in elements[:vertex_index]:
            if any(kind == "list" for kind, *_ in element["props"]):
                raise PointliftDataError(path, f"list element {element['name']!r} before vertices (unsupported)")
            skip += element["count"] * sum(np.dtype(_PLY_TYPES[p[2]]).itemsize for p in element["props"])
        dtype = np.dtype([(p[1], byte_order + _PLY_TYPES[p[2]]) for p in vertex["props"]])
        needed = body_offset + skip + count * dtype.itemsize
        if len(data) < needed:
            raise PointliftDataError(
                path, f"truncated: {count} vertices need {needed} bytes, file has {len(data)}"
            )
        table = np.frombuffer(data, dtype=dtype, count=count, offset=body_offset + skip)
        columns = {name: table[name].astype(table.dtype[name].newbyteorder("=")) for name in names}
    return _named_fields(columns, integer_colour)


def _ply_ascii_vertices(path: Path, body: bytes, before: list[dict], vertex: dict) -> dict[str, np.ndarray]:
    lines = [line for line in body.decode("ascii", errors="replace").splitlines() if line.strip()]
    start = sum(e["count"] for e in before)
    rows = lines[start:start + vertex["count"]]
    if len(rows) < vertex["count"]:
        raise PointliftDataError(path, f"truncated: header promises {vertex['count']} vertices, found {len(rows)}")
    width = len(vertex["props"])
    for row_number, row in enumerate(rows):
        if len(row.split()) != width:
            raise PointliftDataError(
                path, f"vertex {row_number} has {len(row.split())} values, expected {width}"
            )
    try:
        table = np.array(" ".join(rows).split(), dtype=np.float64).reshape(vertex["count"], width)
    except ValueError:
        raise PointliftDataError(path, "vertex data contains non-numeric values") from None
    return {p[1]: table[:, i] for i, p in enumerate(vertex["props"])}


# ----------------------------------------------------------------------------------------------
# PCD


def _read_pcd(path: Path) -> PointFile:
    data = path.read_bytes()
    lines, body_offset = _read_header(path, data, b"DATA")
    header: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            header[parts[0].upper()] = parts[1:]
    for key in ("FIELDS", "SIZE", "TYPE", "DATA"):
        if key not in header:
            raise PointliftDataError(path, f"PCD header has no {key} line")
    names = header["FIELDS"]
    sizes = [int(s) for s in header["SIZE"]]
    types = header["TYPE"]
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
    if not (len(names) == len(sizes) == len(types) == len(counts)):
        raise PointliftDataError(path, "PCD header FIELDS/SIZE/TYPE/COUNT lengths differ")
    _require_xyz(path, names)
    try:
        width = int(header.get("WIDTH", ["0"])[0])
        height = int(header.get("HEIGHT", ["1"])[0])
        count = int(header.get("POINTS", [str(width * height)])[0])
    except ValueError:
        raise PointliftDataError(path, "PCD header WIDTH/HEIGHT/POINTS are not integers") from None
    if width * height != count:
        raise PointliftDataError(path, f"PCD header WIDTH*HEIGHT = {width * height} but POINTS = {count}")
    kinds = {"F": "f", "U": "u", "I": "i"}
    try:
        dtype = np.dtype(
            [(n, "<" + kinds[t] + str(s), (c,)) if c > 1 else (n, "<" + kinds[t] + str(s))
             for n, s, t, c in zip(names, sizes, types, counts)]
        )
    except (KeyError, TypeError):
        raise PointliftDataError(path, f"unsupported PCD TYPE/SIZE {types}/{sizes}") from None
    mode = header["DATA"][0].lower()
    if mode == "binary":
        needed = body_offset + count * dtype.itemsize
        if len(data) < needed:
            raise PointliftDataError(path, f"truncated: {count} points need {needed} bytes, file has {len(data)}")
        table = np.frombuffer(data, dtype=dtype, count=count, offset=body_offset)
        columns = {n: table[n] for n in names}
    elif mode == "ascii":
        columns = _pcd_ascii_columns(path, data[body_offset:], names, types, sizes, counts, count)
    else:
        raise PointliftDataError(path, f"PCD DATA {mode!r} is not supported (use ascii or binary)")

    for name in ("rgb", "rgba"):
        if name in columns:
            packed = _unpack_pcd_colour(path, columns.pop(name))
            columns["red"] = (packed >> 16) & 255
            columns["green"] = (packed >> 8) & 255
            columns["blue"] = packed & 255
            break
    flat = {}
    for name, values in columns.items():
        if values.ndim == 1:
            flat[name] = values
        else:
            flat[name] = values.reshape(len(values), -1)
    return _named_fields(flat, {"red": True})


def _unpack_pcd_colour(path: Path, values: np.ndarray) -> np.ndarray:
    """PCL packs 8-bit r, g, b into one 32-bit word, stored as uint32 or as a float's bit pattern."""
    if values.ndim != 1:
        raise PointliftDataError(path, "packed rgb field must have COUNT 1")
    if values.dtype.kind in "ui":
        return values.astype(np.uint32)
    if values.dtype.itemsize != 4:
        raise PointliftDataError(path, "packed rgb field must be 4 bytes")
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def _pcd_ascii_columns(path, body, names, types, sizes, counts, count) -> dict[str, np.ndarray]:
    rows = [line for line in body.decode("ascii", errors="replace").splitlines() if line.strip()]
    if len(rows) < count:
        raise PointliftDataError(path, f"truncated: header promises {count} points, found {len(rows)}")
    rows = rows[:count]
    width = sum(counts)
    for row_number, row in enumerate(rows):
        if len(row.split()) != width:
            raise PointliftDataError(path, f"point {row_number} has {len(row.split())} values, expected {width}")
    try:
        table = np.array(" ".join(rows).split(), dtype=np.float64).reshape(count, width)
    except ValueError:
        raise PointliftDataError(path, "point data contains non-numeric values") from None
    columns = {}
    start = 0
    for name, kind, size, c in zip(names, types, sizes, counts):
        values = table[:, start:start + c]
        start += c
        if name in ("rgb", "rgba"):
            # Packed colour: PCL writes the uint32 bits either as an integer or as the float
            # whose bit pattern they are, so keep the original type for unpacking.
            values = values[:, 0].astype(np.uint32) if kind in "UI" else values[:, 0].astype(np.float32)
        elif c == 1:
            values = values[:, 0]
        columns[name] = values
    return columns


# ----------------------------------------------------------------------------------------------
# NumPy


def _read_numpy(path: Path, columns: int | None) -> PointFile:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise PointliftDataError(path, f"cannot be read as NumPy data ({error})") from None
    extras: dict[str, np.ndarray] = {}
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if not keys:
                raise PointliftDataError(path, "archive holds no arrays")
            key = "points" if "points" in keys else keys[0]
            try:
                array = loaded[key]
                extras = {k: loaded[k] for k in keys if k != key}
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
                raise PointliftDataError(path, f"archive is corrupt ({error})") from None
    else:
        array = loaded
    if array.ndim != 2 or array.shape[1] < 3:
        raise PointliftDataError(path, f"array has shape {array.shape}, expected (N, C>=3)")
    if columns is not None and array.shape[1] != columns:
        raise PointliftDataError(path, f"array has {array.shape[1]} columns, expected {columns}")
    if array.dtype.kind not in "fiu":
        raise PointliftDataError(path, f"array has non-numeric dtype {array.dtype}")
    result = _fields_from_matrix(path, array.astype(np.float32), name_by_width=False)
    for key, values in extras.items():
        if values.ndim >= 1 and values.shape[0] == array.shape[0]:
            if key in ("rgb", "colors", "color"):
                result.fields["rgb"] = _colour_to_unit(values, values.dtype.kind in "iu")
            elif key in ("normal", "normals"):
                result.fields["normal"] = values.astype(np.float32)
            else:
                result.fields[key] = values.astype(np.float32) if values.dtype.kind == "f" else values
    return result


# ----------------------------------------------------------------------------------------------
# raw float32 .bin (KITTI, nuScenes, ScanNet/SUN RGB-D exports)


def read_raw_bin(path: str | Path, columns: int) -> np.ndarray:
    """Read a headerless float32 file as an `(N, columns)` float32 array."""
    path = Path(path)
    if not isinstance(columns, int) or columns < 3:
        raise PointliftConfigError(f"{path}: columns must be an integer >= 3, got {columns!r}")
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    size = path.stat().st_size
    if size == 0:
        raise PointliftDataError(path, "file is empty")
    if size % (columns * 4):
        raise PointliftDataError(
            path, f"size {size} bytes is not a multiple of {columns} float32 columns ({columns * 4} bytes per point)"
        )
    array = np.fromfile(path, dtype="<f4").reshape(-1, columns)
    if not np.isfinite(array).all():
        raise PointliftDataError(path, f"{int((~np.isfinite(array).all(axis=1)).sum())} points have non-finite values")
    return array


def _fields_from_matrix(path: Path, array: np.ndarray, name_by_width: bool = True) -> PointFile:
    """xyz from the first three columns; extras kept whole as `features` and, for raw sensor
    exports, named by their usual layout (x y z intensity [ring], x y z r g b)."""
    xyz = array[:, :3]
    fields: dict[str, np.ndarray] = {}
    if array.shape[1] > 3:
        fields["features"] = np.ascontiguousarray(array[:, 3:])
    if name_by_width:
        if array.shape[1] in (4, 5):
            fields["intensity"] = np.ascontiguousarray(array[:, 3])
        if array.shape[1] == 5:
            fields["ring"] = np.ascontiguousarray(array[:, 4])
        if array.shape[1] == 6:
            fields["rgb"] = _colour_to_unit(array[:, 3:6], integer_source=False)
    return PointFile(np.ascontiguousarray(xyz), fields)


# ----------------------------------------------------------------------------------------------
# OFF meshes


def _read_off(path: Path, num_samples: int, seed: int) -> PointFile:
    text = path.read_text(encoding="ascii", errors="replace")
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines or not lines[0].startswith("OFF"):
        raise PointliftDataError(path, "does not start with 'OFF'")
    # ModelNet's files sometimes glue the counts onto the keyword: "OFF490 518 0".
    first = lines[0][3:].split()
    rest = lines[1:]
    if not first:
        if not rest:
            raise PointliftDataError(path, "truncated: no vertex/face counts")
        first, rest = rest[0].split(), rest[1:]
    try:
        num_vertices, num_faces = int(first[0]), int(first[1])
    except (ValueError, IndexError):
        raise PointliftDataError(path, f"bad count line {' '.join(first)!r}") from None
    if len(rest) < num_vertices + num_faces:
        raise PointliftDataError(
            path, f"truncated: header promises {num_vertices} vertices and {num_faces} faces, found {len(rest)} lines"
        )
    try:
        vertices = np.array([row.split()[:3] for row in rest[:num_vertices]], dtype=np.float64)
    except ValueError:
        raise PointliftDataError(path, "vertex lines must hold three numbers each") from None
    if vertices.shape != (num_vertices, 3):
        raise PointliftDataError(path, "vertex lines must hold three numbers each")
    if not np.isfinite(vertices).all():
        raise PointliftDataError(path, "vertices have non-finite coordinates")
    triangles = []
    for face_number, row in enumerate(rest[num_vertices:num_vertices + num_faces]):
        try:
            values = [int(v) for v in row.split()]
            k = values[0]
            polygon = values[1:1 + k]
        except (ValueError, IndexError):
            raise PointliftDataError(path, f"face {face_number} is not a list of integers") from None
        if k < 3 or len(polygon) != k:
            raise PointliftDataError(path, f"face {face_number} is malformed: {row!r}")
        for i in range(1, k - 1):  # fan triangulation of convex polygons
            triangles.append((polygon[0], polygon[i], polygon[i + 1]))
    if not triangles:
        raise PointliftDataError(path, "mesh has no faces to sample")
    triangles = np.asarray(triangles, dtype=np.int64)
    if triangles.min() < 0 or triangles.max() >= num_vertices:
        raise PointliftDataError(path, f"face indices out of range for {num_vertices} vertices")
    points, normals = sample_mesh_surface(vertices, triangles, num_samples, seed)
    if points is None:
        raise PointliftDataError(path, "mesh has zero surface area")
    return PointFile(points, {"normal": normals})


def sample_mesh_surface(
    vertices: np.ndarray, triangles: np.ndarray, num_samples: int, seed: int = 0
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Uniform samples on a triangle mesh: pick triangles by area, then uniform barycentrics.

    Returns `(points (num_samples, 3) float32, unit face normals (num_samples, 3) float32)`, or
    `(None, None)` when the mesh has no area.
    """
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    cross = np.cross(b - a, c - a)
    doubled_area = np.linalg.norm(cross, axis=1)
    total = doubled_area.sum()
    if not np.isfinite(total) or total <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(triangles), size=num_samples, p=doubled_area / total)
    r1 = np.sqrt(rng.random(num_samples))[:, None]  # sqrt makes the density uniform in area
    r2 = rng.random(num_samples)[:, None]
    points = (1 - r1) * a[chosen] + r1 * (1 - r2) * b[chosen] + r1 * r2 * c[chosen]
    normals = cross[chosen] / np.maximum(doubled_area[chosen, None], 1e-30)
    return points.astype(np.float32), normals.astype(np.float32)
