"""Where a training step's time goes, per method: wall time inside named parts of the code, per step.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/step_profile.py --out bench/results/step-profile-cpu.json

Runs each method's real command (the configs of bench/step_times.py) in this process with timers around the
parts below (inclusive wall time; a part listed under another is counted in both). The first step is not
counted. `data` is the DataLoader fetch (dataset items and collate) on the training thread; `backward + update`
is the trainer's optimizer step; `step` is data + forward + backward + update. Parts a tree does not have are
left out, so the same script profiles an older tree too (run it with that tree's scripts/with-env.sh).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_times import method_configs  # noqa: E402

COMMON = {
    "data (items + collate)": "torch.utils.data._utils.fetch._MapDatasetFetcher.fetch",
    "forward + backward + update": "pointlift.engine.trainer.Trainer.train_step",
    "backward + update": "pointlift.engine.trainer.Trainer.optimizer_step",
}
PARTS = {
    "ppkt": {
        "items: pairs, augmentation": "pointlift.methods.ppkt.dataset.PPKTDataset.__getitem__",
        "student: voxelise + U-Net": "pointlift.methods.ppkt.model.student_voxel_features",
        "student: voxelise + U-Net + per-point read-out (before)": "pointlift.methods.ppkt.model.student_point_features",
        "sparse kernel maps": "pointlift.sparse.kernel_map.build_kernel_map",
        "UPL: whole maps": "pointlift.teachers.upl.UpsamplingProjection.forward",
        "UPL: sampled pixels": "pointlift.teachers.upl.UpsamplingProjection.sample",
        "InfoNCE": "pointlift.methods.ppkt.model.info_nce_global",
    },
    "i2p-mae": {
        "render + teacher": "pointlift.methods.i2p_mae.model.I2PMAE.teacher_outputs",
        "teacher network": "pointlift.teachers.teacher.Teacher.features_and_saliency",
        "grouping (FPS, kNN)": "pointlift.models.point_m2ae.model.PointM2AE.group",
        "masking": "pointlift.methods.i2p_mae.model.I2PMAE.top_visible",
        "encoder + decoder": "pointlift.methods.i2p_mae.model.I2PMAE.encode_decode",
        "3D loss": "pointlift.methods.i2p_mae.model.I2PMAE.reconstruction_loss",
        "2D loss": "pointlift.methods.i2p_mae.model.I2PMAE.feature_loss",
    },
    "image2point": {
        "items: augmentation": "pointlift.tasks.shape_classification.data.ReleasedShapeDataset.__getitem__",
        "collate: voxelisation": "pointlift.tasks.shape_classification.data.ReleasedCollate.__call__",
        "sparse kernel maps": "pointlift.sparse.kernel_map.build_kernel_map",
    },
    "segmentation": {
        "items: crop, augmentation, voxelisation": "pointlift.tasks.segmentation.data.SceneDataset.__getitem__",
        "sparse kernel maps": "pointlift.sparse.kernel_map.build_kernel_map",
    },
}
METHOD_PARTS = {"ppkt-lidar": "ppkt", "ppkt-rgbd": "ppkt", "i2p-mae-official": "i2p-mae",
                "image2point": "image2point", "segmentation": "segmentation",
                "ppkt-lidar-compiled": "ppkt", "segmentation-compiled": "segmentation"}  # on the compiled kernels


def _patch(path: str, totals: dict, label: str) -> list[tuple]:
    """Wrap the function at dotted `path` with a timer adding to totals[label]. Returns every
    (owner, attribute, original) replaced, to undo; empty when the function does not exist in this tree."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name, None)
        original = getattr(owner, parts[-1], None) if owner is not None else None
        if original is None:
            return []

        def timed(*args, __original=original, **kwargs):
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - start

        # modules that imported the function by name hold their own reference: those are wrapped too
        owners = [owner] + [module for module in list(sys.modules.values())
                            if module is not None and module is not owner
                            and getattr(module, parts[-1], None) is original]
        for where in owners:
            setattr(where, parts[-1], timed)
        return [(where, parts[-1], original) for where in owners]
    return []


def profile_method(name: str, steps: int, work: Path) -> dict:
    from pointlift.cli import main as cli

    words, config = method_configs(steps, work / "cache")[name]
    config = json.loads(json.dumps(config))
    config["train"]["num_workers"] = 0
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    totals: dict = defaultdict(float)
    counts = {"steps": 0}
    warm = {}
    parts = {**COMMON, **PARTS[METHOD_PARTS[name]]}
    patched = [undo for label, target in parts.items() for undo in _patch(target, totals, label)]
    # the first step (lazy set-up) is not counted: the totals are read when the second batch is fetched
    from torch.utils.data._utils import fetch as fetch_module
    original_fetch = fetch_module._MapDatasetFetcher.fetch

    def fetch(self, *args, **kwargs):
        counts["steps"] += 1
        if counts["steps"] == 2:
            warm.update(totals)
        return original_fetch(self, *args, **kwargs)

    fetch_module._MapDatasetFetcher.fetch = fetch
    try:
        code = cli([*words, "--config", str(path), "--run-dir", str(work / name), "--no-progress"])
    finally:
        fetch_module._MapDatasetFetcher.fetch = original_fetch
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)
    if code != 0:
        return {"error": f"exit {code}"}
    counted = steps - 1  # the run's steps after the first
    per_step = {label: 1000 * (totals[label] - warm.get(label, 0.0)) / counted for label in parts if label in totals}
    per_step["step"] = per_step.get("data (items + collate)", 0.0) + per_step.get("forward + backward + update", 0.0)
    return {"ms_per_step": per_step, "steps_counted": counted, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHOD_PARTS))
    parser.add_argument("--steps", type=int, default=5, help="steps per method (the first is not counted)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            results[name] = profile_method(name, args.steps, Path(tmp))
            rows = results[name].get("ms_per_step", {})
            total = rows.get("step") or 1.0
            print(f"\n{name} ({torch.get_num_threads()} thread(s)):")
            for label, ms in rows.items():
                print(f"  {label:55s} {ms:9.1f} ms  {100 * ms / total:5.1f} %")
    import pointlift

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"methods": results, "source": str(Path(pointlift.__file__).parents[2]),
                                    "threads": torch.get_num_threads(), "cores": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
