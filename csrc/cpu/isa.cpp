#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>

namespace dlk::cpu {
namespace {

Isa best_supported() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

struct IsaState {
  std::atomic<int> isa;
  std::string env_error;
  IsaState() : isa(static_cast<int>(best_supported())) {
    const char* env = std::getenv("DLKERNELS_CPU_ISA");
    if (env == nullptr || *env == '\0') return;
    Isa wanted;
    if (!parse_isa(env, &wanted)) {
      env_error = std::string("DLKERNELS_CPU_ISA must be one of scalar, avx2, avx512, got '") + env + "'";
      return;
    }
    if (!isa_supported(wanted)) {
      env_error = std::string("DLKERNELS_CPU_ISA=") + env + " but this CPU does not support it";
      return;
    }
    isa.store(static_cast<int>(wanted));
  }
};

IsaState& state() {
  static IsaState s;  // thread-safe initialisation (C++11 magic statics)
  return s;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "unknown";
}

bool parse_isa(const std::string& name, Isa* out) {
  if (name == "scalar") { *out = Isa::Scalar; return true; }
  if (name == "avx2") { *out = Isa::Avx2; return true; }
  if (name == "avx512") { *out = Isa::Avx512; return true; }
  return false;
}

bool isa_supported(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports consults CPUID and, for AVX/AVX-512, that the OS saves the registers.
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma");
  }
  return false;
#else
  return isa == Isa::Scalar;
#endif
}

std::vector<Isa> isas_compiled() {
#if defined(__x86_64__) || defined(__i386__)
  return {Isa::Scalar, Isa::Avx2, Isa::Avx512};
#else
  return {Isa::Scalar};
#endif
}

Isa current_isa() { return static_cast<Isa>(state().isa.load(std::memory_order_relaxed)); }

std::string set_isa(Isa isa) {
  if (!isa_supported(isa)) return std::string("this CPU does not support the ") + isa_name(isa) + " path";
  state().isa.store(static_cast<int>(isa));
  return "";
}

std::string isa_env_error() { return state().env_error; }

}  // namespace dlk::cpu
