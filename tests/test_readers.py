"""Readers of pointlift.data: real files of ../shared, round trips through writers written here with
struct/NumPy, and every bad-input case raising PointliftDataError that names the file."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import struct
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pointlift.data import (
    load_modelnet10_vox,
    load_modelnet40_h5,
    load_modelnet40_resampled,
    load_scanobjectnn_h5,
    open_rgbd_sequence,
    read_kitti_frame,
    read_nuscenes_frame,
    read_point_file,
)
from pointlift.data.lidar import load_info_pickle, read_kitti_calibration
from pointlift.data.guard import NonFinitePointsWarning, PointliftDataWarning
from pointlift.errors import PointliftConfigError, PointliftDataError

RNG = np.random.default_rng(7)


@contextlib.contextmanager
def raises_naming(path, match=None):
    """pytest.raises for PointliftDataError whose message also contains the file's name."""
    with pytest.raises(PointliftDataError, match=match) as info:
        yield info
    assert path.name in str(info.value), f"{path.name!r} not in {info.value}"


# ----------------------------------------------------------------------------------------------
# writers (independent of the readers: struct / NumPy only)


def cloud(n=50):
    xyz = RNG.normal(size=(n, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, size=(n, 3)).astype(np.uint8)
    normal = RNG.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    intensity = RNG.random(n).astype(np.float32)
    return xyz, rgb, normal, intensity


def write_ply(path, fmt, xyz, rgb, normal, intensity, faces=None):
    props = [("x", "float", "f4"), ("y", "float", "f4"), ("z", "float", "f4"),
             ("red", "uchar", "u1"), ("green", "uchar", "u1"), ("blue", "uchar", "u1"),
             ("nx", "float", "f4"), ("ny", "float", "f4"), ("nz", "float", "f4"),
             ("intensity", "float", "f4")]
    header = ["ply", f"format {fmt} 1.0", "comment written by test", f"element vertex {len(xyz)}"]
    header += [f"property {t} {n}" for n, t, _ in props]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    body = b""
    if fmt == "ascii":
        rows = []
        for i in range(len(xyz)):
            values = [*map(repr, xyz[i].tolist()), *map(str, rgb[i].tolist()),
                      *map(repr, normal[i].tolist()), repr(float(intensity[i]))]
            rows.append(" ".join(values))
        rows += [" ".join(map(str, [len(f), *f])) for f in (faces if faces is not None else [])]
        body = ("\n".join(rows) + "\n").encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        for i in range(len(xyz)):
            body += struct.pack(order + "3f3B3ff", *xyz[i], *rgb[i], *normal[i], intensity[i])
        for f in faces if faces is not None else []:
            body += struct.pack(order + "B3i", 3, *f)
    path.write_bytes(("\n".join(header) + "\n").encode() + body)


def pack_rgb(rgb):
    return (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]


def write_pcd(path, mode, xyz, rgb, intensity, rgb_type="F"):
    n = len(xyz)
    header = ["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS x y z rgb intensity",
              "SIZE 4 4 4 4 4", f"TYPE F F F {rgb_type} F", "COUNT 1 1 1 1 1", f"WIDTH {n}", "HEIGHT 1",
              "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", f"DATA {mode}"]
    packed = pack_rgb(rgb)
    if mode == "binary":
        table = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("i", "<f4")])
        table["x"], table["y"], table["z"] = xyz.T
        table["rgb"], table["i"] = packed, intensity
        body = table.tobytes()
    else:
        as_float = packed.view(np.float32)
        rows = []
        for i in range(n):
            colour = str(int(packed[i])) if rgb_type == "U" else "%.9g" % as_float[i]
            rows.append(" ".join([*("%.9g" % v for v in xyz[i]), colour, "%.9g" % intensity[i]]))
        body = ("\n".join(rows) + "\n").encode()
    path.write_bytes(("\n".join(header) + "\n").encode() + body)


# ----------------------------------------------------------------------------------------------
# point files


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_round_trip(tmp_path, fmt):
    xyz, rgb, normal, intensity = cloud()
    path = tmp_path / "cloud.ply"
    write_ply(path, fmt, xyz, rgb, normal, intensity, faces=[(0, 1, 2), (2, 3, 4)])
    result = read_point_file(path)
    assert result.xyz.dtype == np.float32 and result.xyz.shape == (50, 3)
    np.testing.assert_allclose(result.xyz, xyz, rtol=1e-6)
    np.testing.assert_allclose(result.fields["rgb"], rgb / 255.0, atol=1e-6)
    assert result.fields["rgb"].dtype == np.float32
    np.testing.assert_allclose(result.fields["normal"], normal, rtol=1e-6)
    np.testing.assert_allclose(result.fields["intensity"], intensity, rtol=1e-6)


@pytest.mark.parametrize("mode,rgb_type", [("ascii", "F"), ("ascii", "U"), ("binary", "U"), ("binary", "F")])
def test_pcd_round_trip(tmp_path, mode, rgb_type):
    xyz, rgb, _, intensity = cloud()
    path = tmp_path / "cloud.pcd"
    write_pcd(path, mode, xyz, rgb, intensity, rgb_type)
    result = read_point_file(path)
    np.testing.assert_allclose(result.xyz, xyz, rtol=1e-6)
    np.testing.assert_allclose(result.fields["rgb"], rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(result.fields["intensity"], intensity, rtol=1e-6)


def test_numpy_files(tmp_path):
    xyz, rgb, normal, _ = cloud()
    np.save(tmp_path / "a.npy", np.concatenate([xyz, normal], axis=1))
    result = read_point_file(tmp_path / "a.npy", columns=6)
    np.testing.assert_array_equal(result.xyz, xyz)
    np.testing.assert_array_equal(result.fields["features"], normal)
    np.savez(tmp_path / "b.npz", other=np.zeros(3), points=xyz, normal=normal, rgb=rgb)
    result = read_point_file(tmp_path / "b.npz")
    np.testing.assert_array_equal(result.xyz, xyz)
    np.testing.assert_array_equal(result.fields["normal"], normal)
    np.testing.assert_allclose(result.fields["rgb"], rgb / 255.0, atol=1e-6)
    with raises_naming(tmp_path / "a.npy", "columns"):
        read_point_file(tmp_path / "a.npy", columns=4)


def write_off(path, vertices, faces, glued=False):
    head = f"OFF{len(vertices)} {len(faces)} 0" if glued else f"OFF\n{len(vertices)} {len(faces)} 0"
    rows = [" ".join(map(str, v)) for v in vertices] + [" ".join(map(str, [len(f), *f])) for f in faces]
    path.write_text(head + "\n" + "\n".join(rows) + "\n")


BOX_VERTICES = [(x, y, z) for x in (0, 2) for y in (0, 1) for z in (0, 1)]  # a 2 x 1 x 1 box
BOX_QUADS = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]


