// What the host side of the emulation build (csrc/ops, csrc/register.cpp) uses of the CUDA emulator:
// no macros, no CUDA types, so it can be included next to torch's headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace dlk_emu {

// Memory the race check snapshots and restores around its second run of a launch: the emulation
// build's CPU allocator registers every tensor's bytes here; the ops layer adds, for one launch, tensors
// it updates in place that torch allocated without that allocator (storages copied by copy.deepcopy).
void register_memory(const void* p, size_t bytes);
// Registers [p, p + bytes) unless p lies in a registered allocation; true if it did.
bool register_memory_if_new(const void* p, size_t bytes);
void unregister_memory(const void* p);

struct Stats {
  uint64_t launches;            // kernel launches run
  uint64_t replayed_launches;   // of those, run a second time in the other order (the race check): those
                                // whose arguments point at registered memory
  uint64_t threads;             // emulated threads run, both orders counted
  uint64_t failed_launches;     // launches that reported an error
};
Stats stats();
// Launches so far per kernel, by the kernel expression of the launch (e.g. "im2col_kernel<T>").
std::map<std::string, uint64_t> launches_by_kernel();
// DLK_EMU_ORDERS=1 turns the second order (the race check) off; default 2.
void set_orders(int orders);

// The planted-bug kernels of tools/cuda_emu/probes.cu: runs one on out (n >= 64 floats) and returns the
// launch's error message, "" if none.
std::string run_probe(const std::string& name, float* out, int64_t n);

}  // namespace dlk_emu
