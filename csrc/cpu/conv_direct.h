// float32/float64 direct convolution: the loops of the bfloat16 pair-dot kernels (conv_bf16.h) with one channel a
// word and an FMA per (position, channel, tap):
//
//   out[n, oc, oh, ow] = bias[oc] + sum over taps (kh, kw) and channels c of w[oc, c, kh, kw] * x[n, c, ...]
//
// Lanes run over output channels, the register tile's rows over output positions, each
// with its own pointer into a zero-padded NHWC copy of the input, so that every stride, dilation and
// padding is one loop and padded taps are skipped (positions grouped by their tap ranges: PairConvPlan).
// The geometry is PairConvGeom with pack = 1 ("words" are floats): packed operands
//   input  xp[((n * Hp + r) * Wp + s) * C + c] = x[n, c, r - PH, s - PW], zero in the padding;
//   weight wp[(t * C + c) * stride + oc] = w[oc, c, kh, kw] (t = kh * KW + kw), zero past OC;
// The weight gradient's rows are (tap, channel) pairs m = t * C + c (a tile's rows: neighbouring channels
// of one tap, read from one cache line of xp), summed over positions against grad_output packed as
//   grad   gp[(b * P + q) * B + j] = gy[n, b * B + j, oh, ow] for position q = (n * OH + oh) * OW + ow of P,
//          in blocks of B = direct_conv_block<T>() channels (the current path's register tile), zero past OC.
// No torch here.
#pragma once
#include <cstdint>

#include "cpu/conv_bf16.h"
#include "cpu/isa.h"

namespace dlk::cpu {

// Packs x (strides xs, any memory format) into xp (g.input_words() values); g.pack must be 1.
template <class T> void direct_conv_pack_input(const PairConvGeom& g, const T* x, Strides4 xs, T* xp);
// Output channels per block of the kernels of path `isa`; packed grad_output's size in values. The
// weight gradient's caller reads the path once and passes it to the three (a path switched by another
// thread between them would size, pack and read the buffer for different blocks).
template <class T> int64_t direct_conv_block(Isa isa);
template <class T> int64_t direct_conv_grad_values(const PairConvGeom& g, Isa isa) {
  const int64_t B = direct_conv_block<T>(isa);
  return (g.OCp() + B - 1) / B * B * g.N * g.OH * g.OW;
}
// Packs grad_output (strides gs) into gp (direct_conv_grad_values values) for path isa's blocks.
template <class T> void direct_conv_pack_grad(const PairConvGeom& g, const T* gy, Strides4 gs, T* gp, Isa isa);
// Packs the filters of output channels [oc_begin, oc_end) (whole vectors; past OC zero) into wp, row
// (t, c) at wp[(t * C + c) * stride], lanes oc - oc_begin.
template <class T>
void direct_conv_pack_weight(const PairConvGeom& g, const T* w, Strides4 ws, bool flip, T* wp, int64_t oc_begin,
                             int64_t oc_end, int64_t stride);
// out (strides os) = the convolution of the packed input and the filters w (strides ws over (oc, c, kh,
// kw); flip reads tap (kh, kw) from (KH-1-kh, KW-1-kw): with the oc and c strides swapped, the filters of
// an input gradient, without a flipped copy) plus bias (OCp values, zero past OC; nullptr for none).
template <class T>
void direct_conv_forward(const PairConvGeom& g, const T* xp, const T* w, Strides4 ws, bool flip, const T* bias,
                         T* out, Strides4 os);
// gw (strides ws over (oc, c, kh, kw)) = the weight gradient from the packed input and grad_output; acc:
// taps * C * OCp values of scratch.
template <class T>
void direct_conv_weight_grad(const PairConvGeom& g, const T* xp, const T* gp, T* acc, T* gw, Strides4 ws, Isa isa);

// The per-ISA kernels (conv_direct_impl.h, compiled once per path by conv_impl.h's includers).
#define DLK_DIRECT_DECLARE(SUFFIX, T)                                                                         \
  void direct_conv_forward_##SUFFIX(const PairConvGeom& g, const T* xp, const T* w, Strides4 ws,       \
                                    bool flip, const T* bias, T* out, Strides4 os);                            \
  void direct_conv_weight_grad_##SUFFIX(const PairConvGeom& g, const T* xp, const T* gp, T* acc);              \
  int64_t direct_conv_block_##SUFFIX(const T*);
DLK_DIRECT_DECLARE(scalar, float)
DLK_DIRECT_DECLARE(scalar, double)
DLK_DIRECT_DECLARE(avx2, float)
DLK_DIRECT_DECLARE(avx2, double)
DLK_DIRECT_DECLARE(avx512, float)
DLK_DIRECT_DECLARE(avx512, double)
#undef DLK_DIRECT_DECLARE

// The offset in xp of row m = (tap t, channel c), m = t * C + c, from a position's top-left tap.
inline int64_t direct_conv_row_offset(const PairConvGeom& g, int64_t m) {
  return pair_conv_tap_offset(g, m / g.C) + m % g.C;
}
// The offset in xp of output row (n, oh) (row = n * OH + oh)'s first position's top-left tap.
inline int64_t direct_conv_image_row_offset(const PairConvGeom& g, int64_t row) {
  return ((row / g.OH) * g.Hp() + (row % g.OH) * g.SH) * g.Wp() * g.C;
}

}  // namespace dlk::cpu
