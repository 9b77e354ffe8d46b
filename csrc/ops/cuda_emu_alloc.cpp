// The CUDA emulation build's CPU allocator: torch's, with every allocation registered with the emulator,
// so that a launch can be replayed from the same memory in a second thread order (the race check of
// tools/cuda_emu). Compiled only into the emulation build (DLKERNELS_CUDA_EMU).
#ifdef DLKERNELS_CUDA_EMU
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstring>

#include "dlk_emu/runtime.h"

namespace dlk::ops {
namespace {

// Wraps torch's default CPU allocator, whose data pointer is its own context (raw_allocate needs that).
class RegisteringAllocator final : public c10::Allocator {
 public:
  explicit RegisteringAllocator(c10::Allocator* inner) : inner_(inner) {
    inner_free_ = inner->raw_deleter();
    TORCH_CHECK(inner_free_ != nullptr, "dlkernels (CUDA emulation): torch's CPU allocator has no raw deleter");
  }

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr d = inner_->allocate(n);
    void* p = d.get();
    const c10::Device device = d.device();
    if (!p) return d;
    TORCH_CHECK(d.get_context() == p, "dlkernels (CUDA emulation): unexpected CPU allocation context");
    d.release_context();
    dlk_emu::register_memory(p, n);
    return c10::DataPtr(p, p, &release, device);
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, size_t count) const override { std::memcpy(dest, src, count); }

 private:
  static void release(void* p) {
    dlk_emu::unregister_memory(p);
    inner_free_(p);
  }
  c10::Allocator* inner_;
  static c10::DeleterFnPtr inner_free_;
};
c10::DeleterFnPtr RegisteringAllocator::inner_free_ = nullptr;

struct Install {
  Install() {
    static RegisteringAllocator a(c10::GetCPUAllocator());
    c10::SetCPUAllocator(&a, /*priority=*/100);
  }
} install;

}  // namespace
}  // namespace dlk::ops
#endif
