"""Scene readers and label maps: every reader on its real files in ../shared (or, for layouts with no
offline data, on files written in the real layout), and on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pointlift.data import scenes as S
from pointlift.errors import PointliftDataError

VOTENET = "data/scannet-votenet"
KITTI = "data/semantickitti-mini"


# ------------------------------------------------------------------------------------------ label maps


def test_scannet20_map():
    raw = np.array([0, 1, 2, 12, 13, 14, 16, 24, 28, 33, 34, 36, 39, 40, 15])
    expected = [-1, 0, 1, 11, -1, 12, 13, 14, 15, 16, 17, 18, 19, -1, -1]
    assert S.map_scannet20(raw).tolist() == expected
    assert len(S.SCANNET20_NYU40_IDS) == len(S.SCANNET20_NAMES) == 20
    assert S.SCANNET20_NAMES[S.map_scannet20(np.array([33]))[0]] == "toilet"
    with pytest.raises(PointliftDataError):
        S.map_scannet20(np.array([41]))


def test_semantickitti19_learning_map():
    raw = np.array([0, 1, 10, 252, 11, 13, 15, 16, 18, 20, 30, 254, 31, 253, 32, 255, 40, 60, 44, 48, 49, 50, 51,
                    52, 70, 71, 72, 80, 81, 99, 256, 257, 258, 259])
    names = [None if i < 0 else S.SEMANTICKITTI19_NAMES[i] for i in S.map_semantickitti19(raw)]
    assert names == [None, None, "car", "car", "bicycle", "other-vehicle", "motorcycle", "other-vehicle", "truck",
                     "other-vehicle", "person", "person", "bicyclist", "bicyclist", "motorcyclist", "motorcyclist",
                     "road", "road", "parking", "sidewalk", "other-ground", "building", "fence", None,
                     "vegetation", "trunk", "terrain", "pole", "traffic-sign", None, "other-vehicle",
                     "other-vehicle", "truck", "other-vehicle"]
    with pytest.raises(PointliftDataError, match=r"\[7\]"):
        S.map_semantickitti19(np.array([10, 7]))


def test_s3dis13_names():
    assert len(S.S3DIS13_NAMES) == 13
    assert S.s3dis13_id("ceiling") == 0 and S.s3dis13_id("board") == 11
    assert S.s3dis13_id("stairs") == S.s3dis13_id("clutter") == 12


def test_scene_group_and_selection():
    names = ["scene0000_00", "scene0000_01", "scene0001_00", "scene0010_00", "00/000000", "05/000008",
             "Area_1/office_1"]
    assert S.scene_group("scene0000_01") == "scene0000"
    assert S.select_scenes(names, ["scene0000", "05"]) == ["scene0000_00", "scene0000_01", "05/000008"]
    assert S.select_scenes(names, ["scene001"]) == []  # no partial-name matches
    assert S.select_scenes(names, ["Area_1", "scene0001_00"]) == ["scene0001_00", "Area_1/office_1"]


# ----------------------------------------------------------------------------------- ScanNet (VoteNet)


def test_votenet_real_scans(shared):
    root = shared(VOTENET)
    names = S.list_scannet_votenet(root)
    assert len(names) == 23 and len({S.scene_group(n) for n in names}) == 11
    scene = S.read_scannet_votenet(root, "scene0000_00")
    vert = np.load(root / "scene0000_00_vert.npy")
    raw = np.load(root / "scene0000_00_sem_label.npy")
    assert scene.points.shape == (50000, 3) and np.allclose(scene.points, vert[:, :3])
    assert np.allclose(scene.colors * 255, vert[:, 3:6], atol=1e-3)
    assert scene.labels.tolist() == [S.SCANNET20_NYU40_IDS.index(v) if v in S.SCANNET20_NYU40_IDS else -1
                                     for v in raw.tolist()]
    wall, floor = (scene.labels == 0), (scene.labels == 1)
    assert wall.mean() > 0.05 and floor.mean() > 0.05
    # z is up: the floor lies below the walls' mean height
    assert scene.points[floor, 2].mean() < scene.points[wall, 2].mean()


def test_votenet_bad_input(tmp_path, shared):
    root = shared(VOTENET)
    with pytest.raises(PointliftDataError, match="scene9999_00_vert.npy"):
        S.read_scannet_votenet(root, "scene9999_00")
    (tmp_path / "scene0000_00_vert.npy").write_bytes(b"not numpy at all")
    with pytest.raises(PointliftDataError, match="scene0000_00_vert.npy"):
        S.read_scannet_votenet(tmp_path, "scene0000_00")
    np.save(tmp_path / "scene0000_00_vert.npy", np.zeros((10, 6), np.float32))
    np.save(tmp_path / "scene0000_00_sem_label.npy", np.zeros(9, np.uint32))
    with pytest.raises(PointliftDataError, match="sem_label.npy: holds"):
        S.read_scannet_votenet(tmp_path, "scene0000_00")
    np.save(tmp_path / "scene0000_00_vert.npy", np.zeros((10, 3), np.float32))
    with pytest.raises(PointliftDataError, match="xyz\\+RGB"):
        S.read_scannet_votenet(tmp_path, "scene0000_00")
    with pytest.raises(PointliftDataError, match="no \\*_vert.npy"):
        S.list_scannet_votenet(tmp_path / "..")


# ------------------------------------------------------------------------------------ ScanNet (official)


def _write_scannet_official(folder: Path, name: str, xyz: np.ndarray, rgb: np.ndarray, nyu40: np.ndarray,
                            label_count: int | None = None) -> Path:
    """`<name>_vh_clean_2.ply` (binary: x y z float, red green blue alpha uchar, triangle faces) and
    `<name>_vh_clean_2.labels.ply` (x y z float, red green blue alpha uchar, label ushort), in the layout ScanNet ships."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(xyz)
    faces = np.array([[0, 1, 2]], dtype=np.int32)

    def write(path: Path, with_label: bool, count: int):
        fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                  ("alpha", "u1")] + ([("label", "<u2")] if with_label else [])
        table = np.zeros(count, dtype=fields)
        table["x"], table["y"], table["z"] = xyz[:count, 0], xyz[:count, 1], xyz[:count, 2]
        table["red"], table["green"], table["blue"] = rgb[:count, 0], rgb[:count, 1], rgb[:count, 2]
        table["alpha"] = 255
        if with_label:
            table["label"] = nyu40[:count]
        header = ["ply", "format binary_little_endian 1.0", f"element vertex {count}",
                  "property float x", "property float y", "property float z", "property uchar red",
                  "property uchar green", "property uchar blue", "property uchar alpha"]
        header += ["property ushort label"] if with_label else []
        header += ["element face 1", "property list uchar int vertex_indices", "end_header"]
        face_bytes = b"".join(np.uint8(3).tobytes() + f.astype("<i4").tobytes() for f in faces)
        path.write_bytes(("\n".join(header) + "\n").encode() + table.tobytes() + face_bytes)

    mesh = folder / f"{name}_vh_clean_2.ply"
    write(mesh, False, n)
    write(folder / f"{name}_vh_clean_2.labels.ply", True, label_count if label_count is not None else n)
    return mesh


