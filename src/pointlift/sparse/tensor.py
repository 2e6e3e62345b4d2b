"""The sparse voxel tensor and the coordinate manager its descendants share.

A network sees the same coordinates at each stride many times (every submanifold conv of a
stage, the skip connection, the transposed conv of the decoder). The `CoordinateManager`
computes each coordinate set, hash and kernel map once per forward pass and every
`SparseTensor` derived from the input shares it, so a U-Net builds each map exactly once.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from pointlift.errors import PointliftDataError
from pointlift.sparse import backend
from pointlift.sparse.kernel_map import (
    CoordinateHash,
    KernelMap,
    build_kernel_map,
    check_coords,
    downsample_coords,
    inner_kernel_map,
)


class CoordinateManager:
    """Coordinates per tensor stride, plus cached hashes and kernel maps between them."""

    def __init__(self, coords: torch.Tensor, batch_size: int | None = None):
        check_coords(coords)
        coords = coords.long()
        if batch_size is None:
            batch_size = int(coords[:, 0].max()) + 1 if coords.numel() else 0
        self.batch_size = batch_size
        self.coords: dict[int, torch.Tensor] = {1: coords}
        self._hashes: dict[int, CoordinateHash] = {}
        self._maps: dict[tuple, KernelMap] = {}
        self._parents: dict[tuple[int, int], torch.Tensor] = {}  # (stride, coarser stride) -> each site's parent row
        self.backend_state: dict = {}  # per-backend caches (e.g. spconv's indice pairs)

    def coords_at(self, stride: int) -> torch.Tensor:
        if stride not in self.coords:
            raise PointliftDataError(
                "sparse coordinates",
                f"no coordinates at tensor stride {stride} (known: {sorted(self.coords)}); "
                "a transposed convolution needs the matching strided convolution first",
            )
        return self.coords[stride]

    def hash_at(self, stride: int) -> CoordinateHash:
        if stride not in self._hashes:
            self._hashes[stride] = CoordinateHash(self.coords_at(stride))
        return self._hashes[stride]

    def downsample(self, stride: int, factor: int) -> int:
        """Make sure coordinates exist at stride * factor; return that stride."""
        out_stride = stride * factor
        if out_stride not in self.coords:
            with record_function("sparse.kernel_map"):
                coords = self.coords_at(stride)
                coarse = None
                if backend.compiled_integers_on(coords):
                    from pointlift.sparse import compiled

                    coarse = compiled.coarse_sites(coords, factor)
                if coarse is None:
                    self.coords[out_stride] = downsample_coords(coords, factor)
                else:
                    self.coords[out_stride], self._parents[(stride, out_stride)] = coarse
        return out_stride

    def kernel_map(self, in_stride: int, out_stride: int, kernel_size: int, dilation: int) -> KernelMap:
        """Map from sites at in_stride to sites at out_stride (>= in_stride), cached. Two maps come from what is
        already known instead of a search (the same pairs; tested): a submanifold map from a larger one on the same
        sites, and on the compiled backend a 2x2x2 stride-2 map from the downsampling's parents."""
        key = (in_stride, out_stride, kernel_size, dilation)
        if key not in self._maps:
            factor = out_stride // in_stride
            larger = [size for (i, o, size, d) in self._maps if i == o == in_stride == out_stride and d == dilation
                      and size > kernel_size and size % 2 == kernel_size % 2 == 1]
            parent = self._parents.get((in_stride, out_stride))
            with record_function("sparse.kernel_map"):
                if larger:
                    size = min(larger)
                    kmap = inner_kernel_map(self._maps[(in_stride, in_stride, size, dilation)], size, kernel_size)
                elif parent is not None and kernel_size == factor == 2 and dilation == 1:
                    from pointlift.sparse import compiled

                    kmap = compiled.partition_map(self.hash_at(in_stride), parent, len(self.coords[out_stride]),
                                                  factor)
                else:
                    kmap = build_kernel_map(self.hash_at(in_stride), self.coords_at(out_stride), stride=factor,
                                            kernel_size=kernel_size, dilation=dilation,
                                            same_sites=in_stride == out_stride)
                self._maps[key] = kmap
        return self._maps[key]


class SparseTensor:
    """Features (M, C) at integer voxel coordinates (M, 4) long [b, x, y, z].

    `stride` is the tensor stride (how many finest voxels one site spans); `coords` are grid
    indices at that resolution. Tensors made from one another share one `CoordinateManager`.
    """

    def __init__(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        stride: int = 1,
        manager: CoordinateManager | None = None,
        batch_size: int | None = None,
    ):
        if manager is None:
            if coords is None:
                raise PointliftDataError("sparse tensor", "needs coords or a coordinate manager")
            if stride != 1:
                coords = coords.long()
            manager = CoordinateManager(coords.to(features.device), batch_size)
            if stride != 1:  # a tensor created directly at a coarser stride
                manager.coords = {stride: manager.coords.pop(1)}
        self.manager = manager
        self.stride = int(stride)
        self.features = features
        if features.ndim != 2 or features.shape[0] != self.coords.shape[0]:
            raise PointliftDataError(
                "sparse tensor",
                f"features must be (M, C) with M = {self.coords.shape[0]} sites, got {tuple(features.shape)}",
            )

    @property
    def coords(self) -> torch.Tensor:
        return self.manager.coords_at(self.stride)

    @property
    def batch_size(self) -> int:
        return self.manager.batch_size

    @property
    def batch_index(self) -> torch.Tensor:
        return self.coords[:, 0]

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def num_channels(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return self.features.shape[0]

    def replace(self, features: torch.Tensor, stride: int | None = None) -> "SparseTensor":
        """Same manager, new features (at this stride unless another is given)."""
        return SparseTensor(features, stride=self.stride if stride is None else stride, manager=self.manager)

    def _check_same_sites(self, other: "SparseTensor") -> None:
        if other.manager is not self.manager or other.stride != self.stride:
            raise PointliftDataError("sparse tensor", "tensors live on different coordinates (manager or stride differ)")

    def __add__(self, other: "SparseTensor") -> "SparseTensor":
        self._check_same_sites(other)
        return self.replace(self.features + other.features)

    def cat(self, other: "SparseTensor") -> "SparseTensor":
        """Channel concatenation of two tensors on the same sites (U-Net skip connections)."""
        self._check_same_sites(other)
        return self.replace(torch.cat([self.features, other.features], dim=1))

    def dense(self, spatial_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """(B, C, X, Y, Z) dense grid with zeros at inactive sites (for tests and small inputs)."""
        coords = self.coords
        if spatial_shape is None:
            spatial_shape = tuple(int(v) + 1 for v in coords[:, 1:].max(0).values)
        grid = self.features.new_zeros(self.batch_size, *spatial_shape, self.num_channels)
        grid[coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]] = self.features
        return grid.permute(0, 4, 1, 2, 3).contiguous()

    def __repr__(self) -> str:
        return f"SparseTensor(sites={len(self)}, channels={self.num_channels}, stride={self.stride}, batch={self.batch_size})"
