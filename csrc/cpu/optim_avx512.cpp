// Fused optimizers, avx512 path: optim_impl.h on avx512 vectors. Standard headers before the pragma.
#include <cmath>
#include <cstdint>

#include "cpu/optim.h"

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")
#include "cpu/simd_avx512.h"
#include "cpu/optim_impl.h"

namespace dlk::cpu {

DLK_OPTIM_DEFINE(avx512, avx512, float)
DLK_OPTIM_DEFINE(avx512, avx512, double)

}  // namespace dlk::cpu
