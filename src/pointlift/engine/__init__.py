"""pointlift.engine: configs, seeding, optimisers, torchrun, checkpoints and the training loop."""

from pointlift.engine.checkpoint import (clean_stale_files, load_checkpoint, load_init_checkpoint, load_model_state,
                                         model_state_for_checkpoint, read_checkpoint_meta, save_checkpoint)
from pointlift.engine.config import OptimConfig, TrainConfig, config_to_dict, load_config, save_config
from pointlift.engine.device import move_to_device
from pointlift.engine.distributed import init_distributed
from pointlift.engine.metrics import MetricsLogger, read_metrics
from pointlift.engine.optim import build_optimizer, build_scheduler
from pointlift.engine.rundir import create_run_dir, last_checkpoint
from pointlift.engine.seed import seed_everything
from pointlift.engine.trainer import TrainingStopped, TrainResult, train

__all__ = [
    "OptimConfig", "TrainConfig", "load_config", "save_config", "config_to_dict",
    "seed_everything", "build_optimizer", "build_scheduler", "init_distributed",
    "save_checkpoint", "load_checkpoint", "load_init_checkpoint", "clean_stale_files", "read_checkpoint_meta", "load_model_state", "model_state_for_checkpoint",
    "MetricsLogger", "read_metrics", "create_run_dir", "last_checkpoint",
    "TrainResult", "TrainingStopped", "move_to_device", "train",
]
