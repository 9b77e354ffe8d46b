// bfloat16 pair-dot convolution, AVX512-BF16 path (conv_bf16.h): register tiles of 6 output positions x
// up to 64 output channels (24 float32 accumulators), each step one weight-pair vector per 16 channels
// and one broadcast input pair per position, vdpbf16ps between them. Standard headers before the pragma.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv_bf16.h"

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma,avx512bf16")
// GCC 12's avx512fintrin.h builds its "undefined" vectors as self-initialized variables (`__Y = __Y`),
// which -Wmaybe-uninitialized reports once the intrinsics are inlined (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dlk::cpu {
namespace {

// 16 x 16 transpose of 32-bit words: lane j of r[i] goes to lane i of r[j]. Pairs, 4x4 blocks within each
// 128-bit lane, then the lanes across registers.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + j], lane L: column 4L + j of rows i .. i + 3
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8) {
    for (int j = 0; j < 4; ++j) {
      t[h + j] = _mm512_shuffle_i32x4(r[h + j], r[h + 4 + j], 0x88);      // lanes 0, 2 of both
      t[h + 4 + j] = _mm512_shuffle_i32x4(r[h + j], r[h + 4 + j], 0xdd);  // lanes 1, 3 of both
    }
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(t[4 + j], t[12 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd);
    r[12 + j] = _mm512_shuffle_i32x4(t[4 + j], t[12 + j], 0xdd);
  }
}

inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }
inline __mmask32 mask32(int64_t n) { return n >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << n) - 1u); }

constexpr int kMR = 6;   // output positions per tile
constexpr int kNVmax = 4;  // vectors of 16 output channels per tile

// One tile: the output positions qs[0 .. rows - 1] of one class (rows <= kMR; missing rows repeat the
// last one and are not stored), output channels oc0 .. oc0 + 16 * NV - 1, over the class's steps.
template <int NV>
void run_tile(const PairConvGeom& g, const PairConvPlan& plan, const uint32_t* xp, const uint32_t* wp,
              const float* bias, uint16_t* out, const Strides4& os, int64_t cls, const int64_t* qs, int64_t rows,
              int64_t oc0) {
  const uint32_t* xr[kMR];
  int64_t oo[kMR];
  for (int r = 0; r < kMR; ++r) {
    const int64_t q = qs[std::min<int64_t>(r, rows - 1)];
    xr[r] = xp + plan.pin[size_t(q)];
    oo[r] = plan.pout[size_t(q)];
  }
  __m512 acc[kMR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const __m512 b0 = bias ? _mm512_loadu_ps(bias + oc0 + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int r = 0; r < kMR; ++r) acc[r][v] = b0;
  }
  const int64_t s0 = plan.step_start[size_t(cls)], s1 = plan.step_start[size_t(cls) + 1];
  const int64_t *ko = plan.ko.data(), *wo = plan.wo.data();
  // one flat loop over the class's (tap, pair) steps: the weights at wo[k], the inputs at ko[k] words from
  // each position's first tap (a 3-channel layer has 2 pairs a tap: no inner loop that short)
  const uint32_t *p0 = xr[0], *p1 = xr[1], *p2 = xr[2], *p3 = xr[3], *p4 = xr[4], *p5 = xr[5];
  const uint32_t* w0 = wp;  // the block's packed filters
  for (int64_t k = s0; k < s1; ++k) {
    const int64_t c = ko[k];
    const uint32_t* wt = w0 + wo[k];
    __m512bh wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = (__m512bh)_mm512_loadu_si512(wt + 16 * v);
#define DLK_PAIR_ROW(r)                                                          \
  {                                                                              \
    const __m512bh b = (__m512bh)_mm512_set1_epi32(int(p##r[c]));                \
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], wv[v], b); \
  }
    DLK_PAIR_ROW(0) DLK_PAIR_ROW(1) DLK_PAIR_ROW(2) DLK_PAIR_ROW(3) DLK_PAIR_ROW(4) DLK_PAIR_ROW(5)
#undef DLK_PAIR_ROW
  }
  bool run = os.c != 1;  // NCHW-like output, the tile's positions adjacent in memory
  for (int r = 1; r < rows; ++r) run = run && oo[r] == oo[0] + r;
  if (run) {
    // each 16 channels' sums transposed: a channel's values at the tile's positions are one masked store
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t oc = oc0 + 16 * v, valid = std::min<int64_t>(16, g.OC - oc);
      if (valid <= 0) break;
      __m512i t[16];
      for (int r = 0; r < 16; ++r) t[r] = r < kMR ? _mm512_castps_si512(acc[r][v]) : _mm512_setzero_si512();
      transpose16(t);
      for (int64_t i = 0; i < valid; ++i)
        _mm256_mask_storeu_epi16(out + oo[0] + (oc + i) * os.c, mask16(rows),
                                 (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(t[i])));
    }
    return;
  }
  for (int r = 0; r < rows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t oc = oc0 + 16 * v, valid = std::min<int64_t>(16, g.OC - oc);
      if (valid <= 0) break;
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(acc[r][v]);
      if (os.c == 1) {
        _mm256_mask_storeu_epi16(out + oo[r] + oc, __mmask16((1u << valid) - 1u), h);
      } else {
        alignas(32) uint16_t tmp[16];
        _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), h);
        uint16_t* dst = out + oo[r] + oc * os.c;
        for (int64_t i = 0; i < valid; ++i) dst[i * os.c] = tmp[i];
      }
    }
  }
}

