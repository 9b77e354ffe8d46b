// Pooling: the scalar reference path (pooling_impl.h at the baseline ISA) and the ISA dispatch.
#include "cpu/pooling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/pooling_impl.h"

namespace dlk::cpu {

DLK_POOL_DEFINE(scalar, float, void)
DLK_POOL_DEFINE(scalar, double, void)

DLK_ISA_DISPATCH(max_pool2d_forward, (const Pool2dGeom& g, const T* in, T* out, int64_t* idx), (g, in, out, idx))
DLK_ISA_DISPATCH(max_pool2d_forward, (const Pool2dGeom& g, const T* in, T* out, uint8_t* taps), (g, in, out, taps))
DLK_ISA_DISPATCH(max_pool2d_backward, (const Pool2dGeom& g, const T* go, const int64_t* idx, T* gi), (g, go, idx, gi))
DLK_ISA_DISPATCH(max_pool2d_backward, (const Pool2dGeom& g, const T* go, const uint8_t* taps, T* gi), (g, go, taps, gi))
DLK_ISA_DISPATCH(max_pool2d_nhwc_forward, (const Pool2dGeom& g, const T* in, T* out, int64_t* idx), (g, in, out, idx))
DLK_ISA_DISPATCH(max_pool2d_nhwc_forward, (const Pool2dGeom& g, const T* in, T* out, uint8_t* taps), (g, in, out, taps))
DLK_ISA_DISPATCH(max_pool2d_nhwc_backward, (const Pool2dGeom& g, const T* go, const int64_t* idx, T* gi),
                 (g, go, idx, gi))
DLK_ISA_DISPATCH(max_pool2d_nhwc_backward, (const Pool2dGeom& g, const T* go, const uint8_t* taps, T* gi),
                 (g, go, taps, gi))
DLK_ISA_DISPATCH(avg_pool2d_nhwc_forward, (const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out),
                 (g, o, in, out))
DLK_ISA_DISPATCH(avg_pool2d_nhwc_backward, (const Pool2dGeom& g, const AvgPoolOptions& o, const T* go, T* gi),
                 (g, o, go, gi))
DLK_ISA_DISPATCH(adaptive_avg_pool2d_nhwc_forward, (const Pool2dGeom& g, const T* in, T* out), (g, in, out))
DLK_ISA_DISPATCH(adaptive_avg_pool2d_nhwc_backward, (const Pool2dGeom& g, const T* go, T* gi), (g, go, gi))
DLK_ISA_DISPATCH(avg_pool2d_forward, (const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out),
                  (g, o, in, out))
DLK_ISA_DISPATCH(avg_pool2d_backward, (const Pool2dGeom& g, const AvgPoolOptions& o, const T* go, T* gi),
                  (g, o, go, gi))
DLK_ISA_DISPATCH(adaptive_avg_pool2d_forward, (const Pool2dGeom& g, const T* in, T* out), (g, in, out))
DLK_ISA_DISPATCH(adaptive_avg_pool2d_backward, (const Pool2dGeom& g, const T* go, T* gi), (g, go, gi))

#define DLK_POOL_INSTANTIATE(T)                                                                         \
  template void max_pool2d_forward<T>(const Pool2dGeom&, const T*, T*, int64_t*);                       \
  template void max_pool2d_forward<T>(const Pool2dGeom&, const T*, T*, uint8_t*);                       \
  template void max_pool2d_backward<T>(const Pool2dGeom&, const T*, const int64_t*, T*);                \
  template void max_pool2d_backward<T>(const Pool2dGeom&, const T*, const uint8_t*, T*);                \
  template void max_pool2d_nhwc_forward<T>(const Pool2dGeom&, const T*, T*, int64_t*);                  \
  template void max_pool2d_nhwc_forward<T>(const Pool2dGeom&, const T*, T*, uint8_t*);                  \
  template void max_pool2d_nhwc_backward<T>(const Pool2dGeom&, const T*, const int64_t*, T*);           \
  template void max_pool2d_nhwc_backward<T>(const Pool2dGeom&, const T*, const uint8_t*, T*);           \
  template void avg_pool2d_nhwc_forward<T>(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);     \
  template void avg_pool2d_nhwc_backward<T>(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);    \
  template void adaptive_avg_pool2d_nhwc_forward<T>(const Pool2dGeom&, const T*, T*);                   \
  template void adaptive_avg_pool2d_nhwc_backward<T>(const Pool2dGeom&, const T*, T*);                  \
  template void avg_pool2d_forward<T>(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);          \
  template void avg_pool2d_backward<T>(const Pool2dGeom&, const AvgPoolOptions&, const T*, T*);         \
  template void adaptive_avg_pool2d_forward<T>(const Pool2dGeom&, const T*, T*);                        \
  template void adaptive_avg_pool2d_backward<T>(const Pool2dGeom&, const T*, T*);
DLK_POOL_INSTANTIATE(float)
DLK_POOL_INSTANTIATE(double)
#undef DLK_POOL_INSTANTIATE

}  // namespace dlk::cpu
