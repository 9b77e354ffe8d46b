// What every CUDA kernel file shares: the accumulation type of each storage dtype, conversions to and
// from it, and the switch from the launchers' DType to a C++ type. CUDA headers only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launch.h"

namespace dlk::cuda {

// Math and accumulation in float, or double for double storage (float16/bfloat16 are storage only).
template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_acc(float v) { return T(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <class T> __device__ __forceinline__ T from_acc(double v) { return T(v); }

// Elementwise kernels: blocks of kBlockThreads threads, a grid capped so that grid-stride loops
// (DLK_GRID_LOOP, 64-bit indices) cover any n.
constexpr int kBlockThreads = 256;
inline int blocks_for(int64_t n) {
  const int64_t b = (n + kBlockThreads - 1) / kBlockThreads;
  return int(b < 1 ? 1 : (b > 65535 * 32 ? 65535 * 32 : b));
}

#define DLK_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// The same loop in an index type I: int32_t where every index of the launch stays below 2^30 (so that
// i + the grid's stride cannot overflow), which makes the divisions of index decompositions 32-bit
// ones (several times cheaper than 64-bit); dispatch_index picks it.
#define DLK_GRID_LOOP_I(I, i, n) \
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < I(n); i += I(gridDim.x) * I(blockDim.x))
template <class F> cudaError_t dispatch_index(int64_t largest_index, F&& f) {
  return largest_index < (int64_t(1) << 30) ? f(int32_t()) : f(int64_t());
}

// Calls f with a value of the C++ type of dt.
template <class F> cudaError_t dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: return f(float());
    case DType::Float64: return f(double());
    case DType::Float16: return f(__half());
    case DType::BFloat16: return f(__nv_bfloat16());
  }
  return cudaErrorInvalidValue;
}

}  // namespace dlk::cuda