// One weight-gradient tile: filter tap rows m0 .. m0 + mrows - 1 (missing rows repeat the last one and are
// not stored) x output channels oc0 .. oc0 + 16 * NV - 1, summed over output rows [r0, r1) on top of the
// float32 sums in acc (zero when first).
template <int NV>
void wgrad_tile(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, const int64_t* roff, float* acc,
                int64_t m0, int64_t mrows, int64_t oc0, int64_t r0, int64_t r1, bool first) {
  const int64_t OCp = g.OCp(), OWh = g.OWh();
  const uint16_t* base[kMR];
  for (int r = 0; r < kMR; ++r) base[r] = xw + pair_wgrad_row_offset(g, m0 + std::min<int64_t>(r, mrows - 1));
  __m512 a[kMR][NV];
#pragma GCC unroll 6
  for (int r = 0; r < kMR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      a[r][v] = first || r >= mrows ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + (m0 + r) * OCp + oc0 + 16 * v);
  }
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t o = roff[row];
    const uint16_t *p0 = base[0] + o, *p1 = base[1] + o, *p2 = base[2] + o, *p3 = base[3] + o, *p4 = base[4] + o,
                   *p5 = base[5] + o;
    const uint32_t* gr = gp + row * OWh * OCp + oc0;
    for (int64_t p = 0; p < OWh; ++p, gr += OCp) {
      __m512bh gv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) gv[v] = (__m512bh)_mm512_loadu_si512(gr + 16 * v);
#define DLK_PAIR_ROW(r)                                                          \
  {                                                                              \
    const __m512bh b = (__m512bh)_mm512_set1_epi32(int(load_pair(p##r + 2 * p))); \
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) a[r][v] = _mm512_dpbf16_ps(a[r][v], gv[v], b); \
  }
      DLK_PAIR_ROW(0) DLK_PAIR_ROW(1) DLK_PAIR_ROW(2) DLK_PAIR_ROW(3) DLK_PAIR_ROW(4) DLK_PAIR_ROW(5)
#undef DLK_PAIR_ROW
    }
  }
  for (int r = 0; r < mrows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(acc + (m0 + r) * OCp + oc0 + 16 * v, a[r][v]);
  }
}


}  // namespace

