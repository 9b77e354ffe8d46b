// Allocation of large CPU outputs.
//
// torch's default CPU allocator hands every large tensor fresh pages from the OS, and the first write
// to each 4 KiB page then costs a page fault: for an 8192 x 8000 float32 gradient, about 66 ms of
// faults against a 10 ms kernel (measured on the 2-core CI machine). Large CPU outputs (>= 1 MiB)
// therefore come from a process-wide cache of 2 MiB-aligned blocks mapped straight from the OS and
// advised for transparent huge pages; a block goes back to the cache when its tensor dies and is reused
// by the next output that needs at least half of it (best fit).
//
// What the cache keeps: what the workload reuses. A block freed and not reused within the next
// cpu_cache_window() cached allocations (DLKERNELS_CPU_CACHE_WINDOW, default 1024) goes back to the OS,
// so a steady training loop, whose every step reuses the same blocks, keeps them all and hits on every
// allocation, while a loop of ever-changing shapes lets the sizes it stopped asking for go. While the
// blocks held (in use and idle) pass twice the most bytes in use at once over the last one to two
// windows, the least recently freed idle blocks go too. Idle bytes are further capped by cpu_cache_limit() (DLKERNELS_CPU_CACHE_BYTES, default 1 GiB; the oldest idle
// blocks go first); dlkernels.empty_cache() returns every idle block. CUDA tensors use torch's caching
// allocator.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>

namespace dlk::ops {

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// channels_last. torch answers a channels_last input with a channels_last result; a tensor that is both
// (C == 1, or 1x1 planes) counts as contiguous.
inline bool channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(c10::MemoryFormat::ChannelsLast);
}
// A result computed in the contiguous layout, in the memory format torch gives for `like` (channels_last
// for a channels_last `like`; a copy only then).
inline at::Tensor in_format_of(const at::Tensor& t, const at::Tensor& like) {
  return channels_last(like) ? t.contiguous(c10::MemoryFormat::ChannelsLast) : t;
}
// An (N, C, H, W) output stored (N, H, W, C), from the same cache as empty_output.
inline at::Tensor empty_output_nhwc(int64_t N, int64_t C, int64_t H, int64_t W, const at::TensorOptions& options) {
  return empty_output({N, H, W, C}, options).permute({0, 3, 1, 2});
}

struct CpuCacheStats {
  size_t held_bytes;     // blocks mapped by the cache: in use + idle
  size_t in_use_bytes;   // blocks backing live tensors
  size_t idle_bytes;     // blocks waiting for reuse
  size_t limit_bytes;    // the cap on idle bytes
  uint64_t window;       // allocations within which an idle block must be reused
  uint64_t hits;         // allocations served by an idle block
  uint64_t misses;       // allocations that mapped a new block
  uint64_t released;     // blocks returned to the OS (policy, cap or empty_cache)
};

size_t cpu_cache_limit();
void set_cpu_cache_limit(size_t bytes);
uint64_t cpu_cache_window();
void set_cpu_cache_window(uint64_t allocations);
size_t cpu_cache_idle_bytes();
void cpu_cache_release();
CpuCacheStats cpu_cache_stats();

}  // namespace dlk::ops
