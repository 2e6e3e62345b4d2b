"""The C++ source of the "compiled" sparse backend, and its build on first use.

`torch.utils.cpp_extension.load_inline` compiles it with the machine's C++ compiler (g++ or clang, and
ninja) for this CPU (`-march=native`) into ~/.cache/pointlift/kernels/<key>, where the key covers the
source, torch, Python and the CPU, so a home directory shared by different machines never loads a
library built for another CPU. The source lives here as text so that it ships inside the package.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

SOURCE = r"""
// pointlift's compiled CPU kernels for sparse convolution (the "compiled" backend).
//
// One convolution is, per kernel offset k, out[out_rows[p]] += x[in_rows[p]] @ W_k over the offset's pairs p.
// The pure backend gathers the rows into a buffer, multiplies with MKL and sums the products onto the sites
// with a sparse matrix; these kernels do all three in one pass over a few pairs at a time, so the gathered rows
// and the products never leave the registers. Within one offset every output row occurs at most once (each
// offset pairs sites one to one), so the pairs of an offset can be split over threads without conflicts.
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace {

// Vectors of 16 and of 8 floats (GCC vector extensions: AVX-512 / AVX2 registers where the CPU has them).
typedef float vec16 __attribute__((vector_size(64)));
typedef float vec8 __attribute__((vector_size(32)));

template <typename V>
inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));  // any alignment; compiles to one unaligned load
  return v;
}
template <typename V>
inline void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
template <typename V>
constexpr int lanes() { return sizeof(V) / sizeof(float); }

// Register tiles: R pairs times NV vectors of output channels. With AVX-512 (32 registers of 16 floats) about
// 24 accumulators fit; with AVX2 a 16-float vector takes two of 16 registers, so the tiles are smaller.
#ifdef __AVX512F__
constexpr int WIDE_NV = 4, WIDE_R = 6, MID_NV = 3, MID_R = 8, NARROW_NV = 2, NARROW_R = 12, ONE_R = 16, EIGHT_R = 16;
#else
constexpr int WIDE_NV = 2, WIDE_R = 3, MID_NV = 2, MID_R = 3, NARROW_NV = 2, NARROW_R = 3, ONE_R = 6, EIGHT_R = 12;
#endif

// out[orow[r], col:col+NV*lanes] += sum_c x[xrow[r], c] * w[c * ldw + col ...] for the n <= R pairs of a tile.
template <typename V, int NV, int R>
inline void product_tile(const float* __restrict x, int64_t cin, const int64_t* xrow, const int64_t* orow, int n,
                         const float* __restrict w, int64_t ldw, float* __restrict out, int64_t ldo, int64_t col) {
  constexpr int L = lanes<V>();
  V acc[R][NV];
  const float* rows[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    rows[r] = x + (r < n ? xrow[r] : xrow[0]) * cin;  // a short tile repeats its first row, never stored
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  }
  for (int64_t c = 0; c < cin; ++c) {
    const float* w_row = w + c * ldw + col;
    V w_vec[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w_vec[v] = load<V>(w_row + L * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float a = rows[r][c];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += a * w_vec[v];
    }
  }
  for (int r = 0; r < n; ++r) {
    float* o = out + orow[r] * ldo + col;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store<V>(o + L * v, load<V>(o + L * v) + acc[r][v]);
  }
}

// One offset's pairs, output columns col:col+NV*lanes, tiles of R pairs spread over torch's threads.
template <typename V, int NV, int R>
void offset_products(const float* x, int64_t cin, const int64_t* xrow, const int64_t* orow, int64_t n,
                     const float* w, int64_t ldw, float* out, int64_t cout, int64_t col) {
  const int64_t tiles = (n + R - 1) / R;
  at::parallel_for(0, tiles, 64, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t s = t * R;
      for (int64_t r = s + R; r < std::min(n, s + 2 * R); ++r) __builtin_prefetch(x + xrow[r] * cin);
      product_tile<V, NV, R>(x, cin, xrow + s, orow + s, (int)std::min<int64_t>(R, n - s), w, ldw, out, cout, col);
    }
  });
}