// Transposes rows of T values: K rows (16 or 32) of T bfloat16 values each, contiguous from seg (only the
// first `valid` values are read, the rest taken as zero), into T vectors: out[t] lane k = seg[k * T + t]
// (lanes past K zero). Each output gathers its lanes from pairs of loaded registers by permutes: one
// permute and one blend per pair. T <= 16.
struct RowTranspose {
  int K, T, regs, pairs;
  std::vector<uint16_t> idx;    // [t][pair][32 lanes] (plain values: a vector of __m512i needs 64-byte
  std::vector<__mmask32> mask;  // [t][pair]            alignment the allocator does not promise here)
  RowTranspose(int K_, int T_) : K(K_), T(T_), regs((K_ * T_ + 31) / 32), pairs((regs + 1) / 2) {
    idx.assign(size_t(T * pairs * 32), 0);
    mask.assign(size_t(T * pairs), 0);
    for (int t = 0; t < T; ++t) {
      for (int p = 0; p < pairs; ++p) {
        for (int k = 0; k < K; ++k) {
          const int gidx = k * T + t;
          if (gidx / 64 == p) {
            idx[size_t((t * pairs + p) * 32 + k)] = uint16_t(gidx % 64);
            mask[size_t(t * pairs + p)] |= __mmask32(1u << k);
          }
        }
      }
    }
  }
  void run(const uint16_t* seg, int64_t valid, __m512i* out) const {
    __m512i r[34];
    for (int j = 0; j < 2 * pairs; ++j) {
      const int64_t n = std::clamp<int64_t>(valid - 32 * j, 0, 32);
      r[j] = j < regs ? _mm512_maskz_loadu_epi16(mask32(n), seg + 32 * j) : _mm512_setzero_si512();
    }
    for (int t = 0; t < T; ++t) {
      __m512i o = _mm512_setzero_si512();
      for (int p = 0; p < pairs; ++p)
        o = _mm512_mask_blend_epi16(
            mask[size_t(t * pairs + p)], o,
            _mm512_permutex2var_epi16(r[2 * p], _mm512_loadu_si512(idx.data() + (t * pairs + p) * 32), r[2 * p + 1]));
      out[t] = o;
    }
  }
};

// 32 values src[s0 .. s0 + 32), zero where the index is outside [0, W) (masked: nothing outside is read).
inline __m512i row_window(const uint16_t* src, int64_t s0, int64_t W) {
  const int64_t lo = std::clamp<int64_t>(-s0, 0, 32), hi = std::clamp<int64_t>(W - s0, lo, 32);
  const __mmask32 m = mask32(hi) & ~mask32(lo);
  return _mm512_maskz_loadu_epi16(m, src + s0);
}

// The image rows [r_lo, r_hi) of one plane of pair_conv_pack_wgrad_input, for rows of stride 1
// (xs.w == 1) and column strides 1 or 2: 32 columns of a phase per step, the stride-2 phases picked out
// of 64 values by one permute. With check, false when a value is not finite.
bool pair_conv_pack_wgrad_plane_avx512bf16(const PairConvGeom& g, const uint16_t* src_plane, Strides4 xs,
                                           int64_t r_lo, int64_t r_hi, bool check, uint16_t* plane) {
  const int64_t SW = g.SW, Wj = g.Wj(), row = SW * Wj;
  alignas(64) static constexpr uint16_t even_idx[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20,
                                                         22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42,
                                                         44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
  const __m512i pick = _mm512_load_si512(even_idx), expo = _mm512_set1_epi16(0x7f80);
  __mmask32 seen = 0;
  for (int64_t r = r_lo; r < r_hi; ++r) {
    const uint16_t* src = src_plane + (r - g.PH) * xs.h;
    uint16_t* dst = plane + r * row;
    for (int64_t ph = 0; ph < SW; ++ph) {
      for (int64_t j0 = 0; j0 < Wj; j0 += 32) {
        const int64_t s0 = j0 * SW + ph - g.PW;
        __m512i v = row_window(src, s0, g.W);
        if (SW == 2) v = _mm512_permutex2var_epi16(v, pick, row_window(src, s0 + 32, g.W));
        _mm512_mask_storeu_epi16(dst + ph * Wj + j0, mask32(Wj - j0), v);
      }
    }
    if (check) {
      for (int64_t s0 = 0; s0 < g.W; s0 += 32) {
        const __m512i v = row_window(src, s0, g.W);
        seen |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, expo), expo);
      }
    }
  }
  return !seen;
}

