// Pooling loops, written once; included by pooling.cpp (the scalar reference path, baseline ISA) and
// by pooling_avx2.cpp / pooling_avx512.cpp after their target pragma, where the compiler vectorizes the
// same loops for that ISA. Internal linkage, so the ISA copies never meet at link time.
// Semantics are torch's: max keeps the first maximum and lets NaN win (the last NaN's index); avg
// divides by the window clipped to the padded input (count_include_pad) or to the input, or by
// divisor_override; a window that covers no input gives 0.
#pragma once
// Standard headers come before the ISA pragma in the including file.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/pooling.h"

namespace dlk::cpu {
namespace {

constexpr int64_t kPoolParallelGrain = 1 << 14;

template <class T> struct PoolKernels {
  static int64_t first_tap(int64_t start, int64_t d) {
    while (start < 0) start += d;  // the first dilated tap inside the input
    return start;
  }

  // Valid outputs [lo, hi] of a row for the tap at column offset off (column = ow * S + off).
  static void tap_range(int64_t off, int64_t S, int64_t W, int64_t OW, int64_t& lo, int64_t& hi) {
    lo = off >= 0 ? 0 : (-off + S - 1) / S;
    hi = W - 1 - off >= 0 ? std::min(OW - 1, (W - 1 - off) / S) : -1;
  }

  // Calls f(h, off, lo, hi) for each tap of output row oh in torch's order (input row h outer, kernel
  // column inner), with the tap's column offset (column = ow * SW + off) and the outputs [lo, hi] of
  // the row whose window holds that column. Average pooling passes dilation 1.
  template <class F> static void for_each_tap(const Pool2dGeom& g, int64_t oh, int64_t DH, int64_t DW, F&& f) {
    const int64_t h_lo = oh * g.SH - g.PH;
    const int64_t h_hi = std::min(h_lo + (g.KH - 1) * DH + 1, g.H);
    for (int64_t h = first_tap(h_lo, DH); h < h_hi; h += DH)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t off = kw * DW - g.PW;
        int64_t lo, hi;
        tap_range(off, g.SW, g.W, g.OW, lo, hi);
        f(h, off, lo, hi);
      }
  }

  // A whole output row at a time: for each tap (h, kw) in torch's order (h outer, w inner), update
  // every output of the row that sees it. The loop over outputs has no dependences, so it vectorizes
  // (a strided load, a compare, two blends); visiting windows one by one did not, and cost 35 ms of
  // the 3x3/s2 case's 39 ms.
  static void max_forward(const Pool2dGeom& g, const T* in, T* out, int64_t* indices) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
    // 32-bit positions in the hot loop keep index and value lanes the same width for the vectorizer;
    // planes of 2^31 elements or more take the 64-bit loop.
    if (plane_in >= (int64_t(1) << 31)) return max_forward_rows<int64_t>(g, in, out, indices);
    max_forward_rows<int32_t>(g, in, out, indices);
  }