// acc_out[c0 + a, col:col+NV*lanes] += sum over pairs p0:p1 of x[in_rows[p], c0 + a] * g[out_rows[p], col ...],
// for the nc <= 4 input channels a.
template <typename V, int NV>
void weight_tile(const float* __restrict xp, int64_t cin, const float* __restrict gp, int64_t cout,
                 const int64_t* ip, const int64_t* jp, int64_t p0, int64_t p1, int64_t c0, int nc, int64_t col,
                 float* __restrict acc_out) {
  constexpr int L = lanes<V>();
  V acc[4][NV];
  for (int a = 0; a < 4; ++a)
    for (int v = 0; v < NV; ++v) acc[a][v] = V{};
  if (nc == 4) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* xr = xp + ip[p] * cin + c0;
      const float* gr = gp + jp[p] * cout + col;
      V g_vec[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) g_vec[v] = load<V>(gr + L * v);
#pragma GCC unroll 4
      for (int a = 0; a < 4; ++a) {
        const float xa = xr[a];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[a][v] += xa * g_vec[v];
      }
    }
  } else {
    for (int64_t p = p0; p < p1; ++p) {
      const float* xr = xp + ip[p] * cin + c0;
      const float* gr = gp + jp[p] * cout + col;
      for (int a = 0; a < nc; ++a)
        for (int v = 0; v < NV; ++v) acc[a][v] += xr[a] * load<V>(gr + L * v);
    }
  }
  for (int a = 0; a < nc; ++a) {
    float* dst = acc_out + (c0 + a) * cout + col;
    for (int v = 0; v < NV; ++v) store<V>(dst + L * v, load<V>(dst + L * v) + acc[a][v]);
  }
}

}  // namespace

// For each row (k, start, stop) of `segments`: out[out_rows[p]] += x[in_rows[p]] @ W_k for p in start:stop,
// where W_k is the (cin, cout) matrix at w + k * w_step with rows ldw apart. cout: a multiple of 8.
void pair_products(const torch::Tensor& x, const torch::Tensor& w, int64_t w_step, int64_t ldw,
                   const torch::Tensor& in_rows, const torch::Tensor& out_rows, const torch::Tensor& segments,
                   torch::Tensor& out) {
  const int64_t cin = x.size(1), cout = out.size(1);
  TORCH_CHECK(cout % 8 == 0, "pair_products: output channels must be a multiple of 8");
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t* ip = in_rows.data_ptr<int64_t>();
  const int64_t* jp = out_rows.data_ptr<int64_t>();
  auto seg = segments.accessor<int64_t, 2>();
  for (int64_t q = 0; q < segments.size(0); ++q) {
    const int64_t k = seg[q][0], s = seg[q][1], n = seg[q][2] - s;
    const float* wk = wp + k * w_step;
    int64_t col = 0;
    if (cout % (16 * MID_NV) == 0 && cout % (16 * WIDE_NV) != 0) {  // 48, 96, 144 ... wide with AVX-512
      for (; col < cout; col += 16 * MID_NV)
        offset_products<vec16, MID_NV, MID_R>(xp, cin, ip + s, jp + s, n, wk, ldw, op, cout, col);
      continue;
    }
    for (; col + 16 * WIDE_NV <= cout; col += 16 * WIDE_NV)
      offset_products<vec16, WIDE_NV, WIDE_R>(xp, cin, ip + s, jp + s, n, wk, ldw, op, cout, col);
    for (; col + 16 * NARROW_NV <= cout; col += 16 * NARROW_NV)
      offset_products<vec16, NARROW_NV, NARROW_R>(xp, cin, ip + s, jp + s, n, wk, ldw, op, cout, col);
    for (; col + 16 <= cout; col += 16)
      offset_products<vec16, 1, ONE_R>(xp, cin, ip + s, jp + s, n, wk, ldw, op, cout, col);
    if (col < cout) offset_products<vec8, 1, EIGHT_R>(xp, cin, ip + s, jp + s, n, wk, ldw, op, cout, col);
  }
}

