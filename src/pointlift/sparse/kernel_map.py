"""Kernel maps: which input site feeds which output site through which kernel offset.

Coordinates are hashed with torch ops only (no CUDA extension): each (b, x, y, z) becomes one
int64 key, the input keys are sorted once, and every (output site, kernel offset) query is a
`searchsorted` into them. That runs unchanged on CPU and on any CUDA build.

Convention (shared by every convolution and by the dense references in the tests): coordinates
are integer grid indices at the tensor's own resolution. For an output site `o`, kernel index
`kk` (per axis) reads the input site

    i = o * stride + kk * dilation - padding,   padding = dilation * (kernel_size - 1) // 2

which is exactly torch's `conv3d(stride, padding, dilation)`; kernel offsets are enumerated in
torch's weight order (x slowest, z fastest).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pointlift.errors import PointliftDataError

AXIS_BITS = 18
AXIS_BIAS = 1 << (AXIS_BITS - 1)  # coordinates in [-131072, 131071] after kernel offsets
BATCH_BITS = 63 - 3 * AXIS_BITS  # 9 bits: up to 512 samples per batch


def encode_keys(coords: torch.Tensor) -> torch.Tensor:
    """(M, 4) long [b, x, y, z] -> (M,) int64 keys; order of keys = lexicographic order of coords."""
    b, x, y, z = (coords[..., i] for i in range(4))
    key = b
    for axis in (x, y, z):
        key = (key << AXIS_BITS) | (axis + AXIS_BIAS)
    return key


def check_coords(coords: torch.Tensor, what: str = "sparse coordinates") -> None:
    """Reject coordinates that the 64-bit key cannot hold (before they silently collide)."""
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise PointliftDataError(what, f"expected (M, 4) [b, x, y, z] coordinates, got shape {tuple(coords.shape)}")
    if coords.dtype not in (torch.int64, torch.int32):
        raise PointliftDataError(what, f"coordinates must be integer, got {coords.dtype}")
    if coords.numel() == 0:
        return
    low, high = coords.min(0).values.tolist(), coords.max(0).values.tolist()
    if low[0] < 0 or high[0] >= (1 << BATCH_BITS):
        raise PointliftDataError(what, f"batch index must lie in [0, {1 << BATCH_BITS}), got [{low[0]}, {high[0]}]")
    limit = AXIS_BIAS - 64  # leave room for kernel offsets
    if min(low[1:]) < -limit or max(high[1:]) >= limit:
        raise PointliftDataError(what, f"spatial coordinates must lie in (-{limit}, {limit}), got [{min(low[1:])}, {max(high[1:])}]")


class CoordinateHash:
    """Sorted keys of a coordinate set, for `lookup` of many query coordinates at once."""

    def __init__(self, coords: torch.Tensor):
        keys = encode_keys(coords)
        self.sorted_keys, self.order = torch.sort(keys)
        self.size = keys.numel()

    def lookup(self, query_keys: torch.Tensor) -> torch.Tensor:
        """Row index of each query key in the original coords, or -1 when absent."""
        if self.size == 0:
            return torch.full_like(query_keys, -1)
        pos = torch.searchsorted(self.sorted_keys, query_keys).clamp_(max=self.size - 1)
        found = self.sorted_keys[pos] == query_keys
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))


def kernel_offsets(kernel_size: int, dilation: int, device: torch.device) -> torch.Tensor:
    """(K, 3) long offsets kk * dilation - padding, in torch's weight order (x slowest)."""
    r = torch.arange(kernel_size, device=device) * dilation - dilation * (kernel_size - 1) // 2
    gx, gy, gz = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), gz.reshape(-1)], dim=1)


@dataclass
class KernelMap:
    """Per kernel offset k: `out_index[k]` receives `W_k @ features[in_index[k]]`.

    `identity` is the offset (if any) whose pairs are exactly (i, i) for every site, so the
    convolution can skip its gather and scatter (the centre of a submanifold kernel).
    """

    in_index: list[torch.Tensor]
    out_index: list[torch.Tensor]
    num_in: int
    num_out: int
    identity: int | None = None

    def transposed(self) -> "KernelMap":
        """The same pairs read backwards: the map of the matching transposed convolution (cached)."""
        if getattr(self, "_transposed", None) is None:
            self._transposed = KernelMap(self.out_index, self.in_index, self.num_out, self.num_in, self.identity)
            self._transposed._transposed = self
        return self._transposed

    @property
    def num_pairs(self) -> int:
        return sum(int(i.numel()) for i in self.in_index)

    def padded(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Non-identity offsets with pairs, and their pairs padded to one length: (ids, in (K', P), out (K', P)).

        Padding pairs read row `num_in` (a zero row) and write row `num_out` (a discarded row), so
        all offsets go through one gather, one batched matmul and one scatter: far fewer kernel
        launches when sites or channels are few. Cached.
        """
        if getattr(self, "_padded", None) is None:
            ids = [k for k, idx in enumerate(self.in_index) if k != self.identity and idx.numel()]
            length = max((self.in_index[k].numel() for k in ids), default=0)
            device = self.in_index[0].device if self.in_index else torch.device("cpu")
            pad_in = torch.full((len(ids), length), self.num_in, dtype=torch.long, device=device)
            pad_out = torch.full((len(ids), length), self.num_out, dtype=torch.long, device=device)
            for row, k in enumerate(ids):
                n = self.in_index[k].numel()
                pad_in[row, :n] = self.in_index[k]
                pad_out[row, :n] = self.out_index[k]
            self._padded = (ids, pad_in, pad_out)
        return self._padded


def build_kernel_map(
    in_hash: CoordinateHash,
    out_coords: torch.Tensor,
    stride: int,
    kernel_size: int,
    dilation: int,
    same_sites: bool = False,
) -> KernelMap:
    """All (input, output, offset) pairs for output sites `out_coords`; one batched hash query."""
    device = out_coords.device
    offsets = kernel_offsets(kernel_size, dilation, device)  # (K, 3)
    base = out_coords.clone()
    base[:, 1:] *= stride
    query = base.unsqueeze(0).repeat(offsets.shape[0], 1, 1)  # (K, M_out, 4)
    query[:, :, 1:] += offsets.unsqueeze(1)
    found = in_hash.lookup(encode_keys(query))  # (K, M_out)
    in_index, out_index = [], []
    identity = None
    arange = torch.arange(out_coords.shape[0], device=device)
    for k in range(offsets.shape[0]):
        if same_sites and not bool(offsets[k].any()):
            identity = k  # centre of a submanifold kernel: every site reads itself
            in_index.append(arange)
            out_index.append(arange)
            continue
        hit = found[k] >= 0
        out_index.append(arange[hit])
        in_index.append(found[k][hit])
    return KernelMap(in_index, out_index, in_hash.size, out_coords.shape[0], identity)


def downsample_coords(coords: torch.Tensor, factor: int) -> torch.Tensor:
    """Unique floor(coord / factor) per sample, sorted by (b, x, y, z)."""
    coarse = coords.clone()
    coarse[:, 1:] = torch.div(coarse[:, 1:], factor, rounding_mode="floor")
    keys = torch.unique(encode_keys(coarse))
    return decode_keys(keys)


def decode_keys(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_keys`."""
    mask = (1 << AXIS_BITS) - 1
    z = (keys & mask) - AXIS_BIAS
    y = ((keys >> AXIS_BITS) & mask) - AXIS_BIAS
    x = ((keys >> (2 * AXIS_BITS)) & mask) - AXIS_BIAS
    b = keys >> (3 * AXIS_BITS)
    return torch.stack([b, x, y, z], dim=1)
