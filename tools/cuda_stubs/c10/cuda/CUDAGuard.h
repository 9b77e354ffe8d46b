// Stand-in for torch's CUDAGuard, for tools/check_cuda_ops.sh only (see ATen/cuda/CUDAContext.h here).
#pragma once
#include <c10/core/Device.h>
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
