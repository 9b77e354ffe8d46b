// im2col convolution loops, written once over a Vec<T> wrapper; included by conv.cpp (the scalar
// reference path: one-lane Vec, baseline ISA) and by conv_avx2.cpp / conv_avx512.cpp after their target
// pragma and simd header. The stride-1 im2col rows, the stride-1 col2im adds and the tile GEMM use the
// Vec wrappers; the other loops are plain and compiler-vectorized. Internal linkage, so the ISA copies
// never meet at link time. Every loop works a whole row at a time.
#pragma once
// Short row copies stay inline loops: GCC would turn them into memcpy/memset calls, whose call cost is
// most of im2col's time for narrow images (LeNet: 24-float rows, 38400 calls a batch).
#pragma GCC optimize("no-tree-loop-distribute-patterns")
// Standard headers come before the ISA pragma in the including file.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "cpu/conv.h"

namespace dlk::cpu {
namespace {

constexpr int64_t kConvParallelGrain = 1 << 15;  // elements; below this one thread is faster

template <class V> struct ConvKernels {
  using T = typename V::T;
  using R = typename V::R;

  // A row of im2col output, stride 1: d[ow] = src[ow] for lo <= ow <= hi, else 0 (hi < lo: all zeros).
  // Whole vectors, the last one loaded masked (never past the valid source) and stored whole, so it may
  // spill zeros past the row, up to `end`: the caller writes the rows of a run in order, each row
  // rewrites what the previous one spilled, and near `end` the store is masked. In-process A/B (AVX2):
  // 5-15% faster than the scalar-remainder loop on 8- to 32-wide images, the same on 56-wide ones.
  static void row_s1(T* d, const T* src, int64_t lo, int64_t hi, int64_t OW, const T* end) {
    for (int64_t ow = 0; ow < lo; ++ow) d[ow] = T(0);
    int64_t ow = lo;
    for (; ow + V::W <= hi + 1; ow += V::W) V::store(d + ow, V::load(src + ow));
    for (; ow < OW; ow += V::W) {
      const int64_t n = hi + 1 - ow;
      const R v = n > 0 ? V::load_tail(src + ow, n, T(0)) : V::set1(T(0));
      if (d + ow + V::W <= end) {
        V::store(d + ow, v);
      } else {
        V::store_tail(d + ow, v, OW - ow);
      }
    }
  }

  // The same for column stride 2: d[ow] = src[2 * ow]. Each vector gathers the even lanes of two
  // consecutive loads (V::evens); the last vectors load masked, never past src[2 * hi], and spill zeros
  // as row_s1 does. One image of the 3x3/s2 benchmark layer (128 x 28 x 28, 14-wide output rows), A/B
  // against the strided scalar loop on an AVX-512 Xeon: im2col 0.185 -> 0.123 ms (AVX-512), 0.127 (AVX2).
  static void row_s2(T* d, const T* src, int64_t lo, int64_t hi, int64_t OW, const T* end) {
    for (int64_t ow = 0; ow < lo; ++ow) d[ow] = T(0);
    int64_t ow = lo;
    for (; ow + V::W <= hi; ow += V::W) V::store(d + ow, V::evens(V::load(src + 2 * ow), V::load(src + 2 * ow + V::W)));
    for (; ow < OW; ow += V::W) {
      const int64_t m = 2 * (hi - ow) + 1;  // source values this vector may read: up to src[2 * hi]
      const R v = m > 0 ? V::evens(V::load_tail(src + 2 * ow, m, T(0)), V::load_tail(src + 2 * ow + V::W, m - V::W, T(0)))
                        : V::set1(T(0));
      if (d + ow + V::W <= end) {
        V::store(d + ow, v);
      } else {
        V::store_tail(d + ow, v, OW - ow);
      }
    }
  }

  static void im2col(const Im2colGeom& g, const T* in, T* col) {
    const int64_t rows = g.rows(), KK = g.KH * g.KW, plane = g.H * g.W;
    const int64_t tasks = rows * g.images;
    // Task t = (row, image), row outer: in the conv chunk layout a thread then writes one long run.
#pragma omp parallel for schedule(static) if (tasks * g.positions() > kConvParallelGrain)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t r = t / g.images, b = t % g.images;
      const int64_t c = r / KK, kh = (r % KK) / g.KW, kw = r % g.KW;
      const T* x = in + (b * g.C + c) * plane;
      T* dst = col + r * g.row_stride + b * g.image_stride;
      const T* end = dst + g.positions();  // this task's run
      const int64_t off = kw * g.DW - g.PW;
      int64_t lo, hi;
      conv_tap_range(off, g.SW, g.W, g.OW, lo, hi);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        T* d = dst + oh * g.OW;
        const int64_t h = oh * g.SH - g.PH + kh * g.DH;
        const bool empty = h < 0 || h >= g.H || hi < lo;
        const T* xr = x + (empty ? 0 : h * g.W + off);
        if (g.SW == 1 || empty) {
          row_s1(d, xr, empty ? 0 : lo, empty ? -1 : hi, g.OW, end);
          continue;
        }
        if (g.SW == 2) {
          row_s2(d, xr, lo, hi, g.OW, end);
          continue;
        }
        std::fill(d, d + lo, T(0));
        for (int64_t ow = lo; ow <= hi; ++ow) d[ow] = xr[ow * g.SW];
        std::fill(d + hi + 1, d + g.OW, T(0));
      }
    }
  }

