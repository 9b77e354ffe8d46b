// The fused optimizer updates, written once over a Vec<T> wrapper (simd_scalar.h, simd_avx2.h,
// simd_avx512.h): instantiated with the one-lane scalar Vec it is the reference path, with the AVX
// wrappers (after their target pragma) the vector paths. Internal linkage, so the copies compiled for
// different ISAs never meet at link time.
//
// Each step mirrors torch.optim's single-tensor code operation by operation (same order of roundings
// in T), so trajectories agree with torch's to a few ulps per step.
#pragma once
// Standard headers come before the ISA pragma in the including file.
#include <cstdint>

#include "cpu/optim.h"

namespace dlk::cpu {
namespace {

template <class V> struct OptimKernels {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int W = V::W;

  static R ld(const T* p, int64_t k) { return k >= W ? V::load(p) : V::load_tail(p, k, T(0)); }
  static void st(T* p, R v, int64_t k) {
    if (k >= W) V::store(p, v); else V::store_tail(p, v, k);
  }
  // torch's lerp: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w).
  static R lerp(R start, R end, double w) {
    const R diff = V::sub(end, start);
    if (w < 0.5 && w > -0.5) return V::fmadd(V::set1(T(w)), diff, start);
    return V::sub(end, V::mul(diff, V::set1(T(1.0 - w))));
  }
  // grad, negated for maximize, plus weight_decay * param (the L2 form torch uses)
  static R effective_grad(R g, R p, bool maximize, double weight_decay) {
    if (maximize) g = V::neg(g);
    if (weight_decay != 0) g = V::add(g, V::mul(p, V::set1(T(weight_decay))));
    return g;
  }

  static void adam(const AdamOptions& o, const AdamTensors<T>& t, const TensorChunk& ch) {
    const int64_t i = ch.tensor;
    T* p = t.param[i];
    const T* g = t.grad[i];
    T* m = t.exp_avg[i];
    T* v = t.exp_avg_sq[i];
    T* vmax = o.amsgrad ? t.max_exp_avg_sq[i] : nullptr;
    const AdamStepScalars s = t.scalars[i];
    const R b2 = V::set1(T(o.beta2)), one_minus_b2 = V::set1(T(1.0 - o.beta2));
    const R bc2 = V::set1(T(s.bias_correction2_sqrt)), eps = V::set1(T(o.eps));
    const R neg_step = V::set1(T(-s.step_size)), decay = V::set1(T(1.0 - o.lr * o.weight_decay));
    const bool decoupled = o.decoupled_weight_decay && o.weight_decay != 0;
    for (int64_t j = ch.begin; j < ch.end; j += W) {
      const int64_t k = ch.end - j;
      R pv = ld(p + j, k);
      if (decoupled) pv = V::mul(pv, decay);  // AdamW: param *= 1 - lr * weight_decay
      const R gv = effective_grad(ld(g + j, k), pv, o.maximize, decoupled ? 0.0 : o.weight_decay);
      const R mv = lerp(ld(m + j, k), gv, 1.0 - o.beta1);
      const R vv = V::add(V::mul(ld(v + j, k), b2), V::mul(V::mul(gv, gv), one_minus_b2));
      R second = vv;
      if (vmax) {
        second = V::max(ld(vmax + j, k), vv);
        st(vmax + j, second, k);
      }
      // denom = sqrt(v) / sqrt(1 - beta2^t) + eps; param += -step_size * m / denom
      const R denom = V::add(V::div(V::sqrt(second), bc2), eps);
      pv = V::add(pv, V::div(V::mul(neg_step, mv), denom));
      st(p + j, pv, k);
      st(m + j, mv, k);
      st(v + j, vv, k);
    }
  }

  static void sgd(const SgdOptions& o, const SgdTensors<T>& t, const TensorChunk& ch) {
    const int64_t i = ch.tensor;
    T* p = t.param[i];
    const T* g = t.grad[i];
    T* buf = o.momentum != 0 ? t.momentum_buffer[i] : nullptr;
    const bool first = buf && t.first_step[i];
    const R mom = V::set1(T(o.momentum)), keep = V::set1(T(1.0 - o.dampening)), neg_lr = V::set1(T(-o.lr));
    for (int64_t j = ch.begin; j < ch.end; j += W) {
      const int64_t k = ch.end - j;
      R pv = ld(p + j, k);
      R gv = effective_grad(ld(g + j, k), pv, o.maximize, o.weight_decay);
      if (buf) {
        // new buffer = grad; else buf = momentum * buf + (1 - dampening) * grad
        const R bv = first ? gv : V::add(V::mul(ld(buf + j, k), mom), V::mul(gv, keep));
        st(buf + j, bv, k);
        gv = o.nesterov ? V::add(gv, V::mul(bv, mom)) : bv;
      }
      st(p + j, V::add(pv, V::mul(gv, neg_lr)), k);
    }
  }

  static void adagrad(const AdagradOptions& o, const AdagradTensors<T>& t, const TensorChunk& ch) {
    const int64_t i = ch.tensor;
    T* p = t.param[i];
    const T* g = t.grad[i];
    T* sum = t.state_sum[i];
    const R eps = V::set1(T(o.eps)), neg_clr = V::set1(T(-t.clr[i]));
    for (int64_t j = ch.begin; j < ch.end; j += W) {
      const int64_t k = ch.end - j;
      const R pv = ld(p + j, k);
      const R gv = effective_grad(ld(g + j, k), pv, o.maximize, o.weight_decay);
      const R sv = V::add(ld(sum + j, k), V::mul(gv, gv));
      st(sum + j, sv, k);
      const R std_ = V::add(V::sqrt(sv), eps);
      st(p + j, V::add(pv, V::div(V::mul(neg_clr, gv), std_)), k);
    }
  }

  static void rmsprop(const RmspropOptions& o, const RmspropTensors<T>& t, const TensorChunk& ch) {
    const int64_t i = ch.tensor;
    T* p = t.param[i];
    const T* g = t.grad[i];
    T* sq = t.square_avg[i];
    T* ga = o.centered ? t.grad_avg[i] : nullptr;
    T* buf = o.momentum > 0 ? t.momentum_buffer[i] : nullptr;
    const R alpha = V::set1(T(o.alpha)), one_minus_alpha = V::set1(T(1.0 - o.alpha)), eps = V::set1(T(o.eps));
    const R mom = V::set1(T(o.momentum)), neg_lr = V::set1(T(-o.lr));
    for (int64_t j = ch.begin; j < ch.end; j += W) {
      const int64_t k = ch.end - j;
      R pv = ld(p + j, k);
      const R gv = effective_grad(ld(g + j, k), pv, o.maximize, o.weight_decay);
      const R sv = V::add(V::mul(ld(sq + j, k), alpha), V::mul(V::mul(gv, gv), one_minus_alpha));
      st(sq + j, sv, k);
      R avg;
      if (ga) {
        const R gav = lerp(ld(ga + j, k), gv, 1.0 - o.alpha);
        st(ga + j, gav, k);
        avg = V::sqrt(V::sub(sv, V::mul(gav, gav)));  // square_avg - grad_avg^2
      } else {
        avg = V::sqrt(sv);
      }
      avg = V::add(avg, eps);
      if (buf) {
        const R bv = V::add(V::mul(ld(buf + j, k), mom), V::div(gv, avg));
        st(buf + j, bv, k);
        pv = V::add(pv, V::mul(bv, neg_lr));
      } else {
        pv = V::add(pv, V::div(V::mul(neg_lr, gv), avg));
      }
      st(p + j, pv, k);
    }
  }

  // Chunks of very different tensors take very different times, hence dynamic scheduling; each
  // element is written by exactly one chunk, so the result does not depend on the thread count.
  template <class Opt, class Tensors, class F>
  static void run(const Opt& o, const Tensors& t, const TensorChunk* chunks, int64_t n, F f) {
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int64_t c = 0; c < n; ++c) f(o, t, chunks[c]);
  }
};

}  // namespace
}  // namespace dlk::cpu

