// What the host side of the emulation build (csrc/ops, csrc/register.cpp) uses of the CUDA emulator:
// no macros, no CUDA types, so it can be included next to torch's headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dlk_emu {

// Memory the race check snapshots and restores around its second run of a launch: the emulation
// build's CPU allocator registers every tensor's bytes here.
void register_memory(const void* p, size_t bytes);
void unregister_memory(const void* p);

struct Stats {
  uint64_t launches;            // kernel launches run
  uint64_t replayed_launches;   // of those, run a second time in the other order (the race check)
  uint64_t threads;             // emulated threads run, both orders counted
  uint64_t failed_launches;     // launches that reported an error
};
Stats stats();
// DLK_EMU_ORDERS=1 turns the second order (the race check) off; default 2.
void set_orders(int orders);

// The planted-bug kernels of tools/cuda_emu/probes.cu: runs one on out (n >= 64 floats) and returns the
// launch's error message, "" if none.
std::string run_probe(const std::string& name, float* out, int64_t n);

}  // namespace dlk_emu