  // channels_last (NHWC) column matrix: row (b * OH + oh) * OW + ow holds the output position's KH * KW
  // input pixels, each its C channels, (kh, kw, c) order: R = KH * KW * C values. A pixel is one
  // contiguous run of C values in the input, and at dilation 1 a kernel row's KW pixels are one run of
  // KW * C (unless the row crosses the padding). One task per output row (b, oh).
  static void im2col_nhwc(const Im2colGeom& g, const T* in, T* col) {
    const int64_t C = g.C, R = g.rows(), tasks = g.images * g.OH;
#pragma omp parallel for schedule(static) if (tasks * g.OW * R > kConvParallelGrain)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / g.OH, oh = t % g.OH;
      const T* x = in + b * g.H * g.W * C;
      T* dst = col + t * g.OW * R;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t w0 = ow * g.SW - g.PW;
        for (int64_t kh = 0; kh < g.KH; ++kh, dst += g.KW * C) {
          const int64_t h = oh * g.SH - g.PH + kh * g.DH;
          if (h < 0 || h >= g.H) {
            fill_run(dst, g.KW * C, T(0));
            continue;
          }
          const T* xr = x + h * g.W * C;
          if (g.DW == 1 && w0 >= 0 && w0 + g.KW <= g.W) {
            copy_run(dst, xr + w0 * C, g.KW * C);
            continue;
          }
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t w = w0 + kw * g.DW;
            if (w < 0 || w >= g.W) {
              fill_run(dst + kw * C, C, T(0));
            } else {
              copy_run(dst + kw * C, xr + w * C, C);
            }
          }
        }
      }
    }
  }

  // The adjoint of im2col_nhwc: out (images, H, W, C) fully written, each pixel the sum of the column
  // entries copied from it, added in (kh, kw) order. One task per input row (b, h): deterministic.
  static void col2im_nhwc(const Im2colGeom& g, const T* col, T* out) {
    const int64_t C = g.C, R = g.rows(), tasks = g.images * g.H;
#pragma omp parallel for schedule(static) if (tasks * g.W * R > kConvParallelGrain)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / g.H, h = t % g.H;
      T* dx = out + t * g.W * C;
      fill_run(dx, g.W * C, T(0));
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t hh = h + g.PH - kh * g.DH;
        if (hh < 0 || hh % g.SH != 0 || hh / g.SH >= g.OH) continue;
        const T* src_row = col + (b * g.OH + hh / g.SH) * g.OW * R;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t off = kw * g.DW - g.PW;
          int64_t lo, hi;
          conv_tap_range(off, g.SW, g.W, g.OW, lo, hi);
          const T* src = src_row + (kh * g.KW + kw) * C;
          for (int64_t ow = lo; ow <= hi; ++ow) add_run(dx + (ow * g.SW + off) * C, src + ow * R, C);
        }
      }
    }
  }

  static void fill_run(T* d, int64_t n, T v) {
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store(d + i, V::set1(v));
    for (; i < n; ++i) d[i] = v;
  }
  static void copy_run(T* d, const T* s, int64_t n) {
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store(d + i, V::load(s + i));
    if (i < n) V::store_tail(d + i, V::load_tail(s + i, n - i, T(0)), n - i);
  }
  // d[i] += s[i] for i < n
  static void add_run(T* d, const T* s, int64_t n) {
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store(d + i, V::add(V::load(d + i), V::load(s + i)));
    if (i < n) V::store_tail(d + i, V::add(V::load_tail(d + i, n - i, T(0)), V::load_tail(s + i, n - i, T(0))), n - i);
  }

  static void col2im(const Im2colGeom& g, const T* col, T* out) {
    const int64_t KK = g.KH * g.KW;
    const int64_t tasks = g.images * g.C * g.H;  // one input row each
#pragma omp parallel for schedule(static) if (tasks * g.W * KK > kConvParallelGrain)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t h = t % g.H, c = (t / g.H) % g.C, b = t / (g.H * g.C);
      T* dx = out + t * g.W;
      if (g.SW == 1 && g.W > V::W && g.W <= kRowBuf) {
        col2im_row_s1(g, col, dx, b, c, h);
        continue;
      }
      std::fill(dx, dx + g.W, T(0));
      // Kernel rows kh whose tap lands on input row h: h = oh*SH - PH + kh*DH for some 0 <= oh < OH.
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t hh = h + g.PH - kh * g.DH;
        if (hh < 0 || hh % g.SH != 0 || hh / g.SH >= g.OH) continue;
        const int64_t oh = hh / g.SH;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t r = c * KK + kh * g.KW + kw;
          const T* src = col + r * g.row_stride + b * g.image_stride + oh * g.OW;
          const int64_t off = kw * g.DW - g.PW;
          int64_t lo, hi;
          conv_tap_range(off, g.SW, g.W, g.OW, lo, hi);
          T* dxo = dx + off;
          if (g.SW == 1) {
            for (int64_t ow = lo; ow <= hi; ++ow) dxo[ow] += src[ow];
          } else {
            for (int64_t ow = lo; ow <= hi; ++ow) dxo[ow * g.SW] += src[ow];
          }
        }
      }
    }
  }

  // One input row of col2im for stride 1, summed in a local buffer with whole-vector adds: the last
  // vector of each tap's range is loaded masked (zeros past it) and added whole into the buffer's slack,
  // so no tap needs a scalar remainder; one copy to the row at the end. Each element is the same sum in
  // the same tap order as the general loop. In-process A/B (AVX2): 10-20% faster on 16- and 32-wide
  // rows, 25% slower on rows of one vector (8 wide), which therefore keep the general loop.
  static constexpr int64_t kRowBuf = 512;
  static void col2im_row_s1(const Im2colGeom& g, const T* col, T* dx, int64_t b, int64_t c, int64_t h) {
    alignas(64) T buf[kRowBuf + V::W];
    const int64_t KK = g.KH * g.KW;
    for (int64_t i = 0; i < g.W + V::W; ++i) buf[i] = T(0);
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t hh = h + g.PH - kh * g.DH;  // = oh * SH for the output rows this tap reads
      if (hh < 0 || hh % g.SH != 0 || hh / g.SH >= g.OH) continue;
      const int64_t oh = hh / g.SH;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const T* src = col + (c * KK + kh * g.KW + kw) * g.row_stride + b * g.image_stride + oh * g.OW;
        const int64_t off = kw * g.DW - g.PW;
        int64_t lo, hi;
        conv_tap_range(off, 1, g.W, g.OW, lo, hi);
        T* bo = buf + off;  // off + lo >= 0 and off + hi < W
        int64_t ow = lo;
        for (; ow + V::W <= hi + 1; ow += V::W) V::store(bo + ow, V::add(V::load(bo + ow), V::load(src + ow)));
        if (ow <= hi) V::store(bo + ow, V::add(V::load(bo + ow), V::load_tail(src + ow, hi + 1 - ow, T(0))));
      }
    }
    int64_t w = 0;
    for (; w + V::W <= g.W; w += V::W) V::store(dx + w, V::load(buf + w));
    for (; w < g.W; ++w) dx[w] = buf[w];
  }

  static void rows_to_images(int64_t B, int64_t OC, int64_t L, const T* rows, const T* bias, T* out) {
#pragma omp parallel for schedule(static) if (B * OC * L > kConvParallelGrain)
    for (int64_t t = 0; t < B * OC; ++t) {
      const int64_t b = t / OC, oc = t % OC;
      const T* s = rows + oc * B * L + b * L;
      T* d = out + t * L;
      if (bias) {
        const T v = bias[oc];
        for (int64_t l = 0; l < L; ++l) d[l] = s[l] + v;
      } else {
        std::memcpy(d, s, sizeof(T) * L);
      }
    }
  }

  static void images_to_rows(int64_t B, int64_t OC, int64_t L, const T* images, T* rows) {
#pragma omp parallel for schedule(static) if (B * OC * L > kConvParallelGrain)
    for (int64_t t = 0; t < B * OC; ++t) {
      const int64_t oc = t / B, b = t % B;  // writes rows in order
      std::memcpy(rows + oc * B * L + b * L, images + (b * OC + oc) * L, sizeof(T) * L);
    }
  }

  // C (M x K, row-major) += A (M x N) @ B (K x N)^T, A and B row-major with rows N long: M * K dot
  // products over long rows (the weight gradient). Fixed blocks of kDot columns, each block's dots
  // summed in T's vector lanes (omp simd), the blocks then added in double in block order: no
  // dependence on the thread count.
  static constexpr int64_t kDot = 2048;
  static void gemm_dots(int64_t M, int64_t K, int64_t N, const T* A, const T* B, T* C, double* work) {
    const int64_t blocks = (N + kDot - 1) / kDot;
#pragma omp parallel for schedule(static) if (M * K * N > kConvParallelGrain)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t n0 = blk * kDot, n1 = std::min(N, n0 + kDot);
      for (int64_t m = 0; m < M; ++m) {
        const T* a = A + m * N;
        double* w = work + (blk * M + m) * K;
        int64_t k = 0;
        // Four dots at once: four independent accumulator chains (one chain waited on the FMA
        // latency) sharing each load of a.
        for (; k + 4 <= K; k += 4) {
          const T *b0 = B + k * N, *b1 = b0 + N, *b2 = b1 + N, *b3 = b2 + N;
          T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
          for (int64_t n = n0; n < n1; ++n) {
            s0 += a[n] * b0[n];
            s1 += a[n] * b1[n];
            s2 += a[n] * b2[n];
            s3 += a[n] * b3[n];
          }
          w[k] = double(s0);
          w[k + 1] = double(s1);
          w[k + 2] = double(s2);
          w[k + 3] = double(s3);
        }
        for (; k < K; ++k) {
          const T* b = B + k * N;
          T s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t n = n0; n < n1; ++n) s += a[n] * b[n];
          w[k] = double(s);
        }
      }
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) {
        double total = 0;
        for (int64_t blk = 0; blk < blocks; ++blk) total += work[(blk * M + m) * K + k];
        C[m * K + k] = T(double(C[m * K + k]) + total);
      }
  }

  // Direct convolution (cpu/conv.h: DirectGeom, conv_direct_fits), on an input padded (and at column
  // stride 2 split into even and odd columns) by the ops layer. A task is one output row of one image; a
  // register tile holds F filters x NV vectors of that row, and each input vector loaded serves F
  // filters. No column matrix: LeNet's first layer wrote and read back a 3.7 MB one for 11 MFLOP of work,
  // and a 16-filter 3x3 layer on 32x32 images ran its forward 3x faster without it. Rows of at most one
  // vector take 12 filters x 1 vector (two vectors would be half padding), others 6 x 2: 12
  // accumulators either way, enough to cover the FMA latency.
  static void direct_forward(const DirectGeom& d, const T* in, const T* w, const T* bias, T* out) {
    if (d.OW <= V::W) return direct_forward_t<12, 1>(d, in, w, bias, out);
    direct_forward_t<6, 2>(d, in, w, bias, out);
  }

  template <int F, int NV>
  static void direct_forward_t(const DirectGeom& d, const T* in, const T* w, const T* bias, T* out) {
    const int64_t taps = d.C * d.KH * d.KW, OH = d.OH, OW = d.OW, OC = d.OC;
    constexpr int64_t kGroup = NV * V::W;  // divides conv_direct_columns(OW): no tile reads past the padded row
    const int64_t groups = (OW + kGroup - 1) / kGroup, fblocks = (OC + F - 1) / F;
    // the filters packed by block, tap-major: block fb's tap r at packed[(fb * taps + r) * F + i],
    // zeros for the filters past OC, so that the tile's loops have fixed bounds and stay in registers
    std::vector<T> packed(size_t(fblocks * taps * F), T(0));
    for (int64_t f = 0; f < OC; ++f)
      for (int64_t r = 0; r < taps; ++r) packed[((f / F) * taps + r) * F + f % F] = w[f * taps + r];
    // where kernel column kw's values for a tile's first output start in a row
    std::vector<int64_t> col(size_t(d.KW));
    for (int64_t kw = 0; kw < d.KW; ++kw) col[kw] = d.half ? (kw & 1) * d.half + (kw >> 1) : kw;
#pragma omp parallel for schedule(static) if (d.N * OH * OW * OC * taps > kConvParallelGrain)
    for (int64_t t = 0; t < d.N * OH; ++t) {
      const int64_t n = t / OH, oh = t % OH;
      const T* image = in + (n * d.C * d.H + oh * d.SH) * d.W;  // input row (c, oh * SH + kh) at image + (c * H + kh) * W
      for (int64_t fb = 0; fb < fblocks; ++fb) {
        const int64_t f0 = fb * F, nf = std::min<int64_t>(F, OC - f0);
        for (int64_t gi = 0; gi < groups; ++gi) {
          const int64_t ow0 = gi * kGroup;
          direct_tile<F, NV>(d, image + ow0, col.data(), packed.data() + fb * taps * F, bias ? bias + f0 : nullptr,
                             nf, out + ((n * OC + f0) * OH + oh) * OW + ow0, OW - ow0);
        }
      }
    }
  }

  // One register tile of direct_forward: nf (<= F) filters x the row's next NV vectors of outputs, of
  // which the first `cols` are stored. row: the input row (c = 0, kh = 0) at the tile's first output's
  // column (whole vectors are read: the padded row is long enough), kernel column kw's values col[kw]
  // further; wk: the filter block's packed taps; o: filter 0's output row at the tile's first column,
  // the other filters' OH * OW apart. Loops with fixed bounds, so the accumulators stay in registers
  // (with masked loads in the loop, GCC kept them on the stack).
  template <int F, int NV>
  static void direct_tile(const DirectGeom& d, const T* row, const int64_t* col, const T* wk, const T* bias, int64_t nf,
                          T* o, int64_t cols) {
    R acc[F][NV];
    for (int i = 0; i < F; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = V::set1(i < nf && bias ? bias[i] : T(0));
    for (int64_t c = 0; c < d.C; ++c)
      for (int64_t kh = 0; kh < d.KH; ++kh) {
        const T* r = row + (c * d.H + kh) * d.W;
        for (int64_t kw = 0; kw < d.KW; ++kw, wk += F) {
          R xv[NV];
          for (int v = 0; v < NV; ++v) xv[v] = V::load(r + col[kw] + v * V::W);
          for (int i = 0; i < F; ++i) {
            const R wi = V::set1(wk[i]);
            for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(wi, xv[v], acc[i][v]);
          }
        }
      }
    const int64_t ostride = d.OH * d.OW;
    for (int i = 0; i < F; ++i) {
      if (i >= nf) break;
      for (int v = 0; v < NV; ++v) {
        if (cols >= (v + 1) * V::W) {
          V::store(o + i * ostride + v * V::W, acc[i][v]);
        } else if (cols > v * V::W) {  // a vector wholly past the row is not addressed
          V::store_tail(o + i * ostride + v * V::W, acc[i][v], cols - v * V::W);
        }
      }
    }
  }

  static void channel_sum(int64_t N, int64_t C, int64_t L, const T* in, T* out) {
#pragma omp parallel for schedule(static) if (N * C * L > kConvParallelGrain)
    for (int64_t c = 0; c < C; ++c) {
      double total = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* x = in + (n * C + c) * L;
        // Eight partial sums: a vectorizable reduction without -ffast-math, in a fixed order.
        double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t l = 0;
        for (; l + 8 <= L; l += 8)
          for (int j = 0; j < 8; ++j) part[j] += double(x[l + j]);
        for (; l < L; ++l) part[0] += double(x[l]);
        total += ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      }
      out[c] = T(total);
    }
  }
};

