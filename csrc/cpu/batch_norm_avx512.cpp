// Batch normalization, avx512 path: the loops of batch_norm_impl.h compiled for avx512 (compiler-vectorized;
// the float32 training sums written over simd_avx512.h's Vec<float>).
// Standard headers before the pragma.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/batch_norm.h"

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")
#include "cpu/batch_norm_impl.h"
// after the impl, so that the vector wrappers are compiled under its floating-point pragma too
#include "cpu/simd_avx512.h"

namespace dlk::cpu {

DLK_BN_DEFINE(avx512, avx512, float)
DLK_BN_DEFINE(avx512, avx512, double)

}  // namespace dlk::cpu
