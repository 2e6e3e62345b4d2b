"""CLI layer; moves to pointlift/commands in phase 2.

`pointlift pretrain i2p-mae` and `pointlift finetune i2p-mae`: config loading, the resume check, the run
directory, the summary and the printed line; the work is `pretrain.pretrain` and
`pointlift.tasks.point_classification.finetune`.
"""

from __future__ import annotations

from pathlib import Path

from pointlift.engine.config import load_config
from pointlift.engine.distributed import is_main_process
from pointlift.engine.rundir import create_run_dir, write_json
from pointlift.errors import PointliftConfigError
from pointlift.methods.i2p_mae.config import I2PMAEExperiment
from pointlift.methods.i2p_mae.pretrain import pretrain
from pointlift.tasks.point_classification import PointFinetuneConfig, finetune, pretraining_checkpoint


def pretrain_command(config_path, resume: bool = False, run_dir=None) -> Path:
    """`pointlift pretrain i2p-mae --config FILE [--resume] [--run-dir DIR]`."""
    experiment = load_config(config_path, I2PMAEExperiment)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    run_dir = create_run_dir(experiment.name, experiment.runs_root, run_dir, config=experiment)
    _, result, info = pretrain(experiment, run_dir, resume=resume)
    summary = {"step": result.step, "stop_reason": result.stop_reason,
               "checkpoint": str(result.checkpoint_path), **info}
    write_json(Path(run_dir) / "summary.json", summary)  # rank 0 only
    if is_main_process():
        print(f"i2p-mae: {result.step} steps, checkpoint {result.checkpoint_path}")
    return Path(run_dir)


def finetune_command(config_path, resume: bool = False, run_dir=None) -> dict:
    """`pointlift finetune i2p-mae --config FILE [--resume] [--run-dir DIR]`."""
    config = load_config(config_path, PointFinetuneConfig)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    pretraining_checkpoint(config.checkpoint)  # a wrong checkpoint fails before a run directory exists
    run_dir = create_run_dir(config.name, config.runs_root, run_dir, config=config)
    summary = finetune(config, run_dir, resume=resume)
    print(f"[i2p-mae finetune] test accuracy {summary['overall_acc']:.4f}, mean-class {summary['mean_class_acc']:.4f} "
          f"(last epoch, init {config.init}) -> {run_dir}")
    return summary