// C (M x N) = A (M x K) @ B (K x N), B and C row-major with rows N long, A's element (m, k) at
// A[m * sam + k * sak] (so A may be a transposed view): the GEMMs of layers with few or a moderate number
// of filters (M or K up to ~64, N = batch * positions large), where MKL's general kernels run at half the
// machine's rate or less (16 x 144 x 14336: 62 GFLOP/s) or spend more time packing than multiplying.
// A register tile of kMR rows x kNV vectors of output columns (4 x 3 AVX2 vectors: 12 accumulators,
// 3 loads of B and 4 broadcasts of A per 12 FMAs; with AVX-512's 32 registers 8 x 3: 24 accumulators,
// half the B loads per FMA, which come from L2 once a strip outgrows L1: 64 x 576 x 3136 144 -> 183
// GFLOP/s, 128 x 1152 x 784 154 -> 206, 32 x 288 x 4096 86 -> 113 in a standalone A/B on an AVX-512
// Xeon; 12 x 2 and 6 x 4 ran between the two, and blocking K to keep the strip in L1 gained under 5%,
// so it is not done); A is packed once into kMR-row panels (k-major, rows
// past M zero) so that each broadcast reads the next element. A task is one strip of kNR columns, its B
// strip first copied to a contiguous per-thread block: B's rows are N apart, often near a multiple of
// 4 KiB, so a strip's rows fall into few L1 sets and evict each other (and alias C's stores); packed,
// 144 x 16 x 14336 went from 48 to 139 GFLOP/s, 288 x 32 x 7168 from 89 to 161 and 64 x 576 x 3584
// from 130 to 155-170 (prototype, CI host). Each output is one sum in k order, whatever the thread count.
template <class V, int MR = (V::kRegisters >= 32 ? 8 : 4), int NV = 3> struct TileGemm {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int kMR = MR, kNV = NV, kNR = kNV * V::W;

  // C_n = A @ B_n for n < batch, with B_n = B + n * bstride and C_n = C + n * cstride (batch 1: one
  // product). The images' columns are taken as one row of batch * N and cut into strips of kNR, so
  // that a strip may span two or more images: packing gathers its columns, and its outputs go through
  // a per-thread block, then out to each image's part. One image's N = 196 columns (14x14, a ResNet
  // 1x1 layer) would make 5 strips, the last one 4 columns wide, for 2 threads.
  static void run(int64_t M, int64_t K, int64_t N, const T* A, int64_t sam, int64_t sak, const T* B, T* C,
                  int64_t batch = 1, int64_t bstride = 0, int64_t cstride = 0) {
    const int64_t panels = (M + kMR - 1) / kMR;
    std::vector<T> packed(size_t(panels * K * kMR));
    T* Ap = packed.data();
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int i = 0; i < kMR; ++i) {
          const int64_t m = p * kMR + i;
          Ap[(p * K + k) * kMR + i] = m < M ? A[m * sam + k * sak] : T(0);
        }
    const int64_t cols = batch * N, strips = (cols + kNR - 1) / kNR;
#pragma omp parallel if (M * K * cols > kConvParallelGrain)
    {
      std::vector<T> strip_buf(size_t(K * kNR));  // this thread's packed B strip
      std::vector<T> out_buf;                     // and its outputs, for a strip that spans images
#pragma omp for schedule(static)
      for (int64_t s = 0; s < strips; ++s) {
        const int64_t j0 = s * kNR, n = j0 / N, c0 = j0 % N, nr = std::min<int64_t>(kNR, cols - j0);
        const T* b = B + n * bstride + c0;
        T* c = C + n * cstride + c0;
        if (c0 + nr <= N) {  // within one image
          pack_strip(K, N, b, nr, strip_buf.data());
          nr == kNR ? multiply<true>(M, K, Ap, strip_buf.data(), c, N, nr)
                    : multiply<false>(M, K, Ap, strip_buf.data(), c, N, nr);
        } else {
          out_buf.resize(size_t(M * kNR));
          gather_strip(K, N, B, bstride, n, c0, nr, strip_buf.data());
          multiply<true>(M, K, Ap, strip_buf.data(), out_buf.data(), kNR, kNR);
          for (int64_t m = 0; m < M; ++m)
            for_each_segment(N, n, c0, nr, [&](int64_t img, int64_t col, int64_t off, int64_t len) {
              copy_row(C + img * cstride + m * N + col, out_buf.data() + m * kNR + off, len);
            });
        }
      }
    }
  }

  // Vector v of a row's first nr columns, zeros past them (and a vector wholly past them never read).
  static R tail(const T* row, int64_t nr, int v) {
    return nr > v * V::W ? V::load_tail(row + v * V::W, nr - v * V::W, T(0)) : V::set1(T(0));
  }

  static void copy_row(T* d, const T* src, int64_t len) {
    int64_t i = 0;
    for (; i + V::W <= len; i += V::W) V::store(d + i, V::load(src + i));
    if (i < len) V::store_tail(d + i, V::load_tail(src + i, len - i, T(0)), len - i);
  }

  // The strip's B columns (rows ldb apart) copied to `packed` (K x kNR, zeros past nr), so that its rows
  // do not alias in L1.
  static void pack_strip(int64_t K, int64_t ldb, const T* B, int64_t nr, T* packed) {
    if (nr == kNR) {
      for (int64_t k = 0; k < K; ++k)
        for (int v = 0; v < kNV; ++v) V::store(packed + k * kNR + v * V::W, V::load(B + k * ldb + v * V::W));
    } else {
      for (int64_t k = 0; k < K; ++k)
        for (int v = 0; v < kNV; ++v) V::store(packed + k * kNR + v * V::W, tail(B + k * ldb, nr, v));
    }
  }

  // f(image, column, offset in the strip, length) for each image's part of the nr columns that start
  // at column c0 of image n (N columns an image).
  template <class F> static void for_each_segment(int64_t N, int64_t n, int64_t c0, int64_t nr, F f) {
    for (int64_t off = 0, img = n, col = c0; off < nr; ++img, col = 0) {
      const int64_t len = std::min(nr - off, N - col);
      f(img, col, off, len);
      off += len;
    }
  }

  // The same for a strip that starts at column c0 of image n and runs on into the next ones.
  static void gather_strip(int64_t K, int64_t N, const T* B, int64_t bstride, int64_t n, int64_t c0, int64_t nr,
                           T* packed) {
    for (int64_t k = 0; k < K; ++k) {
      T* d = packed + k * kNR;
      for_each_segment(N, n, c0, nr, [&](int64_t img, int64_t col, int64_t off, int64_t len) {
        copy_row(d + off, B + img * bstride + k * N + col, len);
      });
      for (int64_t off = nr; off < kNR; ++off) d[off] = T(0);
    }
  }

  // C's columns [0, nr) (rows ldc apart) from the packed strip; full: nr == kNR. Only the stores of a
  // partial strip are masked.
  template <bool full>
  static void multiply(int64_t M, int64_t K, const T* Ap, const T* packed, T* C, int64_t ldc, int64_t nr) {
    for (int64_t m0 = 0; m0 < M; m0 += kMR) {
      R acc[kMR][kNV];
      for (int i = 0; i < kMR; ++i)
        for (int v = 0; v < kNV; ++v) acc[i][v] = V::set1(T(0));
      const T* a = Ap + m0 * K;  // this panel: K groups of kMR
      const T* b = packed;
      for (int64_t k = 0; k < K; ++k, a += kMR, b += kNR) {
        R bv[kNV];
        for (int v = 0; v < kNV; ++v) bv[v] = V::load(b + v * V::W);
        for (int i = 0; i < kMR; ++i) {
          const R ai = V::set1(a[i]);
          for (int v = 0; v < kNV; ++v) acc[i][v] = V::fmadd(ai, bv[v], acc[i][v]);
        }
      }
      const int rows = int(std::min<int64_t>(kMR, M - m0));
      for (int i = 0; i < rows; ++i) {
        T* c = C + (m0 + i) * ldc;
        for (int v = 0; v < kNV; ++v) {
          if (full) {
            V::store(c + v * V::W, acc[i][v]);
          } else if (nr > v * V::W) {  // a vector wholly past the strip's columns is not addressed
            V::store_tail(c + v * V::W, acc[i][v], nr - v * V::W);
          }
        }
      }
    }
  }
};

