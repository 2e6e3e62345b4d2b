"""What a segmentation run leaves for a person: per-scan prediction PLYs and a ground-truth vs prediction picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pointlift.data.scenes import IGNORE, Scene
from pointlift.engine.rundir import atomic_file


def palette(num_classes: int) -> np.ndarray:
    """(C + 1, 3) uint8 colours; the last row (index -1) is grey for IGNORE."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = [tuple(int(255 * v) for v in cmap(i % 20)[:3]) for i in range(num_classes)]
    return np.array(colours + [(128, 128, 128)], dtype=np.uint8)


def write_prediction_ply(path: str | Path, points: np.ndarray, predictions: np.ndarray,
                         labels: np.ndarray | None, num_classes: int) -> Path:
    """Binary PLY: x y z (float32), red green blue of the predicted class, `label` (predicted id) and
    `gt` (ground-truth id, -1 = ignore) per point. Written atomically (a temporary name of this process's own)."""
    path = Path(path)
    n = len(points)
    labels = np.full(n, IGNORE) if labels is None else labels
    colours = palette(num_classes)[predictions]
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                      ("label", "<i4"), ("gt", "<i4")])
    table = np.empty(n, dtype=dtype)
    table["x"], table["y"], table["z"] = points[:, 0], points[:, 1], points[:, 2]
    table["red"], table["green"], table["blue"] = colours[:, 0], colours[:, 1], colours[:, 2]
    table["label"], table["gt"] = predictions, labels
    header = ("ply\nformat binary_little_endian 1.0\ncomment pointlift segmentation predictions\n"
              f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty int label\n"
              "property int gt\nend_header\n")
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        handle.write(header.encode())
        handle.write(table.tobytes())
    return path


def plot_prediction(scene: Scene, predictions: np.ndarray, class_names, path: str | Path,
                    max_points: int = 60000) -> Path:
    """Top-down picture: ground truth beside prediction, one colour per class (legend: every class in
    either), IGNORE grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    colours = palette(len(class_names)) / 255.0
    rng = np.random.default_rng(0)
    idx = rng.choice(len(scene), size=min(max_points, len(scene)), replace=False)
    idx = idx[np.argsort(scene.points[idx, 2])]  # draw low points first
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    for ax, values, title in ((axes[0], scene.labels, "ground truth"), (axes[1], predictions, "prediction")):
        ax.scatter(scene.points[idx, 0], scene.points[idx, 1], c=colours[values[idx]], s=0.5, linewidths=0)
        ax.set_title(f"{scene.name}: {title}")
        ax.set_aspect("equal")
        ax.axis("off")
    present = sorted((set(np.unique(scene.labels).tolist()) | set(np.unique(predictions).tolist())) - {IGNORE})
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[c], label=class_names[c]) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, max(1, len(handles))), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
