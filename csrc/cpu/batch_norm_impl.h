// Batch-normalization loops, written once; included by batch_norm.cpp (the scalar reference path,
// baseline ISA) and by batch_norm_avx2.cpp / batch_norm_avx512.cpp after their target pragma, where the
// compiler vectorizes the same loops. Internal linkage, so the ISA copies never meet at link time.
//
// Planar layout (NCHW): a task is a run of whole (n, c) planes; the reductions run in vector lanes
// (omp simd reduction in double, or for float32 the WideSums runs over the ISA's Vec<float>: a fixed order
// for a given ISA, independent of the thread count). Channels-last layout (and (N, C) input): a task is a
// block of rows, each row all C channels, and the loops run across channels (in double).
#pragma once
// No fused multiply-add contraction in these loops: every elementwise result is then the same bits on
// every ISA path and in every loop that computes it (vector body or scalar tail), which the ReLU mask
// recomputation below relies on (train_backward recomputes the forward's pre-activation from x).
#pragma GCC optimize("fp-contract=off")
// Standard headers come before the ISA pragma in the including file.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

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

// Sums of float terms for the float32 training paths: float lanes over blocks of kWideBlock vectors (two
// accumulators of each sum, so each holds at most kWideBlock / 2 terms a lane), each block then widened
// into double lanes. The long sum over a channel is in double, the float rounding is that of an 8-term
// sum, and the work per value is a few float operations instead of a conversion to double and double
// arithmetic per value. On the AVX2 host the double statistics ran at 20 GB/s where torch's plain sum of
// the same tensor ran at 58; in-process A/B of the fused passes at 16x64x56x56: forward 5-12% faster,
// backward 7-19% (the rest of their time is the elementwise pass and memory).
constexpr int64_t kWideBlock = 16;

template <class VF> struct WideSums {
  using R = typename VF::R;
  using RD = typename VF::RD;
  RD a_lo, a_hi, b_lo, b_hi;
  WideSums() : a_lo(VF::zero_wide()), a_hi(a_lo), b_lo(a_lo), b_hi(a_lo) {}

  // step(l, n, a, b) adds the terms of the values at l.. into the float accumulators a and b: n == W
  // values, or fewer at the run's end, where the lanes from n on must add zero terms. The blocks and
  // the order of every addition depend on L only.
  template <class Step> void run(int64_t L, Step step) {
    constexpr int64_t W = VF::W;
    for (int64_t l = 0; l < L;) {
      R a0 = VF::set1(0.0f), a1 = a0, b0 = a0, b1 = a0;
      const int64_t end = std::min(L, l + kWideBlock * W);
      for (; l + 2 * W <= end; l += 2 * W) {
        step(l, W, a0, b0);
        step(l + W, W, a1, b1);
      }
      for (; l < end; l += W) step(l, std::min<int64_t>(W, end - l), a0, b0);
      VF::add_widened(VF::add(a0, a1), a_lo, a_hi);
      VF::add_widened(VF::add(b0, b1), b_lo, b_hi);
    }
  }
  double a() const { return VF::reduce_wide(a_lo, a_hi); }
  double b() const { return VF::reduce_wide(b_lo, b_hi); }
};

// The W values at p, or the first n of them with the rest `fill` (n < W at a run's end only).
template <class VF> typename VF::R load_n(const float* p, int64_t n, float fill) {
  return n >= VF::W ? VF::load(p) : VF::load_tail(p, n, fill);
}

