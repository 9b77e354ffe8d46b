#include "ops/alloc.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace dlk::ops {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMinCachedBytes = size_t(1) << 20;  // below this, malloc's own reuse is fine

struct BlockCache {
  std::mutex mutex;
  std::multimap<size_t, void*> idle;  // block size -> block
  size_t idle_bytes = 0;
  size_t limit;

  BlockCache() {
    const char* env = std::getenv("DLKERNELS_CPU_CACHE_BYTES");
    limit = env ? size_t(std::strtoull(env, nullptr, 10)) : (size_t(1) << 30);
  }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      // Best fit among blocks no more than twice the request, so a small output never pins a huge block.
      auto it = idle.lower_bound(bytes);
      if (it != idle.end() && it->first <= 2 * bytes) {
        void* p = it->second;
        idle_bytes -= it->first;
        idle.erase(it);
        return p;
      }
    }
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, kHugePage, bytes) == 0 && p != nullptr, "dlkernels: out of memory allocating ",
                bytes, " bytes");
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure leaves ordinary pages
#endif
    return p;
  }

  void give_back(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (idle_bytes + bytes <= limit) {
        idle.emplace(bytes, p);
        idle_bytes += bytes;
        return;
      }
    }
    std::free(p);
  }

  void release() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex);
      blocks.swap(idle);
      idle_bytes = 0;
    }
    for (auto& b : blocks) std::free(b.second);
  }
};

BlockCache& cache() {
  // Never destroyed: tensors may outlive static destruction at interpreter exit.
  static BlockCache* c = new BlockCache();
  return *c;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().type() != c10::DeviceType::CPU) return at::empty(sizes, options);
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kMinCachedBytes) return at::empty(sizes, options);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = cache().take(rounded);
  return at::from_blob(p, sizes, [rounded](void* q) { cache().give_back(q, rounded); }, options);
}

size_t cpu_cache_limit() { return cache().limit; }
void set_cpu_cache_limit(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(cache().mutex);
    cache().limit = bytes;
  }
  if (cpu_cache_idle_bytes() > bytes) cpu_cache_release();
}
size_t cpu_cache_idle_bytes() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return cache().idle_bytes;
}
void cpu_cache_release() { cache().release(); }

}  // namespace dlk::ops
