// im2col convolution: the scalar reference path (conv_impl.h at the baseline ISA) and the ISA dispatch.
#include "cpu/conv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "cpu/simd_scalar.h"
#include "cpu/conv_impl.h"
#include "cpu/isa.h"

namespace dlk::cpu {

DLK_CONV_DEFINE(scalar, scalar, float)
DLK_CONV_DEFINE(scalar, scalar, double)

DLK_ISA_DISPATCH(im2col, (const Im2colGeom& g, const T* in, T* col), (g, in, col))
DLK_ISA_DISPATCH(col2im, (const Im2colGeom& g, const T* col, T* out), (g, col, out))
DLK_ISA_DISPATCH(im2col_nhwc, (const Im2colGeom& g, const T* in, T* col), (g, in, col))
DLK_ISA_DISPATCH(col2im_nhwc, (const Im2colGeom& g, const T* col, T* out), (g, col, out))
DLK_ISA_DISPATCH(conv_rows_to_images, (int64_t B, int64_t OC, int64_t L, const T* rows, const T* bias, T* out),
                  (B, OC, L, rows, bias, out))
DLK_ISA_DISPATCH(conv_images_to_rows, (int64_t B, int64_t OC, int64_t L, const T* images, T* rows),
                  (B, OC, L, images, rows))
DLK_ISA_DISPATCH(channel_sum, (int64_t N, int64_t C, int64_t L, const T* in, T* out), (N, C, L, in, out))
DLK_ISA_DISPATCH(conv_gemm_wide,
                 (int64_t M, int64_t K, int64_t N, const T* A, int64_t sam, int64_t sak, const T* B, T* C,
                  int64_t batch, int64_t bstride, int64_t cstride),
                 (M, K, N, A, sam, sak, B, C, batch, bstride, cstride))
DLK_ISA_DISPATCH(conv_gemm_dots, (int64_t M, int64_t K, int64_t N, const T* A, const T* B, T* C, double* work),
                 (M, K, N, A, B, C, work))

// (the Winograd kernels return whether they ran: DLK_ISA_DISPATCH's functions return nothing)
template <class T>
bool conv_winograd(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f, const T* bias, T* out,
                   T* work, int64_t threads) {
  switch (current_isa()) {
    case Isa::Avx512: return conv_winograd_avx512(g, in, w, f, bias, out, work, threads);
    case Isa::Avx2: return conv_winograd_avx2(g, in, w, f, bias, out, work, threads);
    case Isa::Scalar: break;
  }
  return conv_winograd_scalar(g, in, w, f, bias, out, work, threads);
}
template <class T>
bool conv_winograd_nhwc(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f, const T* bias,
                        T* out, T* work, int64_t threads) {
  switch (current_isa()) {
    case Isa::Avx512: return conv_winograd_nhwc_avx512(g, in, w, f, bias, out, work, threads);
    case Isa::Avx2: return conv_winograd_nhwc_avx2(g, in, w, f, bias, out, work, threads);
    case Isa::Scalar: break;
  }
  return conv_winograd_nhwc_scalar(g, in, w, f, bias, out, work, threads);
}
template <class T>
bool conv_winograd_weight_grad(const WinogradGeom& g, const T* in, const T* gy, bool nhwc, T* gw,
                               const WinogradFilters& f, T* work, int64_t threads, int64_t images) {
  switch (current_isa()) {
    case Isa::Avx512: return conv_winograd_weight_grad_avx512(g, in, gy, nhwc, gw, f, work, threads, images);
    case Isa::Avx2: return conv_winograd_weight_grad_avx2(g, in, gy, nhwc, gw, f, work, threads, images);
    case Isa::Scalar: break;
  }
  return conv_winograd_weight_grad_scalar(g, in, gy, nhwc, gw, f, work, threads, images);
}

DLK_ISA_DISPATCH(conv_direct_forward, (const DirectGeom& d, const T* in, const T* w, const T* bias, T* out),
                 (d, in, w, bias, out))

DLK_ISA_DISPATCH(conv_depthwise_forward, (const DepthwiseGeom& d, const T* in, const T* w, const T* bias, T* out),
                 (d, in, w, bias, out))
DLK_ISA_DISPATCH(conv_depthwise_input_grad, (const DepthwiseGeom& d, const T* grad_out, const T* w, T* grad_in),
                 (d, grad_out, w, grad_in))
DLK_ISA_DISPATCH(conv_depthwise_weight_grad, (const DepthwiseGeom& d, const T* in, const T* grad_out, T* grad_w),
                 (d, in, grad_out, grad_w))
DLK_ISA_DISPATCH(conv_depthwise_nhwc_forward, (const DepthwiseGeom& d, const T* in, const T* wt, const T* bias, T* out),
                 (d, in, wt, bias, out))
DLK_ISA_DISPATCH(conv_depthwise_nhwc_input_grad, (const DepthwiseGeom& d, const T* grad_out, const T* wt, T* grad_in),
                 (d, grad_out, wt, grad_in))
DLK_ISA_DISPATCH(conv_depthwise_nhwc_weight_grad,
                 (const DepthwiseGeom& d, const T* in, const T* grad_out, T* grad_wt, double* work),
                 (d, in, grad_out, grad_wt, work))

void im2col_bits16(const Im2colGeom& g, const uint16_t* in, uint16_t* col) {
  const int64_t rows = g.rows(), KK = g.KH * g.KW, plane = g.H * g.W;
  const int64_t tasks = rows * g.images;
#pragma omp parallel for schedule(static) if (tasks * g.positions() > (int64_t(1) << 15))
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t r = t / g.images, b = t % g.images;
    const int64_t c = r / KK, kh = (r % KK) / g.KW, kw = r % g.KW;
    const uint16_t* x = in + (b * g.C + c) * plane;
    uint16_t* dst = col + r * g.row_stride + b * g.image_stride;
    const int64_t off = kw * g.DW - g.PW;
    int64_t lo, hi;
    conv_tap_range(off, g.SW, g.W, g.OW, lo, hi);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      uint16_t* d = dst + oh * g.OW;
      const int64_t h = oh * g.SH - g.PH + kh * g.DH;
      if (h < 0 || h >= g.H || hi < lo) {
        std::fill(d, d + g.OW, uint16_t(0));
        continue;
      }
      const uint16_t* xr = x + h * g.W + off;
      std::fill(d, d + lo, uint16_t(0));
      if (g.SW == 1) {
        std::memcpy(d + lo, xr + lo, size_t(hi + 1 - lo) * sizeof(uint16_t));
      } else {
        for (int64_t ow = lo; ow <= hi; ++ow) d[ow] = xr[ow * g.SW];
      }
      std::fill(d + hi + 1, d + g.OW, uint16_t(0));
    }
  }
}

