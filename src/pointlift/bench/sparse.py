"""Sparse U-Net forward+backward on a real RGB-D frame: pure PyTorch backend vs spconv.

A 7-Scenes "redkitchen" depth frame is back-projected, voxelised at 2 cm and fed (voxel colour
as features) through SpUNet-v1m1 (`cpu`, `gpu`) or spunet-tiny on a thinned frame (`smoke`).
Each timed step builds a fresh SparseTensor, so kernel-map construction is included for both
backends, as in training where every batch brings new coordinates. When spconv is importable it
runs side by side on the same model and weights; otherwise its metrics are NaN.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pointlift.bench import PRESETS, BenchResult, shared_path
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.models.sparse_unet import sparse_unet
from pointlift.sparse import SparseTensor, spconv_available, use_backend
from pointlift.sparse.kernel_map import encode_keys



def default_data_root() -> Path:
    return shared_path("data/7scenes-redkitchen")


SETTINGS = {
    "smoke": dict(model="spunet-tiny", pixel_stride=8, warmup=1, repeats=2, device="cpu"),
    "cpu": dict(model="spunet-v1m1", pixel_stride=1, warmup=1, repeats=3, device="cpu"),
    "gpu": dict(model="spunet-v1m1", pixel_stride=1, warmup=3, repeats=10, device="cuda"),
}
VOXEL_SIZE = 0.02
NUM_CLASSES = 20
FRAME_INDEX = 0


def load_frame_voxels(root: Path, pixel_stride: int, device: torch.device):
    """(coords (M, 4) long, colours (M, 3) float in [0, 1]) of one back-projected frame at 2 cm."""
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
    voxels = voxelize(points.float(), VOXEL_SIZE)
    return voxels.coords.to(device), average_per_voxel(colours, voxels).to(device), len(points), frame.name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model, coords, features, labels) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    out = model(SparseTensor(features, coords))
    F.cross_entropy(out.features, labels).backward()
    return out


def _time_backends(model, coords, features, labels, backends, warmup, repeats, device) -> dict[str, float]:
    """Best-of-`repeats` seconds per backend; backends alternate so both see the same machine load."""
    for backend in backends:
        with use_backend(backend):
            for _ in range(warmup):
                _step(model, coords, features, labels)
    times = {backend: [] for backend in backends}
    for _ in range(repeats):
        for backend in backends:
            with use_backend(backend):
                _sync(device)
                start = time.perf_counter()
                _step(model, coords, features, labels)
                _sync(device)
                times[backend].append(time.perf_counter() - start)
    return {backend: min(values, default=math.nan) for backend, values in times.items()}


def _sorted_output(model, coords, features, backend) -> torch.Tensor:
    with use_backend(backend), torch.no_grad():
        out = model(SparseTensor(features, coords))
    return out.features[torch.argsort(encode_keys(out.coords))]


def run(preset: str, out_dir: Path, data_root: Path | None = None) -> BenchResult:
    if preset not in PRESETS:
        raise PointliftConfigError(f"unknown preset {preset!r}; choose from {PRESETS}")
    settings = SETTINGS[preset]
    if settings["device"] == "cuda" and not torch.cuda.is_available():
        raise PointliftConfigError("preset 'gpu' needs a CUDA device; use --preset cpu")
    device = torch.device(settings["device"])
    root = Path(data_root) if data_root is not None else default_data_root()
    if not root.exists():
        raise PointliftDataError(root, "7-Scenes redkitchen folder not found (set POINTLIFT_SHARED)")

    torch.manual_seed(0)
    coords, features, num_points, frame_name = load_frame_voxels(root, settings["pixel_stride"], device)
    labels = torch.randint(0, NUM_CLASSES, (len(coords),), device=device)
    model = sparse_unet(settings["model"], in_channels=3, out_channels=NUM_CLASSES).to(device)
    model.eval()  # parity: BatchNorm from running statistics, identical for both backends
    have_spconv = spconv_available()
    parity = math.nan
    if have_spconv:
        parity = float((_sorted_output(model, coords, features, "pure") - _sorted_output(model, coords, features, "spconv")).abs().max())
    model.train()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # pointlift alone first, so that its peak memory is not spconv's
    t_pure = _time_backends(model, coords, features, labels, ["pure"], settings["warmup"], 1, device)["pure"]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)
    backends = ["pure", "spconv"] if have_spconv else ["pure"]
    if have_spconv:
        _time_backends(model, coords, features, labels, ["spconv"], settings["warmup"], 0, device)
    timed = _time_backends(model, coords, features, labels, backends, 0, settings["repeats"], device)
    t_pure = min(t_pure, timed["pure"])
    t_spconv = timed.get("spconv", math.nan)

    metrics = {
        "parity_max_abs_err": parity,
        "unet_fwd_bwd_s_pointlift": t_pure,
        "unet_fwd_bwd_s_spconv": t_spconv,
        "ratio_vs_spconv": t_pure / t_spconv if have_spconv else math.nan,
        "peak_mem_mb": peak_mb,
        "num_voxels": float(len(coords)),
        "num_points": float(num_points),
    }
    config = {
        "preset": preset,
        "model": settings["model"],
        "frame": f"{root.name}/{frame_name}",
        "pixel_stride": settings["pixel_stride"],
        "voxel_size_m": VOXEL_SIZE,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "warmup": settings["warmup"],
        "repeats": settings["repeats"],
        "timing": "best-of-repeats wall time of one forward+backward incl. kernel-map construction; backends alternate",
        "peak_mem": "CUDA max allocated" if device.type == "cuda" else "process peak RSS",
        "spconv": _spconv_version() if have_spconv else None,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sparse.json").write_text(json.dumps({"metrics": metrics, "config": config}, indent=2))
    return BenchResult(metrics, config)


def _spconv_version() -> str:
    import spconv

    return getattr(spconv, "__version__", "unknown")
