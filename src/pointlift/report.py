"""Run reports: `report.md` in a run directory, with the plots a person would rather look at than read.

Every plot function takes plain arrays and a PNG path, so methods, benchmarks and the quickstart share
them. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> Path:
    from pointlift.engine.rundir import atomic_file

    path = Path(path)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """metric name -> [(step, value)] from an engine metrics.csv; empty when the run logged nothing."""
    from pointlift.engine.metrics import read_metrics

    series: dict[str, list[tuple[float, float]]] = {}
    if not Path(path).is_file():
        return series
    for row in read_metrics(path):
        step = float(row.get("step", 0))
        for key, value in row.items():
            if key not in ("step", "epoch", "time", "split") and isinstance(value, (int, float)):
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_curves(curves: dict[str, Sequence[tuple[float, float]]], path: Path, title: str = "training",
                xlabel: str = "step") -> Path:
    """One panel per named curve ([(x, y)]), e.g. losses from metrics.csv."""
    curves = {k: v for k, v in curves.items() if len(v)}
    n = max(len(curves), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, lw=1.2)
        if len(ys) > 20:  # a moving average makes noisy losses readable
            w = max(len(ys) // 20, 2)
            smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
            ax.plot(xs[w - 1:], smooth, lw=2)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def plot_overlaid(curves: dict[str, Sequence[tuple[float, float]]], path: Path, title: str,
                  xlabel: str = "epoch", ylabel: str = "accuracy", level: tuple[str, float] | None = None) -> Path:
    """Several named curves ([(x, y)]) on one axis, e.g. two arms' validation accuracy, with an optional
    labelled horizontal level (a target accuracy)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, points in curves.items():
        if len(points):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=3, lw=1.4, label=name)
    if level is not None:
        ax.axhline(level[1], color="grey", ls="--", lw=1, label=level[0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_paired_arms(x: Sequence[float], arms: dict[str, tuple[np.ndarray, str]], gains: list[dict], path: Path,
                     xlabel: str, ylabel: str, title: str, gain_title: str, log_x: bool = False) -> Path:
    """Two arms over a budget axis: left, each arm's mean over seeds/draws (values[i] = the figures at x[i])
    with its 95 % t band; right, the paired difference at each x with its interval (`bench.stats`'s
    `paired_difference` records)."""
    from scipy.stats import t

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, (values, colour) in arms.items():
        values = np.asarray(values, dtype=float)
        n = values.shape[1]
        mean, band = values.mean(1), float(t.ppf(0.975, n - 1)) / np.sqrt(n) * values.std(1, ddof=1)
        left.plot(x, mean, "o-", color=colour, label=name)
        left.fill_between(x, mean - band, mean + band, color=colour, alpha=0.2)
    left.set(xlabel=xlabel, ylabel=ylabel, title=title)
    left.legend()
    right.errorbar(x, [g["mean"] for g in gains], yerr=[[g["mean"] - g["low"] for g in gains],
                                                        [g["high"] - g["mean"] for g in gains]],
                   fmt="o-", capsize=4, color=list(arms.values())[-1][1])
    right.axhline(0, color="black", lw=0.8)
    right.set(xlabel=xlabel, ylabel=f"{ylabel} difference", title=gain_title)
    for ax in (left, right):
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(list(x), [f"{v:g}" for v in x])
        ax.minorticks_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(groups: dict[str, dict[str, float]], path: Path, title: str, ylabel: str = "accuracy",
              errors: dict[str, dict[str, float]] | None = None) -> Path:
    """Grouped bars: groups[group][series] = value (e.g. {'1 %': {'ppkt': .4, 'scratch': .3}})."""
    group_names = list(groups)
    series = sorted({s for g in groups.values() for s in g})
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(group_names) + 2), 3.4))
    for i, name in enumerate(series):
        xs = np.arange(len(group_names)) + i * width
        ys = [groups[g].get(name, np.nan) for g in group_names]
        err = [errors.get(g, {}).get(name, 0.0) for g in group_names] if errors else None
        ax.bar(xs, ys, width, yerr=err, label=name, capsize=3)
    ax.set_xticks(np.arange(len(group_names)) + width * (len(series) - 1) / 2, group_names)
    if len(group_names) > 6:  # long lists of names would overlap
        plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_depth_views(depth_images: np.ndarray, saliency: np.ndarray | None, path: Path,
                     title: str = "depth views") -> Path:
    """Three rendered depth views (3,H,W) and, below, the teacher's saliency over them (3,h,w)."""
    rows = 2 if saliency is not None else 1
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3.1 * rows), squeeze=False)
    for v, name in enumerate(("along z", "along y", "along x")):
        axes[0, v].imshow(depth_images[v], cmap="viridis")
        axes[0, v].set_title(f"depth, {name}")
        axes[0, v].axis("off")
        if saliency is not None:
            axes[1, v].imshow(depth_images[v], cmap="gray")
            sal = saliency[v]
            axes[1, v].imshow(sal, cmap="inferno", alpha=0.6,
                              extent=(0, depth_images[v].shape[1], depth_images[v].shape[0], 0))
            axes[1, v].set_title("teacher saliency")
            axes[1, v].axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def plot_correspondences(color: np.ndarray, pixels: np.ndarray, point_values: np.ndarray, path: Path,
                         title: str = "pixel-point pairs", max_pairs: int = 3000) -> Path:
    """A frame with the pixels its 3D points came from, coloured by a per-point value (e.g. depth)."""
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(pixels))[:max_pairs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].imshow(color)
    axes[0].set_title("frame")
    axes[1].imshow(color, alpha=0.45)
    sc = axes[1].scatter(pixels[keep, 0], pixels[keep, 1], c=point_values[keep], s=2, cmap="turbo")
    fig.colorbar(sc, ax=axes[1], fraction=0.04)
    axes[1].set_title(title)
    for ax in axes:
        ax.axis("off")
    return _save(fig, path)


