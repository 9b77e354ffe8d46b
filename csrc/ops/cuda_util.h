// Helpers shared by the CUDA branches of csrc/ops/*.cpp (included only under DLKERNELS_WITH_CUDA).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#ifndef DLKERNELS_CUDA_EMU
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

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

// A launch's device and stream: the tensor's device made current and torch's current stream there. The
// emulation build has neither (stream nullptr: the emulated launchers run at once, in order).
#ifdef DLKERNELS_CUDA_EMU
class CudaScope {
 public:
  explicit CudaScope(const at::Tensor&) {}
  void* stream() const { return nullptr; }
};
#else
class CudaScope {
 public:
  explicit CudaScope(const at::Tensor& t) : guard_(t.device()) {}
  void* stream() const { return static_cast<void*>(at::cuda::getCurrentCUDAStream().stream()); }

 private:
  c10::cuda::CUDAGuard guard_;
};
#endif

}  // namespace dlk::ops
