"""PPKT: pixel-to-point knowledge transfer (Liu et al., arXiv 2104.04687), one concept per module.

Read in this order, beside the paper:
- `config`: the run's settings (data, model, loss, augmentation, training).
- `sources`: RGB-D sequences, synthetic rooms and LiDAR sweeps with cameras.
- `pairs`: which pixel each 3D point was seen at (RGB-D back-projection, LiDAR projection).
- `dataset`: samples of points, pairs and images (or cached maps), augmentations, `collate_ppkt`.
- `cache`: the frozen teacher's maps computed once per view.
- `model`: the teacher, the UPL, the sparse U-Net student and the InfoNCE loss.
- `pretrain`: `pretrain(config, run_dir)` (setup, training, held-out retrieval).
- `retrieval`: held-out point -> pixel retrieval (`pointlift eval ppkt`: `evaluate_frames`).
- `embedder`: a PPKT checkpoint as a network again (`load_pretrained`, `build_embedder`).

The command line reaches PPKT through `pointlift.registry`.
"""
