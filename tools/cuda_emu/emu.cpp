// The CUDA emulation's scheduler (the model is described in include/dlk_emu/emu.h): fibers with a
// hand-written context switch, barriers and warp shuffles as scheduling points, the launch checks, the
// two-order race check, and the few runtime calls the launchers make. No torch here.
#include <cuda_runtime_api.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "dlk_emu/emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define DLK_EMU_ASAN 1
#endif

// dlk_emu_switch(save, next): saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *save, and resumes the context whose stack pointer is
// next. A new fiber's stack is laid out as if it had switched away just before dlk_emu_fiber_entry.
extern "C" void dlk_emu_switch(void** save, void* next);
extern "C" void dlk_emu_fiber_entry();
extern "C" __attribute__((visibility("hidden"), used)) void dlk_emu_fiber_main();

asm(R"(
  .text
  .globl dlk_emu_switch
  .hidden dlk_emu_switch
  .type dlk_emu_switch, @function
dlk_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dlk_emu_switch, .-dlk_emu_switch

  .globl dlk_emu_fiber_entry
  .hidden dlk_emu_fiber_entry
  .type dlk_emu_fiber_entry, @function
dlk_emu_fiber_entry:
  call dlk_emu_fiber_main
  ud2
  .size dlk_emu_fiber_entry, .-dlk_emu_fiber_entry
)");

