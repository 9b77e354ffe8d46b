// Batch-normalization loops, written once; included by batch_norm.cpp (the scalar reference path,
// baseline ISA) and by batch_norm_avx2.cpp / batch_norm_avx512.cpp after their target pragma, where the
// compiler vectorizes the same loops. Internal linkage, so the ISA copies never meet at link time.
//
// Planar layout (NCHW): a task is a run of whole (n, c) planes; the reductions keep eight lanes of
// partial sums (vectorizable without reassociating a single accumulator). Channels-last layout (and
// (N, C) input): a task is a block of rows, each row all C channels, and the loops run across channels.
#pragma once
// Standard headers come before the ISA pragma in the including file.
#include <algorithm>
#include <cstdint>

#include "cpu/batch_norm.h"

namespace dlk::cpu {
namespace {

constexpr int64_t kBnChunk = 1 << 14;  // values per reduction task: fixed, so results never depend on threads

struct BnSplit {
  int64_t blocks, per_block;  // planar: planes of one channel per task; channels-last: rows per task
};

inline BnSplit bn_split(const BatchNormGeom& g) {
  if (!g.channels_last) {
    const int64_t want = std::max<int64_t>(1, std::min<int64_t>(g.N, (g.N * g.L + kBnChunk - 1) / kBnChunk));
    const int64_t per = (g.N + want - 1) / want;
    return {std::max<int64_t>(1, (g.N + per - 1) / per), per};
  }
  const int64_t rows = g.N * g.L;
  const int64_t per = std::max<int64_t>(1, kBnChunk / std::max<int64_t>(g.C, 1));
  return {std::max<int64_t>(1, (rows + per - 1) / per), per};
}

template <class T> struct BnKernels {
  static void stats(const BatchNormGeom& g, const T* x, double* mean, double* var, double* work) {
    const BnSplit sp = bn_split(g);
    const int64_t C = g.C, L = g.L, rows = g.N * g.L;
    // The shift: each channel's first value (held in mean[] until the end).
    for (int64_t c = 0; c < C; ++c) mean[c] = double(g.channels_last ? x[c] : x[c * L]);
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < C * sp.blocks; ++t) {
        const int64_t c = t / sp.blocks, blk = t % sp.blocks;
        const double s = mean[c];
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int64_t n1 = std::min(g.N, (blk + 1) * sp.per_block);
        for (int64_t n = blk * sp.per_block; n < n1; ++n) {
          const T* p = x + (n * C + c) * L;
          int64_t l = 0;
          for (; l + 8 <= L; l += 8)
            for (int j = 0; j < 8; ++j) {
              const double d = double(p[l + j]) - s;
              a[j] += d;
              b[j] += d * d;
            }
          for (; l < L; ++l) {
            const double d = double(p[l]) - s;
            a[0] += d;
            b[0] += d * d;
          }
        }
        work[2 * t] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        work[2 * t + 1] = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
      }
      finish_stats(g, sp.blocks, work, [](int64_t c, int64_t blk, int64_t blocks) { return 2 * (c * blocks + blk); },
                   mean, var);
      return;
    }
#pragma omp parallel for schedule(static) if (rows * C > kBnChunk)
    for (int64_t blk = 0; blk < sp.blocks; ++blk) {
      double* a = work + 2 * blk * C;
      double* b = a + C;
      std::fill(a, a + 2 * C, 0.0);
      const int64_t m1 = std::min(rows, (blk + 1) * sp.per_block);
      for (int64_t m = blk * sp.per_block; m < m1; ++m) {
        const T* p = x + m * C;
        for (int64_t c = 0; c < C; ++c) {
          const double d = double(p[c]) - mean[c];
          a[c] += d;
          b[c] += d * d;
        }
      }
    }
    finish_stats(g, sp.blocks, work, [C](int64_t c, int64_t blk, int64_t) { return 2 * blk * C + c; }, mean, var, C);
  }

