// CUDA execution model on the CPU, for the emulation build of dlkernels (make test-cuda-emu).
//
// csrc/cuda/*.cu compile unchanged as host C++ against this header: tools/cuda_emu/rewrite.py copies
// each file, turning `kernel<<<grid, block, smem, stream>>>(args)` into a call of dlk_emu::Launch and
// each `__shared__` declaration into a reference to emulator-owned storage (the only two rewrites),
// and the tools/cuda_emu/include folder shadows <cuda_runtime.h>. Types (dim3, cudaError_t,
// cudaStream_t) come from CUDA's own host headers, as do __half and __nv_bfloat16 (cuda_fp16.h and
// cuda_bf16.h have host paths).
//
// Execution: the blocks of a launch run one after another on the calling thread; the threads of a
// block are fibers (tools/cuda_emu/emu.cpp: a hand-written x86-64 context switch, no syscalls). A
// thread runs until it reaches __syncthreads() or a warp shuffle, or returns. A barrier opens when
// every thread of the block waits at the same one; a shuffle completes when every lane of its mask
// waits at it (lock-step per warp, as on a GPU). What a GPU would hang on or corrupt silently fails the
// launch with a message naming the kernel and the source lines: threads at different barriers or
// returned while others wait, a shuffle that part of its mask never reaches, a block over 1024 threads,
// grid y/z over 65535, an empty grid or block. Shared memory is filled with 0xFF bytes (NaN as
// floats) before each block, so a read before any write shows up in the results. Each launch runs
// twice, in launch order and in a second order (blocks reversed, warps in a shuffled order, lanes
// last to first, each running alone to its next barrier), from the same starting memory: if the bytes
// it writes differ, threads race, and the launch fails naming the first differing address.
#pragma once
#include <cuda_runtime_api.h>  // CUDA's own: cudaError_t, cudaStream_t, dim3, uint3
#include <math.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "dlk_emu/runtime.h"

