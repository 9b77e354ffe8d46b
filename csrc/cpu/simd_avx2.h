// AVX2+FMA vector wrappers: include only after `#pragma GCC target("avx2,fma")` (see csrc/cpu/*_avx2.cpp).
// Same interface and the same exp polynomials as simd_avx512.h.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace dlk::cpu::avx2 {

template <class T> struct Vec;

template <> struct Vec<float> {
  using T = float;
  using R = __m256;
  static constexpr int W = 8;
  static constexpr int kRegisters = 16;  // vector registers (ymm0-15): how large a register tile fits
  static __m256i mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n < W ? n : W)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R set1(T v) { return _mm256_set1_ps(v); }
  static R load(const T* p) { return _mm256_loadu_ps(p); }
  // Lane l = p[idx[l]].
  static R gather_idx(const T* p, const int32_t* idx) {
    // (the masked form, from zeros: GCC 12's plain gather starts from an "undefined" register)
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)),
                                    _mm256_castsi256_ps(_mm256_set1_epi32(-1)), 4);
  }
  // Lane l = p[l * stride] (stride * 7 within int32).
  static R gather(const T* p, int64_t stride) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_set1_epi32(int(stride)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, idx, _mm256_castsi256_ps(_mm256_set1_epi32(-1)), 4);
  }
  // a0 b0 a1 b1 ... to p, its first n values (the pairs of two vectors interleaved; masked past n).
  static void store_zip(T* p, R a, R b, int64_t n) {
    const R ul = _mm256_unpacklo_ps(a, b), uh = _mm256_unpackhi_ps(a, b);  // a0 b0 a1 b1 a4 b4 a5 b5 | a2 ..
    const R lo = _mm256_permute2f128_ps(ul, uh, 0x20), hi = _mm256_permute2f128_ps(ul, uh, 0x31);
    n >= W ? store(p, lo) : store_tail(p, lo, n);
    if (n > W) n >= 2 * W ? store(p + W, hi) : store_tail(p + W, hi, n - W);
  }
  static void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  // vmaskmov never touches masked-off lanes' memory, so reading a tail cannot fault.
  static R load_tail(const T* p, int64_t n, T fill) {
    __m256i m = mask(n);
    return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store_tail(T* p, R v, int64_t n) { _mm256_maskstore_ps(p, mask(n), v); }
  // Non-temporal store to a 32-byte-aligned address: no read-for-ownership, no cache pollution.
  static constexpr int kStreamAlign = 32;
  static void stream(T* p, R v) { _mm256_stream_ps(p, v); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  // The even lanes of a then b (lanes 0, 2, 4, ... of their concatenation): a stride-2 gather.
  static R evens(R a, R b) {  // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs in order
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
  }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R sqrt(R a) { return _mm256_sqrt_ps(a); }
  static R neg(R a) { return _mm256_xor_ps(a, set1(T(-0.0))); }
  static T reduce_add(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T reduce_max(R v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // Wide (double) lanes for long float sums: add_widened adds lanes 0-3 of v into lo and 4-7 into hi;
  // reduce_wide sums the eight double lanes in a fixed order.
  using RD = __m256d;
  static RD zero_wide() { return _mm256_setzero_pd(); }
  static void add_widened(R v, RD& lo, RD& hi) {
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  static double reduce_wide(RD lo, RD hi) {
    const __m256d s = _mm256_add_pd(lo, hi);
    const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
  }
  // v's lanes where gate > 0, +0.0 elsewhere (NaN gates give 0): v's bits and-ed with the comparison.
  static R keep_where_positive(R v, R gate) {
    return _mm256_and_ps(v, _mm256_cmp_ps(gate, _mm256_setzero_ps(), _CMP_GT_OQ));
  }
  // Bit i set where lane i > 0 (clear for NaN): with keep_where_bits, a ReLU gate kept as one bit a value.
  static uint32_t positive_bits(R v) {
    return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ)));
  }
  static R abs(R v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }  // the sign bit cleared
  // v's lanes i where bit i of bits is set, +0.0 elsewhere (bits 8 and up are ignored).
  static R keep_where_bits(R v, uint32_t bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(bits)), lane_bit), lane_bit);
    return _mm256_and_ps(v, _mm256_castsi256_ps(set));
  }
  static R exp(R x) {
    const R lo = set1(-87.33654f);
    R xc = _mm256_max_ps(lo, _mm256_min_ps(set1(88.0f), x));
    R n = _mm256_round_ps(_mm256_mul_ps(xc, set1(1.44269504088896341f)),
                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    R r = _mm256_fnmadd_ps(n, set1(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    R p = set1(1.0f / 5040.0f);
    p = fmadd(p, r, set1(1.0f / 720.0f));
    p = fmadd(p, r, set1(1.0f / 120.0f));
    p = fmadd(p, r, set1(1.0f / 24.0f));
    p = fmadd(p, r, set1(1.0f / 6.0f));
    p = fmadd(p, r, set1(0.5f));
    p = fmadd(p, r, set1(1.0f));
    p = fmadd(p, r, set1(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    R y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    R underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    return _mm256_andnot_ps(underflow, y);
  }
};

template <> struct Vec<double> {
  using T = double;
  using R = __m256d;
  static constexpr int W = 4;
  static constexpr int kRegisters = 16;  // vector registers (ymm0-15): how large a register tile fits
  static __m256i mask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n < W ? n : W), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static R set1(T v) { return _mm256_set1_pd(v); }
  static R load(const T* p) { return _mm256_loadu_pd(p); }
  // Lane l = p[idx[l]].
  static R gather_idx(const T* p, const int32_t* idx) {
    return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), p, _mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)),
                                    _mm256_castsi256_pd(_mm256_set1_epi64x(-1)), 8);
  }
  // Lane l = p[l * stride] (stride * 3 within int32).
  static R gather(const T* p, int64_t stride) {
    const __m128i idx = _mm_mullo_epi32(_mm_set1_epi32(int(stride)), _mm_setr_epi32(0, 1, 2, 3));
    return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), p, idx, _mm256_castsi256_pd(_mm256_set1_epi64x(-1)), 8);
  }
  // a0 b0 a1 b1 ... to p, its first n values.
  static void store_zip(T* p, R a, R b, int64_t n) {
    const R ul = _mm256_unpacklo_pd(a, b), uh = _mm256_unpackhi_pd(a, b);  // a0 b0 a2 b2 | a1 b1 a3 b3
    const R lo = _mm256_permute2f128_pd(ul, uh, 0x20), hi = _mm256_permute2f128_pd(ul, uh, 0x31);
    n >= W ? store(p, lo) : store_tail(p, lo, n);
    if (n > W) n >= 2 * W ? store(p + W, hi) : store_tail(p + W, hi, n - W);
  }
  static void store(T* p, R v) { _mm256_storeu_pd(p, v); }
  static R load_tail(const T* p, int64_t n, T fill) {
    __m256i m = mask(n);
    return _mm256_blendv_pd(set1(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
  }
  static void store_tail(T* p, R v, int64_t n) { _mm256_maskstore_pd(p, mask(n), v); }
  static constexpr int kStreamAlign = 32;
  static void stream(T* p, R v) { _mm256_stream_pd(p, v); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  // The even lanes of a then b (lanes 0, 2, 4, ... of their concatenation): a stride-2 gather.
  static R evens(R a, R b) { return _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), 0xD8); }  // [a0 b0 a2 b2] reordered
  static R max(R a, R b) { return _mm256_max_pd(a, b); }
  static R min(R a, R b) { return _mm256_min_pd(a, b); }
  static R div(R a, R b) { return _mm256_div_pd(a, b); }
  static R sqrt(R a) { return _mm256_sqrt_pd(a); }
  static R neg(R a) { return _mm256_xor_pd(a, set1(T(-0.0))); }
  static T reduce_add(R v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static T reduce_max(R v) {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static R exp(R x) {
    const R lo = set1(-708.0);
    R xc = _mm256_max_pd(lo, _mm256_min_pd(set1(709.0), x));
    R n = _mm256_round_pd(_mm256_mul_pd(xc, set1(1.4426950408889634)),
                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    R r = _mm256_fnmadd_pd(n, set1(6.93147180369123816490e-01), xc);
    r = _mm256_fnmadd_pd(n, set1(1.90821492927058770002e-10), r);
    R p = set1(1.0 / 6227020800.0);
    const double inv_fact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                               1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,
                               1.0 / 24.0,        1.0 / 6.0,        0.5,             1.0,
                               1.0};
    for (double c : inv_fact) p = fmadd(p, r, set1(c));
    __m256i k = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n));
    __m256i e = _mm256_slli_epi64(_mm256_add_epi64(k, _mm256_set1_epi64x(1023)), 52);
    R y = _mm256_mul_pd(p, _mm256_castsi256_pd(e));
    R underflow = _mm256_cmp_pd(x, lo, _CMP_LT_OQ);
    return _mm256_andnot_pd(underflow, y);
  }
};

}  // namespace dlk::cpu::avx2