namespace dlk_emu {

uint3 g_block_idx;
dim3 g_block_dim, g_grid_dim;
const uint3* g_thread_idx;

namespace {

enum State : uint8_t { kReady, kBarrier, kShuffle, kSyncwarp, kDone };

struct Fiber {
  void* sp;
  uint3 tid;
  State state;
  const char* file;  // where it waits
  int line;
  unsigned mask;  // shuffle or syncwarp
  int kind, arg, width;
  uint64_t value, result;
  void* fake_stack;  // ASan's, while switched away
};

constexpr int kMaxThreads = 1024;
#ifdef DLK_EMU_ASAN
constexpr size_t kStackBytes = size_t(512) << 10;
#else
constexpr size_t kStackBytes = size_t(128) << 10;
#endif
constexpr size_t kGuardBytes = 4096;
constexpr size_t kMaxSharedBytes = 48 << 10;

const char* kKindName[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};

struct SharedVar {
  void* p;
  size_t bytes;
};

struct Engine {
  std::mutex launch_mutex;  // one launch at a time in the process; the built-ins are globals
  char* stacks = nullptr;   // kMaxThreads x (guard page + stack)
  Fiber fibers[kMaxThreads];
  int nthreads = 0;
  void* sched_sp = nullptr;
  Fiber* cur = nullptr;
  const LaunchSpec* spec = nullptr;
  std::string error;  // the running launch's first error
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  void* sched_fake = nullptr;
  std::map<const void*, SharedVar> shared;  // by declaration site
  std::vector<char> dynamic;
  int orders = 2;
  bool stacks_dirty = false;  // fibers abandoned by a failed launch (ASan: their shadow to clear)
  Stats stats{};
  std::map<std::string, uint64_t> launches_by_kernel;
  // registered memory (the race check's snapshots)
  std::mutex mem_mutex;
  std::map<uintptr_t, size_t> memory;
};

Engine& E() {
  static Engine* e = [] {
    Engine* n = new Engine();
    const char* o = std::getenv("DLK_EMU_ORDERS");
    if (o && std::strcmp(o, "1") == 0) n->orders = 1;
    return n;
  }();
  return *e;
}

std::string fmt3(const char* open, unsigned x, unsigned y, unsigned z) {
  char b[64];
  std::snprintf(b, sizeof b, "%s%u, %u, %u)", open, x, y, z);
  return b;
}

std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

void fail(const std::string& what) {
  Engine& e = E();
  if (!e.error.empty()) return;
  const LaunchSpec& s = *e.spec;
  e.error = "kernel " + std::string(s.name) + " (launched at " + where(s.file, s.line) + ", grid " +
            fmt3("(", s.grid.x, s.grid.y, s.grid.z) + ", block " + fmt3("(", s.block.x, s.block.y, s.block.z) +
            "): " + what;
}

// ------------------------------------------------------------------------------------ fibers

void switch_to_fiber(Fiber& f) {
  Engine& e = E();
  e.cur = &f;
  g_thread_idx = &f.tid;
#ifdef DLK_EMU_ASAN
  const size_t i = size_t(&f - e.fibers);
  __sanitizer_start_switch_fiber(&e.sched_fake, e.stacks + i * (kGuardBytes + kStackBytes) + kGuardBytes,
                                 kStackBytes);
#endif
  dlk_emu_switch(&e.sched_sp, f.sp);
#ifdef DLK_EMU_ASAN
  __sanitizer_finish_switch_fiber(e.sched_fake, nullptr, nullptr);
#endif
}

void switch_to_scheduler(bool exiting) {
  Engine& e = E();
  Fiber& f = *e.cur;
#ifdef DLK_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, e.sched_bottom, e.sched_size);
#else
  (void)exiting;
#endif
  dlk_emu_switch(&f.sp, e.sched_sp);
#ifdef DLK_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &e.sched_bottom, &e.sched_size);
#endif
}

void init_fiber(int i, uint3 tid) {
  Engine& e = E();
  Fiber& f = e.fibers[i];
  char* top = e.stacks + size_t(i + 1) * (kGuardBytes + kStackBytes);  // 4 KiB aligned
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 16 - 64);
  uint32_t csr;
  uint16_t cw;
  asm volatile("stmxcsr %0" : "=m"(csr));
  asm volatile("fnstcw %0" : "=m"(cw));
  sp[0] = uint64_t(csr) | (uint64_t(cw) << 32);
  for (int r = 1; r < 7; ++r) sp[r] = 0;  // r15 r14 r13 r12 rbx rbp
  sp[7] = reinterpret_cast<uint64_t>(&dlk_emu_fiber_entry);
  f.sp = sp;
  f.tid = tid;
  f.state = kReady;
  f.file = nullptr;
  f.line = 0;
  f.fake_stack = nullptr;
}

void ensure_stacks() {
  Engine& e = E();
  if (e.stacks) return;
  const size_t total = size_t(kMaxThreads) * (kGuardBytes + kStackBytes);
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "dlk_emu: cannot map %zu bytes of fiber stacks\n", total);
    std::abort();
  }
  e.stacks = static_cast<char*>(p);
  for (int i = 0; i < kMaxThreads; ++i)  // a stack overflow faults instead of writing the next stack
    mprotect(e.stacks + size_t(i) * (kGuardBytes + kStackBytes), kGuardBytes, PROT_NONE);
}

}  // namespace
}  // namespace dlk_emu

extern "C" void dlk_emu_fiber_main() {
  using namespace dlk_emu;
  Engine& e = E();
#ifdef DLK_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &e.sched_bottom, &e.sched_size);
#endif
  e.spec->body(e.spec->ctx);
  e.cur->state = kDone;
  switch_to_scheduler(true);
  __builtin_trap();  // a finished fiber is never resumed
}

