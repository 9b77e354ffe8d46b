// Pooling, avx2 path: the loops of pooling_impl.h compiled for avx2 (compiler-vectorized; no
// hand-written intrinsics yet). Standard headers before the pragma.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/pooling.h"

#pragma GCC target("avx2,fma")
#include "cpu/pooling_impl.h"

namespace dlk::cpu {

DLK_POOL_DEFINE(avx2, float)
DLK_POOL_DEFINE(avx2, double)

}  // namespace dlk::cpu