  // Combines the partial sums of each channel in block order; stride_b: distance of the b sums from a's.
  template <class Index>
  static void finish_stats(const BatchNormGeom& g, int64_t blocks, const double* work, Index index, double* mean,
                           double* var, int64_t stride_b = 1) {
    const double inv_count = 1.0 / double(g.count());
    for (int64_t c = 0; c < g.C; ++c) {
      double a = 0, b = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t i = index(c, blk, blocks);
        a += work[i];
        b += work[i + stride_b];
      }
      const double m = a * inv_count;
      var[c] = std::max(0.0, b * inv_count - m * m);
      mean[c] += m;
    }
  }

  static void apply(const BatchNormGeom& g, const T* x, const double* mean, const double* scale, const double* beta,
                    const T* residual, bool relu, T* y) {
    const int64_t C = g.C, L = g.L;
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < g.N * C; ++t) {
        const int64_t c = t % C;
        const double m = mean[c], s = scale[c], b = beta[c];
        const T* p = x + t * L;
        T* q = y + t * L;
        const T* r = residual ? residual + t * L : nullptr;
        // Four loop versions so that each inner loop is branch-free.
        if (r && relu) {
          for (int64_t l = 0; l < L; ++l) q[l] = T(std::max((double(p[l]) - m) * s + b + double(r[l]), 0.0));
        } else if (r) {
          for (int64_t l = 0; l < L; ++l) q[l] = T((double(p[l]) - m) * s + b + double(r[l]));
        } else if (relu) {
          for (int64_t l = 0; l < L; ++l) q[l] = T(std::max((double(p[l]) - m) * s + b, 0.0));
        } else {
          for (int64_t l = 0; l < L; ++l) q[l] = T((double(p[l]) - m) * s + b);
        }
      }
      return;
    }
    const int64_t rows = g.N * L;
#pragma omp parallel for schedule(static) if (rows * C > kBnChunk)
    for (int64_t i = 0; i < rows; ++i) {
      const T* p = x + i * C;
      T* q = y + i * C;
      const T* r = residual ? residual + i * C : nullptr;
      if (r && relu) {
        for (int64_t c = 0; c < C; ++c) q[c] = T(std::max((double(p[c]) - mean[c]) * scale[c] + beta[c] + double(r[c]), 0.0));
      } else if (r) {
        for (int64_t c = 0; c < C; ++c) q[c] = T((double(p[c]) - mean[c]) * scale[c] + beta[c] + double(r[c]));
      } else if (relu) {
        for (int64_t c = 0; c < C; ++c) q[c] = T(std::max((double(p[c]) - mean[c]) * scale[c] + beta[c], 0.0));
      } else {
        for (int64_t c = 0; c < C; ++c) q[c] = T((double(p[c]) - mean[c]) * scale[c] + beta[c]);
      }
    }
  }

  // The ReLU's gradient mask comes from the saved output: y > 0 exactly where the pre-activation was.
  static double dz_of(T dy, T y, bool relu) { return relu && !(y > T(0)) ? 0.0 : double(dy); }

  static void backward_reduce(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,
                              const double* mean, double* sum_dz, double* sum_dz_xmu, double* work) {
    const BnSplit sp = bn_split(g);
    const int64_t C = g.C, L = g.L, rows = g.N * g.L;
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < C * sp.blocks; ++t) {
        const int64_t c = t / sp.blocks, blk = t % sp.blocks;
        const double m = mean[c];
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int64_t n1 = std::min(g.N, (blk + 1) * sp.per_block);
        for (int64_t n = blk * sp.per_block; n < n1; ++n) {
          const int64_t o = (n * C + c) * L;
          const T *pd = dy + o, *px = x + o, *py = relu ? y + o : dy + o;
          int64_t l = 0;
          for (; l + 8 <= L; l += 8)
            for (int j = 0; j < 8; ++j) {
              const double dz = dz_of(pd[l + j], py[l + j], relu);
              a[j] += dz;
              b[j] += dz * (double(px[l + j]) - m);
            }
          for (; l < L; ++l) {
            const double dz = dz_of(pd[l], py[l], relu);
            a[0] += dz;
            b[0] += dz * (double(px[l]) - m);
          }
        }
        work[2 * t] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        work[2 * t + 1] = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
      }
      for (int64_t c = 0; c < C; ++c) {
        double a = 0, b = 0;
        for (int64_t blk = 0; blk < sp.blocks; ++blk) {
          a += work[2 * (c * sp.blocks + blk)];
          b += work[2 * (c * sp.blocks + blk) + 1];
        }
        sum_dz[c] = a;
        sum_dz_xmu[c] = b;
      }
      return;
    }