template <class T, class VF> struct BnKernels {
  // ReLU as torch.relu: 0 where v < 0, v elsewhere (NaN and -0.0 pass, -inf gives 0), branch-free: the
  // comparison becomes an all-ones or all-zero mask on v's bits. GCC turned both std::max and a select
  // here into a branch in the float loops (mispredicted half the time: 17 ms instead of 0.8 ms at
  // 16x64x56x56). (v + |v|) / 2, used before, gave NaN for -inf and inf for v above half the largest float.
  // V: double in the float64 loops, T in the elementwise passes.
  template <class V> static V relu_of(V v) {
    using U = std::conditional_t<sizeof(V) == 4, uint32_t, uint64_t>;
    U bits;
    std::memcpy(&bits, &v, sizeof v);
    bits &= U(0) - U(!(v < V(0)));
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }

  // The ReLU's gradient mask comes from the saved output: y > 0 exactly where the pre-activation was.
  // relu is a template argument so that each loop is branch-free (a value select).
  // The mask is applied to dy's bits (an integer and), which the vectorizer takes; it would not
  // if-convert a select here, and the branch it left was mispredicted half the time.
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  template <bool relu> static T dz_t(T dy, T y) {
    if (!relu) return dy;
    Bits b;
    std::memcpy(&b, &dy, sizeof(T));
    b &= Bits(0) - Bits(y > T(0));
    T masked;
    std::memcpy(&masked, &b, sizeof(T));
    return masked;
  }
  template <bool relu> static double dz_of(T dy, T y) { return double(dz_t<relu>(dy, y)); }

  // Planar layout: sum of (x - s) and of (x - s)^2 over the planes of block blk of channel c.
  static void stats_block(const BatchNormGeom& g, const BnSplit& sp, const T* x, int64_t c, int64_t blk, double s,
                          double& a_out, double& b_out) {
    double a = 0, b = 0;
    const int64_t n1 = std::min(g.N, (blk + 1) * sp.per_block);
    for (int64_t n = blk * sp.per_block; n < n1; ++n) {
      const T* p = x + (n * g.C + c) * g.L;
      // omp simd lets the reduction run in vector lanes (a fixed order for a given ISA); the plain
      // loop, and an explicit 8-lane version of it, stayed scalar: 2.8 ms instead of 0.5 ms here.
#pragma omp simd reduction(+ : a, b)
      for (int64_t l = 0; l < g.L; ++l) {
        const double d = double(p[l]) - s;
        a += d;
        b += d * d;
      }
    }
    a_out = a;
    b_out = b;
  }

  // The elementwise passes work in T (float32 for float32 tensors, as torch's kernels do): only the
  // per-channel constants come from the float64 statistics. Done in double, the two conversions per
  // element were most of the training time (the statistics stay in double).
  //
  // The mean as T in two parts, mh + ml: x - mh is exact for x near the mean (Sterbenz), so
  // (x - mh) - ml keeps x - mean accurate to T's rounding of the difference itself. With the mean
  // rounded to one float32, inputs like 1000 + noise lost up to 3e-5 (half an ulp of 1000) in every
  // output, more than torch loses. For double, ml is 0.
  struct SplitMean {
    T hi, lo;
    explicit SplitMean(double m) : hi(T(m)), lo(T(m - double(T(m)))) {}
    T centered(T x) const { return (x - hi) - lo; }
  };

  // Where the ReLU's gate comes from: none (no ReLU), the saved output y (y > 0), the pre-activation
  // recomputed from x (PreAct, the forward's own expression, so the same bits: saves reading y), or the
  // forward's bit mask (float32, fused planar path only: batch_norm_relu_bit_words per plane).
  enum Gate { kNoRelu, kGateY, kGateX, kGateBits };

  // The forward's pre-activation (x - mean) * scale + beta in T, as apply_plane computes it.
  struct PreAct {
    SplitMean m;
    T s, b;
    PreAct(double m_, double s_, double b_) : m(m_), s(T(s_)), b(T(b_)) {}
    T operator()(T x) const { return m.centered(x) * s + b; }
  };

  template <Gate gate> static T dz_at(T dy, T x, T y, const PreAct& pre) {
    if constexpr (gate == kNoRelu) return dy;
    if constexpr (gate == kGateY) return dz_t<true>(dy, y);
    return dz_t<true>(dy, pre(x));
  }

  // Planar layout: sum of dz and of dz * (x - m) over the planes of block blk of channel c.
  template <Gate gate>
  static void reduce_block(const BatchNormGeom& g, const BnSplit& sp, const T* dy, const T* x, const T* y, int64_t c,
                           int64_t blk, double m, const PreAct& pre, double& a_out, double& b_out) {
    double a = 0, b = 0;
    const int64_t n1 = std::min(g.N, (blk + 1) * sp.per_block);
    for (int64_t n = blk * sp.per_block; n < n1; ++n) {
      const int64_t o = (n * g.C + c) * g.L;
      const T *pd = dy + o, *px = x + o, *py = y + o;
#pragma omp simd reduction(+ : a, b)
      for (int64_t l = 0; l < g.L; ++l) {
        const double dz = double(dz_at<gate>(pd[l], px[l], py[l], pre));
        a += dz;
        b += dz * (double(px[l]) - m);
      }
    }
    a_out = a;
    b_out = b;
  }

  // float32, planar: the float path's shift for channel c, the mean of its first (up to 64) values, or
  // 0 where that mean is within half their spread of 0. Why 0 there: e = x - s is rounded to float, and
  // where |x| is far above |s| every e of a binade rounds by the same amount (s's low bits against x's
  // ulp), so the rounding is biased, not random: zero-mean inputs of size 1e10 had their means off by
  // 40-170 (torch's double sums: 1-7), past float32 accuracy relative to the mean itself. With s = 0,
  // e = x exactly; a shift is only needed against cancellation, where the mean is large against the
  // spread, and then values near s subtract exactly (Sterbenz).
  static float head_shift(const BatchNormGeom& g, const T* x, int64_t c) {
    const int64_t head = std::min<int64_t>(g.L, 64);
    double s = 0, q = 0;
    for (int64_t l = 0; l < head; ++l) {
      const double v = double(x[c * g.L + l]);
      s += v;
      q += v * v;
    }
    const double mean = s / double(head), var = q / double(head) - mean * mean;
    return 4 * mean * mean <= var ? 0.0f : float(mean);
  }

  // float32, planar: sums of e = x - s and of e^2 over planes [n0, n1) of channel c, from float runs
  // (WideSums).
  static void shifted_sums_f(const BatchNormGeom& g, const T* x, int64_t c, int64_t n0, int64_t n1, float s,
                             double& a_out, double& b_out) {
    if constexpr (std::is_same_v<T, float>) {
      using R = typename VF::R;
      const R sv = VF::set1(s);
      WideSums<VF> sums;
      for (int64_t n = n0; n < n1; ++n) {
        const float* p = x + (n * g.C + c) * g.L;
        sums.run(g.L, [&](int64_t l, int64_t k, R& a, R& b) {
          const R e = VF::sub(load_n<VF>(p + l, k, s), sv);
          a = VF::add(a, e);
          b = VF::fmadd(e, e, b);
        });
      }
      a_out = sums.a();
      b_out = sums.b();
    }
  }

  // Mean and variance from float-path sums around the shift s; false where they are not accurate:
  // around a shift, var = E[e^2] - E[e]^2 loses E[e]^2 / var of its relative accuracy to cancellation,
  // so the float path declines where that exceeds 1 (the shift more than a standard deviation from the
  // mean: values ordered so that the first ones are atypical, or a spread below float resolution around
  // a large mean), or where a float sum overflowed (|x - s| beyond 1e19), or met NaN or inf. Otherwise
  // the variance is within a few float roundings (relative) of the exact one.
  static bool float_moments_ok(double a, double b, double inv_count, float s, double& mean, double& var) {
    const double m = a * inv_count, v = b * inv_count - m * m;
    if (!(std::isfinite(v) && m * m <= v)) return false;
    mean = double(s) + m;
    var = v;
    return true;
  }

  // float32, planar: channel c's mean and biased variance from float sums around head_shift, in one read
  // of x; false where float_moments_ok declines (the caller then computes the channel in double).
  static bool float_moments(const BatchNormGeom& g, const T* x, int64_t c, double& mean, double& var) {
    if constexpr (!std::is_same_v<T, float>) {
      return false;
    } else {
      const float s = head_shift(g, x, c);
      double a = 0, b = 0;
      shifted_sums_f(g, x, c, 0, g.N, s, a, b);
      return float_moments_ok(a, b, 1.0 / double(g.count()), s, mean, var);
    }
  }

  // float32, planar: sums of dz and of dz * (x - mh) over planes [n0, n1) of channel c from float runs
  // (WideSums), mh the mean's float part: sum dz * (x - mean) is then b - (mean - mh) * a, in double
  // (dz_xmu_from_f). No cancellation here beyond the sum's own: each term is computed to float rounding.
  template <Gate gate>
  static void dz_sums_f(const BatchNormGeom& g, const T* dy, const T* x, const T* y, int64_t c, int64_t n0,
                        int64_t n1, float mh, const PreAct& pre, double& a_out, double& b_out,
                        const uint32_t* bits = nullptr) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t words = batch_norm_relu_bit_words(g.L);
      using R = typename VF::R;
      const R mv = VF::set1(mh);
      // the forward's pre-activation ((x - hi) - lo) * s + b, the same operations in the same order
      const R phi = VF::set1(pre.m.hi), plo = VF::set1(pre.m.lo), ps = VF::set1(pre.s), pb = VF::set1(pre.b);
      WideSums<VF> sums;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t o = (n * g.C + c) * g.L;
        const float *pd = dy + o, *px = x + o, *py = y + o;
        const uint32_t* pm = gate == kGateBits ? bits + (n * g.C + c) * words : nullptr;
        sums.run(g.L, [&](int64_t l, int64_t k, R& a, R& b) {
          R dz = load_n<VF>(pd + l, k, 0.0f);
          const R xv = load_n<VF>(px + l, k, mh);
          if constexpr (gate == kGateY) dz = VF::keep_where_positive(dz, load_n<VF>(py + l, k, 0.0f));
          // l is a multiple of W, which divides 32: the W bits of these values are in one word
          if constexpr (gate == kGateBits) dz = VF::keep_where_bits(dz, pm[l >> 5] >> (l & 31));
          if constexpr (gate == kGateX)
            dz = VF::keep_where_positive(dz, VF::add(VF::mul(VF::sub(VF::sub(xv, phi), plo), ps), pb));
          a = VF::add(a, dz);
          b = VF::fmadd(dz, VF::sub(xv, mv), b);
        });
      }
      a_out = sums.a();
      b_out = sums.b();
    }
  }

  // sum dz * (x - m) from dz_sums_f's sums around mh = float(m); false where a float sum overflowed or
  // met NaN or inf (the caller then sums in double).
  static bool dz_xmu_from_f(double a, double b, double m, double& sum_dz, double& sum_dz_xmu) {
    const double bx = b - (m - double(float(m))) * a;
    if (!(std::isfinite(a) && std::isfinite(bx))) return false;
    sum_dz = a;
    sum_dz_xmu = bx;
    return true;
  }

  // float32, planar: sum dz and sum dz * (x - mean) over channel c; false where dz_xmu_from_f declines.
  template <Gate gate>
  static bool float_dz_sums(const BatchNormGeom& g, const T* dy, const T* x, const T* y, int64_t c, double m,
                            const PreAct& pre, double& sum_dz, double& sum_dz_xmu, const uint32_t* bits = nullptr) {
    if constexpr (!std::is_same_v<T, float>) {
      return false;
    } else {
      double a = 0, b = 0;
      dz_sums_f<gate>(g, dy, x, y, c, 0, g.N, float(m), pre, a, b, bits);
      return dz_xmu_from_f(a, b, m, sum_dz, sum_dz_xmu);
    }
  }

  // Channel c's mean and variance from the float64 sums around its first value, in stats()'s block order
  // (the float path's fallback, and float64's only path).
  static void double_moments(const BatchNormGeom& g, const BnSplit& sp, const T* x, int64_t c, double inv_count,
                             double& mean, double& var) {
    const double s = double(x[c * g.L]);
    double a = 0, b = 0;
    for (int64_t blk = 0; blk < sp.blocks; ++blk) {
      double pa, pb;
      stats_block(g, sp, x, c, blk, s, pa, pb);
      a += pa;
      b += pb;
    }
    moments(a, b, inv_count, s, mean, var);
  }

  // Channel c's sum dz and sum dz * (x - m) from the float64 sums, in block order (the float path's
  // fallback, and float64's only path).
  template <Gate gate>
  static void double_dz_sums(const BatchNormGeom& g, const BnSplit& sp, const T* dy, const T* x, const T* y, int64_t c,
                             double m, const PreAct& pre, double& sum_dz, double& sum_dz_xmu) {
    double a = 0, b = 0;
    for (int64_t blk = 0; blk < sp.blocks; ++blk) {
      double pa, pb;
      reduce_block<gate>(g, sp, dy, x, y, c, blk, m, pre, pa, pb);
      a += pa;
      b += pb;
    }
    sum_dz = a;
    sum_dz_xmu = b;
  }

  // Training, planar layout, a channel at a time: statistics, then the normalization of the same planes
  // while they are still in cache (one read of x from memory instead of two). float32 takes its
  // statistics from float_moments (double where that declines); float64 uses stats()'s block order and
  // arithmetic, so that for float64 both paths give the same mean and variance (the inverse std is
  // computed here, by the ops layer's torch ops in the other path: they may differ in the last bit).
  static void train_forward(const BatchNormGeom& g, const T* x, const double* weight, const double* bias, double eps,
                            const T* residual, bool relu, T* y, uint32_t* relu_bits, double* mean, double* var,
                            double* invstd) {
    const BnSplit sp = bn_split(g);
    const double inv_count = 1.0 / double(g.count());
    const int64_t words = batch_norm_relu_bit_words(g.L);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < g.C; ++c) {
      if (!float_moments(g, x, c, mean[c], var[c])) double_moments(g, sp, x, c, inv_count, mean[c], var[c]);
      invstd[c] = 1.0 / std::sqrt(var[c] + eps);
      const double scale = (weight ? weight[c] : 1.0) * invstd[c], beta = bias ? bias[c] : 0.0;
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t o = (n * g.C + c) * g.L;
        if (relu_bits)
          apply_plane_bits(x + o, mean[c], scale, beta, residual + o, y + o, relu_bits + (n * g.C + c) * words, g.L);
        else
          apply_plane(x + o, mean[c], scale, beta, residual ? residual + o : nullptr, relu, y + o, g.L);
      }
    }
  }

  // apply_plane for residual and ReLU (float32) that also writes the plane's gate bits (batch_norm.h:
  // batch_norm_relu_bit_words): the same operations in the same order in Vec<float>, so the same y.
  // Packing them in a second sweep over y instead cost more than backward saved (forward 2.3 -> 3.1 ms at
  // 16x64x56x56 on the CI host).
  static void apply_plane_bits(const T* p, double m_, double s_, double b_, const T* r, T* q, uint32_t* pm,
                               int64_t L) {
    if constexpr (std::is_same_v<T, float>) {
      using R = typename VF::R;
      constexpr int64_t W = VF::W;
      const PreAct pre(m_, s_, b_);
      const R hi = VF::set1(pre.m.hi), lo = VF::set1(pre.m.lo), s = VF::set1(pre.s), b = VF::set1(pre.b);
      const R zero = VF::set1(0.0f);
      const auto value = [&](int64_t l, int64_t n) {
        const R pre_v = VF::add(VF::mul(VF::sub(VF::sub(load_n<VF>(p + l, n, 0.0f), hi), lo), s), b);
        const R v = VF::add(pre_v, load_n<VF>(r + l, n, 0.0f));
        return VF::max(zero, v);  // relu_of: max(0, v) returns its second operand for NaN and for -0.0
      };
      int64_t l = 0;
      for (; l + 32 <= L; l += 32) {  // whole words: a fixed trip count the compiler unrolls
        uint32_t word = 0;
        for (int64_t j = 0; j < 32; j += W) {
          const R y = value(l + j, W);
          VF::store(q + l + j, y);
          word |= VF::positive_bits(y) << j;
        }
        pm[l >> 5] = word;
      }
      if (l < L) {  // the plane's last, partial word
        uint32_t word = 0;
        for (int64_t j = 0; l + j < L; j += W) {
          const int64_t n = std::min<int64_t>(W, L - l - j);
          const R y = value(l + j, n);
          if (n == W) VF::store(q + l + j, y); else VF::store_tail(q + l + j, y, n);
          uint32_t lanes = VF::positive_bits(y);
          if (n < W) lanes &= (uint32_t(1) << n) - 1u;  // nothing past the plane's end
          word |= lanes << j;
        }
        pm[l >> 5] = word;
      }
    }
  }

  // The factor b of (x - mean) * b in the backward, as two factors of T: b = p * q with p a power of two.
  // For inputs near 1e20, b (about w * invstd^3 * mean(dz * (x - mean))) is below float's smallest
  // normal, and T(b) would be subnormal with only a few significant bits (1e-5 relative error in
  // grad_input, measured). Then p = 2^(e/2) for b = f * 2^e puts both factors near the square root of
  // b's magnitude: (x - mean) * p is exact and stays normal wherever the product itself is, and q keeps
  // all of T's bits. For a normal T(b), p = 1 and q = T(b): the same results as one multiply.
  struct SplitFactor {
    T p, q;
  };
  static SplitFactor split_factor(double b) {
    if (b == 0 || !std::isfinite(b) || std::abs(b) >= double(std::numeric_limits<T>::min())) return {T(1), T(b)};
    int e = 0;
    std::frexp(b, &e);
    const double p = std::ldexp(1.0, e / 2);
    return {T(p), T(b / p)};
  }

  // backward_plane for the bit gate (float32): the same operations in the same order, in Vec<float>.
  static void backward_plane_bits(const T* pd, const T* px, const uint32_t* pm, const PreAct& pre, double a_,
                                  double b_, double k_, T* gi, T* gr, int64_t L) {
    if constexpr (std::is_same_v<T, float>) {
      using R = typename VF::R;
      constexpr int64_t W = VF::W;
      const SplitFactor f = split_factor(b_);
      const R a = VF::set1(float(a_)), bp = VF::set1(f.p), bq = VF::set1(f.q), k = VF::set1(float(k_));
      const R hi = VF::set1(pre.m.hi), lo = VF::set1(pre.m.lo);
      for (int64_t l = 0; l < L; l += W) {
        const int64_t n = std::min<int64_t>(W, L - l);
        const R dz = VF::keep_where_bits(load_n<VF>(pd + l, n, 0.0f), pm[l >> 5] >> (l & 31));
        if (gi) {
          const R xm = VF::sub(VF::sub(load_n<VF>(px + l, n, 0.0f), hi), lo);
          const R v = VF::add(VF::add(VF::mul(dz, a), VF::mul(VF::mul(xm, bp), bq)), k);
          if (n == W) VF::store(gi + l, v); else VF::store_tail(gi + l, v, n);
        }
        if (gr) {
          if (n == W) VF::store(gr + l, dz); else VF::store_tail(gr + l, dz, n);
        }
      }
    }
  }

  // Channel c's sum dz and sum dz * (x - m) in double with the bit gate: the float path's fallback for
  // kGateBits (a float sum overflowed or met NaN/inf), plain sums in plane order.
  static void double_dz_sums_bits(const BatchNormGeom& g, const T* dy, const T* x, const uint32_t* bits, int64_t c,
                                  double m, double& sum_dz, double& sum_dz_xmu) {
    const int64_t words = batch_norm_relu_bit_words(g.L);
    double a = 0, b = 0;
    for (int64_t n = 0; n < g.N; ++n) {
      const int64_t o = (n * g.C + c) * g.L;
      const uint32_t* pm = bits + (n * g.C + c) * words;
      for (int64_t l = 0; l < g.L; ++l) {
        const double dz = double(dz_t<true>(dy[o + l], T((pm[l >> 5] >> (l & 31)) & 1u)));
        a += dz;
        b += dz * (double(x[o + l]) - m);
      }
    }
    sum_dz = a;
    sum_dz_xmu = b;
  }

  template <Gate gate>
  static void train_backward_impl(const BatchNormGeom& g, const T* dy, const T* x, const T* y, const uint32_t* bits,
                                  const double* mean, const double* invstd, const double* weight, const double* bias,
                                  double* sum_dz, double* sum_dz_xmu, T* grad_input, T* grad_residual) {
    const int64_t words = batch_norm_relu_bit_words(g.L);
    const BnSplit sp = bn_split(g);
    const double n_total = double(g.count());
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < g.C; ++c) {
      // k_dz is also the forward's scale (weight * invstd, the same double), so pre is its pre-activation.
      const double k_dz = (weight ? weight[c] : 1.0) * invstd[c];
      const PreAct pre(mean[c], k_dz, bias ? bias[c] : 0.0);
      double a = 0, b = 0;
      if constexpr (gate == kGateBits) {
        if (!float_dz_sums<gate>(g, dy, x, y, c, mean[c], pre, a, b, bits))
          double_dz_sums_bits(g, dy, x, bits, c, mean[c], a, b);
      } else if (!float_dz_sums<gate>(g, dy, x, y, c, mean[c], pre, a, b)) {
        double_dz_sums<gate>(g, sp, dy, x, y, c, mean[c], pre, a, b);
      }
      sum_dz[c] = a;
      sum_dz_xmu[c] = b;
      // the ops layer's formulas, in the same order: k_x = -(k_dz * invstd * invstd * sum_dz_xmu / n)
      const double k_x = -(k_dz * invstd[c] * invstd[c] * b / n_total), k_1 = -(k_dz * a / n_total);
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t o = (n * g.C + c) * g.L;
        if constexpr (gate == kGateBits)
          backward_plane_bits(dy + o, x + o, bits + (n * g.C + c) * words, pre, k_dz, k_x, k_1,
                              grad_input ? grad_input + o : nullptr, grad_residual ? grad_residual + o : nullptr, g.L);
        else
          backward_plane<gate>(dy + o, x + o, y + o, pre, k_dz, k_x, k_1, grad_input ? grad_input + o : nullptr,
                               grad_residual ? grad_residual + o : nullptr, g.L);
      }
    }
  }

  // With relu: the gate from bits (float32) if given, else from y if given, else recomputed from x
  // (batch_norm_relu without a residual only).
  static void train_backward(const BatchNormGeom& g, const T* dy, const T* x, const T* y, const uint32_t* bits,
                             bool relu, const double* mean, const double* invstd, const double* weight,
                             const double* bias, double* sum_dz, double* sum_dz_xmu, T* grad_input, T* grad_residual) {
    if constexpr (std::is_same_v<T, float>) {
      if (relu && bits)
        return train_backward_impl<kGateBits>(g, dy, x, dy, bits, mean, invstd, weight, bias, sum_dz, sum_dz_xmu,
                                              grad_input, grad_residual);
    }
    if (relu && y)
      return train_backward_impl<kGateY>(g, dy, x, y, nullptr, mean, invstd, weight, bias, sum_dz, sum_dz_xmu,
                                         grad_input, grad_residual);
    if (relu)
      return train_backward_impl<kGateX>(g, dy, x, dy, nullptr, mean, invstd, weight, bias, sum_dz, sum_dz_xmu,
                                         grad_input, grad_residual);
    train_backward_impl<kNoRelu>(g, dy, x, dy, nullptr, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, grad_input,
                                 grad_residual);
  }

  static void apply_plane(const T* p, double m_, double s_, double b_, const T* r, bool relu, T* q, int64_t L) {
    const PreAct pre(m_, s_, b_);
    // Four loop versions so that each inner loop is branch-free.
    if (r && relu) {
      for (int64_t l = 0; l < L; ++l) q[l] = relu_of(pre(p[l]) + r[l]);
    } else if (r) {
      for (int64_t l = 0; l < L; ++l) q[l] = pre(p[l]) + r[l];
    } else if (relu) {
      for (int64_t l = 0; l < L; ++l) q[l] = relu_of(pre(p[l]));
    } else {
      for (int64_t l = 0; l < L; ++l) q[l] = pre(p[l]);
    }
  }

  // grad_input = dz * a + (x - mean) * b + k (pre.m is the mean); grad_residual = dz.
  template <Gate gate>
  static void backward_plane(const T* pd, const T* px, const T* py, const PreAct& pre, double a_, double b_, double k_,
                             T* gi, T* gr, int64_t L) {
    const SplitFactor f = split_factor(b_);
    const T a = T(a_), bp = f.p, bq = f.q, k = T(k_);
    if (gi)
      for (int64_t l = 0; l < L; ++l)
        gi[l] = dz_at<gate>(pd[l], px[l], py[l], pre) * a + pre.m.centered(px[l]) * bp * bq + k;
    if (gr)
      for (int64_t l = 0; l < L; ++l) gr[l] = dz_at<gate>(pd[l], px[l], py[l], pre);
  }
  // Mean and biased variance from the sums a = sum (x - s), b = sum (x - s)^2 of count values around s.
  static void moments(double a, double b, double inv_count, double s, double& mean, double& var) {
    const double m = a * inv_count;
    var = std::max(0.0, b * inv_count - m * m);
    mean = s + m;
  }

  // Channels-last layout: for each fixed block of rows, partial sums a[c] and b[c] (work holds, per block,
  // a row of C a's then a row of C b's), accumulated by term(row, a, b), which loops over the channels.
  template <class Term> static void row_blocks(const BatchNormGeom& g, const BnSplit& sp, double* work, Term term) {
    const int64_t C = g.C, rows = g.N * g.L;
#pragma omp parallel for schedule(static) if (rows * C > kBnChunk)
    for (int64_t blk = 0; blk < sp.blocks; ++blk) {
      double* a = work + 2 * blk * C;
      double* b = a + C;
      std::fill(a, a + 2 * C, 0.0);
      const int64_t m1 = std::min(rows, (blk + 1) * sp.per_block);
      for (int64_t i = blk * sp.per_block; i < m1; ++i) term(i, a, b);
    }
  }

  // Each channel's partial sums combined in block order (a fixed order: no dependence on threads), handed
  // to done(c, a, b). Planar work holds an (a, b) pair per (channel, block); channels-last as row_blocks.
  template <class Done>
  static void combine_blocks(const BatchNormGeom& g, int64_t blocks, const double* work, Done done) {
    for (int64_t c = 0; c < g.C; ++c) {
      double a = 0, b = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t i = g.channels_last ? 2 * blk * g.C + c : 2 * (c * blocks + blk);
        a += work[i];
        b += work[g.channels_last ? i + g.C : i + 1];
      }
      done(c, a, b);
    }
  }

  static void stats(const BatchNormGeom& g, const T* x, double* mean, double* var, double* work) {
    const BnSplit sp = bn_split(g);
    const int64_t C = g.C, L = g.L;
    const double inv_count = 1.0 / double(g.count());
    if constexpr (std::is_same_v<T, float>) {
      if (!g.channels_last) return stats_planar_f(g, sp, x, mean, var, work);
    }
    // The shift: each channel's first value (held in mean[] until the end).
    for (int64_t c = 0; c < C; ++c) mean[c] = double(g.channels_last ? x[c] : x[c * L]);
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < C * sp.blocks; ++t) {
        const int64_t c = t / sp.blocks, blk = t % sp.blocks;
        stats_block(g, sp, x, c, blk, mean[c], work[2 * t], work[2 * t + 1]);
      }
    } else {
      row_blocks(g, sp, work, [&](int64_t i, double* a, double* b) {
        const T* p = x + i * C;
        for (int64_t c = 0; c < C; ++c) {
          const double d = double(p[c]) - mean[c];
          a[c] += d;
          b[c] += d * d;
        }
      });
    }
    combine_blocks(g, sp.blocks, work,
                   [&](int64_t c, double a, double b) { moments(a, b, inv_count, mean[c], mean[c], var[c]); });
  }

  // stats() for float32, planar: the same tasks (channel, block of planes) with float-path sums around
  // head_shift; a channel where float_moments_ok declines is summed again in double.
  static void stats_planar_f(const BatchNormGeom& g, const BnSplit& sp, const T* x, double* mean, double* var,
                             double* work) {
    const int64_t C = g.C;
    const double inv_count = 1.0 / double(g.count());
    for (int64_t c = 0; c < C; ++c) mean[c] = double(head_shift(g, x, c));  // the shifts, until the end
#pragma omp parallel for schedule(static) if (g.N * C * g.L > kBnChunk)
    for (int64_t t = 0; t < C * sp.blocks; ++t) {
      const int64_t c = t / sp.blocks, blk = t % sp.blocks;
      shifted_sums_f(g, x, c, blk * sp.per_block, std::min(g.N, (blk + 1) * sp.per_block), float(mean[c]),
                     work[2 * t], work[2 * t + 1]);
    }
    std::vector<int64_t> redo;
    combine_blocks(g, sp.blocks, work, [&](int64_t c, double a, double b) {
      if (!float_moments_ok(a, b, inv_count, float(mean[c]), mean[c], var[c])) redo.push_back(c);
    });
#pragma omp parallel for schedule(static) if (!redo.empty() && g.N * g.L > kBnChunk)
    for (size_t i = 0; i < redo.size(); ++i) {
      const int64_t c = redo[i];
      double_moments(g, sp, x, c, inv_count, mean[c], var[c]);
    }
  }

  static void apply(const BatchNormGeom& g, const T* x, const double* mean, const double* scale, const double* beta,
                    const T* residual, bool relu, T* y) {
    const int64_t C = g.C, L = g.L;
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < g.N * C; ++t) {
        const int64_t c = t % C;
        apply_plane(x + t * L, mean[c], scale[c], beta[c], residual ? residual + t * L : nullptr, relu, y + t * L, L);
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
        for (int64_t c = 0; c < C; ++c) q[c] = T(relu_of((double(p[c]) - mean[c]) * scale[c] + beta[c] + double(r[c])));
      } else if (r) {
        for (int64_t c = 0; c < C; ++c) q[c] = T((double(p[c]) - mean[c]) * scale[c] + beta[c] + double(r[c]));
      } else if (relu) {
        for (int64_t c = 0; c < C; ++c) q[c] = T(relu_of((double(p[c]) - mean[c]) * scale[c] + beta[c]));
      } else {
        for (int64_t c = 0; c < C; ++c) q[c] = T((double(p[c]) - mean[c]) * scale[c] + beta[c]);
      }
    }
  }

  static void backward_reduce(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,
                              const double* mean, double* sum_dz, double* sum_dz_xmu, double* work) {
    if (relu) return backward_reduce_impl<true>(g, dy, x, y, mean, sum_dz, sum_dz_xmu, work);
    backward_reduce_impl<false>(g, dy, x, dy, mean, sum_dz, sum_dz_xmu, work);
  }

  template <bool relu>
  static void backward_reduce_impl(const BatchNormGeom& g, const T* dy, const T* x, const T* y, const double* mean,
                                   double* sum_dz, double* sum_dz_xmu, double* work) {
    const BnSplit sp = bn_split(g);
    const int64_t C = g.C, L = g.L;
    if constexpr (std::is_same_v<T, float>) {
      if (!g.channels_last) return backward_reduce_planar_f<relu ? kGateY : kNoRelu>(g, sp, dy, x, y, mean, sum_dz,
                                                                                     sum_dz_xmu, work);
    }
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < C * sp.blocks; ++t) {
        const int64_t c = t / sp.blocks, blk = t % sp.blocks;
        reduce_block<relu ? kGateY : kNoRelu>(g, sp, dy, x, y, c, blk, mean[c], PreAct(mean[c], 0, 0), work[2 * t],
                                              work[2 * t + 1]);
      }
    } else {
      row_blocks(g, sp, work, [&](int64_t i, double* a, double* b) {
        const T *pd = dy + i * C, *px = x + i * C, *py = y + i * C;
        for (int64_t c = 0; c < C; ++c) {
          const double dz = dz_of<relu>(pd[c], py[c]);
          a[c] += dz;
          b[c] += dz * (double(px[c]) - mean[c]);
        }
      });
    }
    combine_blocks(g, sp.blocks, work, [&](int64_t c, double a, double b) {
      sum_dz[c] = a;
      sum_dz_xmu[c] = b;
    });
  }

  // backward_reduce() for float32, planar: the same tasks with float-path sums; a channel where
  // dz_xmu_from_f declines is summed again in double.
  template <Gate gate>
  static void backward_reduce_planar_f(const BatchNormGeom& g, const BnSplit& sp, const T* dy, const T* x, const T* y,
                                       const double* mean, double* sum_dz, double* sum_dz_xmu, double* work) {
    const int64_t C = g.C;
#pragma omp parallel for schedule(static) if (g.N * C * g.L > kBnChunk)
    for (int64_t t = 0; t < C * sp.blocks; ++t) {
      const int64_t c = t / sp.blocks, blk = t % sp.blocks;
      dz_sums_f<gate>(g, dy, x, y, c, blk * sp.per_block, std::min(g.N, (blk + 1) * sp.per_block), float(mean[c]),
                      PreAct(mean[c], 0, 0), work[2 * t], work[2 * t + 1]);
    }
    std::vector<int64_t> redo;
    combine_blocks(g, sp.blocks, work, [&](int64_t c, double a, double b) {
      if (!dz_xmu_from_f(a, b, mean[c], sum_dz[c], sum_dz_xmu[c])) redo.push_back(c);
    });
#pragma omp parallel for schedule(static) if (!redo.empty() && g.N * g.L > kBnChunk)
    for (size_t i = 0; i < redo.size(); ++i) {
      const int64_t c = redo[i];
      double_dz_sums<gate>(g, sp, dy, x, y, c, mean[c], PreAct(mean[c], 0, 0), sum_dz[c], sum_dz_xmu[c]);
    }
  }

  static void backward_apply(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,
                             const double* mean, const double* k_dz, const double* k_x, const double* k_1,
                             T* grad_input, T* grad_residual) {
    if (relu) return backward_apply_impl<true>(g, dy, x, y, mean, k_dz, k_x, k_1, grad_input, grad_residual);
    backward_apply_impl<false>(g, dy, x, dy, mean, k_dz, k_x, k_1, grad_input, grad_residual);
  }

  template <bool relu>
  static void backward_apply_impl(const BatchNormGeom& g, const T* dy, const T* x, const T* y, const double* mean,
                                  const double* k_dz, const double* k_x, const double* k_1, T* grad_input,
                                  T* grad_residual) {
    const int64_t C = g.C, L = g.L;
    if (!g.channels_last) {
#pragma omp parallel for schedule(static) if (g.N * C * L > kBnChunk)
      for (int64_t t = 0; t < g.N * C; ++t) {
        const int64_t c = t % C, o = t * L;
        backward_plane<relu ? kGateY : kNoRelu>(dy + o, x + o, y + o, PreAct(mean[c], 0, 0), k_dz[c], k_x[c], k_1[c],
                             grad_input ? grad_input + o : nullptr, grad_residual ? grad_residual + o : nullptr, L);
      }
      return;
    }
    const int64_t rows = g.N * L;
#pragma omp parallel for schedule(static) if (rows * C > kBnChunk)
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t o = i * C;
      const T *pd = dy + o, *px = x + o, *py = y + o;
      if (grad_input) {
        T* gi = grad_input + o;
        for (int64_t c = 0; c < C; ++c)
          gi[c] = T(dz_of<relu>(pd[c], py[c]) * k_dz[c] + (double(px[c]) - mean[c]) * k_x[c] + k_1[c]);
      }
      if (grad_residual) {
        T* gr = grad_residual + o;
        for (int64_t c = 0; c < C; ++c) gr[c] = T(dz_of<relu>(pd[c], py[c]));
      }
    }
  }
};

}  // namespace
}  // namespace dlk::cpu