// For each row (k, start, stop) of `segments`: G_k = sum_p x[in_rows[p]]^T g[out_rows[p]], where G_k is the
// (cin, cout) matrix at grad_w + k * g_step with rows ldg apart. Blocks of pairs go to threads, each summing
// into its own copy; the copies are added in thread order, so a run is reproducible for a thread count.
void weight_products(const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& in_rows,
                     const torch::Tensor& out_rows, const torch::Tensor& segments, torch::Tensor& grad_w,
                     int64_t g_step, int64_t ldg) {
  const int64_t cin = x.size(1), cout = g.size(1);
  TORCH_CHECK(cout % 8 == 0, "weight_products: output channels must be a multiple of 8");
  constexpr int64_t BLOCK = 256;  // pairs per block: their rows stay in L2 over the channel blocks
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* gw = grad_w.data_ptr<float>();
  const int64_t* ip = in_rows.data_ptr<int64_t>();
  const int64_t* jp = out_rows.data_ptr<int64_t>();
  auto seg = segments.accessor<int64_t, 2>();
  const int threads = at::get_num_threads();
  std::vector<float> partial((size_t)threads * cin * cout);
  for (int64_t q = 0; q < segments.size(0); ++q) {
    const int64_t k = seg[q][0], s = seg[q][1], e = seg[q][2];
    const int64_t blocks = (e - s + BLOCK - 1) / BLOCK;
    const int used = (int)std::min<int64_t>(threads, blocks);
    std::fill(partial.begin(), partial.begin() + (size_t)used * cin * cout, 0.f);
    at::parallel_for(0, used, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        float* acc_out = partial.data() + (size_t)t * cin * cout;
        for (int64_t b = t * blocks / used; b < (t + 1) * blocks / used; ++b) {
          const int64_t p0 = s + b * BLOCK, p1 = std::min(e, p0 + BLOCK);
          for (int64_t c0 = 0; c0 < cin; c0 += 4) {
            const int nc = (int)std::min<int64_t>(4, cin - c0);
            int64_t col = 0;
            for (; col + 64 <= cout; col += 64)
              weight_tile<vec16, 4>(xp, cin, gp, cout, ip, jp, p0, p1, c0, nc, col, acc_out);
            for (; col + 16 <= cout; col += 16)
              weight_tile<vec16, 1>(xp, cin, gp, cout, ip, jp, p0, p1, c0, nc, col, acc_out);
            if (col < cout) weight_tile<vec8, 1>(xp, cin, gp, cout, ip, jp, p0, p1, c0, nc, col, acc_out);
          }
        }
      }
    });
    float* dst = gw + k * g_step;  // written, not added to: each offset occurs once in `segments`
    for (int64_t c = 0; c < cin; ++c)
      for (int64_t j = 0; j < cout; ++j) dst[c * ldg + j] = partial[c * cout + j];
    for (int t = 1; t < used; ++t) {
      const float* src = partial.data() + (size_t)t * cin * cout;
      for (int64_t c = 0; c < cin; ++c)
        for (int64_t j = 0; j < cout; ++j) dst[c * ldg + j] += src[c * cout + j];
    }
  }
}

