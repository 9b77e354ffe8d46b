// Pooling, avx512 path: the loops of pooling_impl.h compiled for avx512 (compiler-vectorized; no
// hand-written intrinsics yet). Standard headers before the pragma.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/pooling.h"

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")
#include "cpu/pooling_impl.h"

namespace dlk::cpu {

DLK_POOL_DEFINE(avx512, float)
DLK_POOL_DEFINE(avx512, double)

}  // namespace dlk::cpu
