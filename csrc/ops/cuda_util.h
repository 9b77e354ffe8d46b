// Helpers shared by the CUDA branches of csrc/ops/*.cpp (included only under DLKERNELS_WITH_CUDA).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <vector>

#ifdef DLKERNELS_CUDA_EMU
#include "dlk_emu/runtime.h"
#else
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

// Tensors a launch updates in place (optimizer parameters and states). The emulation build's race check
// replays a launch from a snapshot of the memory it writes, found among the allocations its CPU allocator
// registered; a storage torch allocated another way (copy.deepcopy of a state_dict) is registered here
// for the scope's lifetime. Nothing on a GPU build.
class EmuMemoryScope {
 public:
  EmuMemoryScope() = default;
  EmuMemoryScope(const EmuMemoryScope&) = delete;
  EmuMemoryScope& operator=(const EmuMemoryScope&) = delete;
#ifdef DLKERNELS_CUDA_EMU
  void add(const at::Tensor& t) {
    if (!t.defined() || !t.has_storage()) return;
    const void* p = t.storage().data();
    if (dlk_emu::register_memory_if_new(p, t.storage().nbytes())) added_.push_back(p);
  }
  ~EmuMemoryScope() {
    for (const void* p : added_) dlk_emu::unregister_memory(p);
  }

 private:
  std::vector<const void*> added_;
#else
  void add(const at::Tensor&) {}
#endif
};

}  // namespace dlk::ops