  template <class I> static void max_forward_rows(const Pool2dGeom& g, const T* in, T* out, int64_t* indices) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
    {
      std::vector<I> row_idx(g.OW);  // per-thread scratch, reused for every row
      I* ri = row_idx.data();
#pragma omp for schedule(static)
      for (int64_t pl = 0; pl < g.planes(); ++pl) {
        const T* x = in + pl * plane_in;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          T* y = out + pl * plane_out + oh * g.OW;
          int64_t* idx = indices + pl * plane_out + oh * g.OW;
          const int64_t h0 = first_tap(oh * g.SH - g.PH, g.DH);
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            y[ow] = -std::numeric_limits<T>::infinity();
            ri[ow] = I(h0 * g.W + first_tap(ow * g.SW - g.PW, g.DW));  // torch's index for a window of -inf
          }
          for_each_tap(g, oh, g.DH, g.DW, [&](int64_t h, int64_t off, int64_t lo, int64_t hi) {
            const T* xr = x + h * g.W + off;
            const I base = I(h * g.W + off), step = I(g.SW);
            for (int64_t ow = lo; ow <= hi; ++ow) {
              const T v = xr[ow * g.SW];
              const T best = y[ow];
              const bool take = (v > best) | (v != v);  // first maximum wins, NaN always wins
              y[ow] = take ? v : best;
              ri[ow] = take ? I(base + I(ow) * step) : ri[ow];
            }
          });
          for (int64_t ow = 0; ow < g.OW; ++ow) idx[ow] = ri[ow];
        }
      }
    }
  }

  static void max_backward(const Pool2dGeom& g, const T* grad_out, const int64_t* indices, T* grad_in) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel for schedule(static) if (g.planes() * (plane_in + plane_out) > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl) {
      T* gi = grad_in + pl * plane_in;
      const T* go = grad_out + pl * plane_out;
      const int64_t* idx = indices + pl * plane_out;
      for (int64_t i = 0; i < plane_in; ++i) gi[i] = T(0);
      for (int64_t o = 0; o < plane_out; ++o) {
        const int64_t i = idx[o];
        if (i >= 0 && i < plane_in) gi[i] += go[o];  // an empty window's index may point nowhere
      }
    }
  }

  // Window of output (oh, ow) clipped to the input, and the divisor torch uses for it.
  static T avg_window(const Pool2dGeom& g, const AvgPoolOptions& o, int64_t oh, int64_t ow, int64_t& h0, int64_t& h1,
                      int64_t& w0, int64_t& w1) {
    h0 = oh * g.SH - g.PH;
    w0 = ow * g.SW - g.PW;
    h1 = std::min(h0 + g.KH, g.H + g.PH);
    w1 = std::min(w0 + g.KW, g.W + g.PW);
    const int64_t padded = (h1 - h0) * (w1 - w0);
    h0 = std::max<int64_t>(h0, 0);
    w0 = std::max<int64_t>(w0, 0);
    h1 = std::min(h1, g.H);
    w1 = std::min(w1, g.W);
    if (o.divisor_override) return T(o.divisor_override);
    return T(o.count_include_pad ? padded : (h1 - h0) * (w1 - w0));
  }

  // Row at a time, as max_forward: sums in torch's tap order, then one division per output.
  static void avg_forward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel for schedule(static) if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl) {
      const T* x = in + pl * plane_in;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        T* y = out + pl * plane_out + oh * g.OW;
        for (int64_t ow = 0; ow < g.OW; ++ow) y[ow] = T(0);
        for_each_tap(g, oh, 1, 1, [&](int64_t h, int64_t off, int64_t lo, int64_t hi) {
          const T* xr = x + h * g.W + off;
          for (int64_t ow = lo; ow <= hi; ++ow) y[ow] += xr[ow * g.SW];
        });
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          int64_t h0, h1, w0, w1;
          const T div = avg_window(g, o, oh, ow, h0, h1, w0, w1);
          y[ow] = (h0 >= h1 || w0 >= w1) ? T(0) : y[ow] / div;
        }
      }
    }
  }

  // Row at a time, as the forward: each output row's shares (gradient / divisor) are spread tap by
  // tap; for one tap the outputs of a row write distinct inputs, so the loop over them vectorizes.
  static void avg_backward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* grad_out, T* grad_in) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
    {
      std::vector<T> share_row(g.OW);  // per-thread scratch
      T* share = share_row.data();
#pragma omp for schedule(static)
      for (int64_t pl = 0; pl < g.planes(); ++pl) {
        T* gi = grad_in + pl * plane_in;
        const T* go = grad_out + pl * plane_out;
        for (int64_t i = 0; i < plane_in; ++i) gi[i] = T(0);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            int64_t h0, h1, w0, w1;
            share[ow] = go[oh * g.OW + ow] / avg_window(g, o, oh, ow, h0, h1, w0, w1);
          }
          for_each_tap(g, oh, 1, 1, [&](int64_t h, int64_t off, int64_t lo, int64_t hi) {
            T* gr = gi + h * g.W + off;
            for (int64_t ow = lo; ow <= hi; ++ow) gr[ow * g.SW] += share[ow];
          });
        }
      }
    }
  }

  static void adaptive_forward(const Pool2dGeom& g, const T* in, T* out) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
    if (plane_out == 1) {  // global pooling (ResNet heads): one plain sum per plane
#pragma omp parallel for schedule(static) if (g.planes() * plane_in > kPoolParallelGrain)
      for (int64_t pl = 0; pl < g.planes(); ++pl) {
        const T* x = in + pl * plane_in;
        T s = 0;
        for (int64_t i = 0; i < plane_in; ++i) s += x[i];
        out[pl] = s / T(plane_in);
      }
      return;
    }
#pragma omp parallel for schedule(static) if (g.planes() * plane_in > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl) {
      const T* x = in + pl * plane_in;
      T* y = out + pl * plane_out;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
          T s = 0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) s += x[h * g.W + w];
          y[oh * g.OW + ow] = s / T((h1 - h0) * (w1 - w0));
        }
      }
    }
  }

  static void adaptive_backward(const Pool2dGeom& g, const T* grad_out, T* grad_in) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
    if (plane_out == 1) {
#pragma omp parallel for schedule(static) if (g.planes() * plane_in > kPoolParallelGrain)
      for (int64_t pl = 0; pl < g.planes(); ++pl) {
        const T share = grad_out[pl] / T(plane_in);
        for (int64_t i = 0; i < plane_in; ++i) grad_in[pl * plane_in + i] = share;
      }
      return;
    }
#pragma omp parallel for schedule(static) if (g.planes() * plane_in > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl) {
      T* gi = grad_in + pl * plane_in;
      const T* go = grad_out + pl * plane_out;
      for (int64_t i = 0; i < plane_in; ++i) gi[i] = T(0);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
          const T share = go[oh * g.OW + ow] / T((h1 - h0) * (w1 - w0));
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) gi[h * g.W + w] += share;
        }
      }
    }
  }
};

}  // namespace
}  // namespace dlk::cpu

#define DLK_POOL_DEFINE(SUFFIX, T)                                                                             \
  void max_pool2d_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out, int64_t* idx) {                   \
    PoolKernels<T>::max_forward(g, in, out, idx);                                                              \
  }                                                                                                            \
  void max_pool2d_backward_##SUFFIX(const Pool2dGeom& g, const T* go, const int64_t* idx, T* gi) {             \
    PoolKernels<T>::max_backward(g, go, idx, gi);                                                              \
  }                                                                                                            \
  void avg_pool2d_forward_##SUFFIX(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {        \
    PoolKernels<T>::avg_forward(g, o, in, out);                                                                \
  }                                                                                                            \
  void avg_pool2d_backward_##SUFFIX(const Pool2dGeom& g, const AvgPoolOptions& o, const T* go, T* gi) {        \
    PoolKernels<T>::avg_backward(g, o, go, gi);                                                                \
  }                                                                                                            \
  void adaptive_avg_pool2d_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out) {                        \
    PoolKernels<T>::adaptive_forward(g, in, out);                                                              \
  }                                                                                                            \
  void adaptive_avg_pool2d_backward_##SUFFIX(const Pool2dGeom& g, const T* go, T* gi) {                        \
    PoolKernels<T>::adaptive_backward(g, go, gi);                                                              \
  }