// A kernel map's pairs read from a grid of site rows (CoordinateHash.grid_for), in the order of the torch path:
// offset by offset, and within an offset in the order of the base sites. For base site m and offset k the site
// sought is rows[c * depth + base_z[m] + dz[k]] (a row index, or -1 where there is no site), where c is the column
// base_columns[m] + column_steps[k] of the box (a dense grid, `columns` empty) or the occupied column that
// columns[base_columns[m] + column_steps[k]] names (a column grid). Returns {pairs per offset, in_cat, out_cat},
// where out_cat holds out_sites[m]. With `mirrored` (a submanifold map, queried for half of its offsets) the
// arrays go on with the other half: the same pairs read backwards, offset by offset in reverse order. Integers
// only: the result is exactly the torch path's.
std::vector<torch::Tensor> grid_pairs(const torch::Tensor& rows, const torch::Tensor& columns, int64_t depth,
                                      const torch::Tensor& base_columns, const torch::Tensor& base_z,
                                      const torch::Tensor& column_steps, const torch::Tensor& dz,
                                      const torch::Tensor& out_sites, bool mirrored) {
  const int64_t m_sites = base_columns.numel(), k_offsets = dz.numel();
  const bool indirect = columns.numel() > 0;
  const int64_t column_count = indirect ? columns.numel() : rows.numel() / depth;
  const int32_t* rp = rows.data_ptr<int32_t>();
  const int32_t* cp = indirect ? columns.data_ptr<int32_t>() : nullptr;
  const int64_t* bc = base_columns.data_ptr<int64_t>();
  const int64_t* bz = base_z.data_ptr<int64_t>();
  const int64_t* steps = column_steps.data_ptr<int64_t>();
  const int64_t* dzp = dz.data_ptr<int64_t>();
  const int64_t* sites = out_sites.data_ptr<int64_t>();
  auto extremes = [](const int64_t* v, int64_t n) {
    return std::make_pair(*std::min_element(v, v + n), *std::max_element(v, v + n));
  };
  if (m_sites && k_offsets) {  // every read below stays inside the tables (the caller's box test, checked again)
    auto [c0, c1] = extremes(bc, m_sites);
    auto [s0, s1] = extremes(steps, k_offsets);
    auto [z0, z1] = extremes(bz, m_sites);
    auto [d0, d1] = extremes(dzp, k_offsets);
    TORCH_CHECK(c0 + s0 >= 0 && c1 + s1 < column_count && z0 + d0 >= 0 && z1 + d1 < depth,
                "grid_pairs: a query falls outside the grid");
  }
  // Blocks of base sites go to threads, twice: first each block looks up its sites for every offset into its own
  // (offsets x BLOCK) slice of `found` and counts them, then, once the counts say where each run starts, copies
  // its hits out. A block's slice stays in L2 while it is written.
  // Its rows are LINE apart, not BLOCK: rows 4 KiB apart would all fall into one set of the L1 cache.
  constexpr int64_t BLOCK = 1024, LINE = BLOCK + 16;
  const int64_t blocks = (m_sites + BLOCK - 1) / BLOCK;
  std::unique_ptr<int32_t[]> found(new int32_t[(size_t)blocks * k_offsets * LINE]);
  std::vector<int64_t> count((size_t)k_offsets * blocks);  // [k][block]: its hits, then where they go
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<int64_t> hits(k_offsets);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(hits.begin(), hits.end(), 0);
      int32_t* slice = found.get() + (size_t)b * k_offsets * LINE;
      const int64_t m0 = b * BLOCK, m1 = std::min(m_sites, m0 + BLOCK);
      for (int64_t m = m0; m < m1; ++m) {
        int64_t step = 0;
        const int32_t* column = nullptr;
        for (int64_t k = 0; k < k_offsets; ++k) {
          if (k == 0 || steps[k] != step) {  // offsets of one (dx, dy) share the column
            step = steps[k];
            const int64_t c = bc[m] + step;
            column = rp + (indirect ? (int64_t)cp[c] : c) * depth + bz[m];
          }
          const int32_t row = column[dzp[k]];
          slice[k * LINE + (m - m0)] = row;
          hits[k] += row >= 0;
        }
      }
      for (int64_t k = 0; k < k_offsets; ++k) count[(size_t)k * blocks + b] = hits[k];
    }
  });
  auto counts = torch::empty({k_offsets}, torch::kInt64);
  int64_t* per_offset = counts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t k = 0; k < k_offsets; ++k) {
    const int64_t first = total;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n = count[(size_t)k * blocks + b];
      count[(size_t)k * blocks + b] = total;
      total += n;
    }
    per_offset[k] = total - first;
  }
  // mirrored: pair j of offset k, at first_k + j, is also written read backwards (input and output swapped) at
  // shift[k] + first_k + j, in the mirror run of offset k, which follows the mirror runs of the offsets above k
  std::vector<int64_t> shift(k_offsets);
  for (int64_t k = k_offsets - 1, above = 0, first = total; k >= 0; --k) {
    first -= per_offset[k];
    shift[k] = total + above - first;
    above += per_offset[k];
  }
  auto in_cat = torch::empty({mirrored ? 2 * total : total}, torch::kInt64);
  auto out_cat = torch::empty({mirrored ? 2 * total : total}, torch::kInt64);
  int64_t* ip = in_cat.data_ptr<int64_t>();
  int64_t* op = out_cat.data_ptr<int64_t>();
  const size_t runs = (size_t)k_offsets * blocks;  // run [k][b] ends where the next one starts
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t m0 = b * BLOCK, n = std::min(m_sites, m0 + BLOCK) - m0;
      for (int64_t k = 0; k < k_offsets; ++k) {
        const size_t run = (size_t)k * blocks + b;
        const int64_t end = run + 1 < runs ? count[run + 1] : total;
        const int32_t* f = found.get() + ((size_t)b * k_offsets + k) * LINE;
        // every site is written at `at` and kept only if it is a hit (no branch to mispredict); a miss is
        // overwritten by the next hit, and the loop ends with the run's last hit, so no write leaves the run
        int64_t at = count[run];
        if (mirrored) {
          int64_t* ip2 = ip + shift[k];
          int64_t* op2 = op + shift[k];
          for (int64_t i = 0; i < n && at < end; ++i) {
            ip[at] = op2[at] = f[i];
            op[at] = ip2[at] = sites[m0 + i];
            at += f[i] >= 0;
          }
        } else {
          for (int64_t i = 0; i < n && at < end; ++i) {
            ip[at] = f[i];
            op[at] = sites[m0 + i];
            at += f[i] >= 0;
          }
        }
      }
    }
  });
  return {counts, in_cat, out_cat};
}

