// Allocation of large CPU outputs.
//
// torch's default CPU allocator hands every large tensor fresh pages from the OS, and the first write
// to each 4 KiB page then costs a page fault: for an 8192 x 8000 float32 gradient, about 66 ms of
// faults against a 10 ms kernel (measured on the 2-core CI machine). Large CPU outputs therefore come
// from a small process-wide cache of 2 MiB-aligned blocks, advised for transparent huge pages; a block
// goes back to the cache when its tensor dies and is reused by the next output of similar size.
// The cache holds at most cpu_cache_limit() bytes of idle blocks (DLKERNELS_CPU_CACHE_BYTES, default
// 1 GiB); dlkernels.empty_cache() returns them to the OS. CUDA tensors use torch's caching allocator.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstddef>

namespace dlk::ops {

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

size_t cpu_cache_limit();
void set_cpu_cache_limit(size_t bytes);
size_t cpu_cache_idle_bytes();
void cpu_cache_release();

}  // namespace dlk::ops
