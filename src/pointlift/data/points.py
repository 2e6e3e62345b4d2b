"""Generic point-file readers: PLY, PCD, NPY/NPZ, OFF meshes and raw float32 `.bin`.

One file past ~400 lines on purpose: the dispatch by format and the small readers (NPY/NPZ, OFF with its
surface sampling, raw `.bin`) share one non-finite policy; PLY and PCD have their own modules.

Every reader returns a `PointFile` with `xyz (N, 3) float32` and named extra columns. Anything that
cannot be read - missing, truncated, corrupt, a header that disagrees with the body - raises
`PointliftDataError(path, problem)` (one guard, `pointlift.data.guard.reading`, wraps every parser).

Non-finite values (pointlift's stated policy): a point whose coordinates are NaN/inf is dropped,
with one `NonFinitePointsWarning` that counts them (`nonfinite="error"` refuses the file instead);
non-finite attributes (normals, colours, intensity) are kept as they are - a sensor with NaN
normals still has good points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pointlift.data.guard import drop_nonfinite_rows, read_npy, read_npz, reading
from pointlift.data.pcd import read_pcd
from pointlift.data.ply import read_ply
from pointlift.errors import PointliftConfigError, PointliftDataError

__all__ = ["PointFile", "read_point_file", "read_raw_bin", "read_off_mesh", "sample_mesh_surface"]


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
    nonfinite: str = "drop",
    mesh_points: str = "surface",
    allow_empty: bool = False,
) -> PointFile:
    """Read a point file, choosing the format by suffix.

    `columns` is required for raw `.bin` (float32 values per point) and, when given for `.npy`/
    `.npz`, is checked against the array. `.off` meshes give `num_samples` points sampled on their
    surface (area-weighted, reproducible by `seed`), or their vertices with
    `mesh_points="vertices"`. `nonfinite`: "drop" points with NaN/inf coordinates (warning with the
    count) or "error". A file that validly holds no points is refused unless `allow_empty`.
    """
    path = Path(path)
    if mesh_points not in ("surface", "vertices"):
        raise PointliftConfigError(f"mesh_points must be 'surface' or 'vertices', got {mesh_points!r}")
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    if path.stat().st_size == 0:
        raise PointliftDataError(path, "file is empty")
    name = path.name.lower()
    with reading(path):
        if name.endswith(".ply"):
            result = _named_fields(*read_ply(path, path.read_bytes()))
        elif name.endswith(".pcd"):
            result = _named_fields(*read_pcd(path, path.read_bytes()))
        elif name.endswith(".npy") or name.endswith(".npz"):
            result = _read_numpy(path, columns)
        elif name.endswith(".off"):
            vertices, triangles = read_off_mesh(path)
            if mesh_points == "vertices":
                result = PointFile(vertices.astype(np.float32))
            else:
                result = _sample_off(path, vertices, triangles, num_samples, seed, nonfinite)
        elif name.endswith(".bin"):
            if columns is None:
                raise PointliftConfigError(f"{path}: raw .bin point files need the number of float32 values per point (--columns N on the command line, `columns: N` in a data config)")
            result = _fields_from_matrix(path, read_raw_bin(path, columns, nonfinite="keep"))
        else:
            raise PointliftDataError(path, "unknown point file type (expected .ply, .pcd, .npy, .npz, .off or .bin)")
        _check_points(path, result, nonfinite, allow_empty)
    return result


# ----------------------------------------------------------------------------------------------
# shared checks


def _check_points(path: Path, result: PointFile, nonfinite: str, allow_empty: bool) -> None:
    """One place that enforces the PointFile contract (and the non-finite policy) for every format."""
    xyz = result.xyz
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise PointliftDataError(path, f"points have shape {xyz.shape}, expected (N, 3)")
    if xyz.shape[0] == 0 and not allow_empty:
        raise PointliftDataError(path, "contains no points")
    for key, values in result.fields.items():
        if values.shape[0] != xyz.shape[0]:
            raise PointliftDataError(path, f"field {key!r} has {values.shape[0]} rows for {xyz.shape[0]} points")
    keep = drop_nonfinite_rows(path, xyz, nonfinite)
    if keep is not None:
        xyz = xyz[keep]
        result.fields = {key: values[keep] for key, values in result.fields.items()}
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





# ----------------------------------------------------------------------------------------------
# NumPy


def _read_numpy(path: Path, columns: int | None) -> PointFile:
    extras: dict[str, np.ndarray] = {}
    if path.name.lower().endswith(".npy"):
        array = read_npy(path)
    else:
        arrays = read_npz(path)
        key = "points" if "points" in arrays else next(iter(arrays))
        array = arrays.pop(key)
        extras = arrays
    if array.ndim != 2 or array.shape[1] < 3:
        raise PointliftDataError(path, f"array has shape {array.shape}, expected (N, C>=3)")
    if columns is not None and array.shape[1] != columns:
        raise PointliftDataError(path, f"array has {array.shape[1]} columns, expected {columns}")
    if array.dtype.kind not in "fiu":
        raise PointliftDataError(path, f"array has non-numeric dtype {array.dtype}")
    result = _fields_from_matrix(path, array.astype(np.float32), name_by_width=False)
    for key, values in extras.items():
        if values.ndim >= 1 and values.shape[0] == array.shape[0] and values.dtype.kind in "fiub":
            if key in ("rgb", "colors", "color"):
                result.fields["rgb"] = _colour_to_unit(values, values.dtype.kind in "iu")
            elif key in ("normal", "normals"):
                result.fields["normal"] = values.astype(np.float32)
            else:
                result.fields[key] = values.astype(np.float32) if values.dtype.kind == "f" else values
    return result


# ----------------------------------------------------------------------------------------------
# raw float32 .bin (KITTI, nuScenes, ScanNet/SUN RGB-D exports)


def read_raw_bin(path: str | Path, columns: int, nonfinite: str = "drop") -> np.ndarray:
    """Read a headerless float32 file as an `(N, columns)` float32 array.

    The size must be a whole number of rows, and the values must repeat with period `columns`
    (neighbouring points are alike column by column): a nuScenes sweep (5 floats per point) read
    with 4 columns is refused instead of returning shuffled columns. Rows with non-finite x/y/z
    follow `nonfinite` ("drop" with a warning, "error", or "keep" for callers that check later).
    """
    path = Path(path)
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 3:
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
    with reading(path):
        array = np.fromfile(path, dtype="<f4").reshape(-1, columns)
    _check_period(path, array.reshape(-1), columns)
    if nonfinite != "keep":
        keep = drop_nonfinite_rows(path, array[:, :3], nonfinite)
        if keep is not None:
            array = array[keep]
    return array


def _period_distance(values: np.ndarray, period: int) -> float:
    """Median |v[k] - v[k + period]|: small at the true row length of a spatially ordered scan."""
    return float(np.median(np.abs(values[period:] - values[:-period])))


def _check_period(path: Path, flat: np.ndarray, columns: int, sample: int = 32_768) -> None:
    values = flat[:sample].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size < 64 * 8:
        return  # too few values to tell
    distance = {p: _period_distance(values, p) for p in range(3, 9)}
    best = min(distance, key=distance.get)
    mine = distance.get(columns, _period_distance(values, columns))
    # A multiple of the true period also repeats (reading 8 columns of a 4-column file cannot be
    # told apart); anything else at 3x the best neighbour difference is a wrong column count
    # (first 32k values of real sweeps: KITTI >140x, nuScenes 13x, ScanNet 6.5x, SUN RGB-D 2.1x apart;
    # SUN RGB-D read with 5 columns is caught by its size, with 3 by this check at 3.1x).
    if columns % best and mine > 3 * distance[best] + 1e-12:
        raise PointliftDataError(
            path, f"values repeat every {best} floats, not every {columns}: the file seems to have {best} "
            f"columns per point (median neighbour difference {distance[best]:.3g} at {best}, {mine:.3g} at {columns})"
        )


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

# OFF keyword prefixes: ST (texture coordinates), C (colour), N (normal); 4OFF/nOFF are not 3D.
_OFF_EXTRAS = {"ST": (2,), "C": (3, 4), "N": (3,)}


def read_off_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """`(vertices (V, 3) float64, triangles (T, 3) int64)` of an ascii OFF/COFF/NOFF/CNOFF/STOFF
    mesh; polygons are fan-triangulated, per-face colours ignored. Counts must match the body."""
    path = Path(path)
    with reading(path):
        data = path.read_bytes()
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as error:
            problem = f"is not ASCII text (byte offset {error.start}); binary OFF is not supported"
            raise PointliftDataError(path, problem) from None
        lines = [line.split("#")[0].split() for line in text.splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            raise PointliftDataError(path, "has no content")
        keyword = lines[0][0]
        position = keyword.find("OFF")
        prefix = keyword[:position] if position >= 0 else None
        valid = prefix is not None and _valid_prefix(prefix)
        if not valid:
            raise PointliftDataError(path, f"starts with {keyword[:20]!r}, expected OFF, COFF, NOFF, CNOFF or STOFF")
        # ModelNet's files sometimes glue the counts onto the keyword: "OFF490 518 0".
        glued = keyword[position + 3:]
        first = ([glued] if glued else []) + lines[0][1:]
        if first and first[0].upper() == "BINARY":
            raise PointliftDataError(path, "is a binary OFF (not supported)")
        rest = lines[1:]
        if not first:
            if not rest:
                raise PointliftDataError(path, "truncated: no vertex/face counts")
            first, rest = rest[0], rest[1:]
        if len(first) not in (2, 3):
            raise PointliftDataError(path, f"count line {' '.join(first)!r} must hold 2 or 3 integers")
        num_vertices, num_faces = (_nonnegative(path, v, "count") for v in first[:2])
        if len(rest) != num_vertices + num_faces:
            raise PointliftDataError(
                path, f"header declares {num_vertices} vertices and {num_faces} faces, body has {len(rest)} lines"
                + (" (truncated)" if len(rest) < num_vertices + num_faces else ": wrong counts?")
            )
        widths = _vertex_widths(prefix)
        rows = rest[:num_vertices]
        for number, row in enumerate(rows):
            if len(row) not in widths:
                raise PointliftDataError(
                    path, f"vertex {number} has {len(row)} values, "
                    f"a {prefix}OFF vertex has {' or '.join(map(str, sorted(widths)))}"
                )
        try:
            vertices = np.array([row[:3] for row in rows], dtype=np.float64).reshape(num_vertices, 3)
        except ValueError:
            raise PointliftDataError(path, "vertex coordinates are not numbers") from None
        triangles = _off_faces(path, rest[num_vertices:], num_vertices)
    return vertices, triangles


def _valid_prefix(prefix: str) -> bool:
    for part in ("ST", "C", "N"):
        if prefix.startswith(part):
            prefix = prefix[len(part):]
    return prefix == ""


def _vertex_widths(prefix: str) -> set[int]:
    widths = {3}
    for part, extra in _OFF_EXTRAS.items():
        if part in prefix:
            widths = {w + e for w in widths for e in extra}
    return widths


def _nonnegative(path: Path, text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PointliftDataError(path, f"{what} {text!r} is not an integer") from None
    if value < 0:
        raise PointliftDataError(path, f"{what} {value} is negative")
    return value


def _off_faces(path: Path, rows: list[list[str]], num_vertices: int) -> np.ndarray:
    """Fan-triangulated faces; a face row is `k i1 .. ik` plus an optional colour (0, 1, 3 or 4 values)."""
    fast = _uniform_faces(rows)
    if fast is not None:
        triangles = fast
        if triangles.size and (triangles.min() < 0 or triangles.max() >= num_vertices):
            raise PointliftDataError(path, f"face indices out of range for {num_vertices} vertices")
        return triangles
    triangles = []
    for number, row in enumerate(rows):
        k = _nonnegative(path, row[0], f"face {number} size")
        extra = len(row) - 1 - k
        if k < 3 or extra not in (0, 1, 3, 4):
            raise PointliftDataError(path, f"face {number} is malformed: {' '.join(row)[:80]!r}")
        try:
            polygon = [int(v) for v in row[1:1 + k]]
            [float(v) for v in row[1 + k:]]
        except ValueError:
            raise PointliftDataError(path, f"face {number} has non-integer indices or non-numeric colour") from None
        triangles.extend((polygon[0], polygon[i], polygon[i + 1]) for i in range(1, k - 1))
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if triangles.size and (triangles.min() < 0 or triangles.max() >= num_vertices):
        raise PointliftDataError(path, f"face indices out of range for {num_vertices} vertices")
    return triangles


def _uniform_faces(rows: list[list[str]]) -> np.ndarray | None:
    """All faces with the same size and row length (a triangle or quad mesh): one vectorised parse,
    same triangle order as the row-by-row path. None when the rows differ (or do not parse)."""
    if not rows or len({len(row) for row in rows}) != 1:
        return None
    table = np.array(rows)
    if not (table[:, 0] == table[0, 0]).all() or not table[0, 0].isdigit():
        return None
    k = int(table[0, 0])
    if k < 3 or table.shape[1] - 1 - k not in (0, 1, 3, 4):
        return None
    try:
        polygons = table[:, 1:1 + k].astype(np.int64)
        table[:, 1 + k:].astype(np.float64)
    except ValueError:
        return None
    fan = np.stack([np.stack([polygons[:, 0], polygons[:, i], polygons[:, i + 1]], 1) for i in range(1, k - 1)], 1)
    return fan.reshape(-1, 3)


def _sample_off(path: Path, vertices: np.ndarray, triangles: np.ndarray, num_samples: int, seed: int,
                nonfinite: str) -> PointFile:
    keep = drop_nonfinite_rows(path, vertices, nonfinite)  # the same policy: drop (warn) or refuse
    if keep is not None:
        triangles = triangles[keep[triangles].all(axis=1)]  # faces touching a dropped vertex go too
    if not len(triangles):
        raise PointliftDataError(path, "mesh has no faces to sample")
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
