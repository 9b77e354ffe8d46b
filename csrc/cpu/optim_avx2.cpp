// Fused optimizers, avx2 path: optim_impl.h on avx2 vectors. Standard headers before the pragma.
#include <cmath>
#include <cstdint>

#include "cpu/optim.h"

#pragma GCC target("avx2,fma")
#include "cpu/simd_avx2.h"
#include "cpu/optim_impl.h"

namespace dlk::cpu {

DLK_OPTIM_DEFINE(avx2, avx2, float)
DLK_OPTIM_DEFINE(avx2, avx2, double)

}  // namespace dlk::cpu
