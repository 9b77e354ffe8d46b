// The direct convolution kernels of conv_direct.h, written once over a Vec<T> wrapper; included by
// conv_impl.h, so each ISA path (scalar reference, AVX2, AVX-512) has its copy. Register tiles of kMR
// output positions (forward) or filter rows (weight gradient) x kNV vectors of output channels: 6 x 4
// with AVX-512's 32 registers (24 accumulators, 64 float32 channels), 6 x 2 with AVX2's 16 (12; a 4 x 3
// tile's 24-channel filter blocks outgrew L2 at 512 channels: docs/performance.md).
#pragma once

#include "cpu/conv_direct.h"

namespace dlk::cpu {
namespace {

template <class V> struct DirectConv {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int kMR = 6;
  static constexpr int kNV = V::kRegisters >= 32 ? 4 : 2;
  static constexpr int64_t kBlock = int64_t(kNV) * V::W;  // output channels per block of packed filters
  static constexpr int64_t kChunk = 64;  // forward steps summed in registers before they join the totals

  // Stores the NV * W sums t (output channels oc0 ..) of the output position at `o`, the first OC -
  // oc0: a run of channels (os.c == 1) or strided.
  template <int NV>
  static void store_position(T* out, const Strides4& os, int64_t o, int64_t oc0, int64_t OC, const T* t) {
    const int64_t n = std::min<int64_t>(NV * V::W, OC - oc0);
    T* dst = out + o + oc0 * os.c;
    if (os.c == 1) {
      for (int v = 0; v < NV && v * V::W < n; ++v) {
        const int64_t valid = std::min<int64_t>(V::W, n - v * V::W);
        valid == V::W ? V::store(dst + v * V::W, V::load(t + v * V::W))
                      : V::store_tail(dst + v * V::W, V::load(t + v * V::W), valid);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i * os.c] = t[i];
    }
  }

  // One tile: rows output positions (rows <= kMR) of one class, row r's first tap at xp + in[r] and its
  // output at out + oc[r] (missing rows repeat the last one and are not stored), output channels oc0 ..
  // oc0 + NV * W - 1, over the class's steps.
  template <int NV>
  static void run_tile(const PairConvGeom& g, const PairConvPlan& plan, const T* xp, const T* wp, const T* bias,
                       T* out, const Strides4& os, int64_t cls, const int64_t* in, const int64_t* oo, int64_t rows,
                       int64_t oc0) {
    const T* xr[kMR];
    for (int r = 0; r < kMR; ++r) xr[r] = xp + in[std::min<int64_t>(r, rows - 1)];
    // The sums in two levels: registers over chunks of kChunk steps, each chunk's sums then added to
    // the totals (one running sum over 9 x 130 steps had 3-7x torch's float32 error against float64).
    alignas(64) T tot[kMR][NV * V::W];
    for (int r = 0; r < kMR; ++r)
      for (int v = 0; v < NV; ++v) V::store(tot[r] + v * V::W, bias ? V::load(bias + oc0 + v * V::W) : V::set1(T(0)));
    const int64_t s0 = plan.step_start[size_t(cls)], s1 = plan.step_start[size_t(cls) + 1];
    const int64_t *ko = plan.ko.data(), *wo = plan.wo.data();
    for (int64_t k0 = s0; k0 < s1; k0 += kChunk) {
      R acc[kMR][NV];
      for (int r = 0; r < kMR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = V::set1(T(0));
      // one flat loop over the class's (tap, channel) steps: the filters at wo[k], the inputs ko[k]
      // values from each position's first tap (a 3-channel layer has 3 steps a tap: no inner loop that
      // short)
      const int64_t k1 = std::min(s1, k0 + kChunk);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t c = ko[k];
        const T* wt = wp + wo[k];
        R wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = V::load(wt + v * V::W);
        for (int r = 0; r < kMR; ++r) {
          const R b = V::set1(xr[r][c]);
          for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(wv[v], b, acc[r][v]);
        }
      }
      for (int r = 0; r < kMR; ++r)
        for (int v = 0; v < NV; ++v) V::store(tot[r] + v * V::W, V::add(V::load(tot[r] + v * V::W), acc[r][v]));
    }
    bool run = os.c != 1 && os.w == 1;  // NCHW-like output, the tile's positions adjacent in memory
    for (int r = 1; r < rows; ++r) run = run && oo[r] == oo[0] + r;
    if (run) {
      // channel by channel, each channel's positions one run: position by position, each channel's
      // value went to its own plane, the planes' lines (H * W apart: often a multiple of 4 KiB) falling
      // into one L1 set, visited again for every position (64 x 64 at 32x32: 59 against 38 ms
      // channels_last)
      const int64_t n = std::min<int64_t>(NV * V::W, g.OC - oc0);
      for (int64_t i = 0; i < n; ++i) {
        T* dst = out + oo[0] + (oc0 + i) * os.c;
        for (int r = 0; r < rows; ++r) dst[r] = tot[r][i];
      }
      return;
    }
    for (int r = 0; r < rows; ++r) store_position<NV>(out, os, oo[r], oc0, g.OC, tot[r]);
  }

  static void forward(const PairConvGeom& g, const T* xp, const T* w, Strides4 ws, bool flip, const T* bias, T* out,
                      Strides4 os) {
    const int64_t OCp = g.OCp(), taps = g.taps();
    // The plan of one image (every image's positions are the first's, moved by its offsets): building
    // it for the whole batch cost more than the multiplies of a 3-channel layer (64 x 3 x 32 x 32). A
    // tile takes kMR positions of one class, running on from one image into the next (tiles within an
    // image left 4x4 outputs' classes of 1-4 positions in partly empty tiles: 2.25x the multiplies).
    PairConvGeom g1 = g;
    g1.N = 1;
    const PairConvPlan plan = pair_conv_plan(g1, os, kBlock);
    const int64_t image_in = g.Hp() * g.Wp() * g.C;
    std::vector<int64_t> tile_cls, tile_at;  // (class, index of its first position in the class's N * size)
    for (int64_t i = 0; i < plan.classes(); ++i) {
      const int64_t size = plan.class_start[size_t(i) + 1] - plan.class_start[size_t(i)];
      for (int64_t j = 0; j < g.N * size; j += kMR) {
        tile_cls.push_back(i);
        tile_at.push_back(j);
      }
    }
    const int64_t tiles = int64_t(tile_cls.size()), blocks = (OCp + kBlock - 1) / kBlock, work = tiles * blocks;
    const int64_t block_values = taps * g.C * kBlock;
    const bool par = g.N * g.OH * g.OW * g.OC * taps * g.C > (int64_t(1) << 16);
    // Each thread takes a contiguous share of the (block, tile) items, block-major, and packs each block
    // of filters it meets into its own buffer just before sweeping its positions with it (the block
    // stays in L2), as the bfloat16 kernel does.
#pragma omp parallel if (par)
    {
      const int64_t nth = omp_get_num_threads(), id = omp_get_thread_num();
      const int64_t j0 = work * id / nth, j1 = work * (id + 1) / nth;
      thread_local std::vector<T> buffer;
      if (int64_t(buffer.size()) < block_values) buffer.resize(size_t(block_values));
      T* wb = buffer.data();
      for (int64_t j = j0; j < j1;) {
        const int64_t blk = j / tiles, ta = j % tiles, tb = std::min(tiles, ta + (j1 - j));
        const int64_t oc0 = blk * kBlock, width = std::min(kBlock, OCp - oc0);
        direct_conv_pack_weight(g, w, ws, flip, wb, oc0, oc0 + width, kBlock);
        for (int64_t tile = ta; tile < tb; ++tile) {
          const int64_t cls = tile_cls[size_t(tile)], at = tile_at[size_t(tile)];
          const int64_t first = plan.class_start[size_t(cls)], size = plan.class_start[size_t(cls) + 1] - first;
          const int64_t rows = std::min<int64_t>(kMR, g.N * size - at);
          int64_t in[kMR], oo[kMR];
          for (int64_t r = 0, n = at / size, i = at % size; r < rows; ++r) {  // (image, index in the class)
            const int64_t q = plan.order[size_t(first + i)];
            in[r] = n * image_in + plan.pin[size_t(q)];
            oo[r] = n * os.n + plan.pout[size_t(q)];
            if (++i == size) i = 0, ++n;
          }
          switch ((width + V::W - 1) / V::W) {
            case 4: run_tile<std::min(4, kNV)>(g, plan, xp, wb, bias, out, os, cls, in, oo, rows, oc0); break;
            case 3: run_tile<std::min(3, kNV)>(g, plan, xp, wb, bias, out, os, cls, in, oo, rows, oc0); break;
            case 2: run_tile<2>(g, plan, xp, wb, bias, out, os, cls, in, oo, rows, oc0); break;
            default: run_tile<1>(g, plan, xp, wb, bias, out, os, cls, in, oo, rows, oc0); break;
          }
        }
        j += tb - ta;
      }
    }
  }

  // One weight-gradient tile: rows m0 .. m0 + mrows - 1 ((tap, channel) pairs; missing rows repeat the
  // last one and are not stored) x output channels oc0 .. oc0 + NV * W - 1 (block blk of the packed
  // grad_output), summed over output rows [r0, r1) and added to the sums in acc (stored there when first).
  template <int NV>
  static void wgrad_tile(const PairConvGeom& g, const T* xp, const T* gp, const int64_t* roff, T* acc, int64_t m0,
                         int64_t mrows, int64_t blk, int64_t r0, int64_t r1, bool first) {
    const int64_t OCp = g.OCp(), OW = g.OW, step = g.SW * g.C, oc0 = blk * kBlock;
    const T* base[kMR];
    for (int r = 0; r < kMR; ++r) base[r] = xp + direct_conv_row_offset(g, m0 + std::min<int64_t>(r, mrows - 1));
    R a[kMR][NV];  // this chunk's sums, added to the totals in acc at the end (two-level summation)
    for (int r = 0; r < kMR; ++r)
      for (int v = 0; v < NV; ++v) a[r][v] = V::set1(T(0));
    const T* gr = gp + (blk * g.N * g.OH + r0) * OW * kBlock;
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t o = roff[row];
      const T* p[kMR];
      for (int r = 0; r < kMR; ++r) p[r] = base[r] + o;
      for (int64_t ow = 0, at = 0; ow < OW; ++ow, at += step, gr += kBlock) {
        R gv[NV];
        for (int v = 0; v < NV; ++v) gv[v] = V::load(gr + v * V::W);
        for (int r = 0; r < kMR; ++r) {
          const R b = V::set1(p[r][at]);
          for (int v = 0; v < NV; ++v) a[r][v] = V::fmadd(gv[v], b, a[r][v]);
        }
      }
    }
    for (int r = 0; r < mrows; ++r) {
      for (int v = 0; v < NV; ++v) {
        T* t = acc + (m0 + r) * OCp + oc0 + v * V::W;
        V::store(t, first ? a[r][v] : V::add(V::load(t), a[r][v]));
      }
    }
  }