void conv_flip_taps_nhwc(int64_t OC, int64_t KK, int64_t C, int64_t elem_bytes, const void* w, void* out) {
  const size_t run = size_t(C * elem_bytes);
  const char* src = static_cast<const char*>(w);
  char* dst = static_cast<char*>(out);
#pragma omp parallel for schedule(static) if (OC * KK * C > (int64_t(1) << 16))
  for (int64_t oc = 0; oc < OC; ++oc)
    for (int64_t kk = 0; kk < KK; ++kk)
      std::memcpy(dst + ((KK - 1 - kk) * OC + oc) * run, src + (oc * KK + kk) * run, run);
}

int64_t conv_gemm_dots_work(int64_t M, int64_t K, int64_t N) {
  constexpr int64_t kDot = ConvKernels<scalar::Vec<float>>::kDot;
  return M * K * ((N + kDot - 1) / kDot);
}

bool conv_gemm_small_fits(int64_t OCg, int64_t Rg) { return OCg <= 8 && Rg <= 64; }

#define DLK_CONV_INSTANTIATE(T)                                                                  \
  template void im2col<T>(const Im2colGeom&, const T*, T*);                                      \
  template void col2im<T>(const Im2colGeom&, const T*, T*);                                      \
  template void im2col_nhwc<T>(const Im2colGeom&, const T*, T*);                                 \
  template void col2im_nhwc<T>(const Im2colGeom&, const T*, T*);                                 \
  template void conv_rows_to_images<T>(int64_t, int64_t, int64_t, const T*, const T*, T*);       \
  template void conv_images_to_rows<T>(int64_t, int64_t, int64_t, const T*, T*);                 \
  template void channel_sum<T>(int64_t, int64_t, int64_t, const T*, T*);                        \
  template void conv_gemm_wide<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, T*, int64_t, \
                                  int64_t, int64_t);                                             \
  template void conv_gemm_dots<T>(int64_t, int64_t, int64_t, const T*, const T*, T*, double*);               \
  template void conv_direct_forward<T>(const DirectGeom&, const T*, const T*, const T*, T*);             \
  template void conv_depthwise_forward<T>(const DepthwiseGeom&, const T*, const T*, const T*, T*);       \
  template void conv_depthwise_input_grad<T>(const DepthwiseGeom&, const T*, const T*, T*);              \
  template void conv_depthwise_weight_grad<T>(const DepthwiseGeom&, const T*, const T*, T*);              \
  template void conv_depthwise_nhwc_forward<T>(const DepthwiseGeom&, const T*, const T*, const T*, T*);  \
  template void conv_depthwise_nhwc_input_grad<T>(const DepthwiseGeom&, const T*, const T*, T*);         \
  template void conv_depthwise_nhwc_weight_grad<T>(const DepthwiseGeom&, const T*, const T*, T*, double*); \
  template bool conv_winograd<T>(const WinogradGeom&, const T*, const T*, const WinogradFilters&, const T*, T*, T*, \
                                 int64_t);                                                       \
  template bool conv_winograd_nhwc<T>(const WinogradGeom&, const T*, const T*, const WinogradFilters&, const T*, T*, \
                                      T*, int64_t);                                              \
  template bool conv_winograd_weight_grad<T>(const WinogradGeom&, const T*, const T*, bool, T*, const WinogradFilters&, \
                                             T*, int64_t, int64_t);
DLK_CONV_INSTANTIATE(float)
DLK_CONV_INSTANTIATE(double)
#undef DLK_CONV_INSTANTIATE

}  // namespace dlk::cpu
