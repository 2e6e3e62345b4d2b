"""Quickstart demo of scene segmentation: a sparse U-Net trained briefly on generated rooms, scored on held-out
rooms against the same network untrained."""

from __future__ import annotations

from pathlib import Path

from pointlift.engine.config import load_config
from pointlift.tasks.segmentation.config import SegmentationConfig
from pointlift.tasks.segmentation.finetune import finetune


def quickstart_config(run_root: Path | str = "runs", steps: int = 60, unet: str = "spunet-tiny") -> SegmentationConfig:
    """The quickstart's recipe: a small sparse U-Net from scratch on synthetic rooms (RGB features,
    10 cm voxels), Adam, the task's usual augmentations. Scans come from `quickstart`, not `data.root`."""
    return load_config({
        "name": "quickstart-segmentation",
        "data": {"root": "<synthetic rooms>", "train": ["synthetic_train"], "test": ["synthetic_test"],
                 "voxel_size": 0.1},
        "model": {"unet": unet},
        "train": {"max_steps": steps, "batch_size": 2, "log_every": 5, "checkpoint_every": 0,
                  "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0001}},
        "device": "cpu",
        "run_root": str(run_root),
    }, SegmentationConfig)


def quickstart(run_dir: str | Path, progress: bool = True, *, steps: int = 60, train_rooms: int = 8,
               test_rooms: int = 3, unet: str = "spunet-tiny", data_seed: int = 0) -> dict:
    """Scene segmentation on generated rooms (`pointlift.data.synthetic.make_labelled_room`): `finetune`
    of a sparse U-Net for `steps` steps on `train_rooms` rooms, scored on `test_rooms` held-out rooms
    (other seeds) against the same network untrained; the prediction-vs-ground-truth picture and loss curve.
    Defaults: about 20 s on one CPU thread (measured: test mIoU 0.69 vs 0.05 untrained; 100 steps gave
    0.71, spunet-small with 30 steps 0.59 in the same time). `data_seed` d: training rooms from seed 100 d, test
    rooms from 1000 + 100 d (0 is the demo's own)."""
    from pointlift.data.synthetic import make_labelled_rooms

    config = quickstart_config(Path(run_dir).parent, steps, unet)
    scenes = {"train": make_labelled_rooms(train_rooms, seed=100 * data_seed),
              "test": make_labelled_rooms(test_rooms, seed=1000 + 100 * data_seed),
              "val": []}
    summary = finetune(config, run_dir, progress=progress, scenes=scenes)
    figures = {
        "test_miou_finetuned": summary["test"]["miou"],
        "test_miou_untrained": summary["untrained"]["miou"],
        "test_overall_acc_finetuned": summary["test"]["overall_acc"],
        "test_overall_acc_untrained": summary["untrained"]["overall_acc"],
        "loss_first": summary["loss_first"],
        "loss_last": summary["loss_last"],
    }
    plots = []
    run_dir = Path(run_dir)
    if (run_dir / "prediction_vs_gt.png").exists():
        plots.append((f"{scenes['test'][0].name} (held out): ground truth vs prediction, top view",
                      run_dir / "prediction_vs_gt.png"))
    if (run_dir / "loss.png").exists():
        plots.append(("segmentation training loss", run_dir / "loss.png"))
    return {"figures": figures, "plots": plots}