namespace dlk_emu {
namespace {

// ------------------------------------------------------------------------------------ block scheduling

std::string thread_list(const std::vector<int>& ids) {
  Engine& e = E();
  std::string s;
  for (size_t k = 0; k < ids.size() && k < 3; ++k) {
    const uint3 t = e.fibers[ids[k]].tid;
    s += (k ? ", " : "") + fmt3("(", t.x, t.y, t.z);
  }
  if (ids.size() > 3) s += " and " + std::to_string(ids.size() - 3) + " more";
  return s;
}

std::string state_of(const Fiber& f) {
  switch (f.state) {
    case kDone: return "returned";
    case kBarrier: return "waits at __syncthreads() at " + where(f.file, f.line);
    case kShuffle: return "waits at " + std::string(kKindName[f.kind]) + " at " + where(f.file, f.line);
    case kSyncwarp: return "waits at __syncwarp() at " + where(f.file, f.line);
    default: return "runs";
  }
}

// Groups the threads by what they do, for an error message.
std::string block_states() {
  Engine& e = E();
  std::map<std::string, std::vector<int>> groups;
  for (int i = 0; i < e.nthreads; ++i) groups[state_of(e.fibers[i])].push_back(i);
  std::string s;
  for (auto& [what, ids] : groups)
    s += "; " + std::to_string(ids.size()) + " thread(s) " + what + " (threadIdx " + thread_list(ids) + ")";
  return s;
}

std::string block_name() { return "block " + fmt3("(", g_block_idx.x, g_block_idx.y, g_block_idx.z); }

bool same_site(const Fiber& a, const Fiber& b) {
  return a.state == b.state && a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0) &&
         a.mask == b.mask && (a.state != kShuffle || (a.kind == b.kind && a.width == b.width));
}

// Completes the shuffles and __syncwarp()s that every lane of their mask has reached in warp w. Returns
// whether any lane was released; records an error for a mask that cannot complete.
bool resolve_warp(int w) {
  Engine& e = E();
  const int base = w * 32, count = std::min(32, e.nthreads - base);
  bool released = false;
  for (int l = 0; l < count; ++l) {
    Fiber& f = e.fibers[base + l];
    if (f.state != kShuffle && f.state != kSyncwarp) continue;
    const std::string what = (f.state == kShuffle ? std::string(kKindName[f.kind]) : std::string("__syncwarp()")) +
                             " at " + where(f.file, f.line);
    char mask_hex[16];
    std::snprintf(mask_hex, sizeof mask_hex, "0x%08x", f.mask);
    const std::string head = what + " with mask " + mask_hex + " in warp " + std::to_string(w) + " of " + block_name();
    if (!(f.mask >> l & 1u)) {
      fail(head + ": lane " + std::to_string(l) + " calls it but is not in the mask");
      return false;
    }
    if (f.state == kShuffle && (f.width <= 0 || f.width > 32 || (f.width & (f.width - 1)))) {
      fail(head + ": width " + std::to_string(f.width) + " is not a power of two up to 32");
      return false;
    }
    for (int b = 0; b < 32; ++b) {
      if (!(f.mask >> b & 1u)) continue;
      if (b >= count) {
        fail(head + ": the mask names lane " + std::to_string(b) + ", which this block of " +
             std::to_string(e.nthreads) + " threads does not have (a shuffle reached by part of a warp)");
        return false;
      }
      const Fiber& o = e.fibers[base + b];
      if (!same_site(o, f)) {
        fail(head + ": lane " + std::to_string(b) + " of the mask " + state_of(o) +
             " (a shuffle reached by part of its mask)" + block_states());
        return false;
      }
    }
    // Every lane of the mask is here: exchange.
    for (int b = 0; b < 32; ++b) {
      if (!(f.mask >> b & 1u)) continue;
      Fiber& me = e.fibers[base + b];
      if (me.state == kShuffle) {
        const int width = me.width, seg = b & ~(width - 1), lane_in = b & (width - 1);
        const int arg = me.kind == 0 ? me.arg : (me.arg & 31);  // a GPU reads the offset's low 5 bits
        int src = b;
        switch (me.kind) {
          case 0: src = seg + (arg & (width - 1)); break;
          case 1: src = lane_in - arg >= 0 ? b - arg : b; break;
          case 2: src = lane_in + arg < width ? b + arg : b; break;
          case 3: src = b ^ arg; if ((src & ~(width - 1)) > seg || src > 31) src = b; break;
        }
        if (src < 0 || src > 31 || !(f.mask >> src & 1u)) {
          fail(head + ": lane " + std::to_string(b) + " reads lane " + std::to_string(src) +
               ", which is not in the mask (undefined value on a GPU)");
          return false;
        }
        me.result = e.fibers[base + src].value;
      }
    }
    for (int b = 0; b < 32; ++b)
      if (f.mask >> b & 1u) e.fibers[base + b].state = kReady;
    released = true;
  }
  return released;
}

// Runs one block in the given order of warps and lanes; false on an error.
bool run_block(const std::vector<int>& warp_order, bool reverse_lanes) {
  Engine& e = E();
  const int bx = int(g_block_dim.x), by = int(g_block_dim.y);
  for (int i = 0; i < e.nthreads; ++i)
    init_fiber(i, uint3{unsigned(i % bx), unsigned(i / bx % by), unsigned(i / (bx * by))});
  for (auto& [site, v] : e.shared) std::memset(v.p, 0xFF, v.bytes);
  if (!e.dynamic.empty()) std::memset(e.dynamic.data(), 0xFF, e.dynamic.size());
  for (;;) {
    for (int w : warp_order) {
      const int base = w * 32, count = std::min(32, e.nthreads - base);
      do {
        for (int k = 0; k < count; ++k) {
          Fiber& f = e.fibers[base + (reverse_lanes ? count - 1 - k : k)];
          if (f.state != kReady) continue;
          switch_to_fiber(f);
          if (!e.error.empty()) return false;
        }
      } while (resolve_warp(w));
      if (!e.error.empty()) return false;
    }
    // Every thread has returned or waits at a barrier.
    int done = 0, at_barrier = 0;
    const Fiber* first = nullptr;
    bool same = true;
    for (int i = 0; i < e.nthreads; ++i) {
      const Fiber& f = e.fibers[i];
      if (f.state == kDone) {
        ++done;
      } else if (f.state == kBarrier) {
        ++at_barrier;
        if (!first) first = &f;
        else if (!same_site(*first, f)) same = false;
      } else {
        same = false;  // a shuffle or __syncwarp() that cannot complete
      }
    }
    if (done == e.nthreads) return true;
    if (at_barrier == e.nthreads && same) {
      for (int i = 0; i < e.nthreads; ++i) e.fibers[i].state = kReady;
      continue;
    }
    fail(block_name() + ": the block cannot go on (barrier divergence: every thread must reach the same "
                        "__syncthreads(), none may have returned)" + block_states());
    return false;
  }
}

// ------------------------------------------------------------------------------------ launches

struct Region {
  char* base;
  size_t bytes;
  std::vector<char> before, after_first;
};

// The registered allocations that argument words point into. A word matching none is not a pointer to
// memory a kernel may write (struct padding and unused table slots hold stale stack and heap values):
// tensors come from the CPU allocator hook, and the ops layer registers, for the duration of a launch,
// the tensors it updates in place that torch may have allocated elsewhere (EmuMemoryScope).
void regions_of(const LaunchSpec& s, std::vector<Region>* out) {
  Engine& e = E();
  std::lock_guard<std::mutex> lock(e.mem_mutex);
  for (size_t off = 0; off + 8 <= s.args_size; off += 8) {
    uint64_t w;
    std::memcpy(&w, static_cast<const char*>(s.args) + off, 8);
    auto it = e.memory.upper_bound(uintptr_t(w));
    if (it == e.memory.begin()) continue;
    --it;
    if (w >= it->first + it->second) continue;
    bool dup = false;
    for (auto& r : *out) dup |= reinterpret_cast<uintptr_t>(r.base) == it->first;
    if (!dup) out->push_back(Region{reinterpret_cast<char*>(it->first), it->second, {}, {}});
  }
}

bool run_grid(bool reverse) {
  Engine& e = E();
  const LaunchSpec& s = *e.spec;
  const int nwarps = (e.nthreads + 31) / 32;
  std::vector<int> warps(nwarps);
  for (int w = 0; w < nwarps; ++w) warps[w] = reverse ? nwarps - 1 - w : w;
  const uint64_t nblocks = uint64_t(s.grid.x) * s.grid.y * s.grid.z;
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t b = reverse ? nblocks - 1 - k : k;
    g_block_idx = uint3{unsigned(b % s.grid.x), unsigned(b / s.grid.x % s.grid.y),
                        unsigned(b / (uint64_t(s.grid.x) * s.grid.y))};
    if (!run_block(warps, reverse)) return false;
    e.stats.threads += uint64_t(e.nthreads);
  }
  return true;
}

