// Runtime choice of the CPU instruction set (scalar, AVX2+FMA, AVX-512).
// Chosen once by CPUID at first use, forced with DLKERNELS_CPU_ISA=scalar|avx2|avx512,
// switchable at run time (tests run every path the machine supports). No torch here.
#pragma once
#include <string>
#include <vector>

namespace dlk::cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx512"; returns false for anything else.
bool parse_isa(const std::string& name, Isa* out);
// Whether this CPU (and OS) can run the path.
bool isa_supported(Isa isa);
// Every path compiled into this build, best last.
std::vector<Isa> isas_compiled();
// The path kernels use now.
Isa current_isa();
// Returns an empty string on success, else a message saying why the path cannot be used.
std::string set_isa(Isa isa);
// Whatever DLKERNELS_CPU_ISA asked for at load, and the error it gave (empty when fine).
std::string isa_env_error();

}  // namespace dlk::cpu

// Defines template <class T> void NAME PARAMS, which calls NAME_avx512, NAME_avx2 or NAME_scalar with
// ARGS according to current_isa(): the one dispatch table every family's kernels go through.
#define DLK_ISA_DISPATCH(NAME, PARAMS, ARGS)       \
  template <class T> void NAME PARAMS {            \
    switch (::dlk::cpu::current_isa()) {           \
      case ::dlk::cpu::Isa::Avx512: return NAME##_avx512 ARGS; \
      case ::dlk::cpu::Isa::Avx2: return NAME##_avx2 ARGS;     \
      case ::dlk::cpu::Isa::Scalar: return NAME##_scalar ARGS; \
    }                                              \
  }
