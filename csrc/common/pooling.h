// Geometry of 2-D pooling, shared by the CPU kernels, the CUDA kernels and the ops layer: the one
// place the output-size rules live. No torch, no CUDA.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DLK_POOL_HD __host__ __device__
#else
#define DLK_POOL_HD
#endif

namespace dlk {

// Input (N, C, H, W) contiguous, output (N, C, OH, OW); K kernel, S stride, P padding, D dilation.
struct Pool2dGeom {
  int64_t N, C, H, W, OH, OW;
  int64_t KH, KW, SH, SW, PH, PW, DH, DW;
  DLK_POOL_HD int64_t planes() const { return N * C; }
};

// torch's rule: floor((in + 2P - D(K-1) - 1 [+ S-1 with ceil_mode]) / S) + 1, and with ceil_mode the
// last window must start inside the input or its left padding, not in the right padding.
inline int64_t pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t num = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;  // division rounding toward -infinity
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// Adaptive pooling: output cell o of O covers [floor(o I / O), ceil((o + 1) I / O)).
DLK_POOL_HD inline int64_t adaptive_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
DLK_POOL_HD inline int64_t adaptive_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

struct AvgPoolOptions {
  bool count_include_pad;
  int64_t divisor_override;  // 0: none
};

}  // namespace dlk