def test_scannet_official_layout(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 4, (50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    nyu40 = rng.choice([0, 1, 2, 5, 13, 39], size=50).astype(np.uint16)
    _write_scannet_official(tmp_path / "scans" / "scene0042_00", "scene0042_00", xyz, rgb, nyu40)
    assert S.detect_layout(tmp_path) == "scannet"
    assert S.list_scenes("scannet", tmp_path) == ["scene0042_00"]
    scene = S.read_scene("scannet", tmp_path, "scene0042_00")
    assert scene.name == "scene0042_00"
    assert np.allclose(scene.points, xyz) and np.allclose(scene.colors * 255, rgb, atol=1e-3)
    assert scene.labels.tolist() == S.map_scannet20(nyu40).tolist()
    assert scene.raw_labels.tolist() == nyu40.tolist()


def test_scannet_official_bad_input(tmp_path):
    xyz = np.zeros((5, 3), np.float32)
    mesh = _write_scannet_official(tmp_path, "scene0001_00", xyz, np.zeros((5, 3), np.uint8), np.ones(5, np.uint16),
                                   label_count=4)
    with pytest.raises(PointliftDataError, match="labels.ply: holds 4 vertices"):
        S.read_scannet_ply(mesh)
    mesh.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\n"
                     b"property float y\nproperty float z\nend_header\n" + b"\0" * 12)
    with pytest.raises(PointliftDataError, match="truncated"):
        S.read_scannet_ply(mesh)


# ------------------------------------------------------------------------------------------ SemanticKITTI


def test_semantickitti_real_scans(shared):
    root = shared(KITTI)
    names = S.list_semantickitti(root)
    assert len(names) == 20 and {S.scene_group(n) for n in names} == {f"{i:02d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)}
    assert S.detect_layout(root) == "semantickitti"
    scene = S.read_scene("semantickitti", root, "00/000000")
    values = np.fromfile(root / "sequences/00/velodyne/000000.bin", np.float32).reshape(-1, 4)
    packed = np.fromfile(root / "sequences/00/labels/000000.label", np.uint32)
    assert scene.points.shape == (len(values), 3) and np.array_equal(scene.intensity, values[:, 3])
    assert scene.raw_labels.tolist() == (packed & 0xFFFF).tolist()
    road = scene.labels == S.SEMANTICKITTI19_NAMES.index("road")
    car = scene.labels == S.SEMANTICKITTI19_NAMES.index("car")
    assert road.mean() > 0.05 and car.any()
    # LiDAR at ~1.73 m above the road: road points lie well below the sensor, cars above the road
    assert scene.points[road, 2].mean() < -1.4 and scene.points[car, 2].mean() > scene.points[road, 2].mean()


def test_semantickitti_camera_projection(shared):
    """P2 @ Tr puts road points in the lower half of the image and points in front of the camera only."""
    root = shared(KITTI)
    sequence = root / "sequences" / "00"
    frame = S.read_semantickitti_camera_frame(sequence, "000000")
    scene = S.read_semantickitti_scan(sequence, "000000")
    image = frame.cameras[0].image
    h, w = image.shape[:2]
    homogeneous = np.concatenate([scene.points, np.ones((len(scene), 1), np.float32)], 1)
    projected = homogeneous @ frame.cameras[0].lidar2img.T
    depth = projected[:, 2]
    front = depth > 1.0
    u, v = projected[front, 0] / depth[front], projected[front, 1] / depth[front]
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    assert inside.sum() > 5000
    # the camera looks forward (LiDAR +x): projected points are those ahead of the car
    assert (scene.points[front][inside, 0] > 0).all()
    road = (scene.labels[front] == S.SEMANTICKITTI19_NAMES.index("road"))[inside]
    assert v[inside][road].mean() > 0.6 * h


def test_semantickitti_bad_input(tmp_path, shared):
    sequence = tmp_path / "sequences" / "00"
    (sequence / "velodyne").mkdir(parents=True)
    (sequence / "labels").mkdir()
    np.arange(10, dtype=np.float32).tofile(sequence / "velodyne" / "000000.bin")
    with pytest.raises(PointliftDataError, match="000000.bin: holds 10 float32"):
        S.read_semantickitti_scan(sequence, "000000")
    np.zeros(8, np.float32).tofile(sequence / "velodyne" / "000000.bin")
    np.zeros(3, np.uint32).tofile(sequence / "labels" / "000000.label")
    with pytest.raises(PointliftDataError, match="000000.label: holds 3 labels for 2 points"):
        S.read_semantickitti_scan(sequence, "000000")
    np.array([10, 7 | (5 << 16)], np.uint32).tofile(sequence / "labels" / "000000.label")
    with pytest.raises(PointliftDataError, match="000000.label: SemanticKITTI semantic ids \\[7\\]"):
        S.read_semantickitti_scan(sequence, "000000")
    (sequence / "calib.txt").write_text("P2: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(PointliftDataError, match="calib.txt: calibration lacks Tr"):
        S.read_semantickitti_calib(sequence / "calib.txt")
    (sequence / "calib.txt").write_text("P2: 1 0 0 0 0 1 0 0 0 0 1 0\nTr: 1 2 3\n")
    with pytest.raises(PointliftDataError, match="Tr holds 3 numbers"):
        S.read_semantickitti_calib(sequence / "calib.txt")
    with pytest.raises(PointliftDataError, match="image_2/000000.png"):
        S.read_semantickitti_camera_frame(sequence, "000000")


# -------------------------------------------------------------------------------------------------- S3DIS


def _write_s3dis_room(root: Path, area: str, room: str, parts: dict[str, np.ndarray]) -> Path:
    folder = root / area / room / "Annotations"
    folder.mkdir(parents=True)
    for name, table in parts.items():
        np.savetxt(folder / f"{name}.txt", table, fmt="%.3f %.3f %.3f %d %d %d")
    # the room-level file the release also ships (not read: the annotations are the labels)
    np.savetxt(root / area / room / f"{room}.txt", np.concatenate(list(parts.values())), fmt="%.3f")
    return folder.parent


def test_s3dis_layout(tmp_path):
    rng = np.random.default_rng(1)
    def table(n):
        return np.concatenate([rng.uniform(0, 5, (n, 3)), rng.integers(0, 256, (n, 3))], 1)
    parts = {"chair_1": table(4), "wall_2": table(6), "stairs_1": table(2), "board_1": table(3)}
    room = _write_s3dis_room(tmp_path, "Area_1", "office_1", parts)
    _write_s3dis_room(tmp_path, "Area_5", "hallway_2", {"floor_1": table(5)})
    assert S.detect_layout(tmp_path) == "s3dis"
    assert S.list_scenes("s3dis", tmp_path) == ["Area_1/office_1", "Area_5/hallway_2"]
    scene = S.read_s3dis_room(room)
    assert scene.name == "Area_1/office_1" and len(scene) == 15
    # files are read in sorted order: board_1, chair_1, stairs_1 (clutter), wall_2
    assert scene.labels.tolist() == [11] * 3 + [8] * 4 + [12] * 2 + [2] * 6
    expected = np.concatenate([parts[k] for k in ("board_1", "chair_1", "stairs_1", "wall_2")])
    assert np.allclose(scene.points, expected[:, :3], atol=1e-3)
    assert np.allclose(scene.colors * 255, expected[:, 3:], atol=1e-3)


def test_s3dis_bad_input(tmp_path):
    room = tmp_path / "Area_1" / "office_1"
    with pytest.raises(PointliftDataError, match="Annotations"):
        S.read_s3dis_room(room)
    (room / "Annotations").mkdir(parents=True)
    (room / "Annotations" / "chair_1.txt").write_text("1 2 3 4 5 6\n1 2 x 4 5 6\n")
    with pytest.raises(PointliftDataError, match="chair_1.txt: not a table of numbers"):
        S.read_s3dis_room(room)
    (room / "Annotations" / "chair_1.txt").write_text("1 2 3\n")
    with pytest.raises(PointliftDataError, match="chair_1.txt: expected 6 columns"):
        S.read_s3dis_room(room)
    with pytest.raises(PointliftDataError, match="no known scene layout"):
        S.detect_layout(tmp_path / "Area_1")


def test_ppkt_semantickitti_source_pairs_points_with_pixels(shared):
    """PPKT's SemanticKITTI source (labels unused): the chosen sequences' sweeps with image_2 and P2 @ Tr;
    the pairs' pixels hold colour where the projected points are (road points low in the image)."""
    import torch

    from pointlift.engine.config import load_config
    from pointlift.methods.ppkt.config import PPKTDataConfig
    from pointlift.methods.ppkt.pairs import lidar_pairs
    from pointlift.methods.ppkt.sources import open_lidar_frames

    root = shared(KITTI)
    data = load_config({"kind": "semantickitti", "root": str(root), "sequences": ["05"]}, PPKTDataConfig)
    frames = open_lidar_frames(data)
    assert [f.name for f in frames] == ["05_000000", "05_000008"]
    frame = frames[0]
    camera = frame.cameras[0]
    h, w = camera.image.shape[:2]
    assert camera.image.shape == (370, 1226, 3)  # sequences 04-10 (00-02: 376 x 1241)
    pairs = lidar_pairs(torch.as_tensor(frame.points), [(camera.image.shape[:2], torch.as_tensor(camera.lidar2img))])
    assert len(pairs.pair_point) > 5000
    u, v = pairs.pair_pixel[:, 0], pairs.pair_pixel[:, 1]
    assert int(u.min()) >= 0 and int(u.max()) < w and int(v.min()) >= 0 and int(v.max()) < h
    scene = S.read_semantickitti_scan(root / "sequences" / "05", "000000")
    road = torch.as_tensor(scene.labels)[pairs.pair_point] == S.SEMANTICKITTI19_NAMES.index("road")
    assert float(v[road].float().mean()) > float(v[~road].float().mean())
    with pytest.raises(PointliftDataError, match="08"):
        open_lidar_frames(load_config({"kind": "semantickitti", "root": str(root), "sequences": ["08"]},
                                      PPKTDataConfig))


def test_ppkt_semantickitti_config_loads():
    from pointlift.engine.config import load_config
    from pointlift.methods.ppkt.config import PPKTConfig

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "ppkt_semantickitti.yaml", PPKTConfig)
    assert config.data.kind == "semantickitti" and config.model.in_features == "constant"
