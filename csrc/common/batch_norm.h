// Geometry of batch normalization, shared by the CPU kernels, the CUDA kernels and the ops layer.
// No torch, no CUDA.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DLK_BN_HD __host__ __device__
#else
#define DLK_BN_HD
#endif

namespace dlk {

// Input viewed as (N, C, L), L the product of the spatial sizes (1 for (N, C) input). Two memory layouts:
//   channels_last == false: element (n, c, l) at (n * C + c) * L + l   (contiguous NCHW...)
//   channels_last == true:  element (n, c, l) at (n * L + l) * C + c   (channels_last, and (N, C) input)
// Statistics are per channel over the count() = N * L values.
struct BatchNormGeom {
  int64_t N, C, L;
  bool channels_last;
  DLK_BN_HD int64_t count() const { return N * L; }
};

}  // namespace dlk