  // acc (taps * C rows of OCp) = the weight gradient's sums, rows m = (tap, channel); gp: grad_output
  // packed by direct_conv_pack_grad in blocks of kBlock channels.
  static void weight_grad(const PairConvGeom& g, const T* xp, const T* gp, T* acc) {
    const int64_t M = g.C * g.taps(), OCp = g.OCp(), R_ = g.N * g.OH;
    const int64_t tiles = (M + kMR - 1) / kMR, blocks = (OCp + kBlock - 1) / kBlock, work = tiles * blocks;
    // Chunks of output rows whose grad_output block (kBlock values a position, contiguous) fills about
    // 16 KiB: it stays in L1 while the thread's tiles pass over it, the input values coming from L2.
    // (grad_output rows OCp apart and chunks of 128 KiB: rows 1 KiB apart fell into 4 of L1's 64 sets;
    // 256 x 256 at 7x7 ran at 67 GFLOP/s on AVX2.)
    const int64_t row_bytes = g.OW * kBlock * int64_t(sizeof(T));
    const int64_t chunk = std::max<int64_t>(1, (int64_t(16) << 10) / std::max<int64_t>(row_bytes, 1));
    const bool par = M * OCp * R_ * g.OW > (int64_t(1) << 16);
    std::vector<int64_t> roff(static_cast<size_t>(R_));
    for (int64_t row = 0; row < R_; ++row) roff[size_t(row)] = direct_conv_image_row_offset(g, row);
    // each thread a contiguous share of the (block, tile) items, block-major: consecutive items share
    // the grad_output chunk (and, 16 channels to a cache line, the input lines); a tile's sums stay with
    // its thread from chunk to chunk, so no barrier between chunks
#pragma omp parallel if (par)
    {
      const int64_t nth = omp_get_num_threads(), id = omp_get_thread_num();
      const int64_t j0 = work * id / nth, j1 = work * (id + 1) / nth;
      for (int64_t r0 = 0; r0 < R_; r0 += chunk) {
        const int64_t r1 = std::min(R_, r0 + chunk);
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t blk = j / tiles, m0 = (j % tiles) * kMR, mrows = std::min<int64_t>(kMR, M - m0);
          switch ((std::min<int64_t>(OCp - blk * kBlock, kBlock) + V::W - 1) / V::W) {
            case 4: wgrad_tile<std::min(4, kNV)>(g, xp, gp, roff.data(), acc, m0, mrows, blk, r0, r1, r0 == 0); break;
            case 3: wgrad_tile<std::min(3, kNV)>(g, xp, gp, roff.data(), acc, m0, mrows, blk, r0, r1, r0 == 0); break;
            case 2: wgrad_tile<2>(g, xp, gp, roff.data(), acc, m0, mrows, blk, r0, r1, r0 == 0); break;
            default: wgrad_tile<1>(g, xp, gp, roff.data(), acc, m0, mrows, blk, r0, r1, r0 == 0); break;
          }
        }
      }
    }
  }
};

}  // namespace
}  // namespace dlk::cpu
