// The pooling kernels' float32 lanes on 256-bit registers: loads, the max pooling take test, blends
// of values and 32-bit indices, copies (plain, NaN-testing, streamed, widening) and the merge of
// stride-2 gradient rows kept as even and odd columns. Include only after a target pragma that enables
// AVX2 (and GCC's no-tree-loop-distribute-patterns, or the copy loops become memcpy calls again):
// pooling_avx2.cpp, and pooling_avx512.cpp, which uses the same 256-bit lanes (no AVX-512 machine was
// available to test 512-bit ones, and the kernels are close to memory traffic once vectorized).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace dlk::cpu::avx2 {
// Internal linkage: pooling_avx512.cpp compiles these same functions for AVX-512, and a shared
// (weak) out-of-line copy could then reach the AVX2 path (tools/check_isa_isolation.sh).
namespace {

struct PoolLanes {
  using R = __m256;   // 8 floats
  using I = __m256i;  // 8 int32 positions
  static constexpr int W = 8;

  static R set1(float v) { return _mm256_set1_ps(v); }
  static I set1_i(int32_t v) { return _mm256_set1_epi32(v); }
  // Lane j holds j * s.
  static I lane_steps(int32_t s) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(s));
  }
  static I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  static I load_i(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

  static R load(const float* p) { return _mm256_loadu_ps(p); }
  // p[2 j] for j < 8: loads p[0..15] and keeps the even columns (the shuffle gives 0 2 8 10 | 4 6 12 14
  // per 128-bit half, the 64-bit permute puts them in order).
  static R load_even(const float* p) {
    const R a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    const R even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
  }

  // dst[2 i] = e[i], dst[2 i + 1] = o[i] for i < n (n a multiple of 8): a stride-2 gradient row kept as
  // its even and odd columns (see pooling_impl.h, Pad) merged back into one.
  static void merge(float* dst, const float* e, const float* o, int64_t n) {
    for (int64_t i = 0; i < n; i += 8) {
      const R a = _mm256_loadu_ps(e + i), b = _mm256_loadu_ps(o + i);
      const R lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);  // e0 o0 e1 o1 | e4 o4 e5 o5, ...
      _mm256_storeu_ps(dst + 2 * i, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_storeu_ps(dst + 2 * i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
  }

  // torch's max pooling test: a later tap replaces the best so far when strictly greater, or NaN.
  static R nan_mask(R v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
  static R take(R v, R best) { return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), nan_mask(v)); }
  // Without NaN (the caller has checked), the take test and the blend of the value are one max:
  // vmaxps a, b is a > b ? a : b, so a later equal value (a tie, or -0.0 after +0.0) never replaces.
  static R max_no_nan(R v, R best) { return _mm256_max_ps(v, best); }
  static R gt(R v, R best) { return _mm256_cmp_ps(v, best, _CMP_GT_OQ); }
  static R select(R m, R a, R b) { return _mm256_blendv_ps(b, a, m); }  // m ? a : b
  static I select_i(R m, I a, I b) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m));
  }

  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static void store_i(int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

  // dst[i] = src[i] (widened to int64 in the second form) for i < n. With stream, the whole 32-byte
  // aligned vectors of dst go out as non-temporal stores (no read-for-ownership of the destination,
  // no cache pollution), for outputs too big to stay in the cache; the caller fences with done().
  static void copy(float* dst, const float* src, int64_t n, bool stream) {
    int64_t i = 0;
    if (stream) {
      for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
      for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    } else {
      // vector moves: GCC turns a plain loop into a memmove call, whose start-up cost per 112-float row
      // was 40% of average pooling's kernel time with the input cached (and, without the including
      // file's pragma, turns this one into a memcpy call too)
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
    }
    for (; i < n; ++i) dst[i] = src[i];
  }
  // The non-streaming copy that also says whether src holds a NaN.
  static bool copy_has_nan(float* dst, const float* src, int64_t n) {
    R un = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const R v = _mm256_loadu_ps(src + i);
      un = _mm256_or_ps(un, nan_mask(v));
      _mm256_storeu_ps(dst + i, v);
    }
    bool nan = _mm256_movemask_ps(un) != 0;
    for (; i < n; ++i) {
      dst[i] = src[i];
      nan |= src[i] != src[i];
    }
    return nan;
  }
  static void copy(int64_t* dst, const int32_t* src, int64_t n, bool stream) {
    int64_t i = 0;
    if (stream) {
      for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
      for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
        _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)));
        _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
      }
    }
    for (; i < n; ++i) dst[i] = src[i];
  }
  // dst[i] = src[i] narrowed to a byte (0 <= src[i] < 256: max pooling's tap bytes) for i < n, with
  // plain stores (an eighth of the values' bytes: never streamed). Per 32 values: two saturating packs
  // give a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7, a 32-bit permute puts them in order.
  static void copy(uint8_t* dst, const int32_t* src, int64_t n, bool) {
    int64_t i = 0;
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= n; i += 32) {
      const __m256i a = load_i(src + i), b = load_i(src + i + 8), c = load_i(src + i + 16), d = load_i(src + i + 24);
      const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_permutevar8x32_epi32(bytes, order));
    }
    for (; i < n; ++i) dst[i] = uint8_t(src[i]);
  }
  // A hint to fetch the 64-byte line at p into the cache (no fault for any address).
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

  // Orders this thread's streaming stores before whatever it does next (e.g. the end of the parallel region).
  static void done(bool stream) {
    if (stream) _mm_sfence();
  }

  // p[j] += v[j] for j < 8.
  static void add_to(float* p, R v) { _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), v)); }
};

}  // namespace
}  // namespace dlk::cpu::avx2
