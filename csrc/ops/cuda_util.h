// Helpers shared by the CUDA branches of csrc/ops/*.cpp (included only under DLKERNELS_WITH_CUDA).
#pragma once
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "cuda/launch.h"

namespace dlk::ops {

inline cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::Float32;
    case at::kDouble: return cuda::DType::Float64;
    case at::kHalf: return cuda::DType::Float16;
    case at::kBFloat16: return cuda::DType::BFloat16;
    default: TORCH_CHECK(false, "dlkernels: no CUDA kernel for dtype ", t);
  }
}

}  // namespace dlk::ops
