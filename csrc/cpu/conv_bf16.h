// bfloat16 direct convolution on pairs of channels: AVX512-BF16's vdpbf16ps multiplies two bfloat16
// pairs per float32 lane and adds both products to the lane (float32 accumulation, products exact), so
// the reduction runs over pairs of input channels:
//
//   out[n, oc, oh, ow] = bias[oc] + sum over taps (kh, kw) and channel pairs c2 of
//                        w[oc, 2c2, kh, kw] * x[n, 2c2, ...] + w[oc, 2c2+1, kh, kw] * x[n, 2c2+1, ...]
//
// rounded once to bfloat16. Lanes run over output channels (16 per vector, any image size wastes
// nothing), rows of the register tile over output positions, each with its own pointer into the input:
// any stride, dilation and padding is the same loop. Two packed operands, 32-bit words of two bfloat16:
//   input  xp[((n * Hp + r) * Wp + s) * C2 + c2] = (x[n, 2c2, r - PH, s - PW], x[n, 2c2+1, ...]),
//          zero in the padding and for a missing odd channel: every tap reads inside the buffer;
//   weight wp[(t * C2 + c2) * OCp + oc] = (w[oc, 2c2, t], w[oc, 2c2+1, t]), tap t = kh * KW + kw,
//          zero for oc >= OC (OCp = OC rounded up to 16).
// The low half of each word is the even channel: vdpbf16ps pairs the halves of the same word.
// No torch here; bfloat16 values travel as their uint16_t bits.
#pragma once
#include <cstdint>
#include <vector>

