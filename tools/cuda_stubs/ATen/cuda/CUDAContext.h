// Stand-in for torch's CUDA header, for tools/check_cuda_ops.sh only: a CPU build of torch ships no
// CUDA headers, yet the CUDA branches of csrc/ops/*.cpp should at least be type-checked on every CI run.
// It declares just what those branches use. Never part of a real build.
#pragma once
namespace at::cuda {
struct StandInStream {
  void* stream() const { return nullptr; }
};
inline StandInStream getCurrentCUDAStream() { return {}; }
}  // namespace at::cuda
