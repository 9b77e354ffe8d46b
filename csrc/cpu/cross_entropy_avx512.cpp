// Softmax-cross-entropy, avx512 path: the generic SIMD kernel of cross_entropy_simd.h on avx512 vectors.
// Every standard header is included before the target pragma, so only this file's own functions
// (all internal) are compiled for avx512.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/cross_entropy.h"

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")
#include "cpu/simd_avx512.h"
#include "cpu/cross_entropy_simd.h"

namespace dlk::cpu {

void cross_entropy_forward_avx512(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                 const CrossEntropyForwardArgs<float>& a) {
  CrossEntropySimd<avx512::Vec<float>>::forward(g, o, a);
}
void cross_entropy_forward_avx512(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                 const CrossEntropyForwardArgs<double>& a) {
  CrossEntropySimd<avx512::Vec<double>>::forward(g, o, a);
}
void cross_entropy_backward_avx512(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                  const CrossEntropyBackwardArgs<float>& a) {
  CrossEntropySimd<avx512::Vec<float>>::backward(g, o, a);
}
void cross_entropy_backward_avx512(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                  const CrossEntropyBackwardArgs<double>& a) {
  CrossEntropySimd<avx512::Vec<double>>::backward(g, o, a);
}

}  // namespace dlk::cpu
