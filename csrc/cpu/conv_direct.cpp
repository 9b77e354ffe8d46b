// float32/float64 direct convolution (conv_direct.h): the packing of the operands and the choice of
// kernel. The kernels are in conv_direct_impl.h, one copy per ISA path.
#include "cpu/conv_direct.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/isa.h"

namespace dlk::cpu {

template <class T> void direct_conv_pack_input(const PairConvGeom& g, const T* x, Strides4 xs, T* xp) {
  const int64_t Hp = g.Hp(), Wp = g.Wp(), C = g.C, rows = g.N * Hp;
#pragma omp parallel for schedule(static) if (g.input_words() > (int64_t(1) << 15))
  for (int64_t nr = 0; nr < rows; ++nr) {
    const int64_t n = nr / Hp, ih = nr % Hp - g.PH;
    T* dst = xp + nr * Wp * C;
    if (ih < 0 || ih >= g.H) {
      std::fill(dst, dst + Wp * C, T(0));
      continue;
    }
    // [w_lo, w_hi): inside the image (a negative padding starts the buffer inside it)
    const int64_t w_lo = std::clamp<int64_t>(g.PW, 0, Wp), w_hi = std::clamp<int64_t>(g.PW + g.W, w_lo, Wp);
    std::fill(dst, dst + w_lo * C, T(0));
    std::fill(dst + w_hi * C, dst + Wp * C, T(0));
    const T* row = x + n * xs.n + ih * xs.h;
    if (xs.c == 1 && xs.w == C) {  // channels_last: the row's pixels are already runs of C values
      std::memcpy(dst + w_lo * C, row + (w_lo - g.PW) * C, size_t((w_hi - w_lo) * C) * sizeof(T));
      continue;
    }
    // blocks of 16 columns: each channel's run read forward, the block's pixels written in cache
    for (int64_t s0 = w_lo; s0 < w_hi; s0 += 16) {
      const int64_t s1 = std::min(w_hi, s0 + 16);
      for (int64_t c = 0; c < C; ++c) {
        const T* src = row + c * xs.c + (s0 - g.PW) * xs.w;
        for (int64_t s = s0; s < s1; ++s) dst[s * C + c] = src[(s - s0) * xs.w];
      }
    }
  }
}

template <class T> int64_t direct_conv_block(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return direct_conv_block_avx512(static_cast<const T*>(nullptr));
    case Isa::Avx2: return direct_conv_block_avx2(static_cast<const T*>(nullptr));
    case Isa::Scalar: break;
  }
  return direct_conv_block_scalar(static_cast<const T*>(nullptr));
}

template <class T> void direct_conv_pack_grad(const PairConvGeom& g, const T* gy, Strides4 gs, T* gp, Isa isa) {
  const int64_t B = direct_conv_block<T>(isa), blocks = (g.OCp() + B - 1) / B, rows = g.N * g.OH, P = rows * g.OW;
#pragma omp parallel for schedule(static) if (blocks * P * B > (int64_t(1) << 15))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    const T* src = gy + n * gs.n + oh * gs.h;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t oc0 = b * B, nc = std::clamp<int64_t>(g.OC - oc0, 0, B);
      T* dst = gp + (b * P + row * g.OW) * B;
      if (gs.c == 1) {  // runs of a position's channels
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          std::memcpy(dst + ow * B, src + ow * gs.w + oc0, size_t(nc) * sizeof(T));
          std::fill(dst + ow * B + nc, dst + (ow + 1) * B, T(0));
        }
        continue;
      }
      for (int64_t j = 0; j < B; ++j) {
        const T* s = src + (oc0 + j) * gs.c;
        for (int64_t ow = 0; ow < g.OW; ++ow) dst[ow * B + j] = j < nc ? s[ow * gs.w] : T(0);
      }
    }
  }
}