#pragma omp parallel for schedule(static) if (rows * C > kBnChunk)
    for (int64_t blk = 0; blk < sp.blocks; ++blk) {
      double* a = work + 2 * blk * C;
      double* b = a + C;
      std::fill(a, a + 2 * C, 0.0);
      const int64_t m1 = std::min(rows, (blk + 1) * sp.per_block);
      for (int64_t i = blk * sp.per_block; i < m1; ++i) {
        const T *pd = dy + i * C, *px = x + i * C, *py = relu ? y + i * C : dy + i * C;
        for (int64_t c = 0; c < C; ++c) {
          const double dz = dz_of(pd[c], py[c], relu);
          a[c] += dz;
          b[c] += dz * (double(px[c]) - mean[c]);
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int64_t blk = 0; blk < sp.blocks; ++blk) {
        a += work[2 * blk * C + c];
        b += work[2 * blk * C + C + c];
      }
      sum_dz[c] = a;
      sum_dz_xmu[c] = b;
    }
  }

  static void backward_apply(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,
                             const double* mean, const double* k_dz, const double* k_x, const double* k_1,
                             T* grad_input, T* grad_residual) {
    const int64_t C = g.C, L = g.L;
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < g.N * C; ++t) {
        const int64_t c = t % C, o = t * L;
        const double m = mean[c], a = k_dz[c], b = k_x[c], k = k_1[c];
        const T *pd = dy + o, *px = x + o, *py = relu ? y + o : dy + o;
        if (grad_input) {
          T* gi = grad_input + o;
          for (int64_t l = 0; l < L; ++l) gi[l] = T(dz_of(pd[l], py[l], relu) * a + (double(px[l]) - m) * b + k);
        }
        if (grad_residual) {
          T* gr = grad_residual + o;
          for (int64_t l = 0; l < L; ++l) gr[l] = T(dz_of(pd[l], py[l], relu));
        }
      }
      return;
    }
    const int64_t rows = g.N * L;
#pragma omp parallel for schedule(static) if (rows * C > kBnChunk)
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t o = i * C;
      const T *pd = dy + o, *px = x + o, *py = relu ? y + o : dy + o;
      if (grad_input) {
        T* gi = grad_input + o;
        for (int64_t c = 0; c < C; ++c)
          gi[c] = T(dz_of(pd[c], py[c], relu) * k_dz[c] + (double(px[c]) - mean[c]) * k_x[c] + k_1[c]);
      }
      if (grad_residual) {
        T* gr = grad_residual + o;
        for (int64_t c = 0; c < C; ++c) gr[c] = T(dz_of(pd[c], py[c], relu));
      }
    }
  }
};

}  // namespace
}  // namespace dlk::cpu

#define DLK_BN_DEFINE(SUFFIX, T)                                                                                   \
  void batch_norm_stats_##SUFFIX(const BatchNormGeom& g, const T* x, double* mean, double* var, double* work) {    \
    BnKernels<T>::stats(g, x, mean, var, work);                                                                    \
  }                                                                                                                \
  void batch_norm_apply_##SUFFIX(const BatchNormGeom& g, const T* x, const double* mean, const double* scale,      \
                                 const double* beta, const T* residual, bool relu, T* y) {                         \
    BnKernels<T>::apply(g, x, mean, scale, beta, residual, relu, y);                                               \
  }                                                                                                                \
  void batch_norm_backward_reduce_##SUFFIX(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu, \
                                           const double* mean, double* sum_dz, double* sum_dz_xmu, double* work) { \
    BnKernels<T>::backward_reduce(g, dy, x, y, relu, mean, sum_dz, sum_dz_xmu, work);                              \
  }                                                                                                                \
  void batch_norm_backward_apply_##SUFFIX(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,  \
                                          const double* mean, const double* k_dz, const double* k_x,               \
                                          const double* k_1, T* grad_input, T* grad_residual) {                    \
    BnKernels<T>::backward_apply(g, dy, x, y, relu, mean, k_dz, k_x, k_1, grad_input, grad_residual);              \
  }
