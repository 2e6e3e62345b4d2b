"""Real point/mesh files written by other software (../shared/reference/point-files): pointlift must
read every file an independent reader (plyfile, pypcd4, open3d, trimesh) read, with the same point
count and xyz (<= 1e-6 relative), and refuse every other one with PointliftDataError naming it."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest

from pointlift.data import read_point_file
from pointlift.data.guard import PointliftDataWarning
from pointlift.errors import PointliftDataError

# Files an independent reader read but pointlift refuses, with the reason (kept short on purpose).
REFUSED_ON_PURPOSE: dict[str, str] = {}  # none: every file an independent reader read is read

# Files whose independent reader returns more points than the file has vertex rows: trimesh (the
# only reader of fuze_ascii.ply: plyfile refuses its face rows, which hold six values more than its
# header declares) splits each vertex by the texture coordinates of the faces using it, 502 vertex
# rows -> 664 (vertex, uv) pairs. pointlift reads the 502 rows; same min/max, and
# test_fuze_ascii_equals_trimesh_vertices rebuilds trimesh's 664 and its mean from them.
SPLIT_BY_TEXCOORD = {"trimesh/fuze_ascii.ply": 502}


# Files read as declared, with a PointliftDataWarning about data beyond the declared elements.
TRAILING_DATA = {"trimesh/points_emptyascii.ply"}  # 13 vertex lines, header declares 12 (plyfile reads 12)


def _expected(shared):
    root = shared("reference/point-files")
    return root, json.loads((root / "expected.json").read_text())


def _cases():
    from conftest import shared_root

    path = shared_root() / "reference/point-files/expected.json"
    return sorted(json.loads(path.read_text())) if path.is_file() else ["(absent)"]


@pytest.mark.parametrize("name", _cases())
def test_real_file(shared, name):
    root, expected = _expected(shared)
    entry = expected[name]
    path = root / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    if "independent_reader_error" in entry or name in REFUSED_ON_PURPOSE:
        with pytest.raises(PointliftDataError) as info:
            read_point_file(path, mesh_points="vertices", allow_empty=True)
        assert path.name in str(info.value)
        assert REFUSED_ON_PURPOSE.get(name, "") in str(info.value)
        return
    if name in TRAILING_DATA:
        with pytest.warns(PointliftDataWarning, match="is a count wrong"):
            result = read_point_file(path, mesh_points="vertices", allow_empty=True)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # none of these files has a non-finite point or extra data
            result = read_point_file(path, mesh_points="vertices", allow_empty=True)
    assert len(result) == SPLIT_BY_TEXCOORD.get(name, entry["points"] - entry["nonfinite_points"])
    if entry["points"] == 0:
        with pytest.raises(PointliftDataError, match="no points"):
            read_point_file(path)
        return
    xyz = result.xyz.astype(np.float64)
    scale = max(1.0, float(np.abs(entry["xyz_max"] + entry["xyz_min"]).max()))
    stats = (("xyz_min", xyz.min(0)), ("xyz_max", xyz.max(0)), ("xyz_mean", xyz.mean(0)))
    for stat, value in stats[:2] if name in SPLIT_BY_TEXCOORD else stats:  # mean: see SPLIT_BY_TEXCOORD
        np.testing.assert_allclose(value, entry[stat], rtol=1e-6, atol=1e-6 * scale, err_msg=stat)
    if path.suffix == ".off":  # the default reading samples the surface: inside the vertices' box
        surface = read_point_file(path, num_samples=512).xyz
        assert surface.shape == (512, 3)
        assert (surface >= xyz.min(0) - 1e-5 * scale).all() and (surface <= xyz.max(0) + 1e-5 * scale).all()


def test_nan_normals_are_kept(shared):
    """PCL's sac_plane_test.pcd: 15 of 3,283 normals are NaN; every point is read, NaN normals kept."""
    path = shared("reference/point-files/pcl/sac_plane_test.pcd")
    result = read_point_file(path)
    assert len(result) == 3283
    normal = result.fields["normal"]
    assert int((~np.isfinite(normal).all(axis=1)).sum()) == 15


def test_binary_compressed_equals_binary(shared):
    """PCL's 2d test images exist as ascii-derived binary_compressed pairs; spot-check one against
    the packed columns: x = column index, y = row index of a 256 x 256 organised cloud."""
    path = shared("reference/point-files/pcl/2d__lena.pcd")
    result = read_point_file(path)
    assert len(result) == 65536 and "intensity" in result.fields


# sha256 of trimesh 5.2.0's vertices of fuze_ascii.ply as float32, unique rows sorted, C order, '<f4':
# np.unique(trimesh.load(path, process=False).vertices.astype(np.float32), axis=0) (664 rows -> 502).
FUZE_TRIMESH_UNIQUE_SHA256 = "e405b8a5c247ca448de4888db01dcd1fb64ad9e3bbab1d67678078fa4c240df6"


def _unique_digest(xyz):
    unique = np.unique(np.asarray(xyz, np.float32), axis=0)
    return hashlib.sha256(np.ascontiguousarray(unique, "<f4").tobytes()).hexdigest()


def test_fuze_ascii_equals_trimesh_vertices(shared):
    """trimesh's fuze_ascii.ply: faces with two list properties (vertex_indices, texcoord) plus
    colours, each face row six values longer than its header says. pointlift reads the 502 vertex
    rows the header declares, equal to the file's text and to trimesh's vertices: the same unique
    rows (trimesh's 664 are these 502, split by texture coordinate), and the 664 (vertex, uv) pairs
    of the faces give trimesh's count and mean as expected.json records them."""
    root, expected = _expected(shared)
    entry = expected["trimesh/fuze_ascii.ply"]
    path = root / "trimesh/fuze_ascii.ply"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = read_point_file(path, mesh_points="vertices")
    lines = path.read_text().splitlines()
    body = lines[lines.index("end_header") + 1:]
    assert "element vertex 502" in lines and "element face 1000" in lines and len(body) == 1502
    vertex_rows = np.array([row.split()[:3] for row in body[:502]], dtype=np.float64)
    np.testing.assert_array_equal(result.xyz, vertex_rows.astype(np.float32))  # the rows, in order
    np.testing.assert_array_equal(result.fields["rgb"], np.full((502, 3), 192 / 255, np.float32))
    assert len(np.unique(result.xyz, axis=0)) == 502
    assert _unique_digest(result.xyz) == FUZE_TRIMESH_UNIQUE_SHA256
    faces = np.array([row.split() for row in body[502:]], dtype=np.float64)
    assert faces.shape == (1000, 21) and (faces[:, 0] == 3).all() and (faces[:, 4] == 6).all()
    corners = np.concatenate([faces[:, 1:4].reshape(-1, 1), faces[:, 5:11].reshape(-1, 2)], axis=1)
    split = np.unique(corners, axis=0)  # trimesh's vertices: one per (vertex index, uv) pair
    assert len(split) == entry["points"] == 664
    np.testing.assert_allclose(result.xyz[split[:, 0].astype(int)].astype(np.float64).mean(0), entry["xyz_mean"],
                               rtol=1e-6, atol=1e-9)

