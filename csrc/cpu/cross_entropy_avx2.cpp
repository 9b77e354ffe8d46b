// Softmax-cross-entropy, avx2 path: the generic SIMD kernel of cross_entropy_simd.h on avx2 vectors.
// Every standard header is included before the target pragma, so only this file's own functions
// (all internal) are compiled for avx2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/cross_entropy.h"

#pragma GCC target("avx2,fma")
#include "cpu/simd_avx2.h"
#include "cpu/cross_entropy_simd.h"

namespace dlk::cpu {

void cross_entropy_forward_avx2(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                 const CrossEntropyForwardArgs<float>& a) {
  CrossEntropySimd<avx2::Vec<float>>::forward(g, o, a);
}
void cross_entropy_forward_avx2(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                 const CrossEntropyForwardArgs<double>& a) {
  CrossEntropySimd<avx2::Vec<double>>::forward(g, o, a);
}
void cross_entropy_backward_avx2(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                  const CrossEntropyBackwardArgs<float>& a) {
  CrossEntropySimd<avx2::Vec<float>>::backward(g, o, a);
}
void cross_entropy_backward_avx2(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                  const CrossEntropyBackwardArgs<double>& a) {
  CrossEntropySimd<avx2::Vec<double>>::backward(g, o, a);
}

}  // namespace dlk::cpu
