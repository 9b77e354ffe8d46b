#include "ops/alloc.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

namespace dlk::ops {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMinCachedBytes = size_t(1) << 20;  // below this, malloc's own reuse is fine
// An idle block not reused within this many cached allocations goes back to the OS. A training step
// makes a few hundred (resnet50 at batch 16: about 300), so a steady loop reuses every block long before.
constexpr uint64_t kDefaultWindow = 1024;
// Blocks are mapped straight from the OS, not taken from malloc: glibc serves requests below its
// (self-raising, up to 32 MiB) mmap threshold from the heap, whose freed memory need not return to the OS.
void* map_block(size_t bytes) {
  // Over-map by one huge page, then unmap the unaligned head and the tail.
  const size_t span = bytes + kHugePage;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(raw != MAP_FAILED, "dlkernels: out of memory mapping ", bytes, " bytes for a CPU output");
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > base) munmap(raw, aligned - base);
  const uintptr_t end = aligned + bytes;
  if (base + span > end) munmap(reinterpret_cast<void*>(end), base + span - end);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure leaves ordinary pages
#endif
  return p;
}

void unmap_blocks(const std::vector<std::pair<void*, size_t>>& blocks) {
  for (const auto& b : blocks) munmap(b.first, b.second);
}

struct BlockCache {
  struct Idle {
    void* ptr;
    uint64_t seq;  // order in which blocks went idle: smaller is older
  };
  struct Age {
    size_t bytes;
    uint64_t freed_at;  // value of `allocations` when the block went idle
  };
  std::mutex mutex;
  std::multimap<size_t, Idle> idle;  // block size -> block
  std::map<uint64_t, Age> idle_by_age;  // seq -> block size and when it was freed
  uint64_t next_seq = 0;
  uint64_t allocations = 0;  // requests served or mapped so far
  size_t idle_bytes = 0, in_use_bytes = 0;
  size_t limit;       // cap on idle bytes
  uint64_t window;    // an idle block not reused within this many allocations goes back to the OS
  uint64_t hits = 0, misses = 0, released = 0;
  // The largest in_use_bytes in the current window of `window` allocations and in the one before.
  size_t peak_current = 0, peak_previous = 0;
  uint64_t window_start = 0;

  BlockCache()
      : limit(env_count("DLKERNELS_CPU_CACHE_BYTES", size_t(1) << 30)),
        window(env_count("DLKERNELS_CPU_CACHE_WINDOW", kDefaultWindow)) {}

