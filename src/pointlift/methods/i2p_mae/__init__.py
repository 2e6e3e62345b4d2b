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
- `finetune`: shape classification from a pretraining checkpoint (`pointlift finetune i2p-mae`).
The network is `pointlift.models.point_m2ae`, the pixel read-back `pointlift.geometry.readback`.

The command line reaches I2P-MAE through `pointlift.registry`.
"""