// Voxelisation's passes over the points (geometry/voxel.py), spread over torch's threads. A point's cells are
// floor(p / size) per axis, recomputed in each pass rather than stored: the same division and floor as the torch
// path's, so the same cells, and everything after them is integer arithmetic, so the same keys.
template <typename T>
inline void cells_of(const T* p, const T* size, int64_t* cell) {
  for (int a = 0; a < 3; ++a) cell[a] = (int64_t)std::floor(p[a] / size[a]);
}

// {low (3), high (3), sample_low (samples, 3)}: the smallest and the largest cell per axis over all points, and the
// smallest per sample (INT64_MAX for a sample without points).
std::vector<torch::Tensor> voxel_bounds(const torch::Tensor& points, const torch::Tensor& size,
                                        const torch::Tensor& batch_index, int64_t samples) {
  const int64_t n = points.size(0);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(4 * at::get_num_threads(), n / 8192));
  // per part: low (3), high (3), then low per sample (samples x 3)
  const int64_t width = 6 + 3 * samples;
  std::vector<int64_t> part_bounds((size_t)parts * width);
  const int64_t* bp = batch_index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxel_bounds", [&] {
    const scalar_t* pp = points.data_ptr<scalar_t>();
    const scalar_t* sp = size.data_ptr<scalar_t>();
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        int64_t* bounds = part_bounds.data() + q * width;
        std::fill(bounds, bounds + 3, INT64_MAX);
        std::fill(bounds + 3, bounds + 6, INT64_MIN);
        std::fill(bounds + 6, bounds + width, INT64_MAX);
        int64_t cell[3];
        for (int64_t i = q * n / parts, end = (q + 1) * n / parts; i < end; ++i) {
          cells_of(pp + 3 * i, sp, cell);
          int64_t* sample_low = bounds + 6 + 3 * bp[i];
          for (int a = 0; a < 3; ++a) {
            bounds[a] = std::min(bounds[a], cell[a]);
            bounds[3 + a] = std::max(bounds[3 + a], cell[a]);
            sample_low[a] = std::min(sample_low[a], cell[a]);
          }
        }
      }
    });
  });
  auto low = torch::full({3}, INT64_MAX, torch::kInt64);
  auto high = torch::full({3}, INT64_MIN, torch::kInt64);
  auto sample_low = torch::full({samples, 3}, INT64_MAX, torch::kInt64);
  int64_t* lp = low.data_ptr<int64_t>();
  int64_t* hp = high.data_ptr<int64_t>();
  int64_t* slp = sample_low.data_ptr<int64_t>();
  for (int64_t q = 0; q < parts; ++q) {
    const int64_t* bounds = part_bounds.data() + q * width;
    for (int a = 0; a < 3; ++a) {
      lp[a] = std::min(lp[a], bounds[a]);
      hp[a] = std::max(hp[a], bounds[3 + a]);
    }
    for (int64_t j = 0; j < 3 * samples; ++j) slp[j] = std::min(slp[j], bounds[6 + j]);
  }
  return {low, high, sample_low};
}

