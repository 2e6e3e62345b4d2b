"""Scene semantic segmentation: the downstream task PPKT and Image2Point are judged by.

Pipeline, one module each: scans (`pointlift.data.scenes`, any supported layout) -> `data` (splits, the
label-efficiency subsets, `SceneDataset` with `pointlift.data.augment`'s scene augmentations, `SceneCollate`:
one batched voxelisation, each point keeps its voxel through the inverse map) -> `model` (a sparse U-Net or
the inflated-encoder U-Net; per-voxel logits read back per point; cross-entropy with the IGNORE label) trained
by the engine's trainer in `finetune` -> `evaluate` (every original point: confusion matrix -> mIoU,
per-class IoU, overall accuracy) -> `outputs` (PLY predictions, a prediction-vs-ground-truth picture).
Settings are `config`.

Initialisation: `scratch`, `ppkt` (the 3D network of a PPKT checkpoint; its head is replaced) or
`image2point` (an ImageNet ConvNet inflated into the U-Net's encoder). Metrics are those of the last
step: nothing here selects a model by its test score.
"""