// Depthwise convolution (conv.h, DepthwiseGeom): plain loops over runs of valid output columns,
// compiler-vectorized per ISA (contiguous at column stride 1).
// Depthwise convolution of channels_last tensors, one filter per channel (M == 1): in (N, H, W, C),
// wt (KH * KW, C) (tap-major), out (N, OH, OW, C). Every loop runs along C, contiguous in all three, so
// the compiler vectorizes it whatever the plane size. The sums are those of the planar kernels: bias,
// then the taps in (kh, kw) order; the input gradient gathers, per input pixel, the taps that read it in
// (kh, kw) order; the weight gradient sums each output row in T, the rows of an image in double, then
// the images in double in order (deterministic for any thread count).
template <class T> struct DepthwiseNhwc {
  static bool parallel(int64_t tasks, const DepthwiseGeom& d) {
    return tasks > 1 && tasks * d.OW * d.C * d.KH * d.KW > kConvParallelGrain;
  }

  static void forward(const DepthwiseGeom& d, const T* in, const T* wt, const T* bias, T* out) {
    const int64_t C = d.C, tasks = d.N * d.OH;
#pragma omp parallel for schedule(static) if (parallel(tasks, d))
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / d.OH, oh = t % d.OH;
      const T* x = in + n * d.H * d.W * C;
      for (int64_t ow = 0; ow < d.OW; ++ow) {
        T* o = out + (t * d.OW + ow) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = bias ? bias[c] : T(0);
        for (int64_t kh = 0; kh < d.KH; ++kh) {
          const int64_t h = oh * d.SH - d.PH + kh * d.DH;
          if (h < 0 || h >= d.H) continue;
          for (int64_t kw = 0; kw < d.KW; ++kw) {
            const int64_t w = ow * d.SW - d.PW + kw * d.DW;
            if (w < 0 || w >= d.W) continue;
            const T* xv = x + (h * d.W + w) * C;
            const T* wv = wt + (kh * d.KW + kw) * C;
            for (int64_t c = 0; c < C; ++c) o[c] += xv[c] * wv[c];
          }
        }
      }
    }
  }

  static void input_grad(const DepthwiseGeom& d, const T* go, const T* wt, T* gi) {
    const int64_t C = d.C, tasks = d.N * d.H;
#pragma omp parallel for schedule(static) if (parallel(tasks, d))
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / d.H, h = t % d.H;
      const T* g = go + n * d.OH * d.OW * C;
      for (int64_t w = 0; w < d.W; ++w) {
        T* o = gi + (t * d.W + w) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = T(0);
        for (int64_t kh = 0; kh < d.KH; ++kh) {
          const int64_t hh = h + d.PH - kh * d.DH;
          if (hh < 0 || hh % d.SH != 0 || hh / d.SH >= d.OH) continue;
          for (int64_t kw = 0; kw < d.KW; ++kw) {
            const int64_t ww = w + d.PW - kw * d.DW;
            if (ww < 0 || ww % d.SW != 0 || ww / d.SW >= d.OW) continue;
            const T* gv = g + ((hh / d.SH) * d.OW + ww / d.SW) * C;
            const T* wv = wt + (kh * d.KW + kw) * C;
            for (int64_t c = 0; c < C; ++c) o[c] += gv[c] * wv[c];
          }
        }
      }
    }
  }

  // work: N * KH * KW * C doubles (one partial sum per image); gwt (KH * KW, C).
  static void weight_grad(const DepthwiseGeom& d, const T* in, const T* go, T* gwt, double* work) {
    const int64_t C = d.C, KK = d.KH * d.KW;
#pragma omp parallel if (parallel(d.N * d.OH, d))
    {
      std::vector<T> row(size_t(KK * C));
#pragma omp for schedule(static)
      for (int64_t n = 0; n < d.N; ++n) {
        double* acc = work + n * KK * C;
        for (int64_t i = 0; i < KK * C; ++i) acc[i] = 0.0;
        const T* x = in + n * d.H * d.W * C;
        for (int64_t oh = 0; oh < d.OH; ++oh) {
          for (int64_t i = 0; i < KK * C; ++i) row[i] = T(0);
          for (int64_t ow = 0; ow < d.OW; ++ow) {
            const T* gv = go + ((n * d.OH + oh) * d.OW + ow) * C;
            for (int64_t kh = 0; kh < d.KH; ++kh) {
              const int64_t h = oh * d.SH - d.PH + kh * d.DH;
              if (h < 0 || h >= d.H) continue;
              for (int64_t kw = 0; kw < d.KW; ++kw) {
                const int64_t w = ow * d.SW - d.PW + kw * d.DW;
                if (w < 0 || w >= d.W) continue;
                const T* xv = x + (h * d.W + w) * C;
                T* r = row.data() + (kh * d.KW + kw) * C;
                for (int64_t c = 0; c < C; ++c) r[c] += gv[c] * xv[c];
              }
            }
          }
          for (int64_t i = 0; i < KK * C; ++i) acc[i] += double(row[i]);
        }
      }
    }
    for (int64_t i = 0; i < KK * C; ++i) {
      double s = 0.0;
      for (int64_t n = 0; n < d.N; ++n) s += work[n * KK * C + i];
      gwt[i] = T(s);
    }
  }
};

