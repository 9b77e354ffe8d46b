// im2col convolution, avx512 path: the loops of conv_impl.h on avx512 vectors (the stride-1 row copies
// and col2im adds, the tile GEMM; the other loops compiler-vectorized). Standard headers before the pragma.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "cpu/conv.h"

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")
#include "cpu/simd_avx512.h"
#include "cpu/conv_impl.h"

namespace dlk::cpu {

DLK_CONV_DEFINE(avx512, avx512, float)
DLK_CONV_DEFINE(avx512, avx512, double)

}  // namespace dlk::cpu