// Each point's key ((c0 - low0) * e2 + c1 - low1) * e3 + c2 - low2 + shift[sample], as the torch path sums it.
torch::Tensor voxel_keys(const torch::Tensor& points, const torch::Tensor& size, const torch::Tensor& batch_index,
                         const torch::Tensor& low, const torch::Tensor& extents, const torch::Tensor& shift) {
  const int64_t n = points.size(0);
  auto keys = torch::empty({n}, torch::kInt64);
  int64_t* kp = keys.data_ptr<int64_t>();
  const int64_t* bp = batch_index.data_ptr<int64_t>();
  const int64_t* lp = low.data_ptr<int64_t>();
  const int64_t e2 = extents.data_ptr<int64_t>()[1], e3 = extents.data_ptr<int64_t>()[2];
  const int64_t* shp = shift.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxel_keys", [&] {
    const scalar_t* pp = points.data_ptr<scalar_t>();
    const scalar_t* sp = size.data_ptr<scalar_t>();
    at::parallel_for(0, n, 8192, [&](int64_t i0, int64_t i1) {
      int64_t cell[3];
      for (int64_t i = i0; i < i1; ++i) {
        cells_of(pp + 3 * i, sp, cell);
        kp[i] = ((cell[0] - lp[0]) * e2 + (cell[1] - lp[1])) * e3 + (cell[2] - lp[2]) + shp[bp[i]];
      }
    });
  });
  return keys;
}

// One bit per possible key in [0, bound) marks the keys present; a key's rank among them is the number of marked
// bits below it (counted per 64-bit word beforehand, then one popcount within its word).
struct KeyBitmap {
  std::vector<uint64_t> marked;
  std::vector<int32_t> below;  // marked bits in the words before each word
  int64_t present = 0;

  KeyBitmap(const int64_t* keys, int64_t n, int64_t bound) : marked((bound + 63) / 64, 0), below(marked.size()) {
    for (int64_t i = 0; i < n; ++i) marked[keys[i] >> 6] |= uint64_t(1) << (keys[i] & 63);
    for (size_t w = 0; w < marked.size(); ++w) {
      below[w] = (int32_t)present;
      present += __builtin_popcountll(marked[w]);
    }
  }
  int64_t rank(int64_t key) const {
    const int64_t w = key >> 6;
    return below[w] + __builtin_popcountll(marked[w] & ((uint64_t(1) << (key & 63)) - 1));
  }
  template <typename F>
  void each_key(F&& visit) const {  // visit(row, key) for the keys present, ascending
    for (int64_t w = 0, row = 0; w < (int64_t)marked.size(); ++w) {
      for (uint64_t bits = marked[w]; bits; bits &= bits - 1) visit(row++, w * 64 + __builtin_ctzll(bits));
    }
  }
};