  // A non-negative integer from the environment; a value that is not one is reported and ignored.
  static uint64_t env_count(const char* name, uint64_t fallback) {
    const char* env = std::getenv(name);
    if (env == nullptr) return fallback;
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end == env || *end != '\0' || errno != 0 || env[0] == '-') {
      TORCH_WARN("dlkernels: ", name, " must be a non-negative integer, got '", env, "'; using ", fallback);
      return fallback;
    }
    return uint64_t(v);
  }

  // Removes the idle block `it` from both indexes (caller holds the mutex).
  void unlink(std::multimap<size_t, Idle>::iterator it) {
    idle_by_age.erase(it->second.seq);
    idle_bytes -= it->first;
    idle.erase(it);
  }

  size_t recent_peak() const { return std::max(peak_current, peak_previous); }

  // Counts an allocation and the bytes now in use (caller holds the mutex).
  void note_allocation() {
    if (++allocations - window_start > window) {
      peak_previous = peak_current;
      peak_current = in_use_bytes;
      window_start = allocations;
    }
    peak_current = std::max(peak_current, in_use_bytes);
  }

  // Moves into `out` the idle blocks that outlived the window, then the oldest ones while the cache
  // holds more than twice the recent peak in use, or more idle bytes than the limit (caller holds the
  // mutex).
  void trim(std::vector<std::pair<void*, size_t>>& out) {
    const size_t held_cap = 2 * recent_peak();
    while (!idle_by_age.empty()) {
      auto oldest = idle_by_age.begin();
      const bool stale = allocations - oldest->second.freed_at >= window;
      if (!stale && idle_bytes <= limit && in_use_bytes + idle_bytes <= held_cap) break;
      auto it = idle.lower_bound(oldest->second.bytes);
      while (it->second.seq != oldest->first) ++it;  // the block of that age among those of its size
      out.emplace_back(it->second.ptr, it->first);
      unlink(it);
      ++released;
    }
  }

  // A block of at least `bytes`; its whole size goes to *block_bytes.
  void* take(size_t bytes, size_t* block_bytes) {
    std::vector<std::pair<void*, size_t>> to_unmap;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex);
      // Best fit among blocks no more than twice the request, so a small output never pins a huge block.
      auto it = idle.lower_bound(bytes);
      if (it != idle.end() && it->first <= 2 * bytes) {
        p = it->second.ptr;
        *block_bytes = it->first;
        in_use_bytes += it->first;
        unlink(it);
        ++hits;
      } else {
        ++misses;
        *block_bytes = bytes;
        in_use_bytes += bytes;
      }
      note_allocation();
      trim(to_unmap);
    }
    unmap_blocks(to_unmap);
    if (p != nullptr) return p;
    try {
      return map_block(bytes);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      in_use_bytes -= bytes;
      throw;
    }
  }

  void give_back(void* p, size_t bytes) {
    std::vector<std::pair<void*, size_t>> to_unmap;
    {
      std::lock_guard<std::mutex> lock(mutex);
      in_use_bytes -= bytes;
      if (bytes > limit) {  // it could only stay by pushing every other idle block out
        ++released;
        to_unmap.emplace_back(p, bytes);
      } else {
        const uint64_t seq = next_seq++;
        idle.emplace(bytes, Idle{p, seq});
        idle_by_age.emplace(seq, Age{bytes, allocations});
        idle_bytes += bytes;
        trim(to_unmap);
      }
    }
    unmap_blocks(to_unmap);
  }

  void release() {
    std::vector<std::pair<void*, size_t>> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (auto& b : idle) blocks.emplace_back(b.second.ptr, b.first);
      released += blocks.size();
      // The recent peak starts afresh from what is in use now.
      peak_current = in_use_bytes;
      peak_previous = 0;
      window_start = allocations;
      idle.clear();
      idle_by_age.clear();
      idle_bytes = 0;
    }
    unmap_blocks(blocks);
  }
};

BlockCache& cache() {
  // Never destroyed: tensors may outlive static destruction at interpreter exit.
  static BlockCache* c = new BlockCache();
  return *c;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef DLKERNELS_CUDA_EMU
  return at::empty(sizes, options);  // the emulated CUDA branches allocate as on a GPU: torch's allocator
#endif
  if (options.device().type() != c10::DeviceType::CPU) return at::empty(sizes, options);
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kMinCachedBytes) return at::empty(sizes, options);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  size_t block_bytes = 0;  // the block may be larger than asked for: it goes back whole
  void* p = cache().take(rounded, &block_bytes);
  return at::from_blob(p, sizes, [block_bytes](void* q) { cache().give_back(q, block_bytes); }, options);
}

size_t cpu_cache_limit() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return cache().limit;
}

void set_cpu_cache_limit(size_t bytes) {
  std::vector<std::pair<void*, size_t>> to_unmap;
  {
    std::lock_guard<std::mutex> lock(cache().mutex);
    cache().limit = bytes;
    cache().trim(to_unmap);
  }
  unmap_blocks(to_unmap);
}

uint64_t cpu_cache_window() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return cache().window;
}

void set_cpu_cache_window(uint64_t allocations) {
  std::vector<std::pair<void*, size_t>> to_unmap;
  {
    std::lock_guard<std::mutex> lock(cache().mutex);
    cache().window = allocations;
    cache().trim(to_unmap);
  }
  unmap_blocks(to_unmap);
}

size_t cpu_cache_idle_bytes() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return cache().idle_bytes;
}

void cpu_cache_release() { cache().release(); }

CpuCacheStats cpu_cache_stats() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return CpuCacheStats{c.in_use_bytes + c.idle_bytes, c.in_use_bytes, c.idle_bytes, c.limit, c.window,
                       c.hits, c.misses, c.released};
}

}  // namespace dlk::ops