// Defines the four entry points of one ISA (SUFFIX) from the Vec wrapper namespace NS.
#define DLK_OPTIM_DEFINE(SUFFIX, NS, T)                                                                       \
  void adam_step_##SUFFIX(const AdamOptions& o, const AdamTensors<T>& t, const TensorChunk* c, int64_t n) {    \
    OptimKernels<NS::Vec<T>>::run(o, t, c, n, OptimKernels<NS::Vec<T>>::adam);                               \
  }                                                                                                           \
  void sgd_step_##SUFFIX(const SgdOptions& o, const SgdTensors<T>& t, const TensorChunk* c, int64_t n) {       \
    OptimKernels<NS::Vec<T>>::run(o, t, c, n, OptimKernels<NS::Vec<T>>::sgd);                                \
  }                                                                                                           \
  void adagrad_step_##SUFFIX(const AdagradOptions& o, const AdagradTensors<T>& t, const TensorChunk* c,        \
                             int64_t n) {                                                                     \
    OptimKernels<NS::Vec<T>>::run(o, t, c, n, OptimKernels<NS::Vec<T>>::adagrad);                            \
  }                                                                                                           \
  void rmsprop_step_##SUFFIX(const RmspropOptions& o, const RmspropTensors<T>& t, const TensorChunk* c,        \
                             int64_t n) {                                                                     \
    OptimKernels<NS::Vec<T>>::run(o, t, c, n, OptimKernels<NS::Vec<T>>::rmsprop);                            \
  }