bool pair_conv_pack_weight_avx512bf16(const PairConvGeom& g, const uint16_t* w, Strides4 ws, bool flip,
                                      uint32_t* wp, int64_t oc_begin, int64_t oc_end, int64_t stride) {
  const int64_t T = g.taps(), C2 = g.C2();
  if (T > 16 || ws.h != g.KW || ws.w != 1) return false;
  if (!flip && ws.c == T) {
    // the layer's own filters, each (C, T) contiguous: per filter, 32 channels' taps transposed to T
    // vectors of 16 pairs; per tap, 16 filters x 16 pairs transposed to 16 vectors of the filters' words
    const RowTranspose tr(32, int(T));
    const int64_t ob = (oc_end - oc_begin) / 16, cb = (C2 + 15) / 16;
#pragma omp parallel for schedule(static) if (ob * 16 * T * C2 > (int64_t(1) << 15) && !omp_in_parallel())
    for (int64_t b = 0; b < ob * cb; ++b) {
      const int64_t oc0 = oc_begin + b / cb * 16, c0 = b % cb * 16, nc = std::min<int64_t>(16, C2 - c0);
      __m512i rows[16][16];
      for (int64_t i = 0; i < 16; ++i) {
        if (oc0 + i < g.OC) {
          tr.run(w + (oc0 + i) * ws.n + 2 * c0 * T, std::min<int64_t>(32, g.C - 2 * c0) * T, rows[i]);
        } else {
          for (int64_t t = 0; t < T; ++t) rows[i][t] = _mm512_setzero_si512();
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        __m512i r[16];
        for (int i = 0; i < 16; ++i) r[i] = rows[i][t];
        transpose16(r);
        for (int64_t j = 0; j < nc; ++j)
          _mm512_storeu_si512(wp + (t * C2 + c0 + j) * stride + (oc0 - oc_begin), r[j]);
      }
    }
    return true;
  }
  if (flip && ws.n == T) {
    // the input gradient's filters of a stride-1 layer: lanes (the layer's input channels) run along each
    // of the layer's filters, pairs across two filters: per filter, 16 channels' taps transposed to T
    // vectors, then two filters' vectors interleaved into words
    const RowTranspose tr(16, int(T));
    const int64_t ob = (oc_end - oc_begin) / 16;
#pragma omp parallel for schedule(static) if (ob * 16 * T * C2 > (int64_t(1) << 15) && !omp_in_parallel())
    for (int64_t b = 0; b < ob * C2; ++b) {
      const int64_t c0 = oc_begin + b / C2 * 16, o2 = b % C2;
      const int64_t valid = std::clamp<int64_t>(g.OC - c0, 0, 16) * T;
      __m512i lo[16], hi[16];
      tr.run(w + 2 * o2 * ws.c + c0 * T, valid, lo);
      if (2 * o2 + 1 < g.C) {
        tr.run(w + (2 * o2 + 1) * ws.c + c0 * T, valid, hi);
      } else {
        for (int64_t t = 0; t < T; ++t) hi[t] = _mm512_setzero_si512();
      }
      for (int64_t t = 0; t < T; ++t) {
        const __m512i a = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(lo[t]));
        const __m512i h = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(hi[t]));
        _mm512_storeu_si512(wp + ((T - 1 - t) * C2 + o2) * stride + (c0 - oc_begin),
                            _mm512_or_si512(a, _mm512_slli_epi32(h, 16)));
      }
    }
    return true;
  }
  return false;
}

// One padded row of pair_conv_pack_input from NCHW rows (xs.w == 1; row: image n's row ih of channel 0),
// columns [w_lo, w_hi): blocks of 16 channel pairs x 16 columns, each pair's two rows interleaved into
// words, then transposed so that a column's pairs are one store.
void pair_conv_pack_input_row_avx512bf16(const PairConvGeom& g, const uint16_t* row, Strides4 xs, int64_t w_lo,
                                         int64_t w_hi, uint32_t* dst) {
  const int64_t C2 = g.C2();
  for (int64_t c0 = 0; c0 < C2; c0 += 16) {
    const int64_t nc = std::min<int64_t>(16, C2 - c0);
    for (int64_t s0 = w_lo; s0 < w_hi; s0 += 16) {
      const int64_t ns = std::min<int64_t>(16, w_hi - s0);
      const __mmask16 sm = mask16(ns);
      __m512i r[16];
      for (int64_t j = 0; j < 16; ++j) {
        if (j >= nc) {
          r[j] = _mm512_setzero_si512();
          continue;
        }
        const uint16_t* a = row + 2 * (c0 + j) * xs.c + (s0 - g.PW);
        const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(sm, a));
        const __m512i hi = 2 * (c0 + j) + 1 < g.C ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(sm, a + xs.c))
                                                  : _mm512_setzero_si512();
        r[j] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
      }
      transpose16(r);
      for (int64_t i = 0; i < ns; ++i) _mm512_mask_storeu_epi32(dst + (s0 + i) * C2 + c0, mask16(nc), r[i]);
    }
  }
}

