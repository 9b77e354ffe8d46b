// Geometry of im2col convolution, shared by the CPU kernels, the CUDA kernels and the ops layer: the one
// place the output-size rule and the column-matrix layout live. No torch, no CUDA.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DLK_CONV_HD __host__ __device__
#else
#define DLK_CONV_HD
#endif

namespace dlk {

// torch's rule with padding P0 before and P1 after: floor((in + P0 + P1 - D(K-1) - 1) / S) + 1.
// A result below 1 means the kernel is larger than the padded input.
inline int64_t conv_output_size(int64_t in, int64_t k, int64_t s, int64_t p_begin, int64_t p_end, int64_t d) {
  const int64_t num = in + p_begin + p_end - d * (k - 1) - 1;
  return num < 0 ? 0 : num / s + 1;
}

// The column matrix of `images` images of shape (C, H, W), stored contiguously one after another.
// Row r = (c * KH + kh) * KW + kw holds, for each output position l = oh * OW + ow of each image b,
// the input pixel (c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW), or 0 where that lies in the padding.
// Element (r, b, l) sits at r * row_stride + b * image_stride + l, which covers both layouts in use:
//   F.unfold's (B, rows, L):        row_stride = L,     image_stride = rows * L
//   the conv chunk's (rows, B * L): row_stride = B * L, image_stride = L  (one GEMM for the chunk)
// PH/PW are the top/left padding; bottom/right padding only shows in OH/OW, which the ops layer computes.
struct Im2colGeom {
  int64_t C, H, W;
  int64_t KH, KW, SH, SW, PH, PW, DH, DW;
  int64_t OH, OW;
  int64_t images;
  int64_t row_stride, image_stride;
  DLK_CONV_HD int64_t rows() const { return C * KH * KW; }
  DLK_CONV_HD int64_t positions() const { return OH * OW; }
};

// Valid outputs [lo, hi] along one axis for the tap at offset off (input coordinate = o * S + off);
// hi < lo when the tap never lands inside [0, size).
DLK_CONV_HD inline void conv_tap_range(int64_t off, int64_t S, int64_t size, int64_t O, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + S - 1) / S;
  const int64_t last = size - 1 - off;
  hi = last >= 0 ? last / S : -1;
  if (hi > O - 1) hi = O - 1;
}

}  // namespace dlk
