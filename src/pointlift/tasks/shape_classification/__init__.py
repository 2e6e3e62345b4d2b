"""Classification of voxelised shapes with a sparse 3D network: `.data` (shape splits, datasets, released and
voxel-mean pipelines) and `.train` (the classifier wrapper, training, evaluation). Re-exports the names other
layers imported from the former single module."""

from pointlift.tasks.shape_classification.data import (ShapeDataConfig, build_datasets, few_shot_indices,
                                                       load_shape_split)
from pointlift.tasks.shape_classification.train import SparseShapeClassifier, epochs_to_target, train_classifier

__all__ = ["ShapeDataConfig", "SparseShapeClassifier", "build_datasets", "epochs_to_target", "few_shot_indices",
           "load_shape_split", "train_classifier"]
