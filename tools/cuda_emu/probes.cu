// Kernels with a planted bug each, compiled into the CUDA emulation build only (tests/test_cuda_emu.py
// runs them): proof that the emulator reports what a GPU would hang on or corrupt silently. Valid CUDA.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace {

// Every thread writes its slot of shared memory and reads its mirror's, with the barrier (ok) or without.
__global__ void mirror_kernel(float* out, bool sync) {
  __shared__ float s[64];
  s[threadIdx.x] = float(threadIdx.x);
  if (sync) __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

// A barrier only half the block reaches.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Thread 0 returns before the barrier the others wait at.
__global__ void early_return_kernel(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// A full-mask shuffle reached by half of the warp (ok: by all of it).
__global__ void partial_shuffle_kernel(float* out, bool whole_warp) {
  float v = float(threadIdx.x);
  if (whole_warp || threadIdx.x % 32 < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// A shuffle offset of 33: a GPU reads the offset's low 5 bits (1).
__global__ void shuffle_offset_kernel(float* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, float(threadIdx.x), 33u);
}

// Shared memory read that no thread wrote (after a barrier): the 0xFF fill shows in the output.
__global__ void unwritten_shared_kernel(float* out) {
  __shared__ float s[64];
  if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// One element past the end: only ASan sees it (make test-cuda-emu-sanitize).
__global__ void off_by_one_kernel(float* out, int n) {
  const int i = int(threadIdx.x) + 1;
  if (i <= n) out[i] = 1.0f;  // should be i < n
}

// Blocks that read what other blocks write: a race across blocks.
__global__ void cross_block_kernel(float* out) {
  if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x == 0 ? 1.0f : out[blockIdx.x - 1] + 1.0f;
}

}  // namespace

namespace dlk_emu {

// Runs probe `name` on out (at least 64 floats); returns the launch's error message, "" if none.
std::string run_probe(const std::string& name, float* out, int64_t n) {
  if (name == "mirror_sync") mirror_kernel<<<1, 64>>>(out, true);
  else if (name == "mirror_no_sync") mirror_kernel<<<1, 64>>>(out, false);
  else if (name == "divergent_barrier") divergent_barrier_kernel<<<1, 64>>>(out);
  else if (name == "early_return") early_return_kernel<<<1, 64>>>(out);
  else if (name == "shuffle_whole_warp") partial_shuffle_kernel<<<1, 64>>>(out, true);
  else if (name == "shuffle_half_warp") partial_shuffle_kernel<<<1, 64>>>(out, false);
  else if (name == "shuffle_offset_33") shuffle_offset_kernel<<<1, 64>>>(out);
  else if (name == "unwritten_shared") unwritten_shared_kernel<<<1, 64>>>(out);
  else if (name == "off_by_one") off_by_one_kernel<<<1, 64>>>(out, int(n));
  else if (name == "cross_block") cross_block_kernel<<<8, 32>>>(out);
  else if (name == "block_too_large") mirror_kernel<<<1, 2048>>>(out, true);
  else if (name == "grid_y_too_large") mirror_kernel<<<dim3(1, 70000), 64>>>(out, true);
  else if (name == "empty_grid") mirror_kernel<<<0, 64>>>(out, true);
  else return "unknown probe " + name;
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace dlk_emu