// pair_conv_pack_wgrad_grad of NCHW rows (gs.w == 1): each output channel's row is already its pairs of
// positions; blocks of 16 channels x 16 pairs transposed.
void pair_conv_pack_wgrad_grad_avx512bf16(const PairConvGeom& g, const uint16_t* gy, Strides4 gs, uint32_t* gp) {
  const int64_t OWh = g.OWh(), OCp = g.OCp(), rows = g.N * g.OH;
#pragma omp parallel for schedule(static) if (g.wgrad_grad_words() > (int64_t(1) << 15))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    uint32_t* dst = gp + row * OWh * OCp;
    for (int64_t oc0 = 0; oc0 < OCp; oc0 += 16) {
      for (int64_t p0 = 0; p0 < OWh; p0 += 16) {
        const int64_t np = std::min<int64_t>(16, OWh - p0);
        const __mmask32 m = mask32(g.OW - 2 * p0);
        __m512i r[16];
        for (int64_t j = 0; j < 16; ++j)
          r[j] = oc0 + j < g.OC ? _mm512_maskz_loadu_epi16(m, gy + n * gs.n + (oc0 + j) * gs.c + oh * gs.h + 2 * p0)
                                : _mm512_setzero_si512();
        transpose16(r);
        for (int64_t i = 0; i < np; ++i) _mm512_storeu_si512(dst + (p0 + i) * OCp + oc0, r[i]);
      }
    }
  }
}

void bf16_widen_avx512bf16(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
    _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
}

// Rounding by integer arithmetic, as float_to_bf16 (and torch's conversion): vcvtneps2bf16 flushes
// subnormal floats to zero (measured on this Zen 4: 5.9e-39 -> 0).
inline __m256i narrow16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                               _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

void bf16_narrow_avx512bf16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), narrow16(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(dst + i, m, narrow16(_mm512_maskz_loadu_ps(m, src + i)));
  }
}

