// bfloat16 pair-dot convolution (conv_bf16.h): the packing of both operands, the scalar reference
// kernel and the choice of kernel. The AVX512-BF16 kernel is in conv_bf16_avx512.cpp.
#include "cpu/conv_bf16.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/isa.h"

namespace dlk::cpu {

bool avx512bf16_supported() {
#if defined(__x86_64__)
  return isa_supported(Isa::Avx512) && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool pair_conv_available() {
  switch (current_isa()) {
    case Isa::Avx512: return avx512bf16_supported();
    case Isa::Scalar: return true;
    case Isa::Avx2: return false;
  }
  return false;
}

void bf16_widen(const uint16_t* src, float* dst, int64_t n) {
  if (current_isa() == Isa::Avx512 && avx512bf16_supported()) return bf16_widen_avx512bf16(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

void bf16_narrow(const float* src, uint16_t* dst, int64_t n) {
  if (current_isa() == Isa::Avx512 && avx512bf16_supported()) return bf16_narrow_avx512bf16(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

void pair_conv_pack_input(const PairConvGeom& g, const uint16_t* x, Strides4 xs, uint32_t* xp) {
  const bool vector = current_isa() == Isa::Avx512 && avx512bf16_supported() && xs.w == 1 && xs.c != 1;
  const int64_t Hp = g.Hp(), Wp = g.Wp(), C2 = g.C2(), rows = g.N * Hp;
#pragma omp parallel for schedule(static) if (g.input_words() > (int64_t(1) << 15))
  for (int64_t nr = 0; nr < rows; ++nr) {
    const int64_t n = nr / Hp, ih = nr % Hp - g.PH;
    uint32_t* dst = xp + nr * Wp * C2;
    if (ih < 0 || ih >= g.H) {
      std::fill(dst, dst + Wp * C2, 0u);
      continue;
    }
    // [w_lo, w_hi): inside the image (a negative padding starts the buffer inside it)
    const int64_t w_lo = std::clamp<int64_t>(g.PW, 0, Wp), w_hi = std::clamp<int64_t>(g.PW + g.W, w_lo, Wp);
    std::fill(dst, dst + w_lo * C2, 0u);
    std::fill(dst + w_hi * C2, dst + Wp * C2, 0u);
    const uint16_t* row = x + n * xs.n + ih * xs.h;
    if (vector) {
      pair_conv_pack_input_row_avx512bf16(g, row, xs, w_lo, w_hi, dst);
      continue;
    }
    for (int64_t c2 = 0; c2 < C2; ++c2) {
      const uint16_t* a = row + 2 * c2 * xs.c;
      const uint16_t* b = 2 * c2 + 1 < g.C ? a + xs.c : nullptr;
      for (int64_t s = w_lo; s < w_hi; ++s) {
        const int64_t iw = (s - g.PW) * xs.w;
        dst[s * C2 + c2] = uint32_t(a[iw]) | (b ? uint32_t(b[iw]) << 16 : 0u);
      }
    }
  }
}

void pair_conv_pack_weight(const PairConvGeom& g, const uint16_t* w, Strides4 ws, bool flip, uint32_t* wp,
                           int64_t oc_begin, int64_t oc_end, int64_t stride) {
  if (current_isa() == Isa::Avx512 && avx512bf16_supported() &&
      pair_conv_pack_weight_avx512bf16(g, w, ws, flip, wp, oc_begin, oc_end, stride))
    return;
  const int64_t C2 = g.C2(), taps = g.taps(), blocks = (oc_end - oc_begin) / 16;
  // by blocks of 16 filters: each block's 16 filters read as 16 forward streams, one 64-byte line written
  // per (tap, pair)
#pragma omp parallel for schedule(static) if (blocks * 16 * taps * C2 > (int64_t(1) << 15) && !omp_in_parallel())
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t oc0 = oc_begin + blk * 16, n = std::clamp<int64_t>(g.OC - oc0, 0, 16);
    for (int64_t c2 = 0; c2 < C2; ++c2) {
      const bool odd = 2 * c2 + 1 < g.C;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t kh = flip ? g.KH - 1 - t / g.KW : t / g.KW, kw = flip ? g.KW - 1 - t % g.KW : t % g.KW;
        const uint16_t* a = w + oc0 * ws.n + 2 * c2 * ws.c + kh * ws.h + kw * ws.w;
        uint32_t* dst = wp + (t * C2 + c2) * stride + (oc0 - oc_begin);
        for (int64_t i = 0; i < n; ++i)
          dst[i] = uint32_t(a[i * ws.n]) | (odd ? uint32_t(a[i * ws.n + ws.c]) << 16 : 0u);
        for (int64_t i = n; i < 16; ++i) dst[i] = 0u;
      }
    }
  }
}

namespace {

// Valid tap range [lo, hi] along one axis for output index o: o * S - P + k * D inside [0, size).
void tap_range(int64_t o, int64_t S, int64_t P, int64_t D, int64_t K, int64_t size, int64_t* lo, int64_t* hi) {
  const int64_t first = o * S - P;  // input index of tap 0
  int64_t a = 0, b = K - 1;
  while (a < K && first + a * D < 0) ++a;
  while (b >= 0 && first + b * D >= size) --b;
  *lo = a;
  *hi = b;
}

// Axis classes: the distinct tap ranges of the output indices along one axis, and each index's class.
void axis_classes(int64_t O, int64_t S, int64_t P, int64_t D, int64_t K, int64_t size, std::vector<int64_t>* cls,
                  std::vector<std::pair<int64_t, int64_t>>* ranges) {
  cls->resize(size_t(O));
  for (int64_t o = 0; o < O; ++o) {
    std::pair<int64_t, int64_t> r;
    tap_range(o, S, P, D, K, size, &r.first, &r.second);
    auto it = std::find(ranges->begin(), ranges->end(), r);
    (*cls)[size_t(o)] = it - ranges->begin();
    if (it == ranges->end()) ranges->push_back(r);
  }
}

}  // namespace

PairConvPlan pair_conv_plan(const PairConvGeom& g, const Strides4& os, int64_t wstride) {
  PairConvPlan plan;
  std::vector<int64_t> rc, cc;
  std::vector<std::pair<int64_t, int64_t>> rr, cr;
  axis_classes(g.OH, g.SH, g.PH, g.DH, g.KH, g.H, &rc, &rr);
  axis_classes(g.OW, g.SW, g.PW, g.DW, g.KW, g.W, &cc, &cr);
  const int64_t ncls = int64_t(rr.size() * cr.size()), P = g.N * g.OH * g.OW, C2 = g.C2();
  plan.pin.resize(size_t(P));
  plan.pout.resize(size_t(P));
  std::vector<int64_t> cls(static_cast<size_t>(P)), count(static_cast<size_t>(ncls) + 1, 0);
  for (int64_t q = 0; q < P; ++q) {
    pair_conv_position(g, os, q, &plan.pin[size_t(q)], &plan.pout[size_t(q)]);
    const int64_t rest = q % (g.OH * g.OW);
    cls[size_t(q)] = rc[size_t(rest / g.OW)] * int64_t(cr.size()) + cc[size_t(rest % g.OW)];
    ++count[size_t(cls[size_t(q)]) + 1];
  }
  plan.class_start.assign(count.begin(), count.end());
  for (int64_t i = 0; i < ncls; ++i) plan.class_start[size_t(i) + 1] += plan.class_start[size_t(i)];
  plan.order.resize(size_t(P));
  std::vector<int64_t> fill(plan.class_start.begin(), plan.class_start.end() - 1);
  for (int64_t q = 0; q < P; ++q) plan.order[size_t(fill[size_t(cls[size_t(q)])]++)] = q;
  plan.step_start.push_back(0);
  for (int64_t i = 0; i < ncls; ++i) {
    const auto& r = rr[size_t(i / int64_t(cr.size()))];
    const auto& c = cr[size_t(i % int64_t(cr.size()))];
    for (int64_t kh = r.first; kh <= r.second; ++kh) {
      for (int64_t kw = c.first; kw <= c.second; ++kw) {
        const int64_t t = kh * g.KW + kw, base = pair_conv_tap_offset(g, t);
        for (int64_t c2 = 0; c2 < C2; ++c2) {
          plan.ko.push_back(base + c2);
          plan.wo.push_back((t * C2 + c2) * wstride);
        }
      }
    }
    plan.step_start.push_back(int64_t(plan.ko.size()));
  }
  return plan;
}

// The reference: one output position at a time, its OCp sums in a float32 row; each word pair's two
// products summed, then added (vdpbf16ps adds them one at a time, and flushes subnormal inputs and
// results to zero: the two paths agree to rounding, not bit for bit); the same steps as the vector kernel.
void pair_conv_forward_scalar(const PairConvGeom& g, const uint32_t* xp, const uint16_t* w, Strides4 ws, bool flip,
                              const float* bias, uint16_t* out, Strides4 os) {
  const int64_t P = g.N * g.OH * g.OW, OCp = g.OCp();
  std::vector<uint32_t> packed(static_cast<size_t>(g.weight_words()));
  uint32_t* wp = packed.data();
  pair_conv_pack_weight(g, w, ws, flip, wp, 0, OCp, OCp);
  const PairConvPlan plan = pair_conv_plan(g, os, OCp);
  const int64_t ncls = plan.classes();
#pragma omp parallel if (P * g.taps() * g.C2() * OCp > (int64_t(1) << 16))
  {
    std::vector<float> acc(static_cast<size_t>(OCp));
    for (int64_t i = 0; i < ncls; ++i) {
#pragma omp for schedule(static)
      for (int64_t j = plan.class_start[size_t(i)]; j < plan.class_start[size_t(i) + 1]; ++j) {
        const int64_t q = plan.order[size_t(j)], in = plan.pin[size_t(q)], o = plan.pout[size_t(q)];
        for (int64_t oc = 0; oc < OCp; ++oc) acc[size_t(oc)] = bias ? bias[oc] : 0.f;
        for (int64_t s = plan.step_start[size_t(i)]; s < plan.step_start[size_t(i) + 1]; ++s) {
          const uint32_t xv = xp[in + plan.ko[size_t(s)]];
          const float x0 = bf16_to_float(uint16_t(xv)), x1 = bf16_to_float(uint16_t(xv >> 16));
          const uint32_t* wr = wp + plan.wo[size_t(s)];
          for (int64_t oc = 0; oc < OCp; ++oc) {
            const float w0 = bf16_to_float(uint16_t(wr[oc])), w1 = bf16_to_float(uint16_t(wr[oc] >> 16));
            acc[size_t(oc)] += w0 * x0 + w1 * x1;
          }
        }
        for (int64_t oc = 0; oc < g.OC; ++oc) out[o + oc * os.c] = float_to_bf16(acc[size_t(oc)]);
      }
    }
  }
}

bool pair_conv_pack_wgrad_input(const PairConvGeom& g, const uint16_t* x, Strides4 xs, uint16_t* xw) {
  const bool vector = current_isa() == Isa::Avx512 && avx512bf16_supported() && xs.w == 1 && (g.SW == 1 || g.SW == 2);
  const int64_t Hp = g.Hp(), SW = g.SW, Wj = g.Wj(), planes = g.N * g.C, row = SW * Wj;
  const bool check = g.OW % 2 == 1;  // the partner of a row's last position reads a real value
  // each phase's columns j inside the image: 0 <= j * SW + ph - PW < W
  std::vector<int64_t> j_lo(static_cast<size_t>(SW)), j_hi(static_cast<size_t>(SW));
  for (int64_t ph = 0; ph < SW; ++ph) {
    j_lo[size_t(ph)] = std::clamp<int64_t>((g.PW - ph + SW - 1) / SW, 0, Wj);
    j_hi[size_t(ph)] = std::clamp<int64_t>((g.W + g.PW - ph + SW - 1) / SW, j_lo[size_t(ph)], Wj);
  }
  const int64_t r_lo = std::clamp<int64_t>(g.PH, 0, Hp), r_hi = std::clamp<int64_t>(g.PH + g.H, r_lo, Hp);
  bool finite = true;
  // a plane at a time (small rows: a division or a call per row cost more than the row)
#pragma omp parallel for schedule(static) reduction(&& : finite) if (planes * Hp * row > (int64_t(1) << 15))
  for (int64_t p = 0; p < planes; ++p) {
    uint16_t* plane = xw + p * Hp * row;
    std::fill(plane, plane + r_lo * row, uint16_t(0));
    std::fill(plane + r_hi * row, plane + Hp * row, uint16_t(0));
    const uint16_t* src_plane = x + (p / g.C) * xs.n + (p % g.C) * xs.c;
    if (vector) {
      finite = finite && pair_conv_pack_wgrad_plane_avx512bf16(g, src_plane, xs, r_lo, r_hi, check, plane);
      continue;
    }
    unsigned seen = 0;
    for (int64_t r = r_lo; r < r_hi; ++r) {
      const uint16_t* src = src_plane + (r - g.PH) * xs.h;
      uint16_t* dst = plane + r * row;
      for (int64_t ph = 0; ph < SW; ++ph) {
        const int64_t a = j_lo[size_t(ph)], b = j_hi[size_t(ph)];
        uint16_t* d = dst + ph * Wj;
        for (int64_t j = 0; j < a; ++j) d[j] = 0;
        for (int64_t j = b; j < Wj; ++j) d[j] = 0;
        const uint16_t* s0 = src + (a * SW + ph - g.PW) * xs.w;
        const int64_t step = SW * xs.w;
        if (step == 1) {
          for (int64_t j = a; j < b; ++j) d[j] = s0[j - a];
        } else {
          for (int64_t j = a; j < b; ++j) d[j] = s0[(j - a) * step];
        }
      }
      if (check)
        for (int64_t iw = 0; iw < g.W; ++iw) seen |= unsigned((src[iw * xs.w] & 0x7f80u) == 0x7f80u);
    }
    finite = finite && !seen;
  }
  return finite;
}

void pair_conv_pack_wgrad_grad(const PairConvGeom& g, const uint16_t* gy, Strides4 gs, uint32_t* gp) {
  if (current_isa() == Isa::Avx512 && avx512bf16_supported() && gs.w == 1 && gs.c != 1)
    return pair_conv_pack_wgrad_grad_avx512bf16(g, gy, gs, gp);
  const int64_t OWh = g.OWh(), OCp = g.OCp(), rows = g.N * g.OH;
#pragma omp parallel for schedule(static) if (g.wgrad_grad_words() > (int64_t(1) << 15))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    uint32_t* dst = gp + row * OWh * OCp;
    for (int64_t oc = 0; oc < OCp; ++oc) {
      const uint16_t* src = oc < g.OC ? gy + n * gs.n + oc * gs.c + oh * gs.h : nullptr;
      for (int64_t p = 0; p < OWh; ++p) {
        uint32_t v = 0;
        if (src) v = uint32_t(src[2 * p * gs.w]) | (2 * p + 1 < g.OW ? uint32_t(src[(2 * p + 1) * gs.w]) << 16 : 0u);
        dst[p * OCp + oc] = v;
      }
    }
  }
}

// The reference: each (filter tap row m, output channel) summed over every pair of positions (rounding as
// in the forward's reference).
void pair_conv_weight_grad_scalar(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, float* acc,
                                  uint16_t* gw, Strides4 ws) {
  const int64_t M = g.C * g.taps(), OCp = g.OCp(), OWh = g.OWh(), R = g.N * g.OH;
#pragma omp parallel for schedule(static) if (M * OCp * R * OWh > (int64_t(1) << 16))
  for (int64_t m = 0; m < M; ++m) {
    float* a = acc + m * OCp;
    for (int64_t oc = 0; oc < OCp; ++oc) a[oc] = 0.f;
    const uint16_t* base = xw + pair_wgrad_row_offset(g, m);
    for (int64_t row = 0; row < R; ++row) {
      const uint16_t* xr = base + pair_wgrad_image_row_offset(g, row);
      const uint32_t* gr = gp + row * OWh * OCp;
      for (int64_t p = 0; p < OWh; ++p) {
        const uint32_t xv = load_pair(xr + 2 * p);
        const float x0 = bf16_to_float(uint16_t(xv)), x1 = bf16_to_float(uint16_t(xv >> 16));
        for (int64_t oc = 0; oc < OCp; ++oc) {
          const uint32_t gv = gr[p * OCp + oc];
          a[oc] += bf16_to_float(uint16_t(gv)) * x0 + bf16_to_float(uint16_t(gv >> 16)) * x1;
        }
      }
    }
    const int64_t c = m / g.taps(), t = m % g.taps();
    uint16_t* dst = gw + c * ws.c + (t / g.KW) * ws.h + (t % g.KW) * ws.w;
    for (int64_t oc = 0; oc < g.OC; ++oc) dst[oc * ws.n] = float_to_bf16(a[oc]);
  }
}

void pair_conv_weight_grad(const PairConvGeom& g, const uint16_t* xw, const uint32_t* gp, float* acc, uint16_t* gw,
                           Strides4 ws) {
  if (g.N * g.OH == 0) {  // no positions: a zero gradient (the kernels would convert unwritten sums)
    for (int64_t m = 0; m < g.C * g.taps(); ++m)
      for (int64_t oc = 0; oc < g.OC; ++oc)
        gw[oc * ws.n + (m / g.taps()) * ws.c + (m % g.taps() / g.KW) * ws.h + (m % g.KW) * ws.w] = 0;
    return;
  }
  if (current_isa() == Isa::Avx512 && avx512bf16_supported()) {
    pair_conv_weight_grad_avx512bf16(g, xw, gp, acc, gw, ws);
  } else {
    pair_conv_weight_grad_scalar(g, xw, gp, acc, gw, ws);
  }
}

void pair_conv_forward(const PairConvGeom& g, const uint32_t* xp, const uint16_t* w, Strides4 ws, bool flip,
                       const float* bias, uint16_t* out, Strides4 os) {
  if (current_isa() == Isa::Avx512 && avx512bf16_supported()) {
    pair_conv_forward_avx512bf16(g, xp, w, ws, flip, bias, out, os);
  } else {
    pair_conv_forward_scalar(g, xp, w, ws, flip, bias, out, os);
  }
}

}  // namespace dlk::cpu