template <class T>
void direct_conv_pack_weight(const PairConvGeom& g, const T* w, Strides4 ws, bool flip, T* wp, int64_t oc_begin,
                             int64_t oc_end, int64_t stride) {
  const int64_t C = g.C, taps = g.taps(), width = oc_end - oc_begin;
  const int64_t n = std::clamp<int64_t>(g.OC - oc_begin, 0, width);
  // a row (t, c) at a time: n filters read with stride ws.n, one run of `width` values written
#pragma omp parallel for schedule(static) if (width * taps * C > (int64_t(1) << 15) && !omp_in_parallel())
  for (int64_t m = 0; m < taps * C; ++m) {
    const int64_t t = m / C, c = m % C;
    const int64_t kh = flip ? g.KH - 1 - t / g.KW : t / g.KW, kw = flip ? g.KW - 1 - t % g.KW : t % g.KW;
    const T* a = w + oc_begin * ws.n + c * ws.c + kh * ws.h + kw * ws.w;
    T* dst = wp + m * stride;
    for (int64_t i = 0; i < n; ++i) dst[i] = a[i * ws.n];
    for (int64_t i = n; i < width; ++i) dst[i] = T(0);
  }
}

template <class T>
void direct_conv_forward(const PairConvGeom& g, const T* xp, const T* w, Strides4 ws, bool flip, const T* bias,
                         T* out, Strides4 os) {
  if (g.N * g.OH * g.OW == 0 || g.OC == 0) return;
  switch (current_isa()) {
    case Isa::Avx512: return direct_conv_forward_avx512(g, xp, w, ws, flip, bias, out, os);
    case Isa::Avx2: return direct_conv_forward_avx2(g, xp, w, ws, flip, bias, out, os);
    case Isa::Scalar: break;
  }
  direct_conv_forward_scalar(g, xp, w, ws, flip, bias, out, os);
}

template <class T>
void direct_conv_weight_grad(const PairConvGeom& g, const T* xp, const T* gp, T* acc, T* gw, Strides4 ws, Isa isa) {
  const int64_t M = g.C * g.taps(), OCp = g.OCp();
  if (g.N * g.OH * g.OW == 0) {
    std::fill(acc, acc + M * OCp, T(0));
  } else {
    switch (isa) {
      case Isa::Avx512: direct_conv_weight_grad_avx512(g, xp, gp, acc); break;
      case Isa::Avx2: direct_conv_weight_grad_avx2(g, xp, gp, acc); break;
      case Isa::Scalar: direct_conv_weight_grad_scalar(g, xp, gp, acc); break;
    }
  }
  // acc (M, OCp), rows (t, c) -> gw (oc, c, kh, kw) through its strides, in blocks of 16 rows x 16
  // filters (one value at a time over the whole gradient read acc OCp values apart: 1.5 ms for 256 x
  // 256 x 3 x 3)
  const int64_t mb = (M + 15) / 16, ob = (g.OC + 15) / 16;
#pragma omp parallel for schedule(static) if (M * g.OC > (int64_t(1) << 15))
  for (int64_t b = 0; b < mb * ob; ++b) {
    const int64_t m0 = b / ob * 16, oc0 = b % ob * 16, m1 = std::min(M, m0 + 16), oc1 = std::min(g.OC, oc0 + 16);
    for (int64_t oc = oc0; oc < oc1; ++oc) {
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t t = m / g.C, c = m % g.C;
        gw[oc * ws.n + c * ws.c + (t / g.KW) * ws.h + (t % g.KW) * ws.w] = acc[m * OCp + oc];
      }
    }
  }
}

#define DLK_DIRECT_INSTANTIATE(T)                                                                               \
  template void direct_conv_pack_input<T>(const PairConvGeom&, const T*, Strides4, T*);                        \
  template void direct_conv_pack_grad<T>(const PairConvGeom&, const T*, Strides4, T*, Isa);                    \
  template int64_t direct_conv_block<T>(Isa);                                                                  \
  template void direct_conv_pack_weight<T>(const PairConvGeom&, const T*, Strides4, bool, T*, int64_t, int64_t, \
                                           int64_t);                                                           \
  template void direct_conv_forward<T>(const PairConvGeom&, const T*, const T*, Strides4, bool, const T*, T*,   \
                                       Strides4);                                                              \
  template void direct_conv_weight_grad<T>(const PairConvGeom&, const T*, const T*, T*, T*, Strides4, Isa);
DLK_DIRECT_INSTANTIATE(float)
DLK_DIRECT_INSTANTIATE(double)
#undef DLK_DIRECT_INSTANTIATE

}  // namespace dlk::cpu