// Per host thread, as CUDA's last error is.
thread_local cudaError_t g_last_error = cudaSuccess;
thread_local std::string g_last_message;

void set_error(cudaError_t code, const std::string& message) {
  g_last_error = code;
  g_last_message = message;
  E().stats.failed_launches++;
  if (std::getenv("DLK_EMU_VERBOSE")) std::fprintf(stderr, "dlk_emu: %s\n", message.c_str());
}

std::string config_error(const LaunchSpec& s) {
  const uint64_t threads = uint64_t(s.block.x) * s.block.y * s.block.z;
  if (s.grid.x == 0 || s.grid.y == 0 || s.grid.z == 0) return "a grid with no blocks";
  if (threads == 0) return "a block with no threads";
  if (threads > 1024 || s.block.x > 1024 || s.block.y > 1024 || s.block.z > 64)
    return "a block of " + std::to_string(threads) + " threads (at most 1024; x, y up to 1024, z up to 64)";
  if (s.grid.x > 2147483647u) return "grid x of " + std::to_string(s.grid.x) + " (at most 2^31 - 1)";
  if (s.grid.y > 65535 || s.grid.z > 65535)
    return "grid y, z of " + std::to_string(s.grid.y) + ", " + std::to_string(s.grid.z) + " (at most 65535)";
  if (s.smem > kMaxSharedBytes)
    return std::to_string(s.smem) + " bytes of dynamic shared memory (at most " + std::to_string(kMaxSharedBytes) + ")";
  return "";
}

}  // namespace

