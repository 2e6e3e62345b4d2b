"""Sparse U-Net forward+backward on a real RGB-D frame: pure PyTorch backend vs spconv (and pointlift's compiled kernels).

A 7-Scenes "redkitchen" depth frame is back-projected, voxelised at 2 cm and fed (voxel colour
as features) through SpUNet-v1m1 (`cpu`, `gpu`) or spunet-tiny on a thinned frame (`smoke`).
Each timed step builds a fresh SparseTensor, so kernel-map construction is included for both
backends, as in training where every batch brings new coordinates. When spconv is importable it
runs side by side on the same model and weights; otherwise its metrics are NaN. So does the
"compiled" backend (`pointlift.sparse.compiled`) where a C++ compiler can build it.

Reported: forward and backward medians per backend, the pure/spconv ratio (median of per-repeat
ratios, backends alternating in one process), a per-layer-type profile of the pure backend, peak
memory per backend, and scaling with the number of voxels (re-voxelising the frame) with a plot.
"""

from __future__ import annotations

import copy
import math
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pointlift.bench import PRESETS as PRESET_NAMES
from pointlift.bench import BenchResult, Preset, shared_path
from pointlift.engine.rundir import write_json
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.models.sparse_unet import sparse_unet
from pointlift.sparse import SparseTensor, compiled, spconv_available, use_backend
from pointlift.sparse.kernel_map import encode_keys


def default_data_root() -> Path:
    return shared_path("data/7scenes-redkitchen")


@dataclass(frozen=True)
class SparsePreset(Preset):
    model: str  # sparse_unet name
    pixel_stride: int  # keep every n-th depth pixel in both directions
    voxel: float  # voxel size (m) of the main measurement
    scaling: tuple[float, ...]  # voxel sizes of the scaling points
    warmup: int  # untimed steps per backend
    repeats: int  # timed steps per backend (main measurement)
    scaling_repeats: int  # timed steps per backend and scaling point
    device: str
    peak_memory: bool  # measure peak memory per backend


# voxel sizes: the main measurement, then the scaling points (about 5k, 20k, 80k voxels on CPU;
# 20k and 200k on GPU). Every point re-voxelises the same frame.
PRESETS = SparsePreset.table({
    "smoke": dict(model="spunet-tiny", pixel_stride=8, voxel=0.02, scaling=(), warmup=1, repeats=2,
                  scaling_repeats=1, device="cpu", peak_memory=False),
    "cpu": dict(model="spunet-v1m1", pixel_stride=1, voxel=0.02, scaling=(0.044, 0.02, 0.0082), warmup=1,
                repeats=5, scaling_repeats=5, device="cpu", peak_memory=True),
    "gpu": dict(model="spunet-v1m1", pixel_stride=1, voxel=0.02, scaling=(0.02, 0.004), warmup=3, repeats=10,
                scaling_repeats=10, device="cuda", peak_memory=True),
})
VOXEL_SIZE = 0.02
NUM_CLASSES = 20
FRAME_INDEX = 0


def load_frame_voxels(root: Path, pixel_stride: int, device: torch.device, voxel_size: float = VOXEL_SIZE):
    """(coords (M, 4) long, colours (M, 3) float in [0, 1]) of one back-projected frame."""
    from pointlift.data.rgbd import open_rgbd_sequence
    from pointlift.geometry.camera import depth_to_points
    from pointlift.geometry.voxel import average_per_voxel, voxelize

    sequence = open_rgbd_sequence(root)
    frame = sequence[FRAME_INDEX]
    depth = torch.from_numpy(frame.depth)
    K = torch.from_numpy(frame.intrinsics)
    points, pixels = depth_to_points(depth, K, stride=pixel_stride)
    if len(points) == 0:
        raise PointliftDataError(root, f"frame {frame.name} has no valid depth")
    colours = torch.from_numpy(frame.color)[pixels[:, 1], pixels[:, 0]].float() / 255
    voxels = voxelize(points.float(), voxel_size)
    return voxels.coords.to(device), average_per_voxel(colours, voxels).to(device), len(points), frame.name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model, coords, features, labels, device) -> tuple[float, float]:
    """(forward s, backward s) of one training step; the forward includes building the kernel maps."""
    model.zero_grad(set_to_none=True)
    _sync(device)
    start = time.perf_counter()
    out = model(SparseTensor(features, coords))
    loss = F.cross_entropy(out.features, labels)
    _sync(device)
    middle = time.perf_counter()
    loss.backward()
    _sync(device)
    return middle - start, time.perf_counter() - middle


