// im2col convolution, avx2 path: the loops of conv_impl.h on avx2 vectors (the stride-1 row copies
// and col2im adds, the tile GEMM; the other loops compiler-vectorized). Standard headers before the pragma.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "cpu/conv.h"

#pragma GCC target("avx2,fma")
#include "cpu/simd_avx2.h"
#include "cpu/conv_impl.h"

namespace dlk::cpu {

DLK_CONV_DEFINE(avx2, avx2, float)
DLK_CONV_DEFINE(avx2, avx2, double)

}  // namespace dlk::cpu
