"""Sparse voxel tensors and convolutions in pure PyTorch, with an optional spconv backend.

    x = SparseTensor(features (M, C), coords (M, 4) long [b, x, y, z])
    y = SubMConv3d(C, 32)(x)                       # same sites
    z = SparseConv3d(32, 64, kernel_size=2, stride=2)(y)   # stride 2 sites
    u = SparseInverseConv3d(64, 32, kernel_size=2, stride=2)(z)  # back onto y's sites
    pooled = global_pool(z, "max")                 # (B, 64)
"""

from pointlift.sparse.backend import BACKENDS, get_backend, set_backend, spconv_available, use_backend
from pointlift.sparse.conv import SparseConv3d, SparseInverseConv3d, SubMConv3d, sparse_conv_features
from pointlift.sparse.kernel_map import KernelMap, build_kernel_map, encode_keys
from pointlift.sparse.norm import (
    SparseBatchNorm,
    SparseDropout,
    SparseGELU,
    SparseIdentity,
    SparseLeakyReLU,
    SparseReLU,
    SparseReLU6,
    SparseSiLU,
)
from pointlift.sparse.pooling import broadcast_to_sites, global_pool
from pointlift.sparse.tensor import CoordinateManager, SparseTensor

__all__ = [
    "BACKENDS",
    "CoordinateManager",
    "KernelMap",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseDropout",
    "SparseGELU",
    "SparseIdentity",
    "SparseInverseConv3d",
    "SparseLeakyReLU",
    "SparseReLU",
    "SparseReLU6",
    "SparseSiLU",
    "SparseTensor",
    "SubMConv3d",
    "broadcast_to_sites",
    "build_kernel_map",
    "encode_keys",
    "get_backend",
    "global_pool",
    "set_backend",
    "sparse_conv_features",
    "spconv_available",
    "use_backend",
]