@pytest.mark.parametrize("glued", [False, True])
def test_off_sampling_is_on_surface_and_area_weighted(tmp_path, glued):
    path = tmp_path / "box.off"
    write_off(path, BOX_VERTICES, BOX_QUADS, glued)
    result = read_point_file(path, num_samples=20000, seed=3)
    p = result.xyz.astype(np.float64)
    assert p.shape == (20000, 3)
    distance_to_surface = np.minimum.reduce([p[:, 0], 2 - p[:, 0], p[:, 1], 1 - p[:, 1], p[:, 2], 1 - p[:, 2]])
    assert np.abs(distance_to_surface).max() < 1e-5 and (p >= -1e-6).all()
    # The two 1x1 end faces hold 2/10 of the area; the four 2x1 sides 8/10.
    on_ends = (np.abs(p[:, 0]) < 1e-5) | (np.abs(p[:, 0] - 2) < 1e-5)
    assert abs(on_ends.mean() - 0.2) < 0.015
    normals = result.fields["normal"]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    again = read_point_file(path, num_samples=20000, seed=3)
    np.testing.assert_array_equal(again.xyz, result.xyz)


@pytest.mark.parametrize("relative,columns,wrong_columns",
                         [("scannet/scene0000_00.bin", 6, 5), ("sunrgbd/000017.bin", 6, 7)])
