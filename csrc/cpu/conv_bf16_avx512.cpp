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

namespace dlk::cpu {
namespace {

constexpr int kMR = 6;   // output positions per tile
constexpr int kNVmax = 4;  // vectors of 16 output channels per tile

// One tile: positions q0 .. q0 + rows - 1 (rows <= kMR; missing rows repeat the last one and are not
// stored), output channels oc0 .. oc0 + 16 * NV - 1.
template <int NV>
void run_tile(const PairConvGeom& g, const uint32_t* xp, const uint32_t* wp, const float* bias, uint16_t* out,
              const Strides4& os, const int64_t* toff, int64_t q0, int64_t rows, int64_t oc0) {
  const int64_t C2 = g.C2(), OCp = g.OCp(), taps = g.taps();
  const uint32_t* xr[kMR];
  int64_t oo[kMR];
  for (int r = 0; r < kMR; ++r) {
    int64_t in;
    pair_conv_position(g, os, q0 + std::min<int64_t>(r, rows - 1), &in, &oo[r]);
    xr[r] = xp + in;
  }
  __m512 acc[kMR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const __m512 b0 = bias ? _mm512_loadu_ps(bias + oc0 + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int r = 0; r < kMR; ++r) acc[r][v] = b0;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t o = toff[t];
    const uint32_t *p0 = xr[0] + o, *p1 = xr[1] + o, *p2 = xr[2] + o, *p3 = xr[3] + o, *p4 = xr[4] + o,
                   *p5 = xr[5] + o;
    const uint32_t* wt = wp + t * C2 * OCp + oc0;
    for (int64_t c = 0; c < C2; ++c, wt += OCp) {
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
void wgrad_tile(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, float* acc, int64_t m0, int64_t mrows,
                int64_t oc0, int64_t r0, int64_t r1, bool first) {
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
    const int64_t o = pair_wgrad_image_row_offset(g, row);
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

void bf16_narrow_avx512bf16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(dst + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
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
#pragma omp parallel if (par)
  {
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
      const int64_t r1 = std::min(R, r0 + chunk);
#pragma omp for schedule(static)
      for (int64_t j = 0; j < work; ++j) {
        const int64_t blk = j / tiles, m0 = (j % tiles) * kMR, oc0 = blk * 16 * kNVmax;
        const int64_t mrows = std::min<int64_t>(kMR, M - m0);
        switch ((std::min<int64_t>(OCp - oc0, 16 * kNVmax)) / 16) {
          case 4: wgrad_tile<4>(g, xw, gp, acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
          case 3: wgrad_tile<3>(g, xw, gp, acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
          case 2: wgrad_tile<2>(g, xw, gp, acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
          default: wgrad_tile<1>(g, xw, gp, acc, m0, mrows, oc0, r0, r1, r0 == 0); break;
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t c = m / g.taps(), t = m % g.taps();
      uint16_t* dst = gw + c * ws.c + (t / g.KW) * ws.h + (t % g.KW) * ws.w;
      const float* a = acc + m * OCp;
      for (int64_t oc = 0; oc < g.OC; ++oc) dst[oc * ws.n] = float_to_bf16(a[oc]);
    }
  }
}

void pair_conv_forward_avx512bf16(const PairConvGeom& g, const uint32_t* xp, const uint32_t* wp, const float* bias,
                                  uint16_t* out, Strides4 os) {
  const int64_t P = g.N * g.OH * g.OW, OCp = g.OCp(), taps = g.taps();
  if (P == 0 || g.OC == 0) return;
  std::vector<int64_t> toff(static_cast<size_t>(taps));
  for (int64_t t = 0; t < taps; ++t) toff[size_t(t)] = pair_conv_tap_offset(g, t);
  const int64_t tiles = (P + kMR - 1) / kMR, blocks = (OCp + 16 * kNVmax - 1) / (16 * kNVmax);
  const int64_t work = tiles * blocks;
  // block-major: each thread sweeps positions with one block of filters (the block stays in L2)
#pragma omp parallel for schedule(static) if (P * g.OC * taps * g.C2() > (int64_t(1) << 16))
  for (int64_t j = 0; j < work; ++j) {
    const int64_t blk = j / tiles, tile = j % tiles, oc0 = blk * 16 * kNVmax, q0 = tile * kMR;
    const int64_t rows = std::min<int64_t>(kMR, P - q0);
    switch ((std::min<int64_t>(OCp - oc0, 16 * kNVmax)) / 16) {
      case 4: run_tile<4>(g, xp, wp, bias, out, os, toff.data(), q0, rows, oc0); break;
      case 3: run_tile<3>(g, xp, wp, bias, out, os, toff.data(), q0, rows, oc0); break;
      case 2: run_tile<2>(g, xp, wp, bias, out, os, toff.data(), q0, rows, oc0); break;
      default: run_tile<1>(g, xp, wp, bias, out, os, toff.data(), q0, rows, oc0); break;
    }
  }
}

}  // namespace dlk::cpu