def _time_backends(models: dict, coords, features, labels, backends, warmup, repeats, device) -> dict[str, list]:
    """Per backend, the (forward, backward) seconds of every repeat on `models[backend]`; backends alternate
    within each repeat (order reversed every other repeat) so that all of them see the same machine load."""
    for backend in backends:
        with use_backend(backend):
            for _ in range(warmup):
                _step(models[backend], coords, features, labels, device)
    times = {backend: [] for backend in backends}
    for r in range(repeats):
        for backend in backends if r % 2 == 0 else backends[::-1]:
            with use_backend(backend):
                times[backend].append(_step(models[backend], coords, features, labels, device))
    return times


def _summary(times: dict[str, list], prefix: str = "") -> dict[str, float]:
    """Medians of forward, backward and forward+backward per backend; the ratios pure/spconv, compiled/spconv and
    compiled/pure as the median of the per-repeat ratios (each repeat measures the backends back to back)."""
    out = {}
    for backend, values in times.items():
        name = "pointlift" if backend == "pure" else backend
        out[f"{prefix}fwd_s_{name}"] = statistics.median(f for f, _ in values)
        out[f"{prefix}bwd_s_{name}"] = statistics.median(b for _, b in values)
        out[f"{prefix}fwd_bwd_s_{name}"] = statistics.median(f + b for f, b in values)
    comparisons = [("pure", "spconv", ""), ("compiled", "spconv", "compiled_"), ("compiled", "pure", "compiled_")]
    for arm, baseline, name in comparisons:
        if arm in times and baseline in times:
            pairs = list(zip(times[arm], times[baseline]))
            versus = "spconv" if baseline == "spconv" else "pointlift"
            out[f"{prefix}{name}ratio_vs_{versus}"] = statistics.median((p[0] + p[1]) / (s[0] + s[1]) for p, s in pairs)
            out[f"{prefix}{name}ratio_fwd_vs_{versus}"] = statistics.median(p[0] / s[0] for p, s in pairs)
            out[f"{prefix}{name}ratio_bwd_vs_{versus}"] = statistics.median(p[1] / s[1] for p, s in pairs)
    return out


def _sorted_output(model, coords, features, backend) -> torch.Tensor:
    with use_backend(backend), torch.no_grad():
        out = model(SparseTensor(features, coords))
    return out.features[torch.argsort(encode_keys(out.coords))]


def layer_breakdown(model, coords, features, labels, device) -> dict[str, float]:
    """Milliseconds per layer type (pure backend, one profiled step): sparse convs by kind, forward and
    backward, kernel maps (hash queries, site downsampling, CSR matrices), and everything else."""
    from torch.profiler import ProfilerActivity, profile

    with use_backend("pure"):
        _step(model, coords, features, labels, device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            fwd, bwd = _step(model, coords, features, labels, device)
    events = [e for e in prof.events() if e.name.startswith("sparse.")]
    maps = [e for e in events if e.name == "sparse.kernel_map"]
    result: dict[str, float] = {}
    for e in events:
        if e.name == "sparse.kernel_map":
            continue
        inside = sum(m.time_range.elapsed_us() for m in maps
                     if e.time_range.start <= m.time_range.start and m.time_range.end <= e.time_range.end)
        kind = e.name[len("sparse."):]
        key = f"{kind[: -len('.backward')]}_bwd_ms" if kind.endswith(".backward") else f"{kind}_fwd_ms"
        result[key] = result.get(key, 0.0) + (e.time_range.elapsed_us() - inside) / 1e3
    result["kernel_maps_ms"] = sum(m.time_range.elapsed_us() for m in maps) / 1e3
    result["other_ms"] = (fwd + bwd) * 1e3 - sum(result.values())
    result["profiled_step_ms"] = (fwd + bwd) * 1e3
    return dict(sorted(result.items()))


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_child(queue, preset: str, root: str, voxel: float, backend: str, threads: int = 1) -> None:
    """In a fresh process (the parent's torch threads): peak RSS over two training steps minus the RSS of the
    loaded model and data (the peak mark is reset after loading, whose own peak is higher than a small step's)."""
    torch.set_num_threads(threads)
    settings = PRESETS[preset]
    coords, features, _, _ = load_frame_voxels(Path(root), settings.pixel_stride, torch.device("cpu"), voxel)
    torch.manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (len(coords),))
    model = sparse_unet(settings.model, in_channels=3, out_channels=NUM_CLASSES)
    base = _current_rss_mb()
    reset = _reset_peak_rss()
    with use_backend(backend):
        for _ in range(2):
            _step(model, coords, features, labels, torch.device("cpu"))
    queue.put((_peak_rss_mb() - base, reset))