// ------------------------------------------------------------------------------------ device side

void syncthreads(const char* file, int line) {
  Fiber& f = *E().cur;
  f.state = kBarrier;
  f.file = file;
  f.line = line;
  f.mask = 0;
  switch_to_scheduler(false);
}

uint64_t shuffle(unsigned mask, uint64_t bits, int kind, int arg, int width, const char* file, int line) {
  Fiber& f = *E().cur;
  f.state = kShuffle;
  f.file = file;
  f.line = line;
  f.mask = mask;
  f.kind = kind;
  f.arg = arg;
  f.width = width;
  f.value = bits;
  switch_to_scheduler(false);
  return f.result;
}

void syncwarp(SyncwarpMask mask, const char* file, int line) {
  Fiber& f = *E().cur;
  f.state = kSyncwarp;
  f.file = file;
  f.line = line;
  f.mask = mask.mask;
  switch_to_scheduler(false);
}

void* shared_storage(const void* site, size_t bytes, size_t align) {
  Engine& e = E();
  auto it = e.shared.find(site);
  if (it != e.shared.end()) return it->second.p;
  // First use, from the first thread to reach the declaration: nobody has written it yet.
  void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
  std::memset(p, 0xFF, bytes);
  e.shared[site] = SharedVar{p, bytes};
  return p;
}

void* dynamic_shared() { return E().dynamic.data(); }

