// Batch normalization, avx2 path: the loops of batch_norm_impl.h compiled for avx2 (compiler-vectorized;
// the float32 training sums written over simd_avx2.h's Vec<float>).
// Standard headers before the pragma.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/batch_norm.h"

#pragma GCC target("avx2,fma")
#include "cpu/batch_norm_impl.h"
// after the impl, so that the vector wrappers are compiled under its floating-point pragma too
#include "cpu/simd_avx2.h"

namespace dlk::cpu {

DLK_BN_DEFINE(avx2, avx2, float)
DLK_BN_DEFINE(avx2, avx2, double)

}  // namespace dlk::cpu