def peak_memory_mb(preset, root, voxel, backend, device) -> float:
    """Peak memory of a training step: CUDA max allocated, or on CPU the peak RSS growth over the
    loaded model and data, in a fresh process per backend (RSS peaks cannot be reset in-process)."""
    if device.type == "cuda":
        raise AssertionError("measured in-process on CUDA")
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_child, args=(queue, preset, str(root), voxel, backend,
                                                        torch.get_num_threads()))
    process.start()
    value, reset = queue.get(timeout=1800)
    process.join()
    if not reset:
        raise PointliftConfigError("cannot reset the peak RSS mark (/proc/self/clear_refs); peak memory not measured")
    return float(value)


def _cuda_peak_mb(model, coords, features, labels, device) -> float:
    torch.cuda.reset_peak_memory_stats(device)
    with use_backend("pure"):
        _step(model, coords, features, labels, device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def plot_scaling(rows: list[dict], path: Path, title: str) -> Path:
    from pointlift.report import plot_overlaid

    curves = {}
    for backend in ("pointlift", "spconv", "compiled"):
        for phase in ("fwd", "bwd"):
            points = [(row["num_voxels"], row[f"{phase}_s_{backend}"]) for row in rows
                      if math.isfinite(row.get(f"{phase}_s_{backend}", math.nan))]
            if points:
                curves[f"{backend} {'forward' if phase == 'fwd' else 'backward'}"] = points
    return plot_overlaid(curves, path, title=title, xlabel="voxels (sites at stride 1)", ylabel="seconds (median)")


def run(preset: str, out_dir: Path, data_root: Path | None = None) -> BenchResult:
    if preset not in PRESET_NAMES:
        raise PointliftConfigError(f"unknown preset {preset!r}; choose from {PRESET_NAMES}")
    settings = PRESETS[preset]
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise PointliftConfigError("preset 'gpu' needs a CUDA device; use --preset cpu")
    device = torch.device(settings.device)
    root = Path(data_root) if data_root is not None else default_data_root()
    if not root.exists():
        raise PointliftDataError(root, "7-Scenes redkitchen folder not found (set POINTLIFT_SHARED)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()

    torch.manual_seed(0)
    coords, features, num_points, frame_name = load_frame_voxels(root, settings.pixel_stride, device, settings.voxel)
    labels = torch.randint(0, NUM_CLASSES, (len(coords),), device=device)
    model = sparse_unet(settings.model, in_channels=3, out_channels=NUM_CLASSES).to(device)
    model.eval()  # parity: BatchNorm from running statistics, identical for both backends
    have_spconv = spconv_available()
    have_compiled = device.type == "cpu" and compiled.available()
    parity = parity_compiled = math.nan
    if have_spconv:
        parity = float((_sorted_output(model, coords, features, "pure") - _sorted_output(model, coords, features, "spconv")).abs().max())
    # the compiled arm runs a copy with the same weights: its layers keep their weights in the kernels' memory
    # order (compiled.use_kernel_layout), which the other backends would have to copy out of every step
    models = {"pure": model, "spconv": model}
    if have_compiled:
        models["compiled"] = copy.deepcopy(model)
        parity_compiled = float((_sorted_output(model, coords, features, "pure")
                                 - _sorted_output(models["compiled"], coords, features, "compiled")).abs().max())
    for network in models.values():
        network.train()
    backends = ["pure"] + (["compiled"] if have_compiled else []) + (["spconv"] if have_spconv else [])

    timed = _time_backends(models, coords, features, labels, backends, settings.warmup, settings.repeats, device)
    metrics: dict[str, float] = {"parity_max_abs_err": parity, "parity_compiled_max_abs_err": parity_compiled,
                                 **_summary(timed)}
    metrics.setdefault("ratio_vs_spconv", math.nan)
    metrics.setdefault("compiled_ratio_vs_spconv", math.nan)
    fwd_bwd = metrics["fwd_bwd_s_pointlift"]
    metrics["unet_fwd_bwd_s_pointlift"] = fwd_bwd
    metrics["unet_fwd_bwd_s_spconv"] = metrics.get("fwd_bwd_s_spconv", math.nan)
    metrics["sites_per_s_pointlift"] = len(coords) / fwd_bwd
    metrics["num_voxels"] = float(len(coords))
    metrics["num_points"] = float(num_points)
    breakdown = layer_breakdown(model, coords, features, labels, device)
    metrics.update({f"breakdown_{key}": value for key, value in breakdown.items()})

    if settings.peak_memory:
        if device.type == "cuda":
            metrics["peak_mem_mb_pointlift"] = _cuda_peak_mb(model, coords, features, labels, device)
        else:
            for backend in backends:
                name = "pointlift" if backend == "pure" else backend
                metrics[f"peak_mem_mb_{name}"] = peak_memory_mb(preset, root, settings.voxel, backend, device)
    metrics["peak_mem_mb"] = metrics.get("peak_mem_mb_pointlift", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    scaling = []
    for voxel in settings.scaling:
        c, f, _, _ = load_frame_voxels(root, settings.pixel_stride, device, voxel)
        lab = torch.randint(0, NUM_CLASSES, (len(c),), device=device)
        row = {"voxel_size_m": voxel, "num_voxels": len(c)}
        if voxel == settings.voxel:  # the main measurement is this point
            row.update(_summary(timed))
        else:
            row.update(_summary(_time_backends(models, c, f, lab, backends, 1, settings.scaling_repeats, device)))
        row["sites_per_s_pointlift"] = len(c) / row["fwd_bwd_s_pointlift"]
        if device.type == "cuda":
            row["peak_mem_mb_pointlift"] = _cuda_peak_mb(model, c, f, lab, device)
        scaling.append(row)
        label = f"{len(c) // 1000}k"
        metrics[f"scaling_{label}_fwd_bwd_s_pointlift"] = row["fwd_bwd_s_pointlift"]
        metrics[f"scaling_{label}_sites_per_s_pointlift"] = row["sites_per_s_pointlift"]
        for name in ("ratio_vs_spconv", "compiled_ratio_vs_spconv", "compiled_ratio_vs_pointlift"):
            if name in row:
                metrics[f"scaling_{label}_{name}"] = row[name]
    plot = None
    if scaling:
        plot = str(plot_scaling(scaling, out_dir / "sparse_scaling.png",
                                title=f"{settings.model} fwd / bwd on {device.type}, one frame"))
    load_end = os.getloadavg()

    config = {
        "preset": preset,
        "model": settings.model,
        "frame": f"{root.name}/{frame_name}",
        "pixel_stride": settings.pixel_stride,
        "voxel_size_m": settings.voxel,
        "scaling_voxel_sizes_m": list(settings.scaling),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "scaling_repeats": settings.scaling_repeats,
        "timing": "median over repeats of one training step (forward incl. kernel maps | backward); backends "
                  "alternate within each repeat, order reversed every other repeat; ratios are medians of "
                  "per-repeat ratios",
        "breakdown": "pure backend, one torch.profiler step (profiler overhead included); conv times exclude the "
                     "kernel maps built inside them" + ("; on CUDA these are host-side (launch) times"
                                                        if device.type == "cuda" else ""),
        "peak_mem": ("CUDA max allocated over one step" if device.type == "cuda" else
                     "peak RSS over two steps (VmHWM, reset after loading) minus the RSS of the loaded model and "
                     "data, in a fresh process per backend"),
        "load_average_start": list(load_start),
        "load_average_end": list(load_end),
        "scaling": scaling,
        "times_s": {backend: [list(v) for v in values] for backend, values in timed.items()},
        "plot": plot,
        "spconv": _spconv_version() if have_spconv else None,
        "compiled": have_compiled,
    }
    write_json(out_dir / "sparse.json", {"metrics": metrics, "config": config}, indent=2)
    return BenchResult(metrics, config)


def _spconv_version() -> str:
    import spconv

    return getattr(spconv, "__version__", "unknown")