void launch(const LaunchSpec& s) {
  Engine& e = E();
  std::lock_guard<std::mutex> lock(e.launch_mutex);
  e.spec = &s;
  e.error.clear();
  e.stats.launches++;
  e.launches_by_kernel[s.name]++;
  const std::string bad = config_error(s);
  if (!bad.empty()) {
    fail("invalid configuration: " + bad);
    set_error(cudaErrorInvalidConfiguration, e.error);
    return;
  }
  ensure_stacks();
#ifdef DLK_EMU_ASAN
  if (e.stacks_dirty) {  // a failed launch abandoned its fibers mid-frame: clear their stack shadow once
    __asan_unpoison_memory_region(e.stacks, size_t(kMaxThreads) * (kGuardBytes + kStackBytes));
    e.stacks_dirty = false;
  }
#endif
  g_grid_dim = s.grid;
  g_block_dim = s.block;
  e.nthreads = int(s.block.x * s.block.y * s.block.z);
  e.dynamic.assign(s.smem, char(0xFF));

  std::vector<Region> regions;
  const bool replay = e.orders > 1;
  if (replay) regions_of(s, &regions);
  for (auto& r : regions) r.before.assign(r.base, r.base + r.bytes);
  if (std::getenv("DLK_EMU_VERBOSE"))
    for (auto& r : regions) std::fprintf(stderr, "dlk_emu: %s: snapshot %p + %zu\n", s.name, (void*)r.base, r.bytes);
  bool ok = run_grid(false);
  if (ok && replay && !regions.empty()) {
    e.stats.replayed_launches++;
    // Only what the first run wrote is restored (a region it left as it was, perhaps matched by a stale
    // argument word, is not written); every region is compared after the second run.
    for (auto& r : regions) {
      r.after_first.assign(r.base, r.base + r.bytes);
      if (std::memcmp(r.base, r.before.data(), r.bytes) != 0) std::memcpy(r.base, r.before.data(), r.bytes);
    }
    ok = run_grid(true);
    for (auto& r : regions) {
      if (!ok) break;
      if (std::memcmp(r.base, r.after_first.data(), r.bytes) == 0) continue;
      size_t i = 0;
      while (r.base[i] == r.after_first[i]) ++i;
      char msg[200];
      std::snprintf(msg, sizeof msg,
                    "a race: run in launch order and in reverse order (blocks, warps, lanes), it wrote different "
                    "bytes at offset %zu of the %zu-byte allocation at %p",
                    i, r.bytes, static_cast<void*>(r.base));
      fail(msg);
      ok = false;
    }
  }
  if (!ok) {
    set_error(cudaErrorLaunchFailure, e.error);
    e.stacks_dirty = true;
  }
  e.spec = nullptr;
}

void register_memory(const void* p, size_t bytes) {
  if (!p || bytes == 0) return;
  Engine& e = E();
  std::lock_guard<std::mutex> lock(e.mem_mutex);
  e.memory[reinterpret_cast<uintptr_t>(p)] = bytes;
}

bool register_memory_if_new(const void* p, size_t bytes) {
  if (!p || bytes == 0) return false;
  Engine& e = E();
  std::lock_guard<std::mutex> lock(e.mem_mutex);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = e.memory.upper_bound(a);
  if (it != e.memory.begin() && a < std::prev(it)->first + std::prev(it)->second) return false;
  e.memory[a] = bytes;
  return true;
}

void unregister_memory(const void* p) {
  if (!p) return;
  Engine& e = E();
  std::lock_guard<std::mutex> lock(e.mem_mutex);
  e.memory.erase(reinterpret_cast<uintptr_t>(p));
}

Stats stats() {
  Engine& e = E();
  std::lock_guard<std::mutex> lock(e.launch_mutex);
  return e.stats;
}

std::map<std::string, uint64_t> launches_by_kernel() {
  Engine& e = E();
  std::lock_guard<std::mutex> lock(e.launch_mutex);
  return e.launches_by_kernel;
}

void set_orders(int orders) { E().orders = orders < 2 ? 1 : 2; }

}  // namespace dlk_emu

// ------------------------------------------------------------------------------------ runtime calls

extern "C" {

cudaError_t CUDARTAPI cudaGetLastError(void) {
  const cudaError_t e = dlk_emu::g_last_error;
  dlk_emu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t CUDARTAPI cudaPeekAtLastError(void) { return dlk_emu::g_last_error; }

const char* CUDARTAPI cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchFailure: return dlk_emu::g_last_message.c_str();
    default: return "unknown error (CUDA emulation)";
  }
}

}  // extern "C"