template <class T> struct DepthwiseKernels {
  struct Tap {
    int64_t lo, hi, off;  // valid output columns [lo, hi]; input column = ow * SW + off
  };
  static std::vector<Tap> column_taps(const DepthwiseGeom& d) {
    std::vector<Tap> taps(d.KW);
    for (int64_t kw = 0; kw < d.KW; ++kw) {
      taps[kw].off = kw * d.DW - d.PW;
      conv_tap_range(taps[kw].off, d.SW, d.W, d.OW, taps[kw].lo, taps[kw].hi);
    }
    return taps;
  }
  static bool parallel(int64_t tasks, const DepthwiseGeom& d) {
    return tasks > 1 && tasks * d.OH * d.OW * d.KH * d.KW > kConvParallelGrain;
  }

  // Small stride-1 planes (outputs under 16 wide) go flat: the plane is copied into a zero-padded
  // scratch plane Wp wide, and each tap is one run over all OH * Wp positions of a Wp-wide output (the
  // columns past OW computed and dropped), instead of OH runs of at most 15 columns each (at 7x7 and
  // 4x4, loop overhead made the row form 4-6x slower than torch).
  static bool flat(const DepthwiseGeom& d) { return d.SH == 1 && d.SW == 1 && d.OW < 16; }
  struct Flat {
    int64_t Wp, Hp;  // scratch plane: rows Hp, row length Wp
    explicit Flat(const DepthwiseGeom& d)
        : Wp(std::max(d.PW + d.W, d.OW + (d.KW - 1) * d.DW)),
          Hp(std::max(d.PH + d.H, d.OH + (d.KH - 1) * d.DH) + 1) {}  // a row more: the last runs overhang
    int64_t offset(const DepthwiseGeom& d, int64_t kh, int64_t kw) const { return kh * d.DH * Wp + kw * d.DW; }
    void pad(const DepthwiseGeom& d, const T* x, T* xp) const {
      for (int64_t i = 0; i < Hp * Wp; ++i) xp[i] = T(0);
      for (int64_t h = 0; h < d.H; ++h)
        for (int64_t w = 0; w < d.W; ++w) xp[(h + d.PH) * Wp + d.PW + w] = x[h * d.W + w];
    }
    void spread(const DepthwiseGeom& d, const T* g, T* gf) const {  // (OH, OW) -> (OH, Wp), zeros past OW
      for (int64_t oh = 0; oh < d.OH; ++oh)
        for (int64_t ow = 0; ow < Wp; ++ow) gf[oh * Wp + ow] = ow < d.OW ? g[oh * d.OW + ow] : T(0);
    }
  };

  static void forward_flat(const DepthwiseGeom& d, const T* in, const T* w, const T* bias, T* out) {
    const int64_t OC = d.C * d.M, L = d.OH * d.OW, K = d.KH * d.KW, planes = d.N * OC;
    const Flat fl(d);
    const int64_t run = d.OH * fl.Wp;
#pragma omp parallel if (parallel(planes, d))
    {
      std::vector<T> xp(fl.Hp * fl.Wp), y(run);
      int64_t padded = -1;  // the input plane in xp: the M filters of a channel share it
#pragma omp for schedule(static)
      for (int64_t p = 0; p < planes; ++p) {
        const int64_t oc = p % OC, plane = p / OC * d.C + oc / d.M;
        if (plane != padded) fl.pad(d, in + plane * d.H * d.W, xp.data());
        padded = plane;
        const T* f = w + oc * K;
        const T b = bias != nullptr ? bias[oc] : T(0);
        for (int64_t i = 0; i < run; ++i) y[i] = b;
        for (int64_t kh = 0; kh < d.KH; ++kh)
          for (int64_t kw = 0; kw < d.KW; ++kw) {
            const T wv = f[kh * d.KW + kw];
            const T* xs = xp.data() + fl.offset(d, kh, kw);
            for (int64_t i = 0; i < run; ++i) y[i] += wv * xs[i];
          }
        for (int64_t oh = 0; oh < d.OH; ++oh)
          for (int64_t ow = 0; ow < d.OW; ++ow) out[p * L + oh * d.OW + ow] = y[oh * fl.Wp + ow];
      }
    }
  }

  static void input_grad_flat(const DepthwiseGeom& d, const T* grad_out, const T* w, T* grad_in) {
    const int64_t OC = d.C * d.M, L = d.OH * d.OW, K = d.KH * d.KW, planes = d.N * d.C;
    const Flat fl(d);
    const int64_t run = d.OH * fl.Wp;
#pragma omp parallel if (parallel(planes * d.M, d))
    {
      std::vector<T> gp(fl.Hp * fl.Wp), gf(run);
#pragma omp for schedule(static)
      for (int64_t p = 0; p < planes; ++p) {
        const int64_t n = p / d.C, c = p % d.C;
        for (int64_t i = 0; i < fl.Hp * fl.Wp; ++i) gp[i] = T(0);
        for (int64_t m = 0; m < d.M; ++m) {
          const int64_t oc = c * d.M + m;
          fl.spread(d, grad_out + (n * OC + oc) * L, gf.data());
          const T* f = w + oc * K;
          for (int64_t kh = 0; kh < d.KH; ++kh)
            for (int64_t kw = 0; kw < d.KW; ++kw) {
              const T wv = f[kh * d.KW + kw];
              T* gs = gp.data() + fl.offset(d, kh, kw);
              for (int64_t i = 0; i < run; ++i) gs[i] += wv * gf[i];
            }
        }
        T* gx = grad_in + p * d.H * d.W;
        for (int64_t h = 0; h < d.H; ++h)
          for (int64_t x = 0; x < d.W; ++x) gx[h * d.W + x] = gp[(h + d.PH) * fl.Wp + d.PW + x];
      }
    }
  }

  static void weight_grad_flat(const DepthwiseGeom& d, const T* in, const T* grad_out, T* grad_w) {
    const int64_t OC = d.C * d.M, L = d.OH * d.OW, K = d.KH * d.KW;
    const Flat fl(d);
    const int64_t run = d.OH * fl.Wp;
#pragma omp parallel if (parallel(OC * d.N, d))
    {
      std::vector<T> xp(fl.Hp * fl.Wp), gf(run);
      std::vector<double> acc(K);
#pragma omp for schedule(static)
      for (int64_t oc = 0; oc < OC; ++oc) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t n = 0; n < d.N; ++n) {
          fl.pad(d, in + (n * d.C + oc / d.M) * d.H * d.W, xp.data());
          fl.spread(d, grad_out + (n * OC + oc) * L, gf.data());
          for (int64_t kh = 0; kh < d.KH; ++kh)
            for (int64_t kw = 0; kw < d.KW; ++kw) {
              const T* xs = xp.data() + fl.offset(d, kh, kw);
              T s = 0;
#pragma omp simd reduction(+ : s)
              for (int64_t i = 0; i < run; ++i) s += gf[i] * xs[i];
              acc[kh * d.KW + kw] += double(s);
            }
        }
        for (int64_t k = 0; k < K; ++k) grad_w[oc * K + k] = T(acc[k]);
      }
    }
  }

  static void forward(const DepthwiseGeom& d, const T* in, const T* w, const T* bias, T* out) {
    if (flat(d)) return forward_flat(d, in, w, bias, out);
    const int64_t OC = d.C * d.M, L = d.OH * d.OW, K = d.KH * d.KW, planes = d.N * OC;
    const std::vector<Tap> taps = column_taps(d);
#pragma omp parallel for schedule(static) if (parallel(planes, d))
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t oc = p % OC;
      const T* x = in + (p / OC * d.C + oc / d.M) * d.H * d.W;
      const T* f = w + oc * K;
      const T b = bias != nullptr ? bias[oc] : T(0);
      for (int64_t oh = 0; oh < d.OH; ++oh) {
        T* y = out + p * L + oh * d.OW;
        for (int64_t ow = 0; ow < d.OW; ++ow) y[ow] = b;
        for (int64_t kh = 0; kh < d.KH; ++kh) {
          const int64_t ih = oh * d.SH - d.PH + kh * d.DH;
          if (ih < 0 || ih >= d.H) continue;
          const T* xr = x + ih * d.W;
          for (int64_t kw = 0; kw < d.KW; ++kw) {
            const Tap t = taps[kw];
            const T wv = f[kh * d.KW + kw];
            if (d.SW == 1) {
              for (int64_t ow = t.lo; ow <= t.hi; ++ow) y[ow] += wv * xr[ow + t.off];
            } else {
              for (int64_t ow = t.lo; ow <= t.hi; ++ow) y[ow] += wv * xr[ow * d.SW + t.off];
            }
          }
        }
      }
    }
  }

  // Whether n values are all finite (a sum of x - x is NaN exactly when one is not).
  static bool all_finite(const T* v, int64_t n) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += v[i] - v[i];
    return s == T(0);
  }

  // The flat backward forms also multiply the dropped columns: zero gradients by input values wrapped in
  // from the next row (weight gradient), zero gradients by the filters (input gradient). 0 * inf would
  // make a NaN torch does not, so those planes take the row form when an input value or a filter is not
  // finite.
  static void input_grad(const DepthwiseGeom& d, const T* grad_out, const T* w, T* grad_in) {
    if (flat(d) && all_finite(w, d.C * d.M * d.KH * d.KW)) return input_grad_flat(d, grad_out, w, grad_in);
    const int64_t OC = d.C * d.M, L = d.OH * d.OW, K = d.KH * d.KW, planes = d.N * d.C;
    const std::vector<Tap> taps = column_taps(d);
#pragma omp parallel for schedule(static) if (parallel(planes * d.M, d))
    for (int64_t p = 0; p < planes; ++p) {
      T* gx = grad_in + p * d.H * d.W;
      for (int64_t i = 0; i < d.H * d.W; ++i) gx[i] = T(0);
      const int64_t n = p / d.C, c = p % d.C;
      for (int64_t m = 0; m < d.M; ++m) {
        const int64_t oc = c * d.M + m;
        const T* g = grad_out + (n * OC + oc) * L;
        const T* f = w + oc * K;
        for (int64_t oh = 0; oh < d.OH; ++oh) {
          const T* gr = g + oh * d.OW;
          for (int64_t kh = 0; kh < d.KH; ++kh) {
            const int64_t ih = oh * d.SH - d.PH + kh * d.DH;
            if (ih < 0 || ih >= d.H) continue;
            T* xr = gx + ih * d.W;
            for (int64_t kw = 0; kw < d.KW; ++kw) {
              const Tap t = taps[kw];
              const T wv = f[kh * d.KW + kw];
              if (d.SW == 1) {
                for (int64_t ow = t.lo; ow <= t.hi; ++ow) xr[ow + t.off] += wv * gr[ow];
              } else {
                for (int64_t ow = t.lo; ow <= t.hi; ++ow) xr[ow * d.SW + t.off] += wv * gr[ow];
              }
            }
          }
        }
      }
    }
  }

  static void weight_grad(const DepthwiseGeom& d, const T* in, const T* grad_out, T* grad_w) {
    if (flat(d) && all_finite(in, d.N * d.C * d.H * d.W)) return weight_grad_flat(d, in, grad_out, grad_w);
    const int64_t OC = d.C * d.M, L = d.OH * d.OW, K = d.KH * d.KW;
    const std::vector<Tap> taps = column_taps(d);
#pragma omp parallel for schedule(static) if (parallel(OC * d.N, d))
    for (int64_t oc = 0; oc < OC; ++oc) {
      std::vector<double> acc(K, 0.0);
      for (int64_t n = 0; n < d.N; ++n) {
        const T* x = in + (n * d.C + oc / d.M) * d.H * d.W;
        const T* g = grad_out + (n * OC + oc) * L;
        for (int64_t oh = 0; oh < d.OH; ++oh) {
          const T* gr = g + oh * d.OW;
          for (int64_t kh = 0; kh < d.KH; ++kh) {
            const int64_t ih = oh * d.SH - d.PH + kh * d.DH;
            if (ih < 0 || ih >= d.H) continue;
            const T* xr = x + ih * d.W;
            for (int64_t kw = 0; kw < d.KW; ++kw) {
              const Tap t = taps[kw];
              T s = 0;
              if (d.SW == 1) {
#pragma omp simd reduction(+ : s)
                for (int64_t ow = t.lo; ow <= t.hi; ++ow) s += gr[ow] * xr[ow + t.off];
              } else {
#pragma omp simd reduction(+ : s)
                for (int64_t ow = t.lo; ow <= t.hi; ++ow) s += gr[ow] * xr[ow * d.SW + t.off];
              }
              acc[kh * d.KW + kw] += double(s);
            }
          }
        }
      }
      for (int64_t k = 0; k < K; ++k) grad_w[oc * K + k] = T(acc[k]);
    }
  }
};

}  // namespace
}  // namespace dlk::cpu