def test_shared_indoor_bins(shared, relative, columns, wrong_columns):
    path = shared(f"data/sensor-samples/{relative}")
    result = read_point_file(path, columns=columns)
    assert result.xyz.dtype == np.float32 and result.xyz.shape == (path.stat().st_size // 24, 3)
    rgb = result.fields["rgb"]
    assert rgb.shape == result.xyz.shape and rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.05
    extent = result.xyz.max(0) - result.xyz.min(0)
    assert (extent > 1).all() and (extent < 20).all()  # a room, in metres
    with raises_naming(path, "multiple"):
        read_point_file(path, columns=wrong_columns)


def test_bad_point_files(tmp_path):
    xyz, rgb, normal, intensity = cloud(20)
    empty = tmp_path / "empty.ply"
    empty.write_bytes(b"")
    with raises_naming(empty, "empty"):
        read_point_file(empty)
    with raises_naming(tmp_path / "absent.pcd", "not found"):
        read_point_file(tmp_path / "absent.pcd")

    binary = tmp_path / "truncated.ply"
    write_ply(binary, "binary_little_endian", xyz, rgb, normal, intensity)
    binary.write_bytes(binary.read_bytes()[:-7])
    with raises_naming(binary, "truncated"):
        read_point_file(binary)

    ascii_ply = tmp_path / "short.ply"
    write_ply(ascii_ply, "ascii", xyz, rgb, normal, intensity)
    ascii_ply.write_text("\n".join(ascii_ply.read_text().splitlines()[:-3]) + "\n")
    with raises_naming(ascii_ply, "truncated"):
        read_point_file(ascii_ply)

    columns_ply = tmp_path / "columns.ply"
    write_ply(columns_ply, "ascii", xyz, rgb, normal, intensity)
    lines = columns_ply.read_text().splitlines()
    lines[-5] += " 1.0"
    columns_ply.write_text("\n".join(lines) + "\n")
    with raises_naming(columns_ply, "values"):
        read_point_file(columns_ply)

    nan_ply = tmp_path / "nan.ply"
    xyz_nan = xyz.copy()
    xyz_nan[3, 1] = np.nan
    normal_nan = normal.copy()
    normal_nan[5] = np.nan
    write_ply(nan_ply, "binary_big_endian", xyz_nan, rgb, normal_nan, intensity)
    # Policy: a point with non-finite coordinates is dropped with a counting warning (or refused
    # by option); non-finite attributes are kept.
    with pytest.warns(NonFinitePointsWarning, match="dropped 1 of 20 points"):
        dropped = read_point_file(nan_ply)
    np.testing.assert_allclose(dropped.xyz, np.delete(xyz, 3, axis=0), rtol=1e-6)
    assert np.isnan(dropped.fields["normal"][4]).all() and np.isfinite(np.delete(dropped.fields["normal"], 4, 0)).all()
    with raises_naming(nan_ply, "1 of 20 points have non-finite"):
        read_point_file(nan_ply, nonfinite="error")

    header_only = tmp_path / "header.ply"
    header_only.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\n")
    with raises_naming(header_only, "header"):
        read_point_file(header_only)

    pcd = tmp_path / "mismatch.pcd"
    write_pcd(pcd, "binary", xyz, rgb, intensity)
    pcd.write_bytes(pcd.read_bytes().replace(b"WIDTH 20", b"WIDTH 21"))
    with raises_naming(pcd, "POINTS"):
        read_point_file(pcd)
    truncated_pcd = tmp_path / "truncated.pcd"
    write_pcd(truncated_pcd, "binary", xyz, rgb, intensity)
    truncated_pcd.write_bytes(truncated_pcd.read_bytes()[:-1])
    with raises_naming(truncated_pcd, "truncated"):
        read_point_file(truncated_pcd)

    nan_npy = tmp_path / "nan.npy"
    np.save(nan_npy, np.full((4, 3), np.nan, dtype=np.float32))
    with raises_naming(nan_npy, "all 4 points have non-finite"):
        read_point_file(nan_npy)
    corrupt_npz = tmp_path / "corrupt.npz"
    corrupt_npz.write_bytes(b"PK\x03\x04 not really a zip")
    with raises_naming(corrupt_npz):
        read_point_file(corrupt_npz)

    raw = tmp_path / "scan.bin"
    np.arange(20, dtype=np.float32).tofile(raw)
    with raises_naming(raw, "multiple"):
        read_point_file(raw, columns=3)
    with pytest.raises(PointliftConfigError, match="columns"):
        read_point_file(raw)
    nan_bin = tmp_path / "nan.bin"
    np.array([0, 1, 2, np.inf, 0, np.nan, 2, 1], dtype=np.float32).tofile(nan_bin)
    with pytest.warns(NonFinitePointsWarning, match="dropped 1 of 2"):
        kept = read_point_file(nan_bin, columns=4)
    assert len(kept) == 1 and np.isinf(kept.fields["intensity"][0])

    flat = tmp_path / "flat.off"
    write_off(flat, [(0, 0, 0), (1, 0, 0), (2, 0, 0)], [(0, 1, 2)])
    with raises_naming(flat, "area"):
        read_point_file(flat)
    out_of_range = tmp_path / "range.off"
    write_off(out_of_range, [(0, 0, 0), (1, 0, 0), (0, 1, 0)], [(0, 1, 5)])
    with raises_naming(out_of_range, "range"):
        read_point_file(out_of_range)


# ----------------------------------------------------------------------------------------------
# shape sets


@pytest.mark.parametrize("split,total,empty", [("train", 3991, 27), ("test", 908, 7)])
def test_modelnet10_vox(shared, split, total, empty):
    path = shared("data/modelnet10_vox32.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shapes = load_modelnet10_vox(path, split)
    messages = [str(w.message) for w in caught if f"dropped {empty} empty shapes" in str(w.message)]
    assert len(messages) == 1 and path.name in messages[0], [str(w.message) for w in caught]
    assert len(shapes) == total - empty and len(shapes.labels) == total - empty
    assert shapes.labels.dtype == np.int64 and 0 <= shapes.labels.min() and shapes.labels.max() == 9
    assert shapes.class_names[2] == "chair" and shapes.split == split and shapes.source == path
    sizes = np.array([len(p) for p in shapes.points])
    assert sizes.min() > 0 and 1000 < sizes.mean() < 5000
    assert all(p.dtype == np.float32 and np.abs(p).max() < 0.5 for p in shapes.points[:50])
    # Tables (class 8) have their top high up the third axis: it is "up" (z), as in ModelNet.
    table = np.concatenate([p for p, label in zip(shapes.points, shapes.labels) if label == 8][:20])
    assert np.median(table[:, 2]) > np.median(table[:, 0]) and np.median(table[:, 2]) > 0
    if split == "train":
        return  # loading 520 MB of grids again for the reference check costs seconds; test split does it
    with np.load(path) as archive:
        grids, labels = archive[f"X_{split}"], archive[f"y_{split}"]
    kept = [i for i in range(len(grids)) if grids[i].any()]
    np.testing.assert_array_equal(shapes.labels, labels[kept])
    for position in (0, 100, len(kept) - 1):  # slow reference: loop over the grid
        grid = grids[kept[position]]
        expected = [((i + 0.5) / 32 - 0.5, (j + 0.5) / 32 - 0.5, (k + 0.5) / 32 - 0.5)
                    for i in range(32) for j in range(32) for k in range(32) if grid[i, j, k]]
        np.testing.assert_allclose(shapes.points[position], np.array(expected, dtype=np.float32))


def test_modelnet10_vox_bad_archives(tmp_path):
    grids = np.zeros((3, 4, 4, 4), dtype=np.int32)
    grids[0, 1, 2, 3] = grids[2, 0, 0, 0] = 1
    good = tmp_path / "vox.npz"
    np.savez_compressed(good, X_train=grids, y_train=np.array([4, 5, 6]))
    with pytest.warns(UserWarning, match="dropped 1 empty shapes of 3"):
        shapes = load_modelnet10_vox(good, "train")
    np.testing.assert_allclose(shapes.points[0], [[1.5 / 4 - 0.5, 2.5 / 4 - 0.5, 3.5 / 4 - 0.5]])
    assert shapes.labels.tolist() == [4, 6]
    mismatch = tmp_path / "mismatch.npz"
    np.savez_compressed(mismatch, X_train=grids, y_train=np.array([1, 2]))
    with raises_naming(mismatch, "labels"):
        load_modelnet10_vox(mismatch, "train")
    with raises_naming(good, "X_test"):
        load_modelnet10_vox(good, "test")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with raises_naming(truncated):
        load_modelnet10_vox(truncated, "train")


def write_modelnet40_h5(root, files):
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(f"class{i}" for i in range(40)) + "\n")
    for split in ("train", "test"):
        names = [name for name in files if f"_{split}" in name]
        (root / f"{split}_files.txt").write_text(
            "".join(f"data/modelnet40_ply_hdf5_2048/{name}\n" for name in names))
    for name, (data, label) in files.items():
        with h5py.File(root / name, "w") as h5:
            h5["data"] = data
            h5["label"] = label
            h5["normal"] = np.zeros_like(data)


def test_modelnet40_h5(tmp_path):
    data = [RNG.normal(size=(n, 64, 3)).astype(np.float32) for n in (3, 2, 4)]
    labels = [RNG.integers(0, 40, size=(len(d), 1)).astype(np.uint8) for d in data]
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    write_modelnet40_h5(root, {"ply_data_train0.h5": (data[0], labels[0]), "ply_data_train1.h5": (data[1], labels[1]),
                               "ply_data_test0.h5": (data[2], labels[2])})
    train = load_modelnet40_h5(root, "train")
    assert len(train) == 5 and len(train.class_names) == 40
    np.testing.assert_array_equal(np.stack(train.points), np.concatenate(data[:2]))
    np.testing.assert_array_equal(train.labels, np.concatenate(labels[:2])[:, 0])
    test = load_modelnet40_h5(root, "test")
    assert test.labels.dtype == np.int64 and test.points[0].shape == (64, 3)

    bad = tmp_path / "bad"
    write_modelnet40_h5(bad, {"ply_data_train0.h5": (data[0], labels[1])})  # 3 shapes, 2 labels
    with raises_naming(bad / "ply_data_train0.h5", "label"):
        load_modelnet40_h5(bad, "train")
    (bad / "ply_data_train0.h5").unlink()
    with raises_naming(bad / "ply_data_train0.h5", "not found"):
        load_modelnet40_h5(bad, "train")
    with pytest.raises(PointliftConfigError):
        load_modelnet40_h5(root, "val")


def test_modelnet40_resampled(tmp_path):
    root = tmp_path / "modelnet40_normal_resampled"
    classes = ["airplane", "night_stand"]
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    shapes = {"airplane_0001": 0, "night_stand_0002": 1, "airplane_0003": 0}
    rows = {}
    for shape_id, label in shapes.items():
        (root / classes[label]).mkdir(exist_ok=True)
        rows[shape_id] = RNG.normal(size=(40, 6)).astype(np.float32)
        np.savetxt(root / classes[label] / f"{shape_id}.txt", rows[shape_id], delimiter=",", fmt="%.6f")
    (root / "modelnet40_train.txt").write_text("airplane_0001\nnight_stand_0002\n")
    (root / "modelnet40_test.txt").write_text("airplane_0003\n")
    train = load_modelnet40_resampled(root, "train", num_points=32)
    assert train.labels.tolist() == [0, 1] and train.points[1].shape == (32, 3)
    np.testing.assert_allclose(train.points[1], rows["night_stand_0002"][:32, :3], atol=1e-6)
    np.testing.assert_allclose(train.normals[0], rows["airplane_0001"][:32, 3:], atol=1e-6)
    with raises_naming(root / "airplane" / "airplane_0003.txt", "fewer"):
        load_modelnet40_resampled(root, "test", num_points=41)
    np.savetxt(root / "airplane" / "airplane_0003.txt", rows["airplane_0003"][:, :5], delimiter=",")
    with raises_naming(root / "airplane" / "airplane_0003.txt", "6"):
        load_modelnet40_resampled(root, "test", num_points=8)


def test_scanobjectnn(tmp_path):
    root = tmp_path / "h5_files"
    (root / "main_split").mkdir(parents=True)
    data = RNG.normal(size=(6, 2048, 3)).astype(np.float32)
    labels = RNG.integers(0, 15, size=6).astype(np.int64)
    for name in ("training_objectdataset_augmentedrot_scale75.h5", "test_objectdataset.h5"):
        with h5py.File(root / "main_split" / name, "w") as h5:
            h5["data"], h5["label"], h5["mask"] = data, labels, np.zeros((6, 2048))
    rs = load_scanobjectnn_h5(root, "train", "PB_T50_RS")
    assert len(rs) == 6 and rs.class_names[4] == "chair" and rs.source.name.startswith("training_")
    np.testing.assert_array_equal(np.stack(rs.points), data)
    np.testing.assert_array_equal(rs.labels, labels)
    direct = load_scanobjectnn_h5(root / "main_split" / "test_objectdataset.h5", "test", "main_split")
    np.testing.assert_array_equal(direct.labels, labels)
    with raises_naming(root, "test_objectdataset_augmentedrot_scale75.h5"):
        load_scanobjectnn_h5(root, "test", "PB_T50_RS")
    bad = tmp_path / "bad_labels.h5"
    with h5py.File(bad, "w") as h5:
        h5["data"], h5["label"] = data, labels[:5]
    with raises_naming(bad, "label"):
        load_scanobjectnn_h5(bad, "train")
    nan = tmp_path / "nan.h5"
    with h5py.File(nan, "w") as h5:
        h5["data"], h5["label"] = np.full((1, 4, 3), np.nan, np.float32), labels[:1]
    with raises_naming(nan, "non-finite"):
        load_scanobjectnn_h5(nan, "train")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with raises_naming(corrupt):
        load_scanobjectnn_h5(corrupt, "train")


# ----------------------------------------------------------------------------------------------
# RGB-D


def assert_rigid(pose):
    assert pose.shape == (4, 4) and pose.dtype == np.float64
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-3)
    assert abs(np.linalg.det(pose[:3, :3]) - 1) < 1e-3
    np.testing.assert_array_equal(pose[3], [0, 0, 0, 1])


