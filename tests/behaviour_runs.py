"""The tiny training runs whose checkpoints pin pointlift's behaviour across restructurings.

`python tests/behaviour_runs.py OUT.json` runs each of them through the CLI and records, per checkpoint
tensor, its SHA-256 and its float64 sum; tests/test_behaviour_digests.py reruns them and compares with
the recorded file (tests/behaviour_digests.json, recorded on the code before issue 24's restructuring).
Float rounding depends on the CPU's kernels, so the file holds one record per machine kind (`machine()`):
the first-generation Zen record was made on the code before issue 24 (with the re-recordings below); the
Zen 4 record (AVX-512) on 475d24a, whose runs reproduce every first-generation Zen record there bit for bit.
Deliberate changes re-record only the runs they change, named here: issue 29's resampling seeded by each
shape's points (not its list position) re-recorded i2p-mae-official and i2p-mae-pointlift; issue 27's
speed-ups (PPKT reads out only the sampled pairs; a CNN teacher on the CPU runs BatchNorm-folded and channels-last)
change float rounding only - the same weights give the same losses to ~1e-6 - and re-recorded ppkt-rgbd,
ppkt-lidar, i2p-mae-official and i2p-mae-pointlift. Issue 27's pair chunks (a sparse convolution sums its
pairs in chunks of at most 65,536) change rounding where a map has more pairs: ppkt-lidar and segmentation were
re-recorded (the segmentation run's losses agree to 4e-5 after 3 steps; AdamW's first steps move each weight by
about the rate whatever the gradient's size, so gradients that are rounding noise give weights that differ by
up to 2 x the rate).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_configs  # noqa: E402

TINY_SEGMENTATION = {
    "name": "tiny",
    "data": {"layout": "scannet-votenet", "train": ["scene0000"], "test": ["scene0010_00"], "voxel_size": 0.15,
             "max_points": 10000},
    "model": {"unet": "spunet-tiny"},
    "train": {"max_steps": 3, "batch_size": 1, "log_every": 1, "checkpoint_every": 0,
              "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0001}},
}

TINY_PPKT_LIDAR = {
    "data": {"kind": "semantickitti", "sequences": ["00", "01"], "image_size": [64, 208], "holdout_fraction": 0.5},
    "model": {"student": "spunet-tiny", "in_features": "constant", "voxel_size": 0.4, "up_axis": "z",
              "teacher_stage": 3, "teacher_weights": "random"},
    "loss": {"num_pairs": 128},
    "eval_untrained": False,
    "eval_points_per_frame": 32,
    "train": {"max_steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 2,
              "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}},
}


def runs(root: Path, shared: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (CLI words, config) of every pinned run."""
    i2p_pointlift = run_configs.i2p_mae_config(root / "i2p-pl")
    i2p_pointlift["method"]["recipe"] = "pointlift"
    lidar = json.loads(json.dumps(TINY_PPKT_LIDAR))
    lidar["data"]["root"] = str(shared / "data/semantickitti-mini")
    lidar["cache_dir"] = str(root / "lidar_cache")
    segmentation = json.loads(json.dumps(TINY_SEGMENTATION))
    segmentation["data"]["root"] = str(shared / "data/scannet-votenet")
    return {
        "ppkt-rgbd": (["pretrain", "ppkt"], run_configs.ppkt_config(root / "ppkt")),
        "ppkt-lidar": (["pretrain", "ppkt"], lidar),
        "image2point": (["finetune", "image2point"],
                        run_configs.image2point_config(root, shared / "data/modelnet10_vox32.npz")),
        "i2p-mae-official": (["pretrain", "i2p-mae"], run_configs.i2p_mae_config(root / "i2p")),
        "i2p-mae-pointlift": (["pretrain", "i2p-mae"], i2p_pointlift),
        "segmentation": (["finetune", "segmentation"], segmentation),
    }


def digest(run_dir: Path) -> dict[str, list]:
    """tensor name -> [sha256 of its bytes, float64 sum] of the run's last checkpoint."""
    tensors = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    return {name: [hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest(),
                   float(t.double().sum()) if t.is_floating_point() or t.dtype in (torch.int64, torch.int32)
                   else 0.0]
            for name, t in sorted(tensors.items())}


def run_one(name: str, root: Path, shared: Path, workers: int = 0, data: dict | None = None) -> dict:
    """Run `name` (with `workers` DataLoader worker processes and `data` options added) and digest its last
    checkpoint."""
    from pointlift.cli import main

    command, config = runs(root, shared)[name]
    if workers:
        config["train"]["num_workers"] = workers
    config["data"].update(data or {})
    path = run_configs.write(config, root / f"{name}.yaml")
    code = main([*command, "--config", str(path), "--run-dir", str(root / name)])
    assert code == 0, f"{name}: exit {code}"
    return digest(root / name)


def machine() -> dict:
    """The machine kind whose kernels decide float rounding: the CPU's vendor, family, model, stepping and SIMD
    units (`cpu_description`; a VM's model name alone, "AMD EPYC", names a first-generation Zen and a Zen 4
    alike, whose products round differently), torch and Python."""
    from pointlift.commands.bench import cpu_description

    cpu = cpu_description() or {}
    return {"cpu": {key: value for key, value in cpu.items() if key != "model_name"}, "torch": torch.__version__,
            "python": platform.python_version()}


def record_for_this_machine(recorded: dict) -> dict | None:
    """The record (machine, code, runs) of `recorded` (behaviour_digests.json) made on this machine kind."""
    here = machine()
    return next((record for record in recorded["records"] if record["machine"] == here), None)


if __name__ == "__main__":
    # python tests/behaviour_runs.py OUT.json [SHARED] [CODE]: adds (or replaces) this machine kind's record
    import tempfile

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    shared = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "shared"
    code = sys.argv[3] if len(sys.argv) > 3 else "unnamed"
    recorded = json.loads(out.read_text()) if out.exists() else {"records": []}
    with tempfile.TemporaryDirectory() as tmp:
        record = {"machine": machine(), "code": code, "runs": {}}
        for name in runs(Path(tmp), shared):
            record["runs"][name] = run_one(name, Path(tmp), shared)
            print(name, "done", flush=True)
    recorded["records"] = [r for r in recorded["records"] if r["machine"] != record["machine"]] + [record]
    out.write_text(json.dumps(recorded, indent=1) + "\n")
