// CPU kernels of im2col convolution on raw pointers (T = float or double). The GEMMs of layers with many
// filters are not here (the ops layer calls at::mm on the column matrices these kernels build); those of
// layers with few or a moderate number of filters are (conv_gemm_wide, conv_gemm_dots below).
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/conv.h"

namespace dlk::cpu {

// Writes the whole column matrix of g.images images (layout in common/conv.h), zeros in the padding.
template <class T> void im2col(const Im2colGeom& g, const T* in, T* col);
// im2col of 16-bit values (float16 or bfloat16, moved as bits: +0.0 is all zero bits in both): the column
// matrix of the low-precision CPU convolution, whose GEMMs run in that dtype.
void im2col_bits16(const Im2colGeom& g, const uint16_t* in, uint16_t* col);
// The adjoint of im2col: out (images, C, H, W) is fully written; each input pixel is the sum of the
// column entries that copied it. Each input row is owned by one thread: deterministic, no atomics.
template <class T> void col2im(const Im2colGeom& g, const T* col, T* out);
// channels_last: the column matrix of g.images images stored (H, W, C), one row per output position,
// (b * OH + oh) * OW + ow, of R = KH * KW * C values in (kh, kw, c) order (zeros in the padding), so that
// a GEMM with the (OC, KH, KW, C) filters writes the (N, OH, OW, OC) output; and its adjoint, which
// writes every pixel of the images (the sum of the entries copied from it). g's strides are unused.
template <class T> void im2col_nhwc(const Im2colGeom& g, const T* in, T* col);
template <class T> void col2im_nhwc(const Im2colGeom& g, const T* col, T* out);
// The filters of a channels_last weight, stored (OC, KH * KW, C), as the input gradient's (KH * KW * OC, C)
// matrix: out[(KK - 1 - kk) * OC + oc] = w[oc, kk], runs of C values of elem_bytes each (any dtype).
void conv_flip_taps_nhwc(int64_t OC, int64_t KK, int64_t C, int64_t elem_bytes, const void* w, void* out);
// out[b, oc, l] = rows[oc, b * L + l] + bias[oc] (bias may be nullptr): the chunk GEMM's (OC, B*L)
// result back into (B, OC, L) images.
template <class T> void conv_rows_to_images(int64_t B, int64_t OC, int64_t L, const T* rows, const T* bias, T* out);
// rows[oc, b * L + l] = images[b, oc, l]: grad_output of a chunk as the GEMMs' (OC, B*L) operand.
template <class T> void conv_images_to_rows(int64_t B, int64_t OC, int64_t L, const T* images, T* rows);
// out[c] = sum over n < N, l < L of in[n, c, l], summed in double in a fixed order (the bias gradient).
template <class T> void channel_sum(int64_t N, int64_t C, int64_t L, const T* in, T* out);

// The forward and input-gradient GEMMs of layers with at most kConvTileMaxFilters filters per group, a
// register-tile GEMM (conv_impl.h, TileGemm): C (M x N) = A (M x K) @ B (K x N), A's element (m, k) at
// A[m * sam + k * sak], B and C rows N long. Each output is one sum in k order (deterministic). With
// batch > 1, C_n = A @ B_n for each n < batch, B_n at B + n * bstride and C_n at C + n * cstride.
template <class T>
void conv_gemm_wide(int64_t M, int64_t K, int64_t N, const T* A, int64_t sam, int64_t sak, const T* B, T* C,
                    int64_t batch = 1, int64_t bstride = 0, int64_t cstride = 0);
// C (M x K) += A (M x N) @ B (K x N)^T; work holds conv_gemm_dots_work(M, K, N) doubles. Deterministic.
template <class T> void conv_gemm_dots(int64_t M, int64_t K, int64_t N, const T* A, const T* B, T* C, double* work);
int64_t conv_gemm_dots_work(int64_t M, int64_t K, int64_t N);
// Whether a group's weight-gradient GEMM (OCg filters of Rg = C/G * KH * KW rows) takes conv_gemm_dots.
bool conv_gemm_small_fits(int64_t OCg, int64_t Rg);
// The most filters per group whose forward and input-gradient GEMMs take conv_gemm_wide, on every ISA.
constexpr int64_t kConvTileMaxFilters = 64;
// The forward of a layer with a column matrix (not 1x1/stride 1/no padding) takes conv_gemm_wide up to
// this many filters per group. In-process A/B on an AMD EPYC (Zen 4) host, 3x3/s2 16x128x28x28 -> 128:
// the forward 7.5 -> 6.4-6.7 ms on the tile GEMM, but its input gradient no faster and the full
// backward 13.8 -> 14.5-15.5 ms, so the input gradient keeps MKL above 64 filters. (On an Intel Xeon
// host, 2026-12-02, the 128-filter GEMMs ran 10-30% slower than MKL inside the layer.)
constexpr int64_t kConvTileMaxForwardFilters = 128;

// Direct convolution (conv_impl.h, direct_forward): stride SH (rows) and 1 or 2 (columns), dilation 1,
// one group, no padding: in (N, C, H, W); w (OC, C, KH, KW); out (N, OC, OH, OW); bias may be nullptr.
// Each output is bias + one sum in (c, kh, kw) order (deterministic) of w[oc, c, kh, kw] times input
// row oh * SH + kh, column ow * S + kw. At column stride 1 (half = 0) a row holds the image's OW + KW - 1
// columns, then zeros up to at least conv_direct_columns(OW) + KW - 1, read but never used. At
// column stride 2 a row holds the padded row's even columns, then its odd ones, half = W / 2 of each,
// each at least conv_direct_columns(OW) + (KW - 1) / 2 long: a tap's outputs then read consecutive
// values. For the forward of the layers conv_direct_fits accepts.
// The outputs a row's tiles cover, on every ISA: 16 for rows of up to 16 (AVX-512 float32 tiles rows of
// at most one vector with one vector), else whole 32-output tiles (its two-vector ones).
inline int64_t conv_direct_columns(int64_t OW) { return OW <= 16 ? 16 : (OW + 31) / 32 * 32; }
struct DirectGeom {
  int64_t N, C, H, W, OH, OW, OC, KH, KW, SH, half;
};
template <class T> void conv_direct_forward(const DirectGeom& d, const T* in, const T* w, const T* bias, T* out);
// The layers whose forward runs on it (column stride S = 1 or 2): those with at most 32 input values per
// output (C * KH * KW) and 16 filters at S = 1, whose column matrix is (KH * KW)x the input for little
// arithmetic (LeNet's first layer); and those with at most 64 filters whose input rows for one output
// row's 16-output tiles, C * KH rows of S * round_up(OW, 16) + KW - 1 values, stay within 24 KiB (in L1
// with the tile's filters, while every filter block reuses them): ResNet layers of 16-64 channels on
// 8x8 to 32x32 images, whose forward ran 1.3-3x faster direct than through im2col and the GEMM
// (in-process A/B on the CI host). 64 channels at 56x56 (50 KiB of rows) ran 10% slower direct, and
// layers past 64 filters run on MKL's GEMM.
inline bool conv_direct_fits(int64_t C, int64_t KH, int64_t KW, int64_t OC, int64_t OW, int64_t S, int64_t elem_bytes) {
  if (S == 1 && C * KH * KW <= 32 && OC <= 16) return true;
  // (a 1x1 layer at stride 2 keeps im2col, a strided copy: the direct kernel's padded copy cost more)
  return OC <= 64 && KH * KW > 1 && C * KH * (S * ((OW + 15) / 16 * 16) + KW - 1) * elem_bytes <= 24 * 1024;
}

// Depthwise convolution (groups == C > 1: M = OC / C filters per input channel) without a column matrix:
// in (N, C, H, W), w (C * M, 1, KH, KW), out (N, C * M, OH, OW); any stride, padding (PH/PW: top/left;
// the bottom/right padding shows only in OH/OW) and dilation. Each output plane is one task: bias, then
// the taps added in (kh, kw) order, each tap a run of the valid output columns (conv_tap_range), so no
// padded copy and no branch per element. The input gradient adds each tap back into the input plane,
// all M filters of a channel in one task (deterministic, no atomics); the weight gradient sums each tap's
// products row by row in T's lanes, the rows and images in double, one filter a task.
struct DepthwiseGeom {
  int64_t N, C, M, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
};
template <class T>
void conv_depthwise_forward(const DepthwiseGeom& d, const T* in, const T* w, const T* bias, T* out);
template <class T> void conv_depthwise_input_grad(const DepthwiseGeom& d, const T* grad_out, const T* w, T* grad_in);
template <class T> void conv_depthwise_weight_grad(const DepthwiseGeom& d, const T* in, const T* grad_out, T* grad_w);
// The same for channels_last tensors with one filter per channel (M == 1): in (N, H, W, C), out and
// grad_out (N, OH, OW, C), the filters as wt (KH * KW, C), tap-major (their gradient likewise); loops
// along C. The weight gradient's work holds N * KH * KW * C doubles.
template <class T>
void conv_depthwise_nhwc_forward(const DepthwiseGeom& d, const T* in, const T* wt, const T* bias, T* out);
template <class T> void conv_depthwise_nhwc_input_grad(const DepthwiseGeom& d, const T* grad_out, const T* wt, T* grad_in);
template <class T>
void conv_depthwise_nhwc_weight_grad(const DepthwiseGeom& d, const T* in, const T* grad_out, T* grad_wt, double* work);

// Winograd F(2x2, 3x3) convolution (winograd_impl.h): 3x3 filters, stride 1, dilation 1, one group;
// in (N, C, H, W), out (N, OC, OH, OW) (the _nhwc forms: in (N, H, W, C), out (N, OH, OW, OC)), input
// row oh + kh - PT and column ow + kw - PL (zero outside the image) for output (oh, ow) and tap (kh, kw).
// Each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A of its 4x4 input patch d: the 16 products of the
// transformed domain are 16 GEMMs (OC x C) @ (C x tiles), 2.25x fewer multiplies than the direct sum (36
// per tile and input channel against 16), with the transforms' additions around them. work holds
// conv_winograd_work(g, threads) values (conv_winograd_nhwc_work for the _nhwc form); threads (>= 1) is
// the thread count the kernel runs on. Returns false, the output unwritten, when an input value or tap
// is not finite or beyond 1/64 of the largest finite value (see winograd_impl.h; the caller takes
// another path). Each output is one sum in c order
// per transformed product, whatever the thread count (bitwise the same for any threads).
struct WinogradGeom {
  int64_t N, C, H, W, OC, OH, OW, PT, PL;
  int64_t tiles_h() const { return (OH + 1) / 2; }
  int64_t tiles_w() const { return (OW + 1) / 2; }
  int64_t tiles() const { return N * tiles_h() * tiles_w(); }
  // Values per channel of the NCHW kernels' padded, even/odd-split copy (winograd_impl.h, pad_split).
  int64_t split_plane() const { return (2 * tiles_h() + 2) * (2 * tiles_w() + 2); }
};
// Where a filter's taps are: tap (kh, kw) of filter (o, c) at w[o * so + c * sc + kh * sh + kw * sw], or
// with flip at tap (2 - kh, 2 - kw) (the input gradient's flipped, transposed filters read from the
// forward's weight with so and sc swapped). Any memory format of the weight.
struct WinogradFilters {
  int64_t so, sc, sh, sw;
  bool flip;
};
// Tiles per block: the transformed input and products of one block stay in L2 (and at most this many
// columns per GEMM; a multiple of every ISA's vector width and register-tile rows).
constexpr int64_t kWinogradBlock = 48;
// Filter rows are padded to a multiple of this (every ISA's register-tile rows divide it), vector
// columns to a multiple of kWinogradColAlign (every ISA's vector width divides it).
constexpr int64_t kWinogradRowAlign = 8;
constexpr int64_t kWinogradColAlign = 16;
inline int64_t winograd_round(int64_t v, int64_t to) { return (v + to - 1) / to * to; }
inline int64_t conv_winograd_work(const WinogradGeom& g, int64_t threads) {
  const int64_t ocp = winograd_round(g.OC, kWinogradRowAlign);
  const int64_t filters = 16 * ocp * g.C;
  const int64_t padded = g.N * g.C * g.split_plane();
  const int64_t per_thread = 16 * (g.C + ocp) * kWinogradBlock;
  return filters + padded + threads * per_thread;
}
inline int64_t conv_winograd_nhwc_work(const WinogradGeom& g, int64_t threads) {
  const int64_t ocq = winograd_round(g.OC, kWinogradColAlign);
  return 16 * g.C * ocq + threads * 16 * kWinogradBlock * (g.C + ocq);
}
template <class T>
bool conv_winograd(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f, const T* bias, T* out,
                   T* work, int64_t threads);
template <class T>
bool conv_winograd_nhwc(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f, const T* bias,
                        T* out, T* work, int64_t threads);
// The weight gradient of the same layer: gw (OC, C, 3, 3), written whole at the places `f` gives
// (flip false: any memory format), = the sum over the N images of in and gy ((N, OC, OH, OW); with nhwc
// both channels_last) by Winograd's transposed form (winograd_impl.h), images at most `images` at a
// time (the split copies of input and grad_output are what grows with them); work holds
// winograd_weight_grad_layout(g, images, nhwc).total values. Each output is the same sum for any
// thread count. Returns false, gw unwritten, when a value of in or gy is not finite (or, as above, too
// large).
struct WinogradLayout {
  int64_t cp, ocp, kc;         // columns (C) and rows (OC) padded; tiles per GEMM chunk
  int64_t x_split, gy_split;   // values of the split input and grad_output of `images` images (NCHW)
  int64_t total;
};
inline WinogradLayout winograd_weight_grad_layout(const WinogradGeom& g, int64_t images, bool nhwc) {
  WinogradLayout L;
  L.cp = winograd_round(g.C, kWinogradColAlign);
  L.ocp = winograd_round(g.OC, kWinogradRowAlign);
  const int64_t plane = g.split_plane();
  L.x_split = nhwc ? 0 : images * g.C * plane;
  L.gy_split = nhwc ? 0 : images * g.OC * plane;
  // A chunk's Y and VT within about 4 MiB of float32 (last-level cache), at least a vector of tiles
  const int64_t tiles = images * g.tiles_h() * g.tiles_w();
  L.kc = std::max<int64_t>(16, std::min(winograd_round(tiles, 16), (int64_t(1) << 20) / (16 * (L.cp + L.ocp)) / 16 * 16));
  L.total = L.x_split + L.gy_split + 16 * L.kc * L.cp + 16 * L.ocp * L.kc + 16 * L.ocp * L.cp;
  return L;
}
template <class T>
bool conv_winograd_weight_grad(const WinogradGeom& g, const T* in, const T* gy, bool nhwc, T* gw,
                               const WinogradFilters& f, T* work, int64_t threads, int64_t images);

#define DLK_CONV_DECLARE(SUFFIX, T)                                                              \
  void im2col_##SUFFIX(const Im2colGeom&, const T*, T*);                                         \
  void col2im_##SUFFIX(const Im2colGeom&, const T*, T*);                                         \
  void im2col_nhwc_##SUFFIX(const Im2colGeom&, const T*, T*);                                    \
  void col2im_nhwc_##SUFFIX(const Im2colGeom&, const T*, T*);                                    \
  void conv_rows_to_images_##SUFFIX(int64_t, int64_t, int64_t, const T*, const T*, T*);          \
  void conv_images_to_rows_##SUFFIX(int64_t, int64_t, int64_t, const T*, T*);                    \
  void channel_sum_##SUFFIX(int64_t, int64_t, int64_t, const T*, T*);                           \
  void conv_gemm_wide_##SUFFIX(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, T*, int64_t, int64_t, \
                               int64_t);                                                         \
  void conv_gemm_dots_##SUFFIX(int64_t, int64_t, int64_t, const T*, const T*, T*, double*);               \
  void conv_direct_forward_##SUFFIX(const DirectGeom&, const T*, const T*, const T*, T*);                 \
  void conv_depthwise_forward_##SUFFIX(const DepthwiseGeom&, const T*, const T*, const T*, T*);           \
  void conv_depthwise_input_grad_##SUFFIX(const DepthwiseGeom&, const T*, const T*, T*);                  \
  void conv_depthwise_weight_grad_##SUFFIX(const DepthwiseGeom&, const T*, const T*, T*);                 \
  void conv_depthwise_nhwc_forward_##SUFFIX(const DepthwiseGeom&, const T*, const T*, const T*, T*);      \
  void conv_depthwise_nhwc_input_grad_##SUFFIX(const DepthwiseGeom&, const T*, const T*, T*);             \
  void conv_depthwise_nhwc_weight_grad_##SUFFIX(const DepthwiseGeom&, const T*, const T*, T*, double*);     \
  bool conv_winograd_##SUFFIX(const WinogradGeom&, const T*, const T*, const WinogradFilters&, const T*, T*, T*, \
                              int64_t);                                                          \
  bool conv_winograd_nhwc_##SUFFIX(const WinogradGeom&, const T*, const T*, const WinogradFilters&, const T*, T*, \
                                   T*, int64_t);                                                 \
  bool conv_winograd_weight_grad_##SUFFIX(const WinogradGeom&, const T*, const T*, bool, T*, const WinogradFilters&, \
                                          T*, int64_t, int64_t);
DLK_CONV_DECLARE(scalar, float)
DLK_CONV_DECLARE(scalar, double)
DLK_CONV_DECLARE(avx2, float)
DLK_CONV_DECLARE(avx2, double)
DLK_CONV_DECLARE(avx512, float)
DLK_CONV_DECLARE(avx512, double)
#undef DLK_CONV_DECLARE

}  // namespace dlk::cpu
