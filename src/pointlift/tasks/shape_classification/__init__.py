"""Classification of voxelised shapes with a sparse 3D network: `.data` (shape splits, datasets, released and
voxel-mean pipelines) and `.train` (the classifier wrapper, training, evaluation)."""