namespace dlk_emu {

// The built-ins of the running thread and block.
struct ThreadRecord;
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;
extern const uint3* g_thread_idx;

// Blocks the running thread at a barrier or shuffle until the scheduler lets it go on.
void syncthreads(const char* file, int line);
// Exchanges 8 bytes between the lanes of mask; kind: 0 idx, 1 up, 2 down, 3 xor.
uint64_t shuffle(unsigned mask, uint64_t bits, int kind, int arg, int width, const char* file, int line);
struct SyncwarpMask {
  unsigned mask = 0xffffffffu;
};
void syncwarp(SyncwarpMask mask, const char* file, int line);

// Storage of one __shared__ declaration (bytes, alignment): fixed for the process, filled with 0xFF
// before each block; `site` is unique per declaration (and per template instance).
void* shared_storage(const void* site, size_t bytes, size_t align);
// The launch's dynamic shared memory (its smem argument), 0xFF-filled before each block.
void* dynamic_shared();

template <class T, class Tag> T& shared_var(Tag) {
  static char site;
  return *static_cast<T*>(shared_storage(&site, sizeof(T), alignof(T) < 16 ? 16 : alignof(T)));
}
template <class T> T* dynamic_shared_as() { return static_cast<T*>(dynamic_shared()); }

// One kernel launch: a type-erased body run by every thread of every block.
struct LaunchSpec {
  const char* name;
  const char* file;
  int line;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const void* args;  // the argument bytes, scanned for pointers into live memory (race check)
  size_t args_size;
  void (*body)(const void* ctx);
  const void* ctx;
};
void launch(const LaunchSpec& spec);


template <class... A> struct Pending {
  LaunchSpec spec;
  std::tuple<std::decay_t<A>...> args;
};

// What rewrite.py makes of `<<<grid, block, smem, stream>>>`: the launch's spec, awaiting its arguments.
struct Launch {
  LaunchSpec spec;
  Launch(const char* n, const char* f, int l, dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : spec{n, f, l, g, b, s, st, nullptr, 0, nullptr, nullptr} {}
  template <class... A> Pending<A...> operator()(A&&... a) const {
    return Pending<A...>{spec, std::tuple<std::decay_t<A>...>(std::forward<A>(a)...)};
  }
};

template <class Fn, class Tuple> struct Call {
  Fn fn;
  const Tuple* args;
  static void run(const void* ctx) {
    const Call* c = static_cast<const Call*>(ctx);
    std::apply([c](const auto&... a) { c->fn(a...); }, *c->args);
  }
};

// `kernel % Launch(...)(args...)`: what rewrite.py makes of `kernel<<<...>>>(args...)`.
template <class... P, class... A> void operator%(void (*fn)(P...), Pending<A...>&& p) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  using Tuple = std::tuple<std::decay_t<A>...>;
  Call<void (*)(P...), Tuple> call{fn, &p.args};
  p.spec.args = &p.args;
  p.spec.args_size = sizeof(Tuple);
  p.spec.body = &Call<void (*)(P...), Tuple>::run;
  p.spec.ctx = &call;
  launch(p.spec);
}

template <class T> uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T> T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// The source position of a shuffle, so that a mismatch can name it.
struct Site {
  const char* file;
  int line;
  template <class T> T shfl(unsigned mask, T v, int src, int width = 32) const {
    return from_bits<T>(shuffle(mask, to_bits(v), 0, src, width, file, line));
  }
  template <class T> T shfl_up(unsigned mask, T v, unsigned d, int width = 32) const {
    return from_bits<T>(shuffle(mask, to_bits(v), 1, int(d), width, file, line));
  }
  template <class T> T shfl_down(unsigned mask, T v, unsigned d, int width = 32) const {
    return from_bits<T>(shuffle(mask, to_bits(v), 2, int(d), width, file, line));
  }
  template <class T> T shfl_xor(unsigned mask, T v, int m, int width = 32) const {
    return from_bits<T>(shuffle(mask, to_bits(v), 3, m, width, file, line));
  }
};

// Atomics: a thread runs alone until it blocks, so a plain read-modify-write is atomic here.
template <class T> T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> T atomicMin(T* p, T v) { T old = *p; *p = v < old ? v : old; return old; }
template <class T> T atomicMax(T* p, T v) { T old = *p; *p = v > old ? v : old; return old; }
template <class T> T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T> T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

}  // namespace dlk_emu

// Device-side names of the CUDA built-ins.
#define threadIdx (*::dlk_emu::g_thread_idx)
#define blockIdx (::dlk_emu::g_block_idx)
#define blockDim (::dlk_emu::g_block_dim)
#define gridDim (::dlk_emu::g_grid_dim)
#define warpSize 32
#define __syncthreads() ::dlk_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::dlk_emu::syncwarp(::dlk_emu::SyncwarpMask{__VA_ARGS__}, __FILE__, __LINE__)
#define __shfl_sync(...) ::dlk_emu::Site{__FILE__, __LINE__}.shfl(__VA_ARGS__)
#define __shfl_up_sync(...) ::dlk_emu::Site{__FILE__, __LINE__}.shfl_up(__VA_ARGS__)
#define __shfl_down_sync(...) ::dlk_emu::Site{__FILE__, __LINE__}.shfl_down(__VA_ARGS__)
#define __shfl_xor_sync(...) ::dlk_emu::Site{__FILE__, __LINE__}.shfl_xor(__VA_ARGS__)
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __ldg(p) (*(p))
using dlk_emu::atomicAdd;
using dlk_emu::atomicCAS;
using dlk_emu::atomicExch;
using dlk_emu::atomicMax;
using dlk_emu::atomicMin;

// CUDA's device min/max overloads (any mix of arithmetic types, in the common type).
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline double rsqrt(double v) { return 1.0 / sqrt(v); }
inline float __expf(float v) { return expf(v); }
inline float __logf(float v) { return logf(v); }
inline float __fdividef(float a, float b) { return a / b; }
