"""Every shape-set layout, written as its public release has it, read through one interface."""

from __future__ import annotations

import numpy as np
import pytest

from pointlift.data.shape_sets import (FORMATS, ShapeSetConfig, detect_format, load_points, load_shape_set,
                                       prepare_point_sets)
from pointlift.engine.config import load_config
from pointlift.errors import PointliftConfigError, PointliftDataError
from shape_layouts import (SHAPENET_SYNSETS, write_ascii_ply, write_modelnet10_vox, write_modelnet40_h5,
                           write_modelnet40_resampled, write_point_folder, write_scanobjectnn, write_shapenet55)


def _check(points, labels, names, count, num_points, num_classes):
    assert points.shape == (count, num_points, 3) and points.dtype == np.float32
    assert labels.shape == (count,) and labels.dtype == np.int64
    assert len(names) == num_classes and labels.max() < num_classes
    radius = np.linalg.norm(points - points.mean(1, keepdims=True), axis=-1).max(1)
    np.testing.assert_allclose(radius, 1.0, atol=1e-5)  # unit sphere after resampling
    np.testing.assert_allclose(points.mean(1), 0.0, atol=1e-5)


@pytest.mark.parametrize("layout", ["modelnet10_vox", "modelnet40_h5", "modelnet40_resampled", "scanobjectnn_h5",
                                    "shapenet55", "point_folder", "point_folder_class_first"])
def test_every_layout_auto_detected_and_loaded(tmp_path, layout):
    if layout == "modelnet10_vox":
        path, classes, counts = write_modelnet10_vox(tmp_path / "modelnet10_vox32.npz"), 10, (20, 10)
    elif layout == "modelnet40_h5":
        path, classes, counts = write_modelnet40_h5(tmp_path / "modelnet40_ply_hdf5_2048"), 40, (4, 4)
    elif layout == "modelnet40_resampled":
        path, classes, counts = write_modelnet40_resampled(tmp_path / "modelnet40_normal_resampled"), 40, (4, 4)
    elif layout == "scanobjectnn_h5":
        path, classes, counts = write_scanobjectnn(tmp_path / "h5_files"), 15, (15, 15)
    elif layout == "shapenet55":
        path, classes, counts = write_shapenet55(tmp_path / "ShapeNet55-34"), 4, (4, 4)
    else:
        which = "split_first" if layout == "point_folder" else "class_first"
        path, classes, counts = write_point_folder(tmp_path / "mine", 3, 2, layout=which), 4, (12, 8)
    fmt = layout.replace("_class_first", "")
    assert fmt in FORMATS and detect_format(path) == fmt
    for split, count in zip(("train", "test"), counts):
        config = ShapeSetConfig(path=str(path), num_points=256)
        points, labels, names = load_points(config, split)
        _check(points, labels, names, count, 256, classes)
        # resampling is fixed by (seed, index): identical on every call
        np.testing.assert_array_equal(load_points(config, split)[0], points)