// torch.unique(keys, return_inverse, return_counts) for keys in [0, bound), without a sort (a KeyBitmap). For
// voxelisation's keys, where bound is a few times the number of points. The result is torch.unique's: the keys
// present in ascending order, each key's row, and how often each occurs.
std::vector<torch::Tensor> unique_bounded(const torch::Tensor& keys, int64_t bound) {
  const int64_t n = keys.numel();
  TORCH_CHECK(n < INT32_MAX, "unique_bounded: too many keys");
  const int64_t* kp = keys.data_ptr<int64_t>();
  if (n) {
    const auto [lo, hi] = std::minmax_element(kp, kp + n);
    TORCH_CHECK(*lo >= 0 && *hi < bound, "unique_bounded: a key outside [0, bound)");
  }
  const KeyBitmap bitmap(kp, n, bound);
  auto unique = torch::empty({bitmap.present}, torch::kInt64);
  auto inverse = torch::empty({n}, torch::kInt64);
  auto counts = torch::zeros({bitmap.present}, torch::kInt64);
  int64_t* up = unique.data_ptr<int64_t>();
  int64_t* ip = inverse.data_ptr<int64_t>();
  int64_t* cp = counts.data_ptr<int64_t>();
  bitmap.each_key([&](int64_t row, int64_t key) { up[row] = key; });
  at::parallel_for(0, n, 8192, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) ip[i] = bitmap.rank(kp[i]);
  });
  for (int64_t i = 0; i < n; ++i) ++cp[ip[i]];
  return {unique, inverse, counts};
}

inline int64_t floor_div(int64_t v, int64_t factor) {
  const int64_t q = v / factor;
  return (v % factor != 0 && v < 0) ? q - 1 : q;
}

// The sites of a stride `factor` times coarser: [b, floor(x / factor), floor(y / factor), floor(z / factor)] of
// the (n, 4) sites `coords`, unique, in ascending (b, x, y, z) order, and each site's row among them (its parent).
// As unique_bounded: one bit per cell of the coarse sites' box ([0, batches) x the spatial box). Returns nothing
// where that box has more than `max_cells` cells (then torch's unique answers).
std::vector<torch::Tensor> coarse_sites(const torch::Tensor& coords, int64_t factor, int64_t max_cells) {
  const int64_t n = coords.size(0);
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 4 && coords.is_contiguous(), "coarse_sites: (n, 4) sites");
  TORCH_CHECK(n > 0 && n < INT32_MAX && factor > 0, "coarse_sites: 1 to 2^31 sites and a positive factor");
  const int64_t* cp = coords.data_ptr<int64_t>();
  int64_t low[4], high[4];
  std::fill(low, low + 4, INT64_MAX);
  std::fill(high, high + 4, INT64_MIN);
  for (int64_t i = 0; i < n; ++i) {
    for (int a = 0; a < 4; ++a) {
      const int64_t v = a ? floor_div(cp[4 * i + a], factor) : cp[4 * i];
      low[a] = std::min(low[a], v);
      high[a] = std::max(high[a], v);
    }
  }
  TORCH_CHECK(low[0] >= 0, "coarse_sites: a negative batch index");
  const int64_t e1 = high[1] - low[1] + 1, e2 = high[2] - low[2] + 1, e3 = high[3] - low[3] + 1;
  if ((double)(high[0] + 1) * (double)e1 * (double)e2 * (double)e3 > (double)max_cells) return {};
  std::vector<int64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* c = cp + 4 * i;
    keys[i] = ((c[0] * e1 + floor_div(c[1], factor) - low[1]) * e2 + floor_div(c[2], factor) - low[2]) * e3
              + floor_div(c[3], factor) - low[3];
  }
  const KeyBitmap bitmap(keys.data(), n, (high[0] + 1) * e1 * e2 * e3);
  auto sites = torch::empty({bitmap.present, 4}, torch::kInt64);
  auto parent = torch::empty({n}, torch::kInt64);
  int64_t* sp = sites.data_ptr<int64_t>();
  int64_t* pp = parent.data_ptr<int64_t>();
  bitmap.each_key([&](int64_t row, int64_t key) {
    sp[4 * row + 3] = key % e3 + low[3];
    sp[4 * row + 2] = key / e3 % e2 + low[2];
    sp[4 * row + 1] = key / e3 / e2 % e1 + low[1];
    sp[4 * row] = key / e3 / e2 / e1;
  });
  for (int64_t i = 0; i < n; ++i) pp[i] = bitmap.rank(keys[i]);
  return {sites, parent};
}

