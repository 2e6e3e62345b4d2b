"""Kernel maps: which input site feeds which output site through which kernel offset.

Coordinates are hashed with torch ops only (no CUDA extension): each (b, x, y, z) becomes one
int64 key, the input keys are sorted once, and every (output site, kernel offset) query is a
gather from a dense grid of site indices when the sites' bounding box is small enough, else a
`searchsorted` into the sorted keys. Both run unchanged on CPU and on any CUDA build.

Convention (shared by every convolution and by the dense references in the tests): coordinates
are integer grid indices at the tensor's own resolution. For an output site `o`, kernel index
`kk` (per axis) reads the input site

    i = o * stride + kk * dilation - padding,   padding = dilation * (kernel_size - 1) // 2

which is exactly torch's `conv3d(stride, padding, dilation)`; kernel offsets are enumerated in
torch's weight order (x slowest, z fastest).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.profiler import record_function

from pointlift.errors import PointliftDataError

AXIS_BITS = 18
AXIS_BIAS = 1 << (AXIS_BITS - 1)  # coordinates in [-131072, 131071] after kernel offsets
BATCH_BITS = 63 - 3 * AXIS_BITS  # 9 bits: up to 512 samples per batch


def take(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """source[index] for a 1-D source and an index of any shape, via index_select: on the CPU about 3x
    faster than advanced indexing for the (offsets, sites) index arrays of a kernel map."""
    return source.index_select(0, index.reshape(-1)).view(index.shape)


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
    """Sorted keys of a coordinate set, for `lookup` of many query coordinates at once.

    `lookup_around` (the kernel-map query) reads a table of row indices instead, when one fits in
    GRID_CELLS_PER_SITE cells per site: one gather per query instead of a binary search. Indoor scans fit
    a dense grid over the sites' bounding box (about 10x faster than the search on a 20k-site scene).
    LiDAR sweeps (100 m wide, few sites per cell) do not; they fit a column grid: a dense 2D table over
    (b, x, y) naming each occupied column, and per occupied column a dense row over z (about 3x faster than
    one search per column, `bench/kernel_maps.py`). All give the same answer (tested).
    """

    GRID_MARGIN = 4  # cells around the bounding box: queries up to this far outside it stay in the grid
    GRID_CELLS_PER_SITE = 256
    GRID_MAX_CELLS = 1 << 25  # 128 MiB of int32
    GRIDS = ("dense", "column")  # the tables lookup_around may use, in order of preference

    def __init__(self, coords: torch.Tensor):
        keys = encode_keys(coords)
        self.sorted_keys, self.order = torch.sort(keys)
        self.size = keys.numel()
        self._coords = coords
        self._grid: tuple | None = None  # dense grid: (table, low corner, extents), built on first use
        self._grid_checked = False
        self._column_grid: tuple | None = None  # column grid: (columns, z rows, low corner, extents, batches)
        self._column_grid_checked = False

    def lookup(self, query_keys: torch.Tensor) -> torch.Tensor:
        """Row index of each query key in the original coords, or -1 when absent."""
        if self.size == 0:
            return torch.full_like(query_keys, -1)
        pos = torch.searchsorted(self.sorted_keys, query_keys).clamp_(max=self.size - 1)
        found = take(self.sorted_keys, pos) == query_keys
        return torch.where(found, take(self.order, pos), -1)

    def _cells_allowed(self, cells: int) -> bool:
        return cells <= min(self.GRID_MAX_CELLS, self.GRID_CELLS_PER_SITE * self.size + (1 << 16))

    def _box(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Low corner and extents of the sites' bounding box with GRID_MARGIN cells around it, and the batch count."""
        low = self._coords[:, 1:].min(0).values - self.GRID_MARGIN
        extent = self._coords[:, 1:].max(0).values + self.GRID_MARGIN + 1 - low
        return low, extent, int(self._coords[:, 0].max()) + 1

    def _dense_grid(self):
        if not self._grid_checked:
            self._grid_checked = True
            if self.size and "dense" in self.GRIDS:
                low, extent, batches = self._box()
                cells = batches * int(extent.prod())
                if self._cells_allowed(cells):
                    table = torch.full((cells,), -1, dtype=torch.int32, device=self._coords.device)
                    index = self._linear(self._coords, low, extent)
                    table[index] = torch.arange(self.size, dtype=torch.int32, device=table.device)
                    self._grid = (table, low, extent)
        return self._grid

    @staticmethod
    def _linear(coords: torch.Tensor, low: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        local = coords[:, 1:] - low
        return ((coords[:, 0] * extent[0] + local[:, 0]) * extent[1] + local[:, 1]) * extent[2] + local[:, 2]

    def _columns_and_z_rows(self):
        """The column grid, or None when it would exceed the cell budget.

        `columns[(b * X + x) * Y + y]` is 0 for an empty (b, x, y) column, else c >= 1; `z_rows[c * Z + z]` is
        the site's row index or -1 (row 0 is all -1, so an empty column needs no test). Coordinates are local
        to the box of `_box`. Sites of one column are consecutive in the sorted keys (z is the lowest field).
        """
        if not self._column_grid_checked:
            self._column_grid_checked = True
            if self.size and "column" in self.GRIDS:
                low, extent, batches = self._box()
                sites = decode_keys(self.sorted_keys)
                column = self._column_index(sites, low, extent)
                starts = torch.ones_like(column, dtype=torch.bool)
                starts[1:] = column[1:] != column[:-1]
                column_id = torch.cumsum(starts, 0)  # 1, 2, ... in sorted order
                num_columns, depth = int(column_id[-1]), int(extent[2])
                cells = batches * int(extent[0]) * int(extent[1]) + (num_columns + 1) * depth
                if self._cells_allowed(cells):
                    device = self._coords.device
                    columns = torch.zeros(batches * int(extent[0]) * int(extent[1]), dtype=torch.int32, device=device)
                    columns[column[starts]] = column_id[starts].int()
                    z_rows = torch.full(((num_columns + 1) * depth,), -1, dtype=torch.int32, device=device)
                    z_rows[column_id * depth + sites[:, 3] - low[2]] = self.order.int()
                    self._column_grid = (columns, z_rows, low, extent, batches)
        return self._column_grid

    @staticmethod
    def _column_index(coords: torch.Tensor, low: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        """Linear index of each (b, x, y) column in the box (`_linear` without z)."""
        return (coords[:, 0] * extent[0] + coords[:, 1] - low[0]) * extent[1] + coords[:, 2] - low[1]

    @staticmethod
    def _reaches_inside(base: torch.Tensor, offsets: torch.Tensor, low: torch.Tensor, extent: torch.Tensor) -> bool:
        """Whether every base + offset lies inside the box (base: decoded (M, 4) coordinates)."""
        reach_low = base[:, 1:].min(0).values + offsets.min(0).values
        reach_high = base[:, 1:].max(0).values + offsets.max(0).values
        return bool((reach_low >= low).all()) and bool((reach_high < low + extent).all())

    def lookup_around(self, base_keys: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(K, M) row indices of the sites at base + offsets[k] (base given as keys), -1 when absent."""
        if base_keys.numel() and offsets.numel() and self.size:
            base = decode_keys(base_keys)
            dense = self._dense_grid()
            if dense is not None:
                table, low, extent = dense
                if self._reaches_inside(base, offsets, low, extent):
                    deltas = (offsets[:, 0] * extent[1] + offsets[:, 1]) * extent[2] + offsets[:, 2]
                    query = self._linear(base, low, extent).unsqueeze(0) + deltas.unsqueeze(1)
                    return take(table, query).long()
            elif (column_grid := self._columns_and_z_rows()) is not None:  # only where the dense grid did not fit
                columns, z_rows, low, extent, batches = column_grid
                if self._reaches_inside(base, offsets, low, extent) and int(base[:, 0].max()) < batches:
                    return self._lookup_column_grid(base, offsets, columns, z_rows, low, extent)
        if base_keys.numel() >= self.COLUMN_MIN_SITES and offsets.numel() and self.dense_in_z(offsets):
            return self.lookup_columns(base_keys, offsets)
        return self.lookup(base_keys.unsqueeze(0) + offset_key_deltas(offsets).unsqueeze(1))

    @classmethod
    def _lookup_column_grid(cls, base: torch.Tensor, offsets: torch.Tensor, columns: torch.Tensor,
                            z_rows: torch.Tensor, low: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        """`lookup_around` through the column grid: per (dx, dy), one gather finds each base site's column,
        then one gather per dz reads the site in it."""
        width, depth = int(extent[1]), int(extent[2])
        column = cls._column_index(base, low, extent)
        z = base[:, 3] - low[2]
        out = torch.empty(offsets.shape[0], base.shape[0], dtype=torch.long, device=base.device)
        steps, column_of = torch.unique(offsets[:, :2], dim=0, return_inverse=True)  # the (dx, dy) asked
        for c, (dx, dy) in enumerate(steps.tolist()):
            z_row = take(columns, column + (dx * width + dy)).long().mul_(depth).add_(z)
            asked = (column_of == c).nonzero()[:, 0]
            out[asked] = take(z_rows, z_row.unsqueeze(0) + offsets[asked, 2].unsqueeze(1)).long()
        return out

    COLUMN_MIN_SITES = 8192  # below this, its per-column overhead outweighs the saved searches (bench/kernel_maps.py)

    @staticmethod
    def dense_in_z(offsets: torch.Tensor) -> bool:
        """Whether the offsets' dz values are every integer in [-r, r], r >= 1 (a dense kernel of odd size):
        where `lookup_columns` does less work than one search per offset (measured in BENCHMARKS.md)."""
        dz = offsets[:, 2].unique()
        reach = int(dz.abs().max())
        return reach >= 1 and len(dz) == 2 * reach + 1

    def lookup_columns(self, base_keys: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """`lookup_around` with one binary search per (dx, dy) column of offsets instead of one per offset.

        z is the key's lowest field, so the sites of one (b, x, y) column lie consecutively in the sorted
        keys. For a column query q (its z = 0 key) and reach r = max |dz|, every site with z in [q - r, q + r]
        is among the 2r + 1 keys from the first position whose key is >= q - r; each of those keys is the
        site at dz = key - q when that lies in [-r, r]. A 5x5x5 kernel then costs 13 searches instead of 62
        (the answer is exactly `lookup`'s; tested)."""
        num_offsets, num_base = offsets.shape[0], base_keys.numel()
        device = base_keys.device
        # one spare row at the end takes every candidate that is no site of an asked offset: no masking
        out = torch.full((num_offsets + 1, num_base), -1, dtype=torch.long, device=device)
        if self.size == 0 or num_base == 0:
            return out[:num_offsets]
        reach, last = int(offsets[:, 2].abs().max()), self.size - 1
        columns, column_of = torch.unique(offsets[:, :2], dim=0, return_inverse=True)
        column_deltas = ((columns[:, 0] << (2 * AXIS_BITS)) + (columns[:, 1] << AXIS_BITS)).tolist()
        steps = torch.arange(2 * reach + 1, device=device).unsqueeze(1)  # (J, 1)
        sites = torch.arange(num_base, device=device)
        for c, delta in enumerate(column_deltas):
            # offset row of each dz in [-reach, reach] asked for in this column; the spare row for the rest,
            # and (last entry) for a candidate past the end of the keys
            row_of_dz = torch.full((2 * reach + 2,), num_offsets, dtype=torch.long, device=device)
            in_column = (column_of == c).nonzero()[:, 0]
            row_of_dz[offsets[in_column, 2] + reach] = in_column
            queries = base_keys + delta
            position = torch.searchsorted(self.sorted_keys, queries - reach).unsqueeze(0) + steps  # (J, M)
            beyond = position > last
            position.clamp_(max=last)
            # dz + reach >= 0 by the search; > 2 reach (another column, or past the end) -> the spare row
            shifted = (take(self.sorted_keys, position) - queries).add_(reach).masked_fill_(beyond, 2 * reach + 1)
            flat = take(row_of_dz, shifted.clamp_(max=2 * reach + 1)).mul_(num_base).add_(sites)
            out.view(-1).index_copy_(0, flat.view(-1), take(self.order, position).view(-1))
        return out[:num_offsets]


def kernel_offsets(kernel_size: int, dilation: int, device: torch.device) -> torch.Tensor:
    """(K, 3) long offsets kk * dilation - padding, in torch's weight order (x slowest)."""
    r = torch.arange(kernel_size, device=device) * dilation - dilation * (kernel_size - 1) // 2
    gx, gy, gz = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), gz.reshape(-1)], dim=1)


PAIR_CHUNK = 1 << 16  # pairs per gather / matmul / segment-sum round of a convolution (bounds its scratch memory)


class Chunk(NamedTuple):
    """A run of whole kernel offsets that a convolution gathers, multiplies and sums in one round."""

    ids: list[int]  # its kernel offsets, in order
    sizes: list[int]  # pairs of each offset
    start: int  # its pairs are rows start:stop of in_cat / out_cat
    stop: int


@dataclass(frozen=True)
class Pairs:
    """All non-identity pairs of a map, concatenated offset by offset.

    Offset `ids[j]` owns rows `bounds[j][0]:bounds[j][1]` of `in_cat` / `out_cat`. A convolution handles them
    in `chunks()`: runs of whole offsets of at most PAIR_CHUNK pairs (an offset with more is a chunk alone),
    one gather, one matmul per offset and one segment sum per chunk.
    """

    ids: list[int]
    bounds: list[tuple[int, int]]
    in_cat: torch.Tensor
    out_cat: torch.Tensor
    _chunks: dict = field(default_factory=dict, repr=False, compare=False)  # PAIR_CHUNK -> chunks()
    _table: list = field(default_factory=list, repr=False, compare=False)  # [bounds_table()] once made

    @property
    def count(self) -> int:
        return int(self.in_cat.numel())

    def chunks(self) -> list[Chunk]:
        """The chunks, in order (cached: every layer sharing the map, forward and backward, reuses them)."""
        if PAIR_CHUNK not in self._chunks:
            chunks, first = [], 0
            for j in range(1, len(self.ids) + 1):
                if j == len(self.ids) or self.bounds[j][1] - self.bounds[first][0] > PAIR_CHUNK:
                    bounds = self.bounds[first:j]
                    chunks.append(Chunk(self.ids[first:j], [b - a for a, b in bounds], bounds[0][0], bounds[-1][1]))
                    first = j
            self._chunks[PAIR_CHUNK] = chunks
        return self._chunks[PAIR_CHUNK]

    def bounds_table(self) -> torch.Tensor:
        """(offset, first row, end row) per offset as an int64 (n, 3) CPU tensor (cached): how the compiled
        backend's kernels walk the pairs."""
        if not self._table:
            rows = [(k, a, b) for k, (a, b) in zip(self.ids, self.bounds)]
            self._table.append(torch.tensor(rows, dtype=torch.int64).view(-1, 3))
        return self._table[0]


@dataclass(eq=False)
class KernelMap:
    """Per kernel offset k: `out_index[k]` receives `W_k @ features[in_index[k]]`.

    `identity` is the offset (if any) whose pairs are exactly (i, i) for every site, so the
    convolution can skip its gather and scatter (the centre of a submanifold kernel).
    Derived structures (concatenated pairs, CSR scatter matrices) are built on first use and
    shared with the `transposed()` map.
    """

    in_index: list[torch.Tensor]
    out_index: list[torch.Tensor]
    num_in: int
    num_out: int
    identity: int | None = None

    def __post_init__(self):
        self._pairs: Pairs | None = None
        self._transposed: KernelMap | None = None
        self._scatter: dict = {}  # (side, dtype, device) -> CSR matrix; shared with the transposed map
        self._flipped = False

    def transposed(self) -> "KernelMap":
        """The same pairs read backwards: the map of the matching transposed convolution (cached)."""
        if self._transposed is None:
            other = KernelMap(self.out_index, self.in_index, self.num_out, self.num_in, self.identity)
            if self._pairs is not None:
                p = self._pairs
                other._pairs = Pairs(p.ids, p.bounds, p.out_cat, p.in_cat)
            other._scatter, other._flipped = self._scatter, not self._flipped
            other._transposed, self._transposed = self, other
        return self._transposed

    @property
    def num_pairs(self) -> int:
        return sum(int(i.numel()) for i in self.in_index)

    def pairs(self) -> Pairs:
        """Non-identity offsets with pairs, their pairs concatenated in offset order (cached)."""
        if self._pairs is None:
            ids = [k for k, idx in enumerate(self.in_index) if k != self.identity and idx.numel()]
            bounds, start = [], 0
            for k in ids:
                bounds.append((start, start + int(self.in_index[k].numel())))
                start = bounds[-1][1]
            device = self.in_index[0].device if self.in_index else torch.device("cpu")
            empty = torch.zeros(0, dtype=torch.long, device=device)
            in_cat = torch.cat([self.in_index[k] for k in ids]) if ids else empty
            out_cat = torch.cat([self.out_index[k] for k in ids]) if ids else empty
            self._pairs = Pairs(ids, bounds, in_cat, out_cat)
        return self._pairs

    def scatter_matrices(self, side: str, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per chunk of `pairs().chunks()`, the CSR 0/1 matrix S (sites x the chunk's pairs) with S[r, p] = 1
        where pair p lands on site r of `side`.

        `S @ values` sums each site's pair values in one sorted pass (a segment sum): much faster on
        CPU than `index_add_`, which scatters element by element. side: "out" (forward) or "in"
        (gradient of the input features). Cached per dtype.
        """
        p = self.pairs()
        index, rows = (p.out_cat, self.num_out) if side == "out" else (p.in_cat, self.num_in)
        stored_side = side if not self._flipped else ("in" if side == "out" else "out")
        key = (stored_side, dtype, index.device)
        if key not in self._scatter:
            with record_function("sparse.kernel_map"):
                self._scatter[key] = [_segment_matrix(index[chunk.start:chunk.stop], rows, dtype)
                                      for chunk in p.chunks()]
        return self._scatter[key]


def _segment_matrix(index: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """CSR (rows x len(index)) with a one at (index[p], p)."""
    small = rows < (1 << 31)  # site indices fit int32, which sorts about 1.7x faster than int64 on CPU
    order = torch.argsort(index.int() if small else index, stable=True)
    crow = torch.zeros(rows + 1, dtype=torch.long, device=index.device)
    torch.cumsum(torch.bincount(index, minlength=rows), 0, out=crow[1:])
    values = torch.ones(index.numel(), dtype=dtype, device=index.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, order, values, size=(rows, index.numel()), check_invariants=False)


def offset_key_deltas(offsets: torch.Tensor) -> torch.Tensor:
    """Key difference of each (dx, dy, dz): encode(c + d) = encode(c) + delta while axes stay in range."""
    return (offsets[:, 0] << (2 * AXIS_BITS)) + (offsets[:, 1] << AXIS_BITS) + offsets[:, 2]


def build_kernel_map(
    in_hash: CoordinateHash,
    out_coords: torch.Tensor,
    stride: int,
    kernel_size: int,
    dilation: int,
    same_sites: bool = False,
) -> KernelMap:
    """All (input, output, offset) pairs for output sites `out_coords`; one batched hash query.

    Query keys are base keys plus per-offset key deltas (check_coords keeps every axis in range).
    A submanifold map (same sites, symmetric offsets) queries only half of the offsets: the pairs
    of offset -d are the pairs of offset d read backwards.
    """
    device = out_coords.device
    same_sites = same_sites and kernel_size % 2 == 1  # the half-offset shortcut needs symmetric offsets
    offsets = kernel_offsets(kernel_size, dilation, device)  # (K, 3)
    num_offsets, num_out = offsets.shape[0], out_coords.shape[0]
    if same_sites and stride == 1:
        base_sorted, perm = in_hash.sorted_keys, in_hash.order  # the output sites are the input sites
    else:
        base = out_coords.clone()
        base[:, 1:] *= stride
        base_sorted, perm = torch.sort(encode_keys(base))
    centre = num_offsets // 2 if same_sites else None  # odd kernel: offsets[K - 1 - k] = -offsets[k]
    queried = offsets[:centre] if same_sites else offsets
    # sorted queries per offset: the binary searches and gathers walk memory in order
    found = in_hash.lookup_around(base_sorted, queried)  # (K', M_out)
    hit = found >= 0
    counts = hit.sum(1).tolist()
    flat_hits = hit.view(-1).nonzero().squeeze(1)  # offset-major, as the per-offset splits below expect
    in_cat = take(found.view(-1), flat_hits)
    out_cat = take(perm, flat_hits % num_out) if num_out else flat_hits
    ins = list(in_cat.split(counts)) if counts else []
    outs = list(out_cat.split(counts)) if counts else []
    if same_sites:
        arange = torch.arange(num_out, device=device)
        in_index = ins + [arange] + outs[::-1]
        out_index = outs + [arange] + ins[::-1]
        kmap = KernelMap(in_index, out_index, in_hash.size, num_out, centre)
    else:
        kmap = KernelMap(ins, outs, in_hash.size, num_out, None)
        ids = [k for k, n in enumerate(counts) if n]
        starts = [sum(counts[:k]) for k in ids]
        kmap._pairs = Pairs(ids, [(s, s + counts[k]) for s, k in zip(starts, ids)], in_cat, out_cat)
    return kmap


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