void pair_conv_weight_grad_avx512bf16(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, float* acc,
                                      uint16_t* gw, Strides4 ws) {
  const int64_t M = g.C * g.taps(), OCp = g.OCp(), R = g.N * g.OH;
  const int64_t tiles = (M + kMR - 1) / kMR, blocks = (OCp + 16 * kNVmax - 1) / (16 * kNVmax), work = tiles * blocks;
  // chunks of output rows whose grad_output words for one block of filters fill about 128 KiB (in L2
  // while every tile of rows passes over them)
  const int64_t row_bytes = g.OWh() * std::min<int64_t>(OCp, 16 * kNVmax) * 4;
  const int64_t chunk = std::max<int64_t>(1, (int64_t(128) << 10) / std::max<int64_t>(row_bytes, 1));
  const bool par = M * OCp * R * g.OWh() > (int64_t(1) << 16);
  // each output row's offset in xw (two divisions a row cost as much as the row's work at 4x4)
  std::vector<int64_t> roff(static_cast<size_t>(R));
  for (int64_t row = 0; row < R; ++row) roff[size_t(row)] = pair_wgrad_image_row_offset(g, row);
#pragma omp parallel if (par)
  {
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
      const int64_t r1 = std::min(R, r0 + chunk);
#pragma omp for schedule(static)
      for (int64_t j = 0; j < work; ++j) {
        const int64_t blk = j / tiles, m0 = (j % tiles) * kMR, oc0 = blk * 16 * kNVmax;
        const int64_t mrows = std::min<int64_t>(kMR, M - m0);
        switch ((std::min<int64_t>(OCp - oc0, 16 * kNVmax)) / 16) {
          case 4: wgrad_tile<4>(g, xw, gp, roff.data(), acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
          case 3: wgrad_tile<3>(g, xw, gp, roff.data(), acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
          case 2: wgrad_tile<2>(g, xw, gp, roff.data(), acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
          default: wgrad_tile<1>(g, xw, gp, roff.data(), acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
        }
      }
    }
    if (ws.w == 1 && ws.h == g.KW && ws.c == g.taps() && ws.n == M) {
      // a contiguous gradient: (M, OCp) sums to (OC, M) by 16 x 16 transposes, rows of 16 stores
      const int64_t mb = (M + 15) / 16, ob = (g.OC + 15) / 16;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < mb * ob; ++b) {
        const int64_t m0 = b / ob * 16, oc0 = b % ob * 16, nm = std::min<int64_t>(16, M - m0);
        __m512i r[16];
        for (int64_t j = 0; j < 16; ++j)
          r[j] = j < nm ? _mm512_loadu_si512(acc + (m0 + j) * OCp + oc0) : _mm512_setzero_si512();
        transpose16(r);
        for (int64_t i = 0; i < std::min<int64_t>(16, g.OC - oc0); ++i)
          _mm256_mask_storeu_epi16(gw + (oc0 + i) * M + m0, mask16(nm),
                                   (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(r[i])));
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) {
        const int64_t c = m / g.taps(), t = m % g.taps();
        uint16_t* dst = gw + c * ws.c + (t / g.KW) * ws.h + (t % g.KW) * ws.w;
        const float* a = acc + m * OCp;
        for (int64_t oc = 0; oc < g.OC; ++oc) dst[oc * ws.n] = float_to_bf16(a[oc]);
      }
    }
  }
}

void pair_conv_forward_avx512bf16(const PairConvGeom& g, const uint32_t* xp, const uint16_t* w, Strides4 ws,
                                  bool flip, const float* bias, uint16_t* out, Strides4 os) {
  const int64_t P = g.N * g.OH * g.OW, OCp = g.OCp(), taps = g.taps();
  if (P == 0 || g.OC == 0) return;
  constexpr int64_t kBlock = 16 * kNVmax;
  const PairConvPlan plan = pair_conv_plan(g, os, kBlock);
  // tiles of up to kMR positions within each class: (class, first index into plan.order, rows)
  std::vector<int64_t> tile_cls, tile_at, tile_rows;
  for (int64_t i = 0; i < plan.classes(); ++i) {
    for (int64_t j = plan.class_start[size_t(i)]; j < plan.class_start[size_t(i) + 1]; j += kMR) {
      tile_cls.push_back(i);
      tile_at.push_back(j);
      tile_rows.push_back(std::min<int64_t>(kMR, plan.class_start[size_t(i) + 1] - j));
    }
  }
  const int64_t tiles = int64_t(tile_cls.size()), blocks = (OCp + kBlock - 1) / kBlock, work = tiles * blocks;
  const int64_t block_words = taps * g.C2() * kBlock;
  const bool par = P * g.OC * taps * g.C2() > (int64_t(1) << 16);
  // Each thread takes a contiguous share of the (block, tile) items, block-major, and packs each block of
  // filters it meets into its own buffer just before sweeping its positions with it: the packed block
  // (590 KiB at 512 channels of 3x3) stays in L2 instead of making a round trip through memory (the
  // whole packing of 512 x 512 x 3 x 3 took 1.0 ms, memory-bound).
#pragma omp parallel if (par)
  {
    const int64_t nth = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t j0 = work * id / nth, j1 = work * (id + 1) / nth;
    thread_local std::vector<uint32_t> buffer;
    if (int64_t(buffer.size()) < block_words) buffer.resize(size_t(block_words));
    uint32_t* wb = buffer.data();
    for (int64_t j = j0; j < j1;) {
      const int64_t blk = j / tiles, ta = j % tiles, tb = std::min(tiles, ta + (j1 - j));
      const int64_t oc0 = blk * kBlock, width = std::min(kBlock, OCp - oc0);
      pair_conv_pack_weight(g, w, ws, flip, wb, oc0, oc0 + width, kBlock);
      for (int64_t tile = ta; tile < tb; ++tile) {
        const int64_t cls = tile_cls[size_t(tile)], rows = tile_rows[size_t(tile)];
        const int64_t* qs = plan.order.data() + tile_at[size_t(tile)];
        switch (width / 16) {
          case 4: run_tile<4>(g, plan, xp, wb, bias, out, os, cls, qs, rows, oc0); break;
          case 3: run_tile<3>(g, plan, xp, wb, bias, out, os, cls, qs, rows, oc0); break;
          case 2: run_tile<2>(g, plan, xp, wb, bias, out, os, cls, qs, rows, oc0); break;
          default: run_tile<1>(g, plan, xp, wb, bias, out, os, cls, qs, rows, oc0); break;
        }
      }
      j += tb - ta;
    }
  }
}

}  // namespace dlk::cpu