namespace dlk::cpu {

struct PairConvGeom {
  int64_t N, C, H, W;                      // input images
  int64_t OC, KH, KW, SH, SW, PH, PW, DH, DW;  // filters; PH/PW the top/left padding (negative: cropped)
  int64_t OH, OW;                          // output (the bottom/right padding shows only here)
  int64_t pack = 2;                        // channels per packed word: 2 (bfloat16 pairs), 1 (float32, conv_direct.h)
  int64_t C2() const { return (C + pack - 1) / pack; }
  int64_t OCp() const { return (OC + 15) / 16 * 16; }
  int64_t taps() const { return KH * KW; }
  // rows and columns of the padded input the taps reach
  int64_t Hp() const { return (OH - 1) * SH + (KH - 1) * DH + 1; }
  int64_t Wp() const { return (OW - 1) * SW + (KW - 1) * DW + 1; }
  int64_t input_words() const { return N * Hp() * Wp() * C2(); }
  int64_t weight_words() const { return taps() * C2() * OCp(); }
  // the weight gradient's operands (pair_conv_weight_grad)
  int64_t Wj() const { return (Wp() + SW - 1) / SW + 1; }  // columns of one phase of a padded row
  int64_t OWh() const { return (OW + 1) / 2; }             // pairs of positions in an output row
  int64_t wgrad_input_halves() const { return N * C * Hp() * SW * Wj(); }
  int64_t wgrad_grad_words() const { return N * OH * OWh() * OCp(); }
};

// Element strides of a 4-D tensor: (n, c, h, w) of an input or output, (oc, c, kh, kw) of a weight.
struct Strides4 {
  int64_t n, c, h, w;
};

// Output position q (n, oh, ow in that order): the input word of its top-left tap, its output element.
inline void pair_conv_position(const PairConvGeom& g, const Strides4& os, int64_t q, int64_t* in, int64_t* out) {
  const int64_t per = g.OH * g.OW, n = q / per, rest = q - n * per, oh = rest / g.OW, ow = rest - oh * g.OW;
  *in = ((n * g.Hp() + oh * g.SH) * g.Wp() + ow * g.SW) * g.C2();
  *out = n * os.n + oh * os.h + ow * os.w;
}
// The steps each output position takes: only its taps inside the image (a padded tap adds zeros; at 4x4
// with padding 1 they are 31% of the multiplies; oneDNN skips them too). Positions are grouped by class,
// the pair (range of kh, range of kw) inside the image, which depends on oh and on ow alone.
struct PairConvPlan {
  std::vector<int64_t> order;        // the positions, class by class (q order within a class)
  std::vector<int64_t> class_start;  // class i's positions: order[class_start[i] .. class_start[i + 1])
  std::vector<int64_t> ko, wo;       // every class's steps: input word offset, weight word offset
  std::vector<int64_t> step_start;   // class i's steps: [step_start[i], step_start[i + 1])
  std::vector<int64_t> pin, pout;    // per position: first input word, output element
  int64_t classes() const { return int64_t(class_start.size()) - 1; }
};
// wstride: the packed filters' words per (tap, pair) step.
PairConvPlan pair_conv_plan(const PairConvGeom& g, const Strides4& os, int64_t wstride);

// The word offset of tap t = kh * KW + kw from a position's top-left tap.
inline int64_t pair_conv_tap_offset(const PairConvGeom& g, int64_t t) {
  return ((t / g.KW) * g.DH * g.Wp() + (t % g.KW) * g.DW) * g.C2();
}

// Whether the current CPU path has a pair-dot kernel: AVX-512 with AVX512-BF16, or the scalar
// reference (the same loops in plain C++, for tests and CPUs without vector paths). AVX2 has none.
bool pair_conv_available();

// Packs x (strides xs, any memory format) into xp (g.input_words() words).
void pair_conv_pack_input(const PairConvGeom& g, const uint16_t* x, Strides4 xs, uint32_t* xp);
// Packs the filters (strides ws over (oc, c, kh, kw)) of output channels [oc_begin, oc_end) (multiples of
// 16; past OC zero) into wp, word (t, c2, oc) at wp[(t * C2 + c2) * stride + oc - oc_begin]. flip reads
// tap (kh, kw) from (KH-1-kh, KW-1-kw): with the oc and c strides swapped, the filters of the input
// gradient of a stride-1 layer, without a flipped copy.
void pair_conv_pack_weight(const PairConvGeom& g, const uint16_t* w, Strides4 ws, bool flip, uint32_t* wp,
                           int64_t oc_begin, int64_t oc_end, int64_t stride);
// out (strides os, any memory format) = the convolution of the packed input and the filters w (strides
// ws, flip as above; packed here, a block of output channels at a time on AVX-512, where the block stays
// in L2 between its packing and its use) plus bias (float32, OCp values, zero past OC; nullptr for none),
// rounded once to bfloat16.
void pair_conv_forward(const PairConvGeom& g, const uint32_t* xp, const uint16_t* w, Strides4 ws, bool flip,
                       const float* bias, uint16_t* out, Strides4 os);

// The weight gradient sums over positions, so vdpbf16ps pairs two adjacent output positions of a row,
// (ow, ow + 1), and the register tile's rows are (c, tap) filters' taps. Operands:
//   input xw (bfloat16) [n][c][r][phase][j] = x[n, c, r - PH, j * SW + phase - PW] (zero outside): each
//         padded row split by column phase, so that the pair of positions reads two adjacent values at
//         any stride and dilation; one more column per phase for the partner of the last position of a
//         row of odd OW, whose grad_output is zero;
//   grad  gp [(n * OH + oh) * OWh + p][OCp] = (gy[n, oc, oh, 2p], gy[n, oc, oh, 2p + 1] or 0).
// pack_wgrad_input returns false when OW is odd and x holds a value not finite: the zero grad_output of
// the partner position would multiply it (0 * inf is NaN) and the caller must take another path.
bool pair_conv_pack_wgrad_input(const PairConvGeom& g, const uint16_t* x, Strides4 xs, uint16_t* xw);
void pair_conv_pack_wgrad_grad(const PairConvGeom& g, const uint16_t* gy, Strides4 gs, uint32_t* gp);
// gw (strides ws over (oc, c, kh, kw)) = the weight gradient, rounded once; acc: g.C * g.taps() * g.OCp()
// floats of scratch (the sums over chunks of positions, float32).
void pair_conv_weight_grad(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, float* acc, uint16_t* gw,
                           Strides4 ws);

// The per-ISA kernels behind pair_conv_forward and pair_conv_weight_grad.
void pair_conv_weight_grad_scalar(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, float* acc,
                                  uint16_t* gw, Strides4 ws);
void pair_conv_weight_grad_avx512bf16(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, float* acc,
                                      uint16_t* gw, Strides4 ws);
// The halfword offset in xw of row (c, tap t)'s first value for position (0, 0, 0).
inline int64_t pair_wgrad_row_offset(const PairConvGeom& g, int64_t m) {
  const int64_t c = m / g.taps(), t = m % g.taps(), kh = t / g.KW, kwd = (t % g.KW) * g.DW;
  return ((c * g.Hp() + kh * g.DH) * g.SW + kwd % g.SW) * g.Wj() + kwd / g.SW;
}
// The halfword offset in xw of output row (n, oh) (row = n * OH + oh) from position (0, 0, 0).
inline int64_t pair_wgrad_image_row_offset(const PairConvGeom& g, int64_t row) {
  const int64_t n = row / g.OH, oh = row % g.OH;
  return ((n * g.C * g.Hp()) + oh * g.SH) * g.SW * g.Wj();
}
inline uint32_t load_pair(const uint16_t* p) {
  uint32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

// The per-ISA kernels behind pair_conv_forward.
void pair_conv_forward_scalar(const PairConvGeom& g, const uint32_t* xp, const uint16_t* w, Strides4 ws, bool flip,
                              const float* bias, uint16_t* out, Strides4 os);
void pair_conv_forward_avx512bf16(const PairConvGeom& g, const uint32_t* xp, const uint16_t* w, Strides4 ws,
                                  bool flip, const float* bias, uint16_t* out, Strides4 os);
bool avx512bf16_supported();
// pair_conv_pack_weight for filters whose taps are contiguous (KH * KW <= 16); false where it does not apply.
bool pair_conv_pack_weight_avx512bf16(const PairConvGeom& g, const uint16_t* w, Strides4 ws, bool flip,
                                      uint32_t* wp, int64_t oc_begin, int64_t oc_end, int64_t stride);
bool pair_conv_pack_wgrad_plane_avx512bf16(const PairConvGeom& g, const uint16_t* src_plane, Strides4 xs,
                                           int64_t r_lo, int64_t r_hi, bool check, uint16_t* plane);
void pair_conv_pack_input_row_avx512bf16(const PairConvGeom& g, const uint16_t* row, Strides4 xs, int64_t w_lo,
                                         int64_t w_hi, uint32_t* dst);
void pair_conv_pack_wgrad_grad_avx512bf16(const PairConvGeom& g, const uint16_t* gy, Strides4 gs, uint32_t* gp);

// n bfloat16 values widened to float32; n floats rounded to bfloat16 (nearest even, subnormals kept, NaN
// kept NaN: the same bits as float_to_bf16). Vector code where the current path has a pair-dot kernel on
// AVX512-BF16, else the scalar functions below. (The convolution kernels' own sums go through
// vdpbf16ps and vcvtneps2bf16, which flush subnormal inputs and results to zero on this Zen 4: their
// results differ from the scalar reference's there, by less than float's smallest normal.)
void bf16_widen(const uint16_t* src, float* dst, int64_t n);
void bf16_narrow(const float* src, uint16_t* dst, int64_t n);
void bf16_widen_avx512bf16(const uint16_t* src, float* dst, int64_t n);
void bf16_narrow_avx512bf16(const float* src, uint16_t* dst, int64_t n);

// bfloat16 bits <-> float32: the upper half of the float's bits; rounding to nearest even, NaN kept NaN.
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN: quiet, sign kept
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace dlk::cpu