def test_seven_scenes(shared):
    root = shared("data/7scenes-redkitchen")
    sequence = open_rgbd_sequence(root)
    assert len(sequence) == 350 and sequence.frame_numbers == list(range(0, 700, 2))
    assert sequence.names[1] == "frame-000002"
    for index in (0, 175, 349):
        frame = sequence[index]
        assert frame.color.shape == (480, 640, 3) and frame.color.dtype == np.uint8
        assert frame.depth.shape == (480, 640) and frame.depth.dtype == np.float32
        np.testing.assert_allclose(frame.intrinsics, [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
        assert_rigid(frame.pose)
        raw = np.asarray(Image.open(root / f"{frame.name}.depth.png")).astype(np.int64)
        valid = (raw != 65535) & (raw != 0)
        np.testing.assert_array_equal(frame.depth > 0, valid)
        np.testing.assert_allclose(frame.depth[valid], raw[valid] / 1000.0, rtol=1e-6)
        assert valid.mean() > 0.5 and 0.3 < np.median(frame.depth[valid]) < 6.0 and frame.depth.max() < 10
    # consecutive poses move a little, not a lot (cm per frame at hand-held speed)
    step = np.linalg.norm(sequence[1].pose[:3, 3] - sequence[0].pose[:3, 3])
    assert step < 0.2


def make_seven_scenes_copy(shared, tmp_path, frames=(0, 2)):
    source = shared("data/7scenes-redkitchen")
    root = tmp_path / "redkitchen"
    root.mkdir(parents=True)
    shutil.copy(source / "camera-intrinsics.txt", root)
    for number in frames:
        for suffix in ("color.jpg", "depth.png", "pose.txt"):
            shutil.copy(source / f"frame-{number:06d}.{suffix}", root)
    return root


def test_seven_scenes_bad_inputs(shared, tmp_path):
    root = make_seven_scenes_copy(shared, tmp_path)
    (root / "frame-000002.pose.txt").unlink()
    with raises_naming(root / "frame-000002.pose.txt", "missing"):
        open_rgbd_sequence(root)

    root = make_seven_scenes_copy(shared, tmp_path / "b")
    pose = root / "frame-000002.pose.txt"
    pose.write_text(pose.read_text().replace("0.000000000000000000e+00", "nan", 1))
    depth = root / "frame-000000.depth.png"
    depth.write_bytes(depth.read_bytes()[:5000])
    sequence = open_rgbd_sequence(root)  # lazy: nothing read yet
    with raises_naming(depth):
        sequence[0]
    with raises_naming(pose, "non-finite"):
        sequence[1]

    root = make_seven_scenes_copy(shared, tmp_path / "c")
    color = root / "frame-000000.color.jpg"
    Image.open(color).resize((640, 400)).save(color)
    with raises_naming(color, "aspect"):
        open_rgbd_sequence(root)[0]
    (root / "camera-intrinsics.txt").unlink()
    with raises_naming(root / "camera-intrinsics.txt", "not found"):
        open_rgbd_sequence(root)


def write_scannet(root, frames=3, depth_hw=(24, 32), color_hw=(48, 64)):
    for folder in ("color", "depth", "pose", "intrinsic"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    intrinsics = np.array([[30.0, 0, 16, 0], [0, 30.0, 12, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", intrinsics)
    depths, colors, poses = [], [], []
    for number in range(0, frames * 20, 20):
        depth = RNG.integers(0, 5000, size=depth_hw).astype(np.uint16)
        depth[0, :5] = 0
        Image.fromarray(depth).save(root / "depth" / f"{number}.png")
        color = RNG.integers(0, 256, size=(*color_hw, 3)).astype(np.uint8)
        Image.fromarray(color).save(root / "color" / f"{number}.jpg", quality=95)
        angle = number / 50
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        pose[:3, 3] = [number / 10, 1, 2]
        np.savetxt(root / "pose" / f"{number}.txt", pose)
        depths.append(depth), colors.append(color), poses.append(pose)
    return intrinsics, depths, poses


def test_scannet_layout(tmp_path):
    root = tmp_path / "scene0000_00"
    intrinsics, depths, poses = write_scannet(root, frames=12)
    sequence = open_rgbd_sequence(root)
    assert sequence.frame_numbers == list(range(0, 240, 20))  # numeric, not lexicographic, order
    frame = sequence[10]
    assert frame.name == "200" and frame.color.shape == (24, 32, 3) and frame.color.dtype == np.uint8
    expected_color = np.asarray(Image.open(root / "color" / "200.jpg").convert("RGB").resize((32, 24), Image.BILINEAR))
    np.testing.assert_array_equal(frame.color, expected_color)
    np.testing.assert_allclose(frame.depth, depths[10] / 1000.0, rtol=1e-6)
    assert (frame.depth[0, :5] == 0).all()
    np.testing.assert_allclose(frame.intrinsics, intrinsics[:3, :3])
    np.testing.assert_allclose(frame.pose, poses[10], atol=1e-12)

    (root / "pose" / "20.txt").write_text("-inf -inf -inf -inf\n" * 4)
    with raises_naming(root / "pose" / "20.txt", "non-finite"):
        open_rgbd_sequence(root)[1]
    other = RNG.integers(0, 5000, size=(30, 40)).astype(np.uint16)
    Image.fromarray(other).save(root / "depth" / "40.png")
    sequence = open_rgbd_sequence(root)
    sequence[0]
    with raises_naming(root / "depth" / "40.png", "sequence"):
        sequence[2]
    (root / "intrinsic" / "intrinsic_depth.txt").unlink()
    with raises_naming(root / "intrinsic" / "intrinsic_depth.txt", "not found"):
        open_rgbd_sequence(root)


# ----------------------------------------------------------------------------------------------
# LiDAR + cameras


def fraction_in_image(points, lidar2img, image_hw, min_depth=1.0):
    """Among points in front of the camera (depth > min_depth), the share that lands in the image."""
    homogeneous = np.concatenate([points[:, :3].astype(np.float64), np.ones((len(points), 1))], axis=1)
    projected = homogeneous @ lidar2img.T
    depth = projected[:, 2]
    front = depth > min_depth
    u, v = projected[front, 0] / depth[front], projected[front, 1] / depth[front]
    inside = (u >= 0) & (u < image_hw[1]) & (v >= 0) & (v < image_hw[0])
    return inside.mean(), front.sum()


def test_kitti_frame(shared, tmp_path):
    folder = shared("data/sensor-samples/kitti")
    frame = read_kitti_frame(folder / "000008.bin", folder / "000008.png", folder / "000008.pkl")
    assert frame.points.dtype == np.float32 and frame.points.shape == (17238, 4)
    camera = frame.cameras[0]
    assert camera.image.shape == (375, 1242, 3) and camera.image.dtype == np.uint8
    assert camera.lidar2img.shape == (4, 4) and camera.lidar2img.dtype == np.float64
    share, in_front = fraction_in_image(frame.points, camera.lidar2img, camera.image.shape[:2])
    assert in_front > 10000 and share > 0.9, share

    # The official calib text gives the same matrix: P2 @ R0_rect @ Tr_velo_to_cam.
    entry = load_info_pickle(folder / "000008.pkl")["data_list"][0]
    np.testing.assert_allclose(camera.lidar2img, np.array(entry["images"]["CAM2"]["lidar2img"]), atol=1e-3)
    p2 = np.array(entry["images"]["CAM2"]["cam2img"])[:3]
    r0 = np.array(entry["images"]["R0_rect"])[:3, :3]
    tr = np.array(entry["lidar_points"]["Tr_velo_to_cam"])[:3]
    calib = tmp_path / "000008.txt"
    calib.write_text("".join(f"{k}: {' '.join('%.12e' % v for v in m.ravel())}\n"
                             for k, m in (("P0", p2), ("P2", p2), ("R0_rect", r0), ("Tr_velo_to_cam", tr))))
    np.testing.assert_allclose(read_kitti_calibration(calib), camera.lidar2img, rtol=1e-6, atol=1e-6)

    # ../shared's 000008.txt is P2 alone: refused rather than silently projecting wrongly.
    with raises_naming(folder / "000008.txt", "camera projection"):
        read_kitti_frame(folder / "000008.bin", folder / "000008.png", folder / "000008.txt")
    lidar2img_txt = tmp_path / "lidar2img.txt"
    np.savetxt(lidar2img_txt, camera.lidar2img)
    np.testing.assert_allclose(read_kitti_calibration(lidar2img_txt), camera.lidar2img)

    cut = tmp_path / "cut.bin"
    cut.write_bytes((folder / "000008.bin").read_bytes()[:-6])
    with raises_naming(cut, "multiple"):
        read_kitti_frame(cut, folder / "000008.png", folder / "000008.pkl")
    truncated_png = tmp_path / "000008.png"
    truncated_png.write_bytes((folder / "000008.png").read_bytes()[:20000])
    with raises_naming(truncated_png):
        read_kitti_frame(folder / "000008.bin", truncated_png, folder / "000008.pkl")


def test_nuscenes_frame(shared, tmp_path):
    folder = shared("data/sensor-samples/nuscenes")
    info = next(folder.glob("*.pkl"))
    frame = read_nuscenes_frame(info, folder)
    assert frame.points.dtype == np.float32 and frame.points.shape == (34688, 5)
    assert sorted(c.name for c in frame.cameras) == sorted(
        ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"])
    entry = load_info_pickle(info)["data_list"][0]
    seen = np.zeros(len(frame.points), dtype=bool)
    for camera in frame.cameras:
        assert camera.image.shape == (900, 1600, 3) and camera.image.dtype == np.uint8
        cam2img = np.eye(4)
        cam2img[:3, :3] = entry["images"][camera.name]["cam2img"]
        np.testing.assert_allclose(camera.lidar2img, cam2img @ np.array(entry["images"][camera.name]["lidar2cam"]))
        share, in_front = fraction_in_image(frame.points, camera.lidar2img, (900, 1600))
        assert share > 0.2 and in_front > 1000, (camera.name, share)
        projected = np.c_[frame.points[:, :3], np.ones(len(frame.points))] @ camera.lidar2img.T
        d = projected[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = projected[:, 0] / d, projected[:, 1] / d
        seen |= (d > 1) & (u >= 0) & (u < 1600) & (v >= 0) & (v < 900)
        if camera.name == "CAM_BACK":  # each camera carries its own image
            expected = np.asarray(Image.open(next(folder.glob("*__CAM_BACK__*.jpg"))).convert("RGB"))
            np.testing.assert_array_equal(camera.image, expected)
    far = np.linalg.norm(frame.points[:, :2], axis=1) > 3  # beyond the ego vehicle
    assert seen[far].mean() > 0.7  # six cameras cover most of the sweep (not what is high above)

    # Broken copies: missing camera image, truncated sweep.
    broken = tmp_path / "nuscenes"
    shutil.copytree(folder, broken)
    image = next(broken.glob("*CAM_BACK__*.jpg"))
    image.unlink()
    with raises_naming(image, "not found"):
        read_nuscenes_frame(broken / info.name, broken)
    shutil.copy(folder / image.name, image)
    sweep = next(broken.glob("*.pcd.bin"))
    sweep.write_bytes(sweep.read_bytes()[:-4])
    with raises_naming(sweep, "multiple"):
        read_nuscenes_frame(broken / info.name, broken)
    bad_pickle = tmp_path / "bad.pkl"
    bad_pickle.write_bytes(b"\x80\x04\x95 truncated")
    with raises_naming(bad_pickle):
        read_nuscenes_frame(bad_pickle, folder)


# ----------------------------------------------------------------------------------------------
# header/body agreement (issue 15): wrong counts are refused, long headers read


def _edit_count(path, old, new):
    path.write_bytes(path.read_bytes().replace(old, new, 1))


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
@pytest.mark.parametrize("delta", [-1, 1, "-1"])
def test_ply_wrong_vertex_count_is_refused(tmp_path, fmt, delta):
    xyz, rgb, normal, intensity = cloud(20)
    path = tmp_path / "count.ply"
    write_ply(path, fmt, xyz, rgb, normal, intensity, faces=[(0, 1, 2), (2, 3, 4)])
    new = b"element vertex -1" if delta == "-1" else b"element vertex %d" % (20 + delta)
    _edit_count(path, b"element vertex 20", new)
    with raises_naming(path):
        read_point_file(path)


def test_ply_count_one_short_without_faces_is_never_silent(tmp_path):
    """Data beyond the last element reads as declared (as plyfile does), with a warning."""
    xyz, rgb, normal, intensity = cloud(20)
    path = tmp_path / "short.ply"
    write_ply(path, "binary_little_endian", xyz, rgb, normal, intensity)
    _edit_count(path, b"element vertex 20", b"element vertex 19")
    with pytest.warns(PointliftDataWarning, match="ignored 31 bytes"):
        assert len(read_point_file(path)) == 19


@pytest.mark.parametrize("mode", ["ascii", "binary"])
@pytest.mark.parametrize("points", [19, 21])
def test_pcd_wrong_point_count_is_refused(tmp_path, mode, points):
    xyz, rgb, _, intensity = cloud(20)
    path = tmp_path / "count.pcd"
    write_pcd(path, mode, xyz, rgb, intensity)
    data = path.read_bytes().replace(b"WIDTH 20", b"WIDTH %d" % points).replace(b"POINTS 20", b"POINTS %d" % points)
    path.write_bytes(data)
    with raises_naming(path):
        read_point_file(path)


def test_pcd_count_zero_and_repeated_fields_are_refused(tmp_path):
    xyz, rgb, _, intensity = cloud(5)
    path = tmp_path / "zero.pcd"
    write_pcd(path, "ascii", xyz, rgb, intensity)
    text = path.read_text()
    count_line = next(line for line in text.splitlines() if line.startswith("COUNT"))
    path.write_text(text.replace(count_line, "COUNT 0" + count_line[7:]))
    with raises_naming(path, "COUNT is 0"):
        read_point_file(path)


# ----------------------------------------------------------------------------------------------
# elements with several list properties (issue 28): followed by the header, ascii and binary

STRUCT_CODES = {"char": "b", "uchar": "B", "short": "h", "ushort": "H", "int": "i", "uint": "I",
                "float": "f", "double": "d"}
FACE_PROPS = [("vertex_indices", "uchar", "int"), ("flags", "uchar"), ("texcoord", "uchar", "float"),
              ("red", "uchar"), ("green", "uchar"), ("blue", "uchar"), ("quality", "float")]


def write_ply_elements(path, fmt, elements, surplus=None):
    """A PLY of (name, properties, rows): a property is (name, type) or (name, count type, item
    type) for a list; a row holds one value per property (a sequence for a list). `surplus`
    (ascii): {(element, row number): extra text} appended to rows beyond their properties."""
    header = ["ply", f"format {fmt} 1.0"]
    for name, props, rows in elements:
        header.append(f"element {name} {len(rows)}")
        header += [f"property list {p[1]} {p[2]} {p[0]}" if len(p) == 3 else f"property {p[1]} {p[0]}" for p in props]
    header.append("end_header")
    order = "<" if fmt == "binary_little_endian" else ">"
    body = []
    for name, props, rows in elements:
        for number, row in enumerate(rows):
            if fmt == "ascii":
                values = []
                for prop, value in zip(props, row, strict=True):
                    values += [len(value), *value] if len(prop) == 3 else [value]
                text = " ".join(repr(float(v)) if isinstance(v, (float, np.floating)) else str(int(v)) for v in values)
                body.append((text + (surplus or {}).get((name, number), "") + "\n").encode())
            else:
                for prop, value in zip(props, row, strict=True):
                    if len(prop) == 3:
                        codes = STRUCT_CODES[prop[1]] + STRUCT_CODES[prop[2]] * len(value)
                        body.append(struct.pack(order + codes, len(value), *value))
                    else:
                        body.append(struct.pack(order + STRUCT_CODES[prop[1]], value))
    path.write_bytes(("\n".join(header) + "\n").encode() + b"".join(body))


def textured_mesh(n=12, mixed=False):
    """Vertex and face elements: faces with vertex_indices and texcoord lists among five scalars;
    `mixed`: triangles and quads (the row walker), else triangles only (the fast path)."""
    xyz, rgb, _, _ = cloud(n)
    corners = [[i % n, (i + 1) % n, (i + 2) % n] + ([(i + 3) % n] if mixed and i % 2 else []) for i in range(n - 1)]
    faces = [[c, 1, RNG.random(2 * len(c)).astype(np.float32).tolist(), 10, 20, 30 + i, 0.5]
             for i, c in enumerate(corners)]
    vertex = ("vertex", [("x", "float"), ("y", "float"), ("z", "float"), ("red", "uchar"), ("green", "uchar"),
                         ("blue", "uchar")], [[*map(float, xyz[i]), *map(int, rgb[i])] for i in range(n)])
    return xyz, rgb, vertex, ("face", FACE_PROPS, faces)


def read_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_point_file(path)


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("mixed", [False, True], ids=["triangles", "tri-quad"])
@pytest.mark.parametrize("faces_first", [False, True], ids=["vertex-first", "face-first"])
def test_ply_faces_with_two_list_properties(tmp_path, fmt, mixed, faces_first):
    """Faces holding two lists plus scalars: walked by the header (in binary the vertex rows after
    them are only found that way, and the file must end exactly where the walk does)."""
    xyz, rgb, vertex, face = textured_mesh(mixed=mixed)
    path = tmp_path / "textured.ply"
    write_ply_elements(path, fmt, [face, vertex] if faces_first else [vertex, face])
    result = read_quietly(path)
    np.testing.assert_array_equal(result.xyz, xyz)
    np.testing.assert_allclose(result.fields["rgb"], rgb / 255.0, atol=1e-6)
    if fmt == "ascii":
        return
    data = path.read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:-1])
    with raises_naming(tmp_path / "cut.ply", "truncated"):
        read_point_file(tmp_path / "cut.ply")
    (tmp_path / "long.ply").write_bytes(data + b"\x01\x02\x03\x04")
    with pytest.warns(PointliftDataWarning, match="ignored 4 bytes"):
        np.testing.assert_array_equal(read_point_file(tmp_path / "long.ply").xyz, xyz)
    for count, outcome in ((12, "truncated"), (10, "ignored")):  # 11 faces, declared one more or one fewer
        edited = tmp_path / f"faces{count}.ply"
        edited.write_bytes(data.replace(b"element face 11", b"element face %d" % count, 1))
        with pytest.raises((PointliftDataError, PointliftDataWarning), match=None if faces_first else outcome):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # never silent (face-first: the vertex rows shift too)
                read_point_file(edited)


def test_ply_binary_list_length_is_followed(tmp_path):
    """A texcoord list of another length on one face row is read by its own count (row walker)."""
    xyz, _, vertex, face = textured_mesh()
    face[2][3][2] = face[2][3][2][:2]  # face 3: one uv pair for a triangle
    path = tmp_path / "ragged.ply"
    write_ply_elements(path, "binary_little_endian", [face, vertex])
    np.testing.assert_array_equal(read_quietly(path).xyz, xyz)
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    face0_texcoord = header_end + 1 + 3 * 4 + 1  # vertex_indices (count, 3 ints), flags
    assert data[face0_texcoord] == 6
    bad = data[:face0_texcoord] + bytes([255]) + data[face0_texcoord + 1:]  # a list running far past its row
    path.write_bytes(bad)
    with raises_naming(path):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read_point_file(path)


def test_ply_ascii_rows_beyond_the_header(tmp_path):
    """ascii: a surplus on every row of an unused element is ignored (fuze_ascii.ply's face rows);
    on some rows only, or on vertex rows, it is refused; counts are still checked."""
    xyz, _, vertex, face = textured_mesh(mixed=True)
    path = tmp_path / "surplus.ply"
    every = {("face", i): " 9 1 1 1 1 1 1 1 1 1" for i in range(11)}
    write_ply_elements(path, "ascii", [vertex, face], surplus=every)
    np.testing.assert_array_equal(read_quietly(path).xyz, xyz)
    write_ply_elements(path, "ascii", [face, vertex], surplus=every)
    np.testing.assert_array_equal(read_quietly(path).xyz, xyz)
    for name, surplus in (("one-face", {("face", 4): " 1"}), ("vertex", {("vertex", i): " 1" for i in range(12)}),
                          ("uneven", {**every, ("face", 7): " 9 1"})):
        path = tmp_path / f"{name}.ply"
        write_ply_elements(path, "ascii", [vertex, face], surplus=surplus)
        with raises_naming(path, "values"):
            read_point_file(path)
    path = tmp_path / "count.ply"
    for faces_first in (False, True):
        for old, new in ((b"element vertex 12", b"element vertex 11"), (b"element vertex 12", b"element vertex 13"),
                         (b"element face 11", b"element face 12")):
            write_ply_elements(path, "ascii", [face, vertex] if faces_first else [vertex, face], surplus=every)
            _edit_count(path, old, new)
            if faces_first and new == b"element vertex 11":  # the last element one short: as plyfile,
                with pytest.warns(PointliftDataWarning, match="ignored 1 lines"):  # read, not silently
                    assert len(read_point_file(path)) == 11
                continue
            with raises_naming(path):
                read_point_file(path)


@pytest.mark.parametrize("fmt", ["ascii", "binary_big_endian"])
def test_ply_vertex_element_with_two_lists(tmp_path, fmt):
    """The vertex element itself with two list properties between its scalars: the scalars at
    their places, whatever the lists' lengths."""
    xyz, _, _, _ = cloud(9)
    props = [("x", "float"), ("neighbours", "uchar", "int"), ("y", "float"), ("weights", "ushort", "double"),
             ("z", "float"), ("intensity", "float")]
    rows = [[float(xyz[i, 0]), list(range(i % 4)), float(xyz[i, 1]), [0.25] * (2 * i % 5), float(xyz[i, 2]), i / 8]
            for i in range(9)]
    path = tmp_path / "lists.ply"
    write_ply_elements(path, fmt, [("vertex", props, rows)])
    result = read_quietly(path)
    np.testing.assert_array_equal(result.xyz, xyz)
    np.testing.assert_allclose(result.fields["intensity"], np.arange(9) / 8)
    if fmt == "ascii":
        write_ply_elements(path, fmt, [("vertex", props, rows)], surplus={("vertex", i): " 0" for i in range(9)})
        with raises_naming(path, "values"):
            read_point_file(path)


def test_long_headers_read(tmp_path):
    xyz, rgb, normal, intensity = cloud(10)
    ply = tmp_path / "long.ply"
    write_ply(ply, "binary_big_endian", xyz, rgb, normal, intensity)
    comments = b"".join(b"comment line %d\n" % i for i in range(400))
    ply.write_bytes(ply.read_bytes().replace(b"comment written by test\n", comments))
    np.testing.assert_allclose(read_point_file(ply).xyz, xyz, rtol=1e-6)
    pcd = tmp_path / "long.pcd"
    write_pcd(pcd, "binary", xyz, rgb, intensity)
    pcd.write_bytes(b"".join(b"# comment %d\n" % i for i in range(400)) + pcd.read_bytes())
    np.testing.assert_allclose(read_point_file(pcd).xyz, xyz, rtol=1e-6)


def test_off_face_colours_and_wrong_counts(tmp_path):
    path = tmp_path / "coloured.off"
    vertices = [f"{x} {y} {z} 255 0 0 255" for x, y, z in BOX_VERTICES]
    faces = [" ".join(map(str, [4, *q, 0.5, 0.25, 1.0, 1.0])) for q in BOX_QUADS]
    path.write_text("COFF\n8 6 0\n" + "\n".join(vertices + faces) + "\n")
    assert read_point_file(path, mesh_points="vertices").xyz.shape == (8, 3)
    assert read_point_file(path, num_samples=100).xyz.shape == (100, 3)
    path.write_text("COFF\n7 6 0\n" + "\n".join(vertices + faces) + "\n")
    with raises_naming(path, "wrong counts"):
        read_point_file(path)


@pytest.mark.parametrize("colour", ["", " 7", " 0.5 0.5 0.5", " 1 2 3 255"])
def test_off_vectorised_faces_equal_row_by_row(tmp_path, monkeypatch, colour):
    """The vectorised face parse (uniform meshes) gives the triangles of the row-by-row parse."""
    import pointlift.data.points as points

    path = tmp_path / "quads.off"
    rows = [" ".join(map(str, [4, *q])) + colour for q in BOX_QUADS]
    vertices = "\n".join(" ".join(map(str, v)) for v in BOX_VERTICES)
    path.write_text("OFF\n8 6 0\n" + vertices + "\n" + "\n".join(rows) + "\n")
    fast = points.read_off_mesh(path)[1]
    monkeypatch.setattr(points, "_uniform_faces", lambda rows: None)
    slow = points.read_off_mesh(path)[1]
    assert fast.shape == (12, 3)
    np.testing.assert_array_equal(fast, slow)


def test_lzf_python_decoder_reads_pcl_files(shared, monkeypatch):
    """The built-in LZF decoder (used when the optional C module `lzf` is absent) on PCL's own
    binary_compressed files, against the independent reader's figures."""
    import json

    import pointlift.data.pcd as pcd

    monkeypatch.setattr(pcd, "_C_LZF", None)
    root = shared("reference/point-files")
    expected = json.loads((root / "expected.json").read_text())
    for name in ("pcl/2d__lena.pcd", "pcl/milk_color.pcd", "pcl/car6.pcd"):
        xyz = read_point_file(root / name).xyz
        assert len(xyz) == expected[name]["points"]
        np.testing.assert_allclose(xyz.min(0), expected[name]["xyz_min"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(xyz.max(0), expected[name]["xyz_max"], rtol=1e-6, atol=1e-7)


if importlib.util.find_spec("lzf") is not None:  # the optional C decoder: a case only where it can run

    def test_lzf_c_decoder_agrees_when_installed(shared):
        """Where the optional C decoder is installed it must give the Python decoder's bytes, and fall
        back to it (for the error message) on corrupt data."""
        import lzf

        import pointlift.data.pcd as pcd

        data = shared("reference/point-files/pcl/milk_color.pcd").read_bytes()
        body = data[data.index(b"DATA binary_compressed\n") + 23:]
        compressed, raw = struct.unpack("<II", body[:8])
        source = body[8:8 + compressed]
        assert lzf.decompress(source, raw) == pcd._lzf_python(Path("milk_color.pcd"), source, raw)
        with pytest.raises(PointliftDataError):
            pcd.lzf_decompress(Path("milk_color.pcd"), source[: compressed // 2], raw)
