"""pointlift.ops: point-cloud operations in pure PyTorch (CPU and CUDA alike, no extensions)."""

from pointlift.ops.chamfer import chamfer_l2
from pointlift.ops.gather import gather
from pointlift.ops.interpolate import three_nn_interpolate
from pointlift.ops.neighbors import ball_query, knn
from pointlift.ops.sampling import farthest_point_sample

__all__ = ["ball_query", "chamfer_l2", "farthest_point_sample", "gather", "knn", "three_nn_interpolate"]
