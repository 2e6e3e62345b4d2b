"""I2P-MAE: image-to-point masked autoencoding (Zhang et al., CVPR 2023), one concept per module.

Read in this order, beside the paper (`model`'s docstring lists the released method step by step):
- `config`: the recipes ("official" = released, "pointlift"), the method, teacher and data settings.
- `masking`: 2D-guided masking of the top tokens (released and pointlift's standardised draw).
- `model`: `I2PMAE` - Point-M2AE with the 3D (Chamfer) and 2D (teacher feature) targets and losses.
- `cache`: the teacher on the invariant depth views, and its maps cached once per shape.
- `data`: the pretraining point sets and their augmentation (`PretrainShapes`).
- `pretrain`: `pretrain(experiment, run_dir)` in named steps (teacher, cache, model, trainer).
- `embedder`: a checkpoint as a shape encoder (`build_embedder`, `embed_array`).
- `released`: the released weights into this network (`load_released_state`).
- `commands`: the CLI layer (`pointlift pretrain i2p-mae`, `pointlift finetune i2p-mae`; the fine-tune
  task itself is `pointlift.tasks.point_classification`).
The network is `pointlift.models.point_m2ae`; the pixel read-back is `pointlift.geometry.readback`.

The names below are the ones code outside I2P-MAE imports from `pointlift.methods.i2p_mae`.
"""

from pointlift.methods.i2p_mae.commands import finetune_command, pretrain_command
from pointlift.methods.i2p_mae.config import DataConfig, I2PMAEConfig, I2PMAEExperiment, TeacherConfig
from pointlift.methods.i2p_mae.embedder import build_embedder, embed_array
from pointlift.methods.i2p_mae.model import I2PMAE
from pointlift.methods.i2p_mae.pretrain import build_teacher, pretrain

__all__ = ["DataConfig", "I2PMAE", "I2PMAEConfig", "I2PMAEExperiment", "TeacherConfig", "build_embedder",
           "build_teacher", "embed_array", "finetune_command", "pretrain",
           "pretrain_command"]
