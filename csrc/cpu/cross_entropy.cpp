// Softmax-cross-entropy, scalar reference path and the ISA dispatch.
// This path is the specification: plain loops, double accumulation, std::exp. The AVX2 and AVX-512
// paths (cross_entropy_avx2.cpp, cross_entropy_avx512.cpp) are tested against it.
#include "cpu/cross_entropy.h"

#include <cmath>
#include <limits>

#include "cpu/isa.h"

namespace dlk::cpu {
namespace {

// Below this many logits a problem runs on one thread: waking the team costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 15;

template <class T> double weight_sum(const T* weight, int64_t C) {
  if (weight == nullptr) return double(C);
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += weight[c];
  return s;
}

// The gradient flowing into one row: per-row for 'none', shared (and divided by the total weight,
// as torch's mean is sum(loss) / sum(w_target)) otherwise.
template <class T> double row_grad(const T* grad_loss, const T* total_weight, Reduction red, int64_t r) {
  if (red == Reduction::None) return grad_loss[r];
  if (red == Reduction::Mean) return double(grad_loss[0]) / double(total_weight[0]);
  return grad_loss[0];
}

template <class T>
void forward_scalar(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const CrossEntropyForwardArgs<T>& a) {
  const int64_t C = g.C, S = g.S;
  const double eps = o.label_smoothing;
  const double wsum = weight_sum(a.weight, C);
#pragma omp parallel for schedule(static) if (g.numel() > kParallelGrain)
  for (int64_t r = 0; r < g.rows(); ++r) {
    const T* x = a.input + g.row_base(r);
    int64_t t = 0;
    if (!o.prob_target) {
      t = a.target[r];
      if (t == o.ignore_index) {
        a.loss[r] = T(0);
        a.lse[r] = T(0);
        a.row_weight[r] = T(0);
        continue;
      }
    }
    // Subtract the row max before exp, or exp overflows for logits above ~88 (float).
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < C; ++c) m = std::fmax(m, double(x[c * S]));
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(double(x[c * S]) - m);
    const double log_sum = std::log(sum);  // lse - max
    a.lse[r] = T(m + log_sum);
    if (!o.prob_target) {
      const double wt = a.weight ? double(a.weight[t]) : 1.0;
      double loss = (1.0 - eps) * wt * (m + log_sum - double(x[t * S]));
      if (eps > 0) {
        // sum_c w_c (lse - x_c) = wsum (lse - max) - sum_c w_c (x_c - max): shifted, so no cancellation.
        double sw = 0;
        for (int64_t c = 0; c < C; ++c) sw += (a.weight ? double(a.weight[c]) : 1.0) * (double(x[c * S]) - m);
        loss += eps / double(C) * (wsum * log_sum - sw);
      }
      a.loss[r] = T(loss);
      a.row_weight[r] = T(wt);
    } else {
      const T* q = a.target_prob + g.row_base(r);
      double wq = 0, wqx = 0;
      for (int64_t c = 0; c < C; ++c) {
        const double qc = (1.0 - eps) * double(q[c * S]) + eps / double(C);
        const double wc = a.weight ? double(a.weight[c]) : 1.0;
        wq += wc * qc;
        wqx += wc * qc * (double(x[c * S]) - m);
      }
      a.loss[r] = T(wq * log_sum - wqx);
      a.row_weight[r] = T(1);
    }
  }
}

template <class T>
void backward_scalar(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const CrossEntropyBackwardArgs<T>& a) {
  const int64_t C = g.C, S = g.S;
  const double eps = o.label_smoothing;
  const double wsum = weight_sum(a.weight, C);
#pragma omp parallel for schedule(static) if (g.numel() > kParallelGrain)
  for (int64_t r = 0; r < g.rows(); ++r) {
    const T* x = a.input + g.row_base(r);
    T* dx = a.grad_input + g.row_base(r);
    const double gr = row_grad(a.grad_loss, a.total_weight, o.reduction, r);
    const double lse = a.lse[r];
    if (!o.prob_target) {
      const int64_t t = a.target[r];
      if (t == o.ignore_index) {
        for (int64_t c = 0; c < C; ++c) dx[c * S] = T(0);
        continue;
      }
      const double wt = a.weight ? double(a.weight[t]) : 1.0;
      const double coef = (1.0 - eps) * wt + eps / double(C) * wsum;
      for (int64_t c = 0; c < C; ++c) {
        const double wc = a.weight ? double(a.weight[c]) : 1.0;
        double d = coef * std::exp(double(x[c * S]) - lse) - eps / double(C) * wc;
        if (c == t) d -= (1.0 - eps) * wt;
        dx[c * S] = T(gr * d);
      }
    } else {
      const T* q = a.target_prob + g.row_base(r);
      double wq = 0;
      for (int64_t c = 0; c < C; ++c)
        wq += (a.weight ? double(a.weight[c]) : 1.0) * ((1.0 - eps) * double(q[c * S]) + eps / double(C));
      for (int64_t c = 0; c < C; ++c) {
        const double wc = a.weight ? double(a.weight[c]) : 1.0;
        const double qc = (1.0 - eps) * double(q[c * S]) + eps / double(C);
        dx[c * S] = T(gr * (wq * std::exp(double(x[c * S]) - lse) - wc * qc));
      }
    }
  }
}

}  // namespace

