// Pooling, avx2 path: the loops of pooling_impl.h compiled for avx2, with the hand-written
// float32 lanes of pooling_lanes_avx2.h. Standard headers before the pragma.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/pooling.h"

#pragma GCC target("avx2,fma")
// GCC's loop distribution turns the lanes' vector copy loops back into memcpy calls, whose start-up
// cost per 112-float row was 30% of average pooling's kernel time (perf, input cached): off here.
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#include "cpu/pooling_lanes_avx2.h"
#include "cpu/pooling_impl.h"

namespace dlk::cpu {

DLK_POOL_DEFINE(avx2, float, avx2::PoolLanes)
DLK_POOL_DEFINE(avx2, double, avx2::PoolLanes)

}  // namespace dlk::cpu
