// CPU pooling kernels on raw pointers (T = float or double), parallel over the N*C planes.
// Backward passes scatter within one plane on one thread: deterministic, no atomics.
#pragma once
#include <cstdint>

#include "common/pooling.h"

namespace dlk::cpu {

// Max pooling's argmax, one per output, in either of two forms: int64 flat positions in the H*W plane
// (torch's indices, what return_indices gives), or one byte naming the window's tap, kh * KW + kw
// (needs KH * KW <= 256): what autograd saves, an eighth of the bytes to write and read back.
template <class T> void max_pool2d_forward(const Pool2dGeom& g, const T* in, T* out, int64_t* indices);
template <class T> void max_pool2d_forward(const Pool2dGeom& g, const T* in, T* out, uint8_t* taps);
template <class T> void max_pool2d_backward(const Pool2dGeom& g, const T* grad_out, const int64_t* indices, T* grad_in);
template <class T> void max_pool2d_backward(const Pool2dGeom& g, const T* grad_out, const uint8_t* taps, T* grad_in);
// The same for channels_last tensors: in and grad_in (N, H, W, C), out, grad_out and the argmax
// (N, OH, OW, C) (flat positions in the H*W plane or tap bytes, as above).
template <class T> void max_pool2d_nhwc_forward(const Pool2dGeom& g, const T* in, T* out, int64_t* indices);
template <class T> void max_pool2d_nhwc_forward(const Pool2dGeom& g, const T* in, T* out, uint8_t* taps);
template <class T>
void max_pool2d_nhwc_backward(const Pool2dGeom& g, const T* grad_out, const int64_t* indices, T* grad_in);
template <class T> void max_pool2d_nhwc_backward(const Pool2dGeom& g, const T* grad_out, const uint8_t* taps, T* grad_in);
template <class T>
void avg_pool2d_nhwc_forward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out);
template <class T>
void avg_pool2d_nhwc_backward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* grad_out, T* grad_in);
template <class T> void adaptive_avg_pool2d_nhwc_forward(const Pool2dGeom& g, const T* in, T* out);
template <class T> void adaptive_avg_pool2d_nhwc_backward(const Pool2dGeom& g, const T* grad_out, T* grad_in);
template <class T> void avg_pool2d_forward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out);
template <class T>
void avg_pool2d_backward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* grad_out, T* grad_in);
template <class T> void adaptive_avg_pool2d_forward(const Pool2dGeom& g, const T* in, T* out);
template <class T> void adaptive_avg_pool2d_backward(const Pool2dGeom& g, const T* grad_out, T* grad_in);

#define DLK_POOL_DECLARE(SUFFIX, T)                                                                             \
  void max_pool2d_forward_##SUFFIX(const Pool2dGeom&, const T*, T*, int64_t*);                                  \
  void max_pool2d_forward_##SUFFIX(const Pool2dGeom&, const T*, T*, uint8_t*);                                  \
  void max_pool2d_backward_##SUFFIX(const Pool2dGeom&, const T*, const int64_t*, T*);                           \
  void max_pool2d_backward_##SUFFIX(const Pool2dGeom&, const T*, const uint8_t*, T*);                           \
  void max_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom&, const T*, T*, int64_t*);                             \
  void max_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom&, const T*, T*, uint8_t*);                             \
  void max_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom&, const T*, const int64_t*, T*);                      \
  void max_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom&, const T*, const uint8_t*, T*);                      \
  void avg_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);                \
  void avg_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);               \
  void adaptive_avg_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom&, const T*, T*);                              \
  void adaptive_avg_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom&, const T*, T*);                             \
  void avg_pool2d_forward_##SUFFIX(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);                     \
  void avg_pool2d_backward_##SUFFIX(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);                    \
  void adaptive_avg_pool2d_forward_##SUFFIX(const Pool2dGeom&, const T*, T*);                                   \
  void adaptive_avg_pool2d_backward_##SUFFIX(const Pool2dGeom&, const T*, T*);
DLK_POOL_DECLARE(scalar, float)
DLK_POOL_DECLARE(scalar, double)
DLK_POOL_DECLARE(avx2, float)
DLK_POOL_DECLARE(avx2, double)
DLK_POOL_DECLARE(avx512, float)
DLK_POOL_DECLARE(avx512, double)
#undef DLK_POOL_DECLARE

}  // namespace dlk::cpu