#include "cpu/winograd_impl.h"
#include "cpu/conv_direct_impl.h"

#define DLK_CONV_DEFINE(SUFFIX, NS, T)                                                                      \
  void direct_conv_forward_##SUFFIX(const PairConvGeom& g, const T* xp, const T* w, Strides4 ws, bool flip,    \
                                    const T* bias, T* out, Strides4 os) {                                  \
    DirectConv<NS::Vec<T>>::forward(g, xp, w, ws, flip, bias, out, os);                                   \
  }                                                                                                       \
  void direct_conv_weight_grad_##SUFFIX(const PairConvGeom& g, const T* xp, const T* gp, T* acc) {        \
    DirectConv<NS::Vec<T>>::weight_grad(g, xp, gp, acc);                                                  \
  }                                                                                                       \
  int64_t direct_conv_block_##SUFFIX(const T*) { return DirectConv<NS::Vec<T>>::kBlock; }                \
  bool conv_winograd_##SUFFIX(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f, const T* bias, \
                              T* out, T* work, int64_t threads) {                                         \
    return Winograd<NS::Vec<T>>::run(g, in, w, f, bias, out, work, threads);                              \
  }                                                                                                       \
  bool conv_winograd_nhwc_##SUFFIX(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f,  \
                                   const T* bias, T* out, T* work, int64_t threads) {                     \
    return Winograd<NS::Vec<T>>::run_nhwc(g, in, w, f, bias, out, work, threads);                         \
  }                                                                                                       \
  bool conv_winograd_weight_grad_##SUFFIX(const WinogradGeom& g, const T* in, const T* gy, bool nhwc, T* gw,  \
                                          const WinogradFilters& f, T* work, int64_t threads,             \
                                          int64_t images) {                                               \
    return Winograd<NS::Vec<T>>::weight_grad(g, in, gy, nhwc, gw, f, work, threads, images);              \
  }                                                                                                       \
  void im2col_##SUFFIX(const Im2colGeom& g, const T* in, T* col) { ConvKernels<NS::Vec<T>>::im2col(g, in, col); } \
  void col2im_##SUFFIX(const Im2colGeom& g, const T* col, T* out) { ConvKernels<NS::Vec<T>>::col2im(g, col, out); } \
  void im2col_nhwc_##SUFFIX(const Im2colGeom& g, const T* in, T* col) {                                  \
    ConvKernels<NS::Vec<T>>::im2col_nhwc(g, in, col);                                                     \
  }                                                                                                       \
  void col2im_nhwc_##SUFFIX(const Im2colGeom& g, const T* col, T* out) {                                 \
    ConvKernels<NS::Vec<T>>::col2im_nhwc(g, col, out);                                                    \
  }                                                                                                       \
  void conv_direct_forward_##SUFFIX(const DirectGeom& d, const T* in, const T* w, const T* bias, T* out) {   \
    ConvKernels<NS::Vec<T>>::direct_forward(d, in, w, bias, out);                                         \
  }                                                                                                       \
  void conv_depthwise_forward_##SUFFIX(const DepthwiseGeom& d, const T* in, const T* w, const T* bias, T* out) { \
    DepthwiseKernels<T>::forward(d, in, w, bias, out);                                                    \
  }                                                                                                       \
  void conv_depthwise_input_grad_##SUFFIX(const DepthwiseGeom& d, const T* go, const T* w, T* gi) {       \
    DepthwiseKernels<T>::input_grad(d, go, w, gi);                                                        \
  }                                                                                                       \
  void conv_depthwise_weight_grad_##SUFFIX(const DepthwiseGeom& d, const T* in, const T* go, T* gw) {     \
    DepthwiseKernels<T>::weight_grad(d, in, go, gw);                                                      \
  }                                                                                                       \
  void conv_depthwise_nhwc_forward_##SUFFIX(const DepthwiseGeom& d, const T* in, const T* wt, const T* bias, \
                                             T* out) {                                                    \
    DepthwiseNhwc<T>::forward(d, in, wt, bias, out);                                                      \
  }                                                                                                       \
  void conv_depthwise_nhwc_input_grad_##SUFFIX(const DepthwiseGeom& d, const T* go, const T* wt, T* gi) { \
    DepthwiseNhwc<T>::input_grad(d, go, wt, gi);                                                          \
  }                                                                                                       \
  void conv_depthwise_nhwc_weight_grad_##SUFFIX(const DepthwiseGeom& d, const T* in, const T* go, T* gwt, \
                                                double* work) {                                           \
    DepthwiseNhwc<T>::weight_grad(d, in, go, gwt, work);                                                  \
  }                                                                                                       \
  void conv_rows_to_images_##SUFFIX(int64_t B, int64_t OC, int64_t L, const T* rows, const T* bias, T* out) { \
    ConvKernels<NS::Vec<T>>::rows_to_images(B, OC, L, rows, bias, out);                                            \
  }                                                                                                       \
  void conv_images_to_rows_##SUFFIX(int64_t B, int64_t OC, int64_t L, const T* images, T* rows) {         \
    ConvKernels<NS::Vec<T>>::images_to_rows(B, OC, L, images, rows);                                               \
  }                                                                                                       \
  void channel_sum_##SUFFIX(int64_t N, int64_t C, int64_t L, const T* in, T* out) {                       \
    ConvKernels<NS::Vec<T>>::channel_sum(N, C, L, in, out);                                                        \
  }                                                                                                       \
  void conv_gemm_wide_##SUFFIX(int64_t M, int64_t K, int64_t N, const T* A, int64_t sam, int64_t sak,     \
                               const T* B, T* C, int64_t batch, int64_t bstride, int64_t cstride) {      \
    TileGemm<NS::Vec<T>>::run(M, K, N, A, sam, sak, B, C, batch, bstride, cstride);                      \
  }                                                                                                       \
  void conv_gemm_dots_##SUFFIX(int64_t M, int64_t K, int64_t N, const T* A, const T* B, T* C, double* w) { \
    ConvKernels<NS::Vec<T>>::gemm_dots(M, K, N, A, B, C, w);                                                       \
  }
