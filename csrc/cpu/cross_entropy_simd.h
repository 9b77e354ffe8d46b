// Softmax-cross-entropy on SIMD vectors, generic over a Vec<T> wrapper (simd_avx2.h, simd_avx512.h).
// Included only by cross_entropy_avx2.cpp and cross_entropy_avx512.cpp, after their target pragma;
// everything here has internal linkage so the two ISA copies never meet at link time.
//
// The formulas are those of cross_entropy.h and of the scalar path (cross_entropy.cpp). Two layouts:
//  - S == 1, rows contiguous: vectors run along the classes of one row; a row's logits (C * 4 bytes)
//    stay in L1/L2 between the max pass and the exp pass, so memory sees one read of the logits.
//  - S > 1, (N, C, S): vectors run across W neighbouring positions s, which are contiguous for every c,
//    so each lane is an independent row and loads stay unit-stride.
#pragma once
// Standard headers come before the ISA pragma in the including file (templates instantiated after
// it would be compiled for that ISA and could be picked by the linker for scalar callers).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/cross_entropy.h"

namespace dlk::cpu {
namespace {

constexpr int64_t kSimdParallelGrain = 1 << 15;
// Outputs above the last-level cache (32 MiB on the CI machine) go out with streaming stores. Measured
// on the 4096 x 1000 benchmark (16 MiB gradient): streaming it made forward+backward slower, 2.3 ms
// against 1.86 ms with ordinary stores, since the freshly written lines still sat in the cache.
constexpr int64_t kStreamBytes = int64_t(32) << 20;

template <class V> struct CrossEntropySimd {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int W = V::W;

  struct Consts {
    T eps, eps_c, keep;  // label smoothing, eps / C, 1 - eps
    T wsum;              // sum of the class weights (C without weights)
    bool smoothing;
  };

  static Consts consts(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const T* weight) {
    Consts k;
    k.eps = T(o.label_smoothing);
    k.eps_c = T(o.label_smoothing / double(g.C));
    k.keep = T(1.0 - o.label_smoothing);
    double s = double(g.C);
    if (weight) {
      s = 0;
      for (int64_t c = 0; c < g.C; ++c) s += weight[c];
    }
    k.wsum = T(s);
    k.smoothing = o.label_smoothing > 0;
    return k;
  }

  static T row_grad(const CrossEntropyBackwardArgs<T>& a, Reduction red, int64_t r) {
    if (red == Reduction::None) return a.grad_loss[r];
    if (red == Reduction::Mean) return T(double(a.grad_loss[0]) / double(a.total_weight[0]));
    return a.grad_loss[0];
  }

  // 1 in the first n lanes, 0 in the others: masks the tail's share of a weighted sum.
  static R ones_tail(int64_t n) {
    T buf[W];
    for (int i = 0; i < W; ++i) buf[i] = i < n ? T(1) : T(0);
    return V::load(buf);
  }
  static R weight_or_ones(const T* weight, int64_t c, int64_t n) {
    if (weight) return n >= W ? V::load(weight + c) : V::load_tail(weight + c, n, T(0));
    return n >= W ? V::set1(T(1)) : ones_tail(n);
  }

  // ---------------------------------------------------------------- S == 1: one contiguous row
  static void forward_row(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const Consts& k,
                          const CrossEntropyForwardArgs<T>& a, int64_t r) {
    const int64_t C = g.C;
    const T* x = a.input + r * C;
    int64_t t = 0;
    if (!o.prob_target) {
      t = a.target[r];
      if (t == o.ignore_index) {
        a.loss[r] = a.lse[r] = a.row_weight[r] = T(0);
        return;
      }
    }
    const T inf = std::numeric_limits<T>::infinity();
    // Pass 1: the row max (two accumulators to hide the max latency).
    R m0 = V::set1(-inf), m1 = V::set1(-inf);
    int64_t c = 0;
    for (; c + 2 * W <= C; c += 2 * W) {
      m0 = V::max(m0, V::load(x + c));
      m1 = V::max(m1, V::load(x + c + W));
    }
    for (; c + W <= C; c += W) m0 = V::max(m0, V::load(x + c));
    if (c < C) m0 = V::max(m0, V::load_tail(x + c, C - c, -inf));
    const T m = V::reduce_max(V::max(m0, m1));
    const R vm = V::set1(m);

    // Pass 2 (the row is in cache now): sum of exp, plus the weighted shifted sums smoothing or
    // probability targets need. Tail lanes read -inf for exp (giving 0) and m elsewhere (giving 0).
    R s0 = V::set1(T(0)), s1 = V::set1(T(0));
    double log_sum, loss;
    if (!o.prob_target && !k.smoothing) {
      c = 0;
      for (; c + 2 * W <= C; c += 2 * W) {
        s0 = V::add(s0, V::exp(V::sub(V::load(x + c), vm)));
        s1 = V::add(s1, V::exp(V::sub(V::load(x + c + W), vm)));
      }
      for (; c + W <= C; c += W) s0 = V::add(s0, V::exp(V::sub(V::load(x + c), vm)));
      if (c < C) s0 = V::add(s0, V::exp(V::sub(V::load_tail(x + c, C - c, -inf), vm)));
      log_sum = std::log(double(V::reduce_add(V::add(s0, s1))));
      const double wt = a.weight ? double(a.weight[t]) : 1.0;
      loss = wt * (double(m) + log_sum - double(x[t]));
      a.row_weight[r] = T(wt);
    } else if (!o.prob_target) {
      R sw = V::set1(T(0));  // sum_c w_c (x_c - m)
      for (c = 0; c < C; c += W) {
        const int64_t n = C - c;
        R d, de;
        if (n >= W) {
          d = de = V::sub(V::load(x + c), vm);
        } else {
          de = V::sub(V::load_tail(x + c, n, -inf), vm);
          d = V::sub(V::load_tail(x + c, n, m), vm);
        }
        s0 = V::add(s0, V::exp(de));
        sw = a.weight ? V::fmadd(weight_or_ones(a.weight, c, n), d, sw) : V::add(sw, d);
      }
      log_sum = std::log(double(V::reduce_add(s0)));
      const double wt = a.weight ? double(a.weight[t]) : 1.0;
      loss = double(k.keep) * wt * (double(m) + log_sum - double(x[t])) +
             double(k.eps_c) * (double(k.wsum) * log_sum - double(V::reduce_add(sw)));
      a.row_weight[r] = T(wt);
    } else {
      const T* q = a.target_prob + r * C;
      R wq = V::set1(T(0)), wqd = V::set1(T(0));  // sum w q', sum w q' (x - m)
      const R keep = V::set1(k.keep), eps_c = V::set1(k.eps_c);
      for (c = 0; c < C; c += W) {
        const int64_t n = C - c;
        R d, de, qc;
        if (n >= W) {
          d = de = V::sub(V::load(x + c), vm);
          qc = V::load(q + c);
        } else {
          de = V::sub(V::load_tail(x + c, n, -inf), vm);
          d = V::sub(V::load_tail(x + c, n, m), vm);
          qc = V::load_tail(q + c, n, T(0));
        }
        s0 = V::add(s0, V::exp(de));
        const R wqc = V::mul(weight_or_ones(a.weight, c, n), V::fmadd(keep, qc, eps_c));
        wq = V::add(wq, wqc);
        wqd = V::fmadd(wqc, d, wqd);
      }
      log_sum = std::log(double(V::reduce_add(s0)));
      loss = double(V::reduce_add(wq)) * log_sum - double(V::reduce_add(wqd));
      a.row_weight[r] = T(1);
    }
    a.lse[r] = T(double(m) + log_sum);
    a.loss[r] = T(loss);
  }

  // Writes dx[c] = f(c, n) over [0, C) in chunks of n <= W lanes (f loads its inputs accordingly).
  // stream: the output is too big to stay in cache, so whole vectors go out as non-temporal stores
  // (after a short head reaching alignment), which saves the read-for-ownership of every line.
  template <class F> static void store_row(T* dx, int64_t C, bool stream, F&& f) {
    int64_t c = 0;
    if (stream) {
      const int64_t misalign = int64_t(reinterpret_cast<uintptr_t>(dx) % V::kStreamAlign);
      const int64_t head = std::min<int64_t>(C, misalign ? (V::kStreamAlign - misalign) / int64_t(sizeof(T)) : 0);
      if (head > 0) V::store_tail(dx, f(0, head), head);
      for (c = head; c + W <= C; c += W) V::stream(dx + c, f(c, W));
    } else {
      for (; c + W <= C; c += W) V::store(dx + c, f(c, W));
    }
    if (c < C) V::store_tail(dx + c, f(c, C - c), C - c);
    if (stream) _mm_sfence();  // order the weakly-ordered streaming stores before anything after the row
  }

  static void backward_row(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const Consts& k,
                           const CrossEntropyBackwardArgs<T>& a, int64_t r, bool stream) {
    const int64_t C = g.C;
    const T* x = a.input + r * C;
    T* dx = a.grad_input + r * C;
    const T inf = std::numeric_limits<T>::infinity();
    const T gr = row_grad(a, o.reduction, r);
    const R vlse = V::set1(a.lse[r]);
    auto load = [](const T* p, int64_t n, T fill) { return n >= W ? V::load(p) : V::load_tail(p, n, fill); };
    if (!o.prob_target) {
      const int64_t t = a.target[r];
      if (t == o.ignore_index) {
        const R z = V::set1(T(0));
        store_row(dx, C, stream, [&](int64_t, int64_t) { return z; });
        return;
      }
      const T wt = a.weight ? a.weight[t] : T(1);
      // dx_c = g coef p_c - g eps/C w_c, then the target class gets - g (1 - eps) w_t.
      const R A = V::set1(gr * (k.keep * wt + k.eps_c * k.wsum));
      const R B = V::set1(-gr * k.eps_c);
      const bool per_class = a.weight != nullptr && k.smoothing;
      store_row(dx, C, stream, [&](int64_t c, int64_t n) {
        const R p = V::exp(V::sub(load(x + c, n, -inf), vlse));
        return V::fmadd(A, p, per_class ? V::mul(B, weight_or_ones(a.weight, c, n)) : B);
      });
      dx[t] -= gr * k.keep * wt;
    } else {
      const T* q = a.target_prob + r * C;
      const R keep = V::set1(k.keep), eps_c = V::set1(k.eps_c);
      // Pass 1: Q = sum_c w_c q'_c. Pass 2: dx_c = g (Q p_c - w_c q'_c).
      R wq = V::set1(T(0));
      for (int64_t c = 0; c < C; c += W) {
        const int64_t n = C - c;
        wq = V::fmadd(weight_or_ones(a.weight, c, n), V::fmadd(keep, load(q + c, n, T(0)), eps_c), wq);
      }
      const R A = V::set1(gr * V::reduce_add(wq));
      const R mg = V::set1(-gr);
      store_row(dx, C, stream, [&](int64_t c, int64_t n) {
        const R wqc = V::mul(weight_or_ones(a.weight, c, n), V::fmadd(keep, load(q + c, n, T(0)), eps_c));
        return V::fmadd(A, V::exp(V::sub(load(x + c, n, -inf), vlse)), V::mul(mg, wqc));
      });
    }
  }

  // ---------------------------------------------------------------- S > 1: W positions per vector
  static R load_lanes(const T* p, int64_t ns, T fill) { return ns >= W ? V::load(p) : V::load_tail(p, ns, fill); }

  static void forward_block(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const Consts& k,
                            const CrossEntropyForwardArgs<T>& a, int64_t n, int64_t s0) {
    const int64_t C = g.C, S = g.S, ns = std::min<int64_t>(W, S - s0);
    const T* x = a.input + n * C * S + s0;
    const T inf = std::numeric_limits<T>::infinity();
    R vm = V::set1(-inf);
    for (int64_t c = 0; c < C; ++c) vm = V::max(vm, load_lanes(x + c * S, ns, T(0)));
    R s = V::set1(T(0)), sw = V::set1(T(0)), wq = V::set1(T(0)), wqd = V::set1(T(0));
    const R keep = V::set1(k.keep), eps_c = V::set1(k.eps_c);
    for (int64_t c = 0; c < C; ++c) {
      const R d = V::sub(load_lanes(x + c * S, ns, T(0)), vm);
      s = V::add(s, V::exp(d));
      const R wc = V::set1(a.weight ? a.weight[c] : T(1));
      if (o.prob_target) {
        const R wqc = V::mul(wc, V::fmadd(keep, load_lanes(a.target_prob + n * C * S + s0 + c * S, ns, T(0)), eps_c));
        wq = V::add(wq, wqc);
        wqd = V::fmadd(wqc, d, wqd);
      } else if (k.smoothing) {
        sw = V::fmadd(wc, d, sw);
      }
    }
    T m_[W], s_[W], sw_[W], wq_[W], wqd_[W];
    V::store(m_, vm);
    V::store(s_, s);
    V::store(sw_, sw);
    V::store(wq_, wq);
    V::store(wqd_, wqd);
    for (int64_t l = 0; l < ns; ++l) {
      const int64_t r = n * S + s0 + l;
      const double log_sum = std::log(double(s_[l]));
      if (o.prob_target) {
        a.loss[r] = T(double(wq_[l]) * log_sum - double(wqd_[l]));
        a.row_weight[r] = T(1);
      } else {
        const int64_t t = a.target[r];
        if (t == o.ignore_index) {
          a.loss[r] = a.lse[r] = a.row_weight[r] = T(0);
          continue;
        }
        const double wt = a.weight ? double(a.weight[t]) : 1.0;
        double loss = double(k.keep) * wt * (double(m_[l]) + log_sum - double(x[t * S + l]));
        if (k.smoothing) loss += double(k.eps_c) * (double(k.wsum) * log_sum - double(sw_[l]));
        a.loss[r] = T(loss);
        a.row_weight[r] = T(wt);
      }
      a.lse[r] = T(double(m_[l]) + log_sum);
    }
  }

  static void backward_block(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const Consts& k,
                             const CrossEntropyBackwardArgs<T>& a, int64_t n, int64_t s0) {
    const int64_t C = g.C, S = g.S, ns = std::min<int64_t>(W, S - s0);
    const T* x = a.input + n * C * S + s0;
    T* dx = a.grad_input + n * C * S + s0;
    T A_[W] = {}, B_[W] = {}, lse_[W] = {};
    for (int64_t l = 0; l < ns; ++l) {
      const int64_t r = n * S + s0 + l;
      const T gr = row_grad(a, o.reduction, r);
      lse_[l] = a.lse[r];
      if (o.prob_target) {
        A_[l] = gr;  // times Q below
        B_[l] = -gr;
      } else {
        const int64_t t = a.target[r];
        if (t == o.ignore_index) continue;  // A = B = 0: the row's gradient is 0
        const T wt = a.weight ? a.weight[t] : T(1);
        A_[l] = gr * (k.keep * wt + k.eps_c * k.wsum);
        B_[l] = -gr * k.eps_c;
      }
    }
    R A = V::load(A_), B = V::load(B_);
    const R vlse = V::load(lse_);
    const R keep = V::set1(k.keep), eps_c = V::set1(k.eps_c);
    const T* q = o.prob_target ? a.target_prob + n * C * S + s0 : nullptr;
    if (o.prob_target) {
      R wq = V::set1(T(0));
      for (int64_t c = 0; c < C; ++c)
        wq = V::fmadd(V::set1(a.weight ? a.weight[c] : T(1)), V::fmadd(keep, load_lanes(q + c * S, ns, T(0)), eps_c), wq);
      A = V::mul(A, wq);
    }
    for (int64_t c = 0; c < C; ++c) {
      const R p = V::exp(V::sub(load_lanes(x + c * S, ns, T(0)), vlse));
      const R wc = V::set1(a.weight ? a.weight[c] : T(1));
      R b;
      if (o.prob_target) b = V::mul(B, V::mul(wc, V::fmadd(keep, load_lanes(q + c * S, ns, T(0)), eps_c)));
      else b = a.weight ? V::mul(B, wc) : B;
      const R d = V::fmadd(A, p, b);
      if (ns >= W) V::store(dx + c * S, d); else V::store_tail(dx + c * S, d, ns);
    }
    if (!o.prob_target) {
      for (int64_t l = 0; l < ns; ++l) {
        const int64_t r = n * S + s0 + l;
        const int64_t t = a.target[r];
        if (t == o.ignore_index) continue;
        const T wt = a.weight ? a.weight[t] : T(1);
        dx[t * S + l] -= row_grad(a, o.reduction, r) * k.keep * wt;
      }
    }
  }

  // ---------------------------------------------------------------- whole problem
  static void forward(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const CrossEntropyForwardArgs<T>& a) {
    const Consts k = consts(g, o, a.weight);
    if (g.S == 1) {
#pragma omp parallel for schedule(static) if (g.numel() > kSimdParallelGrain)
      for (int64_t r = 0; r < g.N; ++r) forward_row(g, o, k, a, r);
    } else {
      const int64_t blocks = (g.S + W - 1) / W;
#pragma omp parallel for schedule(static) if (g.numel() > kSimdParallelGrain)
      for (int64_t i = 0; i < g.N * blocks; ++i) forward_block(g, o, k, a, i / blocks, (i % blocks) * W);
    }
  }

  static void backward(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const CrossEntropyBackwardArgs<T>& a) {
    const Consts k = consts(g, o, a.weight);
    if (g.S == 1) {
      const bool stream = g.numel() * int64_t(sizeof(T)) > kStreamBytes;
#pragma omp parallel for schedule(static) if (g.numel() > kSimdParallelGrain)
      for (int64_t r = 0; r < g.N; ++r) backward_row(g, o, k, a, r, stream);
    } else {
      const int64_t blocks = (g.S + W - 1) / W;
#pragma omp parallel for schedule(static) if (g.numel() > kSimdParallelGrain)
      for (int64_t i = 0; i < g.N * blocks; ++i) backward_block(g, o, k, a, i / blocks, (i % blocks) * W);
    }
  }
};

}  // namespace
}  // namespace dlk::cpu