def test_shapenet_labels_follow_sorted_synsets(tmp_path):
    root = write_shapenet55(tmp_path / "ShapeNet55-34", per_class=2)
    shapes = load_shape_set(ShapeSetConfig(format="shapenet55", path=str(root)), "train")
    assert shapes.class_names == sorted(SHAPENET_SYNSETS)
    assert shapes.points[0].shape == (8192, 3)
    assert list(shapes.labels) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_point_folder_labels_and_files(tmp_path):
    root = write_point_folder(tmp_path / "mine", 2, 1, points=50)
    shapes = load_shape_set(ShapeSetConfig(path=str(root)), "train")
    assert shapes.class_names == ["box", "disc", "rod", "sphere"]
    assert list(shapes.labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    # a stray non-point file is ignored, a class unknown to training is an error
    (root / "train" / "box" / "README.txt").write_text("notes")
    assert len(load_shape_set(ShapeSetConfig(path=str(root)), "train")) == 8
    (root / "test" / "cone").mkdir()
    write_ascii_ply(root / "test" / "cone" / "a.ply", np.zeros((5, 3)) + np.arange(5)[:, None])
    with pytest.raises(PointliftDataError, match="absent from train"):
        load_shape_set(ShapeSetConfig(path=str(root)), "test")


def test_prepare_resamples_and_normalises():
    rng = np.random.default_rng(0)
    few, many = rng.normal(size=(10, 3)) * 5 + 3, rng.normal(size=(500, 3))
    out = prepare_point_sets([few, many], 64, seed=1)
    assert out.shape == (2, 64, 3)
    # the small shape keeps all of its points (plus repeats); the large one a subset without repeats
    raw = prepare_point_sets([few, many], 64, seed=1, normalize="none")
    assert {tuple(p) for p in few.astype(np.float32)} == {tuple(p) for p in raw[0]}
    assert len({tuple(p) for p in raw[1]}) == 64
    # normalisation = centre + scale of exactly these points
    centred = raw[0] - raw[0].mean(0)
    np.testing.assert_allclose(out[0], centred / np.linalg.norm(centred, axis=1).max(), atol=1e-5)
    assert not np.array_equal(prepare_point_sets([many], 64, seed=2)[0], out[1])  # the seed matters


def test_max_shapes_is_a_seeded_subset(tmp_path):
    root = write_point_folder(tmp_path / "mine", 3, 1, points=40)
    full = load_points(ShapeSetConfig(path=str(root), num_points=32, normalize="none"), "train")
    part = load_points(ShapeSetConfig(path=str(root), num_points=32, normalize="none", max_shapes=5), "train")
    assert len(part[0]) == 5 and np.isin(part[1], full[1]).all()


def test_config_validated_at_load():
    config = load_config({"format": "point_folder", "path": "x", "num_points": 128}, ShapeSetConfig)
    assert config.num_points == 128
    for bad in ({"format": "kitti"}, {"num_points": 0}, {"normalize": "box"}, {"variant": "PB_T99"},
                {"unknown": 1}):
        with pytest.raises(PointliftConfigError):
            load_config(bad, ShapeSetConfig)


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(PointliftDataError, match="not a known shape-set layout"):
        detect_format(tmp_path)
    with pytest.raises(PointliftDataError, match="no such file"):
        detect_format(tmp_path / "absent")
    root = write_shapenet55(tmp_path / "ShapeNet55-34")
    listing = root / "ShapeNet-55" / "train.txt"
    listing.write_text(listing.read_text() + "not_a_shapenet_name.npy\n")
    with pytest.raises(PointliftDataError, match="line 5"):
        load_shape_set(ShapeSetConfig(path=str(root)), "train")
    listing.write_text("02691156-missing.npy\n")
    with pytest.raises(PointliftDataError, match="02691156-missing.npy: file not found"):
        load_shape_set(ShapeSetConfig(path=str(root)), "train")
    name = (root / "ShapeNet-55" / "test.txt").read_text().split()[0]
    (root / "shapenet_pc" / name).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(PointliftDataError, match=name):
        load_shape_set(ShapeSetConfig(path=str(root)), "test")
    folder = write_point_folder(tmp_path / "mine", 1, 1, points=20)
    (folder / "train" / "box" / "box_0000.ply").write_text("ply\nformat ascii 1.0\nelement vertex 9\n"
                                                           "property float x\nend_header\n1\n")
    with pytest.raises(PointliftDataError, match="box_0000.ply"):
        load_shape_set(ShapeSetConfig(path=str(folder)), "train")
    for child in (folder / "train" / "box").iterdir():
        child.unlink()
    with pytest.raises(PointliftDataError, match="no point files"):
        load_shape_set(ShapeSetConfig(path=str(folder)), "train")


def test_real_modelnet10_subset_matches_the_loader(shared):
    """On the real ModelNet10 npz the shape set reproduces load_modelnet10_vox + the seeded subset."""
    from pointlift.data.shapes import load_modelnet10_vox

    path = shared("data/modelnet10_vox32.npz")
    points, labels, names = load_points(ShapeSetConfig(path=str(path), num_points=512, max_shapes=20), "test")
    reference = load_modelnet10_vox(path, "test")
    order = np.random.default_rng(0).permutation(len(reference))[:20]
    np.testing.assert_array_equal(labels, reference.labels[order])
    assert names[0] == "bathtub" and points.shape == (20, 512, 3)


def test_image2point_finetunes_on_a_shape_set(tmp_path):
    """Image2Point's data config accepts any shape set (here a ShapeNet-55 layout), read as raw points."""
    from pointlift.tasks.shape_classification.data import ShapeDataConfig, load_shape_split

    root = write_shapenet55(tmp_path / "ShapeNet55-34", per_class=2, points=500)
    split = load_shape_split(ShapeDataConfig(dataset="auto", path=str(root)), "train")
    assert len(split) == 8 and split.points[0].shape == (500, 3)
    with pytest.raises(PointliftConfigError, match="data.dataset"):
        ShapeDataConfig(dataset="kitti")


def test_i2p_mae_data_config_accepts_shape_sets(tmp_path):
    from pointlift.methods.i2p_mae.config import DataConfig
    from pointlift.methods.i2p_mae.data import load_pretrain_points

    root = write_modelnet40_h5(tmp_path / "modelnet40_ply_hdf5_2048")
    points, labels, names = load_pretrain_points(DataConfig(format="modelnet40_h5", path=str(root), num_points=64),
                                                 "test")
    _check(points, labels, names, 4, 64, 40)
    with pytest.raises(PointliftConfigError, match="format"):
        DataConfig(format="kitti")


def test_scanobjectnn_variants_pick_their_files(tmp_path):
    from shape_layouts import write_scanobjectnn

    root = write_scanobjectnn(tmp_path / "h5_files")
    write_scanobjectnn(root, stem="objectdataset")  # OBJ_BG
    write_scanobjectnn(root, folder_name="main_split_nobg", stem="objectdataset")  # OBJ_ONLY
    loaded = {variant: load_points(ShapeSetConfig(path=str(root), variant=variant, num_points=32,
                                                  normalize="none"), "test")[0]
              for variant in ("PB_T50_RS", "OBJ_BG", "OBJ_ONLY")}
    assert not np.array_equal(loaded["PB_T50_RS"], loaded["OBJ_BG"])
    assert not np.array_equal(loaded["OBJ_BG"], loaded["OBJ_ONLY"])
    assert ShapeSetConfig(path=str(root), variant="OBJ_ONLY").variant == "OBJ_ONLY"