template <class T>
void cross_entropy_forward(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const CrossEntropyForwardArgs<T>& a) {
  switch (current_isa()) {
    case Isa::Avx512: return cross_entropy_forward_avx512(g, o, a);
    case Isa::Avx2: return cross_entropy_forward_avx2(g, o, a);
    case Isa::Scalar: return forward_scalar(g, o, a);
  }
}

template <class T>
void cross_entropy_backward(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const CrossEntropyBackwardArgs<T>& a) {
  switch (current_isa()) {
    case Isa::Avx512: return cross_entropy_backward_avx512(g, o, a);
    case Isa::Avx2: return cross_entropy_backward_avx2(g, o, a);
    case Isa::Scalar: return backward_scalar(g, o, a);
  }
}

template <class T>
void cross_entropy_reduce(int64_t rows, const T* loss, const T* row_weight, Reduction reduction, T* out, T* total_weight) {
  // One thread, in order, in double: O(rows), negligible beside the O(rows * C) kernels, and the
  // result does not depend on the thread count.
  double s = 0, w = 0;
  for (int64_t r = 0; r < rows; ++r) {
    s += double(loss[r]);
    w += double(row_weight[r]);
  }
  *total_weight = T(w);
  if (out != nullptr) *out = T(reduction == Reduction::Mean ? s / w : s);  // 0 / 0 = NaN for an empty or all-ignored mean, as torch
}

template <class T>
void cross_entropy_target_backward(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const T* grad_loss,
                                   const T* total_weight, const T* input, const T* weight, const T* lse,
                                   T* grad_target) {
  const int64_t C = g.C, S = g.S;
  const double keep = 1.0 - o.label_smoothing;
#pragma omp parallel for schedule(static) if (g.numel() > kParallelGrain)
  for (int64_t r = 0; r < g.rows(); ++r) {
    const double gr = row_grad(grad_loss, total_weight, o.reduction, r) * keep;
    const int64_t base = g.row_base(r);
    for (int64_t c = 0; c < C; ++c) {
      const double wc = weight ? double(weight[c]) : 1.0;
      grad_target[base + c * S] = T(gr * wc * (double(lse[r]) - double(input[base + c * S])));
    }
  }
}

int64_t cross_entropy_find_bad_target(const int64_t* target, int64_t rows, int64_t C, int64_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = target[r];
    if ((t < 0 || t >= C) && t != ignore_index) return r;
  }
  return -1;
}

#define DLK_CE_INSTANTIATE(T)                                                                              \
  template void cross_entropy_forward<T>(const CrossEntropyGeom&, const CrossEntropyOptions&,              \
                                         const CrossEntropyForwardArgs<T>&);                               \
  template void cross_entropy_backward<T>(const CrossEntropyGeom&, const CrossEntropyOptions&,             \
                                          const CrossEntropyBackwardArgs<T>&);                             \
  template void cross_entropy_reduce<T>(int64_t, const T*, const T*, Reduction, T*, T*);                   \
  template void cross_entropy_target_backward<T>(const CrossEntropyGeom&, const CrossEntropyOptions&,      \
                                                 const T*, const T*, const T*, const T*, const T*, T*);
DLK_CE_INSTANTIATE(float)
DLK_CE_INSTANTIATE(double)
#undef DLK_CE_INSTANTIATE

}  // namespace dlk::cpu