def plot_tsne(feature_sets: dict[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str], path: Path,
              title: str = "t-SNE of features", max_points: int = 600) -> Path:
    """Side-by-side t-SNE embeddings (e.g. 'before' and 'after' pretraining), coloured by class."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(0)
    keep = rng.permutation(len(labels))[:max_points]
    fig, axes = plt.subplots(1, len(feature_sets), figsize=(4.4 * len(feature_sets), 4.0), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for ax, (name, feats) in zip(axes.flat, feature_sets.items()):
        x = np.asarray(feats, dtype=np.float64)[keep]
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
        perplexity = float(min(30, max(5, (len(x) - 1) // 4)))
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(x)
        for c, cname in enumerate(class_names):
            m = labels[keep] == c
            ax.scatter(emb[m, 0], emb[m, 1], s=6, color=cmap(c % cmap.N), label=cname)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes.flat[0].legend(fontsize=6, markerscale=2, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = lambda v: (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|")  # noqa: E731 - | ends a cell
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_report(run_dir: str | Path, title: str, *, summary: str = "", tables: dict[str, Sequence[dict]] | None = None,
                 figures: Sequence[tuple[str, str | Path]] = (), config: Any = None,
                 metrics: dict[str, float] | None = None) -> Path:
    """Write `run_dir/report.md`: figures first (a person looks before reading), then tables and config."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    if summary:
        parts += [summary, ""]
    for caption, png in figures:
        rel = Path(png).resolve().relative_to(run_dir.resolve()) if Path(png).resolve().is_relative_to(run_dir.resolve()) else Path(png)
        parts += [f"### {caption}", "", f"![{caption}]({rel.as_posix()})", ""]
    for name, rows in (tables or {}).items():
        parts += [f"### {name}", "", markdown_table(rows), ""]
    if metrics:
        parts += ["### metrics", "", markdown_table([{"metric": k, "value": v} for k, v in metrics.items()]), ""]
    if config is not None:
        parts += ["### config", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    from pointlift.engine.rundir import atomic_file

    path = run_dir / "report.md"
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path


def _scalars(record: dict, prefix: str = "") -> dict[str, Any]:
    """The numbers and short strings of a (nested) summary, as `a.b` -> value rows."""
    rows: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.update(_scalars(value, f"{name}."))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            rows[name] = value
    return rows


def write_training_report(run_dir: str | Path, title: str, summary: dict, config: Any = None) -> Path:
    """The `report.md` of a training command: every metrics.csv column against the step, then the
    summary's figures and the config. Methods with a report of their own (segmentation) write that instead."""
    from pointlift.engine.config import config_to_dict

    run_dir = Path(run_dir)
    curves = read_metrics_csv(run_dir / "metrics.csv")
    figures = [("training curves", plot_curves(curves, run_dir / "curves.png", title=title))] if curves else []
    return write_report(run_dir, title, summary=f"{len(curves)} logged metrics; final figures below.",
                        figures=figures, metrics=_scalars(summary),
                        config=config_to_dict(config) if config is not None else None)
