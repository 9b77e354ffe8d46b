// Running a kernel on the input's device, shared by the ops files: the CPU body for the input's
// floating dtype, or the CUDA launcher on the current stream under the input's device.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#ifdef DLKERNELS_WITH_CUDA
#include "cuda/launch.h"
#include "ops/cuda_util.h"
#endif

// Inside a CUDA lambda (auto dt, void* stream): the launcher call. In a CPU-only build the lambdas are
// never called and name no launcher.
#ifdef DLKERNELS_WITH_CUDA
#define DLK_CUDA_CALL(call) cuda::call
#else
#define DLK_CUDA_CALL(call) ((void)dt, (void)stream, 0)
#endif

namespace dlk::ops {

// Which kernels a tensor runs: the CPU kernels for CPU tensors, the CUDA launchers for CUDA tensors. In
// the CUDA emulation build (DLKERNELS_CUDA_EMU, make test-cuda-emu) CPU tensors take the CUDA branches
// - the very code a GPU build runs - and the launchers run on the emulator.
inline bool cpu_kernels(const at::Tensor& t) {
#ifdef DLKERNELS_CUDA_EMU
  (void)t;
  return false;
#else
  return t.is_cpu();
#endif
}
inline bool cuda_kernels(const at::Tensor& t) {
#ifdef DLKERNELS_CUDA_EMU
  return t.is_cpu() || t.is_cuda();
#else
  return t.is_cuda();
#endif
}

// cpu_fn(scalar_t()) on CPU (float or double); cuda_fn(cuda::DType, void* stream) -> int error on CUDA.
template <class CpuFn, class CudaFn>
void run_on_device(const char* op, const at::Tensor& input, CpuFn cpu_fn, CudaFn cuda_fn) {
  if (cpu_kernels(input)) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dlkernels", [&] { cpu_fn(scalar_t()); });
    return;
  }
#ifdef DLKERNELS_WITH_CUDA
  CudaScope scope(input);
  const int err = cuda_fn(cuda_dtype(input.scalar_type()), scope.stream());
  TORCH_CHECK(err == 0, "dlkernels.", op, ": CUDA kernel launch failed: ", cuda::error_string(err));
#else
  (void)cuda_fn;
  TORCH_CHECK(false, "dlkernels.", op, ": this build has no CUDA support");
#endif
}

}  // namespace dlk::ops
