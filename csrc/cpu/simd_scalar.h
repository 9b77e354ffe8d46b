// The one-lane "vector": the same interface as simd_avx2.h / simd_avx512.h over plain scalars, so an
// elementwise kernel written once as a template is also the scalar reference path. No ISA pragma needed.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace dlk::cpu::scalar {

template <class T_> struct Vec {
  using T = T_;
  using R = T_;
  static constexpr int W = 1;
  static constexpr int kRegisters = 16;  // as AVX2: register tiles keep their AVX2 shape
  static R set1(T v) { return v; }
  static R load(const T* p) { return *p; }
  static R gather(const T* p, int64_t) { return *p; }
  static R gather_idx(const T* p, const int32_t* idx) { return p[idx[0]]; }
  static void store_zip(T* p, R a, R b, int64_t n) {
    if (n > 0) p[0] = a;
    if (n > 1) p[1] = b;
  }
  static void store(T* p, R v) { *p = v; }
  static R load_tail(const T* p, int64_t n, T fill) { return n > 0 ? *p : fill; }
  static void store_tail(T* p, R v, int64_t n) {
    if (n > 0) *p = v;
  }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R div(R a, R b) { return a / b; }
  static R fmadd(R a, R b, R c) { return a * b + c; }
  static R evens(R a, R) { return a; }  // lane 0 of the concatenation (the stride-2 gather of one lane)
  static R max(R a, R b) { return a > b ? a : b; }
  static R min(R a, R b) { return a < b ? a : b; }
  static R sqrt(R a) { return std::sqrt(a); }
  static R neg(R a) { return -a; }
  // Wide (double) lanes for long float sums (one lane here: hi stays unused).
  using RD = double;
  static RD zero_wide() { return 0.0; }
  static void add_widened(R v, RD& lo, RD&) { lo += double(v); }
  static double reduce_wide(RD lo, RD hi) { return lo + hi; }
  // v where gate > 0, +0.0 elsewhere (NaN gates give 0): v's bits and-ed with the comparison, as the
  // vector paths do, so -0.0 and NaN in v pass through the same way.
  static R keep_where_positive(R v, R gate) {
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    Bits b;
    std::memcpy(&b, &v, sizeof(T));
    b &= Bits(0) - Bits(gate > T(0));
    T out;
    std::memcpy(&out, &b, sizeof(T));
    return out;
  }
  // Bit 0 set where v > 0 (clear for NaN): with keep_where_bits, a ReLU gate kept as one bit a value.
  static uint32_t positive_bits(R v) { return uint32_t(v > T(0)); }
  static R abs(R v) { return std::fabs(v); }
  // v where bit 0 of bits is set, +0.0 elsewhere (keep_where_positive with the bit as its gate).
  static R keep_where_bits(R v, uint32_t bits) { return keep_where_positive(v, T(bits & 1u)); }
};

}  // namespace dlk::cpu::scalar
