"""Writers of tiny shape sets in the real on-disk layouts of their public releases (file names, keys,
dtypes), shared by tests/test_shape_sets.py and tests/test_cli_eval.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MODELNET40_NAMES = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel",
    "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs",
    "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
]


def shape(kind: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Points of a simple shape per class: 0 sphere, 1 box surface, 2 flat disc, 3 line-like rod."""
    if kind == 0:
        v = rng.normal(size=(count, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if kind == 1:
        p = rng.uniform(-1, 1, size=(count, 3))
        axis = rng.integers(0, 3, count)
        p[np.arange(count), axis] = np.sign(rng.uniform(-1, 1, count))
        return p
    if kind == 2:
        r, t = np.sqrt(rng.uniform(0, 1, count)), rng.uniform(0, 2 * np.pi, count)
        return np.stack([r * np.cos(t), r * np.sin(t), rng.normal(0, 0.02, count)], 1)
    return np.stack([rng.normal(0, 0.05, count), rng.normal(0, 0.05, count), rng.uniform(-1, 1, count)], 1)


def write_modelnet10_vox(path: Path, per_class: int = 2, resolution: int = 32) -> Path:
    """`modelnet10_vox32.npz`: X_{train,test} int32 (S, R, R, R) occupancy, y_{train,test} int64."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", per_class), ("test", 1)):
        grids, labels = [], []
        for label in range(10):
            for _ in range(count):
                pts = shape(label % 4, 400, rng) * 0.45 + 0.5
                idx = np.clip((pts * resolution).astype(int), 0, resolution - 1)
                grid = np.zeros((resolution,) * 3, dtype=np.int32)
                grid[idx[:, 0], idx[:, 1], idx[:, 2]] = 1
                grids.append(grid)
                labels.append(label)
        arrays[f"X_{split}"] = np.stack(grids)
        arrays[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
    np.savez_compressed(path, **arrays)
    return path


def write_modelnet40_h5(root: Path, per_class: int = 1) -> Path:
    """`modelnet40_ply_hdf5_2048/`: ply_data_{train,test}0.h5 (data float32 (B,2048,3), label uint8 (B,1),
    normal, faceId), shape_names.txt, {train,test}_files.txt with the release's data/... prefix."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(MODELNET40_NAMES) + "\n")
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        labels = np.repeat(np.arange(4), per_class)
        data = np.stack([shape(int(c), 2048, rng) for c in labels]).astype(np.float32)
        with h5py.File(root / f"ply_data_{split}0.h5", "w") as h5:
            h5.create_dataset("data", data=data)
            h5.create_dataset("label", data=labels.astype(np.uint8)[:, None])
            h5.create_dataset("normal", data=np.zeros_like(data))
            h5.create_dataset("faceId", data=np.zeros(data.shape[:2], dtype=np.int32))
        (root / f"{split}_files.txt").write_text(f"data/modelnet40_ply_hdf5_2048/ply_data_{split}0.h5\n")
    return root


def write_modelnet40_resampled(root: Path, per_class: int = 1, rows: int = 300) -> Path:
    """`modelnet40_normal_resampled/`: <class>/<class>_NNNN.txt rows 'x,y,z,nx,ny,nz', name and split lists."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET40_NAMES) + "\n")
    rng = np.random.default_rng(2)
    number = 0
    for split in ("train", "test"):
        ids = []
        for c in range(4):
            name = MODELNET40_NAMES[c]
            for _ in range(per_class):
                number += 1
                shape_id = f"{name}_{number:04d}"
                (root / name).mkdir(exist_ok=True)
                values = np.concatenate([shape(c, rows, rng), np.zeros((rows, 3))], 1)
                np.savetxt(root / name / f"{shape_id}.txt", values, fmt="%.6f", delimiter=",")
                ids.append(shape_id)
        (root / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_scanobjectnn(root: Path, per_class: int = 1, folder_name: str = "main_split",
                       stem: str = "objectdataset_augmentedrot_scale75") -> Path:
    """`h5_files/main_split/{training,test}_objectdataset_augmentedrot_scale75.h5` (PB_T50_RS; other
    variants by `folder_name`/`stem`): data float32 (B, 2048, 3), label int64 (B,), mask int32 (B, 2048)."""
    import h5py

    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([3, len(stem), len(folder_name)])
    for prefix in ("training", "test"):
        labels = np.repeat(np.arange(15), per_class)
        data = np.stack([shape(int(c) % 4, 2048, rng) for c in labels]).astype(np.float32)
        with h5py.File(folder / f"{prefix}_{stem}.h5", "w") as h5:
            h5.create_dataset("data", data=data)
            h5.create_dataset("label", data=labels.astype(np.int64))
            h5.create_dataset("mask", data=np.zeros(data.shape[:2], dtype=np.int32))
    return root


SHAPENET_SYNSETS = ["02691156", "02747177", "02773838", "03001627"]


def write_shapenet55(root: Path, per_class: int = 1, points: int = 8192) -> Path:
    """`ShapeNet55-34/`: shapenet_pc/<synset>-<model>.npy float32 (8192, 3), ShapeNet-55/{train,test}.txt."""
    (root / "shapenet_pc").mkdir(parents=True, exist_ok=True)
    (root / "ShapeNet-55").mkdir(exist_ok=True)
    rng = np.random.default_rng(4)
    for split in ("train", "test"):
        names = []
        for c, synset in enumerate(SHAPENET_SYNSETS):
            for i in range(per_class):
                name = f"{synset}-{split}{i}a04e3eab45ca15dd86060f189eb133.npy"
                np.save(root / "shapenet_pc" / name, shape(c, points, rng).astype(np.float32))
                names.append(name)
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_ascii_ply(path: Path, xyz: np.ndarray) -> None:
    header = ["ply", "format ascii 1.0", f"element vertex {len(xyz)}", "property float x", "property float y",
              "property float z", "end_header"]
    path.write_text("\n".join(header + [" ".join(f"{v:.6f}" for v in row) for row in xyz]) + "\n")


def write_point_folder(root: Path, per_class: int = 6, test_per_class: int = 4, points: int = 300,
                       classes=("sphere", "box", "disc", "rod"), layout: str = "split_first") -> Path:
    """Labelled point files: root/{train,test}/<class>/<n>.{ply,npy} (or root/<class>/{train,test}/...)."""
    rng = np.random.default_rng(5)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name if layout == "split_first" else root / name / split
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                xyz = shape(c, points, rng) * rng.uniform(0.5, 2.0) + rng.normal(0, 0.3, 3)
                if i % 2:
                    np.save(folder / f"{name}_{i:04d}.npy", xyz.astype(np.float32))
                else:
                    write_ascii_ply(folder / f"{name}_{i:04d}.ply", xyz)
    return root