#define DLK_BN_DEFINE(SUFFIX, NS, T)                                                                                  \
  using BnK_##SUFFIX##_##T = BnKernels<T, NS::Vec<float>>;                                                            \
  void batch_norm_train_forward_##SUFFIX(const BatchNormGeom& g, const T* x, const double* weight,                    \
                                         const double* bias, double eps, const T* residual, bool relu, T* y,          \
                                         uint32_t* relu_bits, double* mean, double* var, double* invstd) {            \
    BnK_##SUFFIX##_##T::train_forward(g, x, weight, bias, eps, residual, relu, y, relu_bits, mean, var, invstd);      \
  }                                                                                                                   \
  void batch_norm_train_backward_##SUFFIX(const BatchNormGeom& g, const T* dy, const T* x, const T* y,                \
                                          const uint32_t* relu_bits, bool relu, const double* mean,                   \
                                          const double* invstd, const double* weight, const double* bias,             \
                                          double* sum_dz, double* sum_dz_xmu, T* grad_input, T* grad_residual) {      \
    BnK_##SUFFIX##_##T::train_backward(g, dy, x, y, relu_bits, relu, mean, invstd, weight, bias, sum_dz, sum_dz_xmu,  \
                                       grad_input, grad_residual);                                                    \
  }                                                                                                                   \
  void batch_norm_stats_##SUFFIX(const BatchNormGeom& g, const T* x, double* mean, double* var, double* work) {       \
    BnK_##SUFFIX##_##T::stats(g, x, mean, var, work);                                                                 \
  }                                                                                                                   \
  void batch_norm_apply_##SUFFIX(const BatchNormGeom& g, const T* x, const double* mean, const double* scale,         \
                                 const double* beta, const T* residual, bool relu, T* y) {                            \
    BnK_##SUFFIX##_##T::apply(g, x, mean, scale, beta, residual, relu, y);                                            \
  }                                                                                                                   \
  void batch_norm_backward_reduce_##SUFFIX(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,    \
                                           const double* mean, double* sum_dz, double* sum_dz_xmu, double* work) {    \
    BnK_##SUFFIX##_##T::backward_reduce(g, dy, x, y, relu, mean, sum_dz, sum_dz_xmu, work);                           \
  }                                                                                                                   \
  void batch_norm_backward_apply_##SUFFIX(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,     \
                                          const double* mean, const double* k_dz, const double* k_x,                  \
                                          const double* k_1, T* grad_input, T* grad_residual) {                       \
    BnK_##SUFFIX##_##T::backward_apply(g, dy, x, y, relu, mean, k_dz, k_x, k_1, grad_input, grad_residual);           \
  }