// The pairs of a convolution with kernel size = stride = `factor` (no padding) onto the coarse sites: each site
// feeds its parent through the offset of its position inside the parent's cell, so the offsets partition the
// sites. Offset by offset, the sites in the order `order` (their ascending keys; then the parents ascend too),
// as build_kernel_map lists them: {pairs per offset, input rows, output rows}.
std::vector<torch::Tensor> partition_pairs(const torch::Tensor& coords, const torch::Tensor& order,
                                           const torch::Tensor& parent, int64_t factor) {
  const int64_t n = coords.size(0), k_offsets = factor * factor * factor;
  TORCH_CHECK(coords.is_contiguous() && order.numel() == n && parent.numel() == n, "partition_pairs: shapes");
  const int64_t* cp = coords.data_ptr<int64_t>();
  const int64_t* op = order.data_ptr<int64_t>();
  const int64_t* pp = parent.data_ptr<int64_t>();
  auto offset_of = [&](int64_t row) {
    const int64_t* c = cp + 4 * row;
    int64_t k = 0;
    for (int a = 1; a < 4; ++a) k = k * factor + c[a] - factor * floor_div(c[a], factor);
    return k;
  };
  auto counts = torch::zeros({k_offsets}, torch::kInt64);
  int64_t* np = counts.data_ptr<int64_t>();
  std::vector<int64_t> offset(n);
  for (int64_t row = 0; row < n; ++row) ++np[offset[row] = offset_of(row)];
  std::vector<int64_t> next(k_offsets, 0);
  for (int64_t k = 1; k < k_offsets; ++k) next[k] = next[k - 1] + np[k - 1];
  auto in_cat = torch::empty({n}, torch::kInt64);
  auto out_cat = torch::empty({n}, torch::kInt64);
  int64_t* ip = in_cat.data_ptr<int64_t>();
  int64_t* outp = out_cat.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = op[i];
    TORCH_CHECK(row >= 0 && row < n, "partition_pairs: order is no permutation of the sites");
    const int64_t at = next[offset[row]]++;
    ip[at] = row;
    outp[at] = pp[row];
  }
  return {counts, in_cat, out_cat};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pair_products", &pair_products);
  m.def("weight_products", &weight_products);
  m.def("grid_pairs", &grid_pairs);
  m.def("voxel_bounds", &voxel_bounds);
  m.def("voxel_keys", &voxel_keys);
  m.def("unique_bounded", &unique_bounded);
  m.def("coarse_sites", &coarse_sites);
  m.def("partition_pairs", &partition_pairs);
}
"""


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = text.split("\n\n")[0].splitlines()
    return "\n".join(line for line in lines if line.split(":")[0].strip() in ("vendor_id", "cpu family", "model", "flags"))


def build_key(extra_cflags: tuple[str, ...] = ()) -> str:
    import torch

    text = "\n".join([SOURCE, torch.__version__, sys.version, _cpu_signature(), *extra_cflags])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_dir(extra_cflags: tuple[str, ...] = ()) -> Path:
    root = Path(os.environ.get("POINTLIFT_KERNEL_CACHE", Path.home() / ".cache" / "pointlift" / "kernels"))
    return root / build_key(extra_cflags)


def build(extra_cflags: tuple[str, ...] = ()):
    """Compile (or load the cached build of) the kernels; raises whatever the build raises. `extra_cflags`
    (tests): e.g. ("-mno-avx512f",) builds, beside the usual one, the code a CPU without AVX-512 runs."""
    import logging

    # on a machine without CUDA, importing the extension builder logs a warning about CUDA_HOME that does
    # not concern a CPU build
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load_inline

    directory = build_dir(extra_cflags)
    directory.mkdir(parents=True, exist_ok=True)
    return load_inline(
        name="pointlift_sparse_cpu" + ("_" + build_key(extra_cflags)[:8] if extra_cflags else ""),
        cpp_sources=[SOURCE],
        extra_cflags=["-O3", "-march=native", "-fopenmp", *extra_cflags],
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=False,
    )
