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
from pointlift.sparse import backend

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


def column_index(coords: torch.Tensor, low: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Linear index of each (b, x, y) column of `coords` (M, 4) in the box at `low` of size `extent`."""
    return (coords[:, 0] * extent[0] + coords[:, 1] - low[0]) * extent[1] + coords[:, 2] - low[1]


class Grid(NamedTuple):
    """A table of site rows over the box of a coordinate set: `rows[c * depth + z]` is the row of the site at
    height z (local to the box) in column c, or -1. A dense grid has a row block for every (b, x, y) column of the
    box (`columns` None: c is the column's linear index); a column grid only for occupied ones, and `columns`
    names each column's block (0, all -1, for an empty column)."""

    rows: torch.Tensor  # int32
    columns: torch.Tensor | None  # int32, one entry per (b, x, y) column of the box; None for a dense grid
    low: torch.Tensor  # (3,) low corner of the box
    extent: torch.Tensor  # (3,) its size per axis

    def column_index(self, coords: torch.Tensor) -> torch.Tensor:
        """Linear index of each (b, x, y) column of `coords` (M, 4) in the box."""
        return column_index(coords, self.low, self.extent)

    def lookup(self, base: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(K, M) rows of the sites at base + offsets[k] (base: decoded (M, 4) sites whose queries the grid holds).
        Dense: one gather. Column grid: per (dx, dy), one gather finds each base site's column, then one gather
        per dz reads the site in it."""
        depth = int(self.extent[2])
        column = self.column_index(base)
        z = base[:, 3] - self.low[2]
        steps = offsets[:, 0] * self.extent[1] + offsets[:, 1]
        if self.columns is None:
            query = (column * depth + z).unsqueeze(0) + (steps * depth + offsets[:, 2]).unsqueeze(1)
            return take(self.rows, query).long()
        out = torch.empty(offsets.shape[0], base.shape[0], dtype=torch.long, device=base.device)
        unique_steps, step_of = torch.unique(steps, return_inverse=True)
        for s, step in enumerate(unique_steps.tolist()):
            z_row = take(self.columns, column + step).long().mul_(depth).add_(z)
            asked = (step_of == s).nonzero()[:, 0]
            out[asked] = take(self.rows, z_row.unsqueeze(0) + offsets[asked, 2].unsqueeze(1)).long()
        return out


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
        self.sorted_keys, self.order = sort_keys(keys)
        self.size = keys.numel()
        self._sites: torch.Tensor | None = None
        self.coords = coords
        self._grid: Grid | None = None  # dense grid, built on first use
        self._grid_checked = False
        self._column_grid: Grid | None = None  # column grid, built on first use
        self._column_grid_checked = False
        self._batches = int(coords[:, 0].max()) + 1 if self.size else 0

    @property
    def sites(self) -> torch.Tensor:
        """(M, 4) the sites in the order of `sorted_keys` (decoded once)."""
        if self._sites is None:
            self._sites = decode_keys(self.sorted_keys)
        return self._sites

    def decode(self, keys: torch.Tensor) -> torch.Tensor:
        """decode_keys(keys); for the hash's own `sorted_keys`, its `sites`."""
        return self.sites if keys is self.sorted_keys else decode_keys(keys)

    def lookup(self, query_keys: torch.Tensor) -> torch.Tensor:
        """Row index of each query key in the original coords, or -1 when absent."""
        if self.size == 0:
            return torch.full_like(query_keys, -1)
        pos = torch.searchsorted(self.sorted_keys, query_keys).clamp_(max=self.size - 1)
        found = take(self.sorted_keys, pos) == query_keys
        return torch.where(found, take(self.order, pos), -1)

    def _cells_allowed(self, cells: int) -> bool:
        return cells <= min(self.GRID_MAX_CELLS, self.GRID_CELLS_PER_SITE * self.size + (1 << 16))

    def _box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Low corner and extents of the sites' bounding box with GRID_MARGIN cells around it."""
        low = self.coords[:, 1:].min(0).values - self.GRID_MARGIN
        extent = self.coords[:, 1:].max(0).values + self.GRID_MARGIN + 1 - low
        return low, extent

    def _dense_grid(self) -> Grid | None:
        """The dense grid, or None when it would exceed the cell budget."""
        if not self._grid_checked:
            self._grid_checked = True
            if self.size and "dense" in self.GRIDS:
                low, extent = self._box()
                cells = self._batches * int(extent.prod())
                if self._cells_allowed(cells):
                    table = torch.full((cells,), -1, dtype=torch.int32, device=self.coords.device)
                    index = column_index(self.coords, low, extent) * int(extent[2]) + self.coords[:, 3] - low[2]
                    table[index] = torch.arange(self.size, dtype=torch.int32, device=table.device)
                    self._grid = Grid(table, None, low, extent)
        return self._grid

    def _columns_and_z_rows(self) -> Grid | None:
        """The column grid, or None when it would exceed the cell budget. Row block 0 is all -1, so an empty
        column needs no test; sites of one column are consecutive in the sorted keys (z is the lowest field)."""
        if not self._column_grid_checked:
            self._column_grid_checked = True
            if self.size and "column" in self.GRIDS:
                low, extent = self._box()
                sites = self.sites
                column = column_index(sites, low, extent)
                starts = torch.ones_like(column, dtype=torch.bool)
                starts[1:] = column[1:] != column[:-1]
                column_id = torch.cumsum(starts, 0)  # 1, 2, ... in sorted order
                num_columns, depth = int(column_id[-1]), int(extent[2])
                plane = self._batches * int(extent[0]) * int(extent[1])
                if self._cells_allowed(plane + (num_columns + 1) * depth):
                    device = self.coords.device
                    columns = torch.zeros(plane, dtype=torch.int32, device=device)
                    columns[column[starts]] = column_id[starts].int()
                    z_rows = torch.full(((num_columns + 1) * depth,), -1, dtype=torch.int32, device=device)
                    z_rows[column_id * depth + sites[:, 3] - low[2]] = self.order.int()
                    self._column_grid = Grid(z_rows, columns, low, extent)
        return self._column_grid

    def grid_for(self, base: torch.Tensor, offsets: torch.Tensor) -> Grid | None:
        """The grid that holds every query base + offsets[k] (base: decoded (M, 4) sites), or None (then a
        search answers): the dense grid where it fits the budget, else the column grid."""
        if not (len(base) and len(offsets) and self.size):
            return None
        grid = self._dense_grid()
        if grid is None:
            grid = self._columns_and_z_rows()
        if grid is None or int(base[:, 0].max()) >= self._batches:
            return None
        reach_low = base[:, 1:].min(0).values + offsets.min(0).values
        reach_high = base[:, 1:].max(0).values + offsets.max(0).values
        inside = bool((reach_low >= grid.low).all()) and bool((reach_high < grid.low + grid.extent).all())
        return grid if inside else None

    def lookup_around(self, base_keys: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(K, M) row indices of the sites at base + offsets[k] (base given as keys), -1 when absent."""
        if base_keys.numel() and offsets.numel() and self.size:
            base = self.decode(base_keys)
            grid = self.grid_for(base, offsets)
            if grid is not None:
                return grid.lookup(base, offsets)
        if base_keys.numel() >= self.COLUMN_MIN_SITES and offsets.numel() and self.dense_in_z(offsets):
            return self.lookup_columns(base_keys, offsets)
        return self.lookup(base_keys.unsqueeze(0) + offset_key_deltas(offsets).unsqueeze(1))

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

    @classmethod
    def of_offsets(cls, ids: list[int], counts: list[int], in_cat: torch.Tensor, out_cat: torch.Tensor) -> "Pairs":
        """The pairs of offsets `ids` with `counts` pairs each, concatenated in that order; offsets without pairs
        are left out."""
        bounds, start = [], 0
        for count in counts:
            bounds.append((start, start + count))
            start += count
        kept = [j for j, count in enumerate(counts) if count]
        return cls([ids[j] for j in kept], [bounds[j] for j in kept], in_cat, out_cat)

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

    @classmethod
    def from_pairs(cls, pairs: Pairs, num_offsets: int, num_in: int, num_out: int, identity: int | None) -> "KernelMap":
        """The map of these pairs: its per-offset lists are views of them (the identity offset: every site)."""
        bounds = dict(zip(pairs.ids, pairs.bounds))
        empty = pairs.in_cat.new_zeros(0)
        every = torch.arange(num_out, device=pairs.in_cat.device) if identity is not None else empty

        def per_offset(cat: torch.Tensor) -> list[torch.Tensor]:
            return [every if k == identity else cat[bounds[k][0]:bounds[k][1]] if k in bounds else empty
                    for k in range(num_offsets)]

        kmap = cls(per_offset(pairs.in_cat), per_offset(pairs.out_cat), num_in, num_out, identity)
        kmap._pairs = pairs
        return kmap

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
    num_out = out_coords.shape[0]
    if same_sites and kernel_size == 1:  # the centre alone: no pairs to look for
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return KernelMap.from_pairs(Pairs([], [], empty, empty.clone()), 1, in_hash.size, num_out, 0)
    offsets = kernel_offsets(kernel_size, dilation, device)  # (K, 3)
    num_offsets = offsets.shape[0]
    if same_sites and stride == 1:
        base_sorted, perm = in_hash.sorted_keys, in_hash.order  # the output sites are the input sites
    else:
        base = out_coords.clone()
        base[:, 1:] *= stride
        base_sorted, perm = sort_keys(encode_keys(base))
    centre = num_offsets // 2 if same_sites else None  # odd kernel: offsets[K - 1 - k] = -offsets[k]
    queried = offsets[:centre] if same_sites else offsets
    # sorted queries per offset: the binary searches and gathers walk memory in order
    counts, in_cat, out_cat = _pairs_around(in_hash, base_sorted, perm, queried, mirrored=same_sites)
    ids = list(range(num_offsets))
    if same_sites:  # the centre pairs every site with itself and is not among the pairs
        ids, counts = ids[:centre] + ids[centre + 1:], counts + counts[::-1]
    pairs = Pairs.of_offsets(ids, counts, in_cat, out_cat)
    return KernelMap.from_pairs(pairs, num_offsets, in_hash.size, num_out, centre)


def inner_kernel_map(outer: KernelMap, outer_size: int, inner_size: int) -> KernelMap:
    """The submanifold map of kernel size `inner_size` from the one of the odd `outer_size` on the same sites and
    with the same dilation: each inner offset is an outer offset with the same queries, so its pairs are the outer
    map's, in the same order (offsets enumerated x slowest, as `kernel_offsets`). A copy instead of a search."""
    shift = (outer_size - inner_size) // 2
    pairs = outer.pairs()
    rows = dict(zip(pairs.ids, pairs.bounds))
    centre = inner_size ** 3 // 2
    ids, ins, outs = [], [], []
    for k in range(inner_size ** 3):
        x, y, z = k // inner_size ** 2 + shift, k // inner_size % inner_size + shift, k % inner_size + shift
        start, stop = rows.get((x * outer_size + y) * outer_size + z, (0, 0))
        if k != centre and stop > start:
            ids.append(k)
            ins.append(pairs.in_cat[start:stop])
            outs.append(pairs.out_cat[start:stop])
    empty = pairs.in_cat.new_zeros(0)
    inner = Pairs.of_offsets(ids, [len(rows_in) for rows_in in ins], torch.cat(ins) if ins else empty,
                             torch.cat(outs) if outs else empty.clone())
    return KernelMap.from_pairs(inner, inner_size ** 3, outer.num_in, outer.num_out, centre)


def _pairs_around(in_hash: CoordinateHash, base_keys: torch.Tensor, out_sites: torch.Tensor, offsets: torch.Tensor,
                  mirrored: bool) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The pairs of each offset: (count per offset, input rows, output rows), offset by offset and within an
    offset in the order of `base_keys`; out_sites[m] is the output row of base m. `mirrored` (a submanifold map,
    queried for half its offsets): the rows go on with the same pairs read backwards, offsets in reverse order.
    On the compiled backend its kernels read all of it from the hash's grid in one pass (the same integers;
    tested)."""
    if backend.compiled_integers_on(base_keys):
        from pointlift.sparse import compiled

        pairs = compiled.grid_pairs(in_hash, base_keys, out_sites, offsets, mirrored)
        if pairs is not None:
            return pairs
    found = in_hash.lookup_around(base_keys, offsets)  # (K, M)
    hit = found >= 0
    flat_hits = hit.view(-1).nonzero().squeeze(1)  # offset-major
    counts = hit.sum(1).tolist()
    in_cat = take(found.view(-1), flat_hits)
    out_cat = take(out_sites, flat_hits % len(base_keys)) if len(base_keys) else flat_hits
    if mirrored:
        in_cat, out_cat = (torch.cat([in_cat, *out_cat.split(counts)[::-1]]),
                           torch.cat([out_cat, *in_cat.split(counts)[::-1]]))
    return counts, in_cat, out_cat


def sort_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.sort(keys): (sorted keys, their positions). Coordinates mostly arrive sorted (voxelize and
    downsample_coords sort them), and strictly increasing keys are their own sort: then one comparison
    replaces the sort, with the same result."""
    if keys.numel() < 2 or bool((keys[1:] > keys[:-1]).all()):
        return keys, torch.arange(keys.numel(), device=keys.device)
    return torch.sort(keys)


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
