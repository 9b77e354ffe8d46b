// AVX-512 vector wrappers: include only after `#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")`
// (see csrc/cpu/*_avx512.cpp), so that these inline functions are compiled for AVX-512 alone and can
// never be picked by the linker for a scalar caller.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace dlk::cpu::avx512 {

template <class T> struct Vec;

template <> struct Vec<float> {
  using T = float;
  using R = __m512;
  static constexpr int W = 16;
  static constexpr int kRegisters = 32;  // vector registers (zmm0-31): how large a register tile fits
  // The first n lanes; n <= 0 gives none (as the AVX2 and scalar tails do), n >= W all.
  static __mmask16 mask(int64_t n) {
    return n >= W ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
  }
  static R set1(T v) { return _mm512_set1_ps(v); }
  static R load(const T* p) { return _mm512_loadu_ps(p); }
  // a0 b0 a1 b1 ... to p, its first n values (the pairs of two vectors interleaved; masked past n).
  static void store_zip(T* p, R a, R b, int64_t n) {
    const R lo = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), b);
    const R hi =
        _mm512_permutex2var_ps(a, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), b);
    n >= W ? store(p, lo) : store_tail(p, lo, n);
    if (n > W) n >= 2 * W ? store(p + W, hi) : store_tail(p + W, hi, n - W);
  }
  // Lane l = p[idx[l]].
  static R gather_idx(const T* p, const int32_t* idx) {
    // (masked forms from zeros: GCC 12's plain gathers start from an "undefined" register)
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), __mmask16(0xFFFF),
                                    _mm512_loadu_si512(reinterpret_cast<const void*>(idx)), p, 4);
  }
  // Lane l = p[l * stride] (stride * 15 within int32).
  static R gather(const T* p, int64_t stride) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_set1_epi32(int(stride)),
                                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), __mmask16(0xFFFF), idx, p, 4);
  }
  static void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  // Lanes n.. are `fill`; nothing past p + n is read (masked loads never fault on masked lanes).
  static R load_tail(const T* p, int64_t n, T fill) { return _mm512_mask_loadu_ps(set1(fill), mask(n), p); }
  static void store_tail(T* p, R v, int64_t n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  // Non-temporal store to a 64-byte-aligned address: no read-for-ownership, no cache pollution.
  static constexpr int kStreamAlign = 64;
  static void stream(T* p, R v) { _mm512_stream_ps(p, v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  // The even lanes of a then b (lanes 0, 2, 4, ... of their concatenation): a stride-2 gather.
  static R evens(R a, R b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
  }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R sqrt(R a) { return _mm512_sqrt_ps(a); }
  static R neg(R a) { return _mm512_xor_ps(a, set1(T(-0.0))); }
  // Wide (double) lanes for long float sums: add_widened adds lanes 0-7 of v into lo and 8-15 into hi;
  // reduce_wide sums the sixteen double lanes in a fixed order. (The zero-masking forms of the
  // conversions and extractions: GCC 12's plain ones start from an "undefined" register that -Wall
  // reports as uninitialized.)
  using RD = __m512d;
  static RD zero_wide() { return _mm512_setzero_pd(); }
  static __m256d half_pd(__m512d v, int hi) {
    return hi ? _mm512_maskz_extractf64x4_pd(0xF, v, 1) : _mm512_maskz_extractf64x4_pd(0xF, v, 0);
  }
  static void add_widened(R v, RD& lo, RD& hi) {
    const __m512d bits = _mm512_castps_pd(v);
    lo = _mm512_add_pd(lo, _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(half_pd(bits, 0))));
    hi = _mm512_add_pd(hi, _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(half_pd(bits, 1))));
  }
  static double reduce_wide(RD lo, RD hi) {
    const __m512d s = _mm512_add_pd(lo, hi);
    const __m256d q = _mm256_add_pd(half_pd(s, 0), half_pd(s, 1));
    const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd(q, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
  }
  // v's lanes where gate > 0, +0.0 elsewhere (NaN gates give 0).
  static R keep_where_positive(R v, R gate) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(gate, _mm512_setzero_ps(), _CMP_GT_OQ), v);
  }
  // Bit i set where lane i > 0 (clear for NaN): with keep_where_bits, a ReLU gate kept as one bit a value.
  static uint32_t positive_bits(R v) { return uint32_t(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ)); }
  static R abs(R v) { return _mm512_abs_ps(v); }
  // v's lanes i where bit i of bits is set, +0.0 elsewhere (bits 16 and up are ignored).
  static R keep_where_bits(R v, uint32_t bits) { return _mm512_maskz_mov_ps(__mmask16(bits & 0xFFFFu), v); }
  static T reduce_add(R v) { return _mm512_reduce_add_ps(v); }
  static T reduce_max(R v) { return _mm512_reduce_max_ps(v); }
  // exp(x) for the softmax range x <= 0: exp(x) = 2^y, y = x log2(e) split as n + f with n = round(y),
  // |f| <= 1/2; 2^f by a degree-6 polynomial fitted at Chebyshev nodes (1.9e-9 relative in exact
  // arithmetic, 1.03e-7 as evaluated in float); vscalefps multiplies by 2^n and handles underflow.
  // 11 vector ops; the Cody-Waite form with a degree-7 Taylor polynomial took 13. Rounding y costs a
  // relative error of about |x| * 6e-8, so the absolute error stays below 3e-8 for every x <= 0
  // (x e^x <= 1/e): exact enough for softmax terms and their sums, not for large positive x.
  // x is clamped at -104, where exp rounds to 0, so -inf gives exactly 0; NaN propagates (second
  // operand of max); +inf gives NaN.
  static R exp(R x) {
    const R y = _mm512_mul_ps(_mm512_max_ps(set1(-104.0f), x), set1(1.44269504088896341f));
    const R n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const R f = _mm512_sub_ps(y, n);
    R p = set1(1.5337577497120947e-4f);
    p = fmadd(p, f, set1(1.3399859890341759e-3f));
    p = fmadd(p, f, set1(9.618519805371761e-3f));
    p = fmadd(p, f, set1(5.550329014658928e-2f));
    p = fmadd(p, f, set1(2.4022646248340607e-1f));
    p = fmadd(p, f, set1(6.931471824645996e-1f));
    p = fmadd(p, f, set1(1.0f));
    return _mm512_scalef_ps(p, n);
  }
};

template <> struct Vec<double> {
  using T = double;
  using R = __m512d;
  static constexpr int W = 8;
  static constexpr int kRegisters = 32;  // vector registers (zmm0-31): how large a register tile fits
  static __mmask8 mask(int64_t n) { return n >= W ? __mmask8(0xFF) : n <= 0 ? __mmask8(0) : __mmask8((1u << n) - 1u); }
  static R set1(T v) { return _mm512_set1_pd(v); }
  static R load(const T* p) { return _mm512_loadu_pd(p); }
  // Lane l = p[idx[l]].
  static R gather_idx(const T* p, const int32_t* idx) {
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), __mmask8(0xFF),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)), p, 8);
  }
  // Lane l = p[l * stride] (stride * 7 within int32).
  static R gather(const T* p, int64_t stride) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_set1_epi32(int(stride)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), __mmask8(0xFF), idx, p, 8);
  }
  // a0 b0 a1 b1 ... to p, its first n values.
  static void store_zip(T* p, R a, R b, int64_t n) {
    const R lo = _mm512_permutex2var_pd(a, _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), b);
    const R hi = _mm512_permutex2var_pd(a, _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15), b);
    n >= W ? store(p, lo) : store_tail(p, lo, n);
    if (n > W) n >= 2 * W ? store(p + W, hi) : store_tail(p + W, hi, n - W);
  }
  static void store(T* p, R v) { _mm512_storeu_pd(p, v); }
  static R load_tail(const T* p, int64_t n, T fill) { return _mm512_mask_loadu_pd(set1(fill), mask(n), p); }
  static void store_tail(T* p, R v, int64_t n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static constexpr int kStreamAlign = 64;
  static void stream(T* p, R v) { _mm512_stream_pd(p, v); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  // The even lanes of a then b (lanes 0, 2, 4, ... of their concatenation): a stride-2 gather.
  static R evens(R a, R b) { return _mm512_permutex2var_pd(a, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), b); }
  static R max(R a, R b) { return _mm512_max_pd(a, b); }
  static R min(R a, R b) { return _mm512_min_pd(a, b); }
  static R div(R a, R b) { return _mm512_div_pd(a, b); }
  static R sqrt(R a) { return _mm512_sqrt_pd(a); }
  static R neg(R a) { return _mm512_xor_pd(a, set1(T(-0.0))); }
  static T reduce_add(R v) { return _mm512_reduce_add_pd(v); }
  static T reduce_max(R v) { return _mm512_reduce_max_pd(v); }
  // exp(x): as the float version, with a degree-13 Taylor polynomial (error < 2e-17 relative) and the
  // clamp at -746, where double's exp rounds to 0.
  static R exp(R x) {
    const R xc = _mm512_max_pd(set1(-746.0), x);
    const R n = _mm512_roundscale_pd(_mm512_mul_pd(xc, set1(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    R r = _mm512_fnmadd_pd(n, set1(6.93147180369123816490e-01), xc);
    r = _mm512_fnmadd_pd(n, set1(1.90821492927058770002e-10), r);
    R p = set1(1.0 / 6227020800.0);
    const double inv_fact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                               1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,
                               1.0 / 24.0,        1.0 / 6.0,        0.5,             1.0,
                               1.0};
    for (double c : inv_fact) p = fmadd(p, r, set1(c));
    return _mm512_scalef_pd(p, n);
  }
};

}  // namespace dlk::cpu::avx512
