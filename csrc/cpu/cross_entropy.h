// CPU softmax-cross-entropy kernels on raw pointers (T = float or double).
//
// Forward, per row (one softmax over C classes, eps = label smoothing, w = class weights or 1):
//   lse  = max + log(sum_c exp(x_c - max))                (the only thing backward needs)
//   index target t:  loss = (1 - eps) w_t (lse - x_t) + eps / C * sum_c w_c (lse - x_c)
//   prob target q:   loss = sum_c w_c q'_c (lse - x_c),  q' = (1 - eps) q + eps / C
// Backward, per row, with g the incoming gradient of the row (divided by the total weight for 'mean'):
//   index target:    dx_c = g [ ((1 - eps) w_t + eps/C sum_k w_k) p_c - eps/C w_c - (1 - eps) w_t [c == t] ]
//   prob target:     dx_c = g [ (sum_k w_k q'_k) p_c - w_c q'_c ],   p_c = exp(x_c - lse)
#pragma once
#include <cstdint>

#include "common/cross_entropy.h"

namespace dlk::cpu {

template <class T> struct CrossEntropyForwardArgs {
  const T* input;          // (N, C, S) logits
  const int64_t* target;   // (N, S) class indices, or nullptr for probability targets
  const T* target_prob;    // (N, C, S) probabilities, or nullptr for index targets
  const T* weight;         // (C) class weights, or nullptr
  T* loss;                 // (N, S) per-row loss: the 'none' output, or the input of the reduction
  T* lse;                  // (N, S) log-sum-exp per row, saved for backward (0 for ignored rows)
  T* row_weight;           // (N, S) the row's share of the 'mean' denominator: w_t, 0 if ignored, 1 for probs
};

template <class T> struct CrossEntropyBackwardArgs {
  const T* grad_loss;      // (N, S) for reduction 'none', else one value
  const T* total_weight;   // one value: the denominator of 'mean'
  const T* input;
  const int64_t* target;
  const T* target_prob;
  const T* weight;
  const T* lse;
  T* grad_input;           // (N, C, S)
};

// Whole-problem entry points: threaded with OpenMP, dispatched on current_isa().
template <class T> void cross_entropy_forward(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                              const CrossEntropyForwardArgs<T>& a);
template <class T> void cross_entropy_backward(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                               const CrossEntropyBackwardArgs<T>& a);
// Sum of the per-row losses and weights in a fixed order (bitwise the same for any thread count).
// out = sum(loss) / sum(row_weight) for 'mean', sum(loss) for 'sum', not written when nullptr;
// total_weight = sum(row_weight).
template <class T> void cross_entropy_reduce(int64_t rows, const T* loss, const T* row_weight, Reduction reduction,
                                             T* out, T* total_weight);
// Gradient w.r.t. probability targets: dq_c = -g (1 - eps) w_c log p_c = g (1 - eps) w_c (lse - x_c).
template <class T> void cross_entropy_target_backward(const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                                      const T* grad_loss, const T* total_weight, const T* input,
                                                      const T* weight, const T* lse, T* grad_target);
// Index of the first row whose class index is neither in [0, C) nor ignore_index, or -1.
int64_t cross_entropy_find_bad_target(const int64_t* target, int64_t rows, int64_t C, int64_t ignore_index);

// The ISA variants behind the dispatch (one translation unit each, compiled for that ISA only).
#define DLK_CE_DECLARE(SUFFIX, T)                                                                      \
  void cross_entropy_forward_##SUFFIX(const CrossEntropyGeom&, const CrossEntropyOptions&,             \
                                      const CrossEntropyForwardArgs<T>&);                              \
  void cross_entropy_backward_##SUFFIX(const CrossEntropyGeom&, const CrossEntropyOptions&,            \
                                       const CrossEntropyBackwardArgs<T>&);
DLK_CE_DECLARE(avx2, float)
DLK_CE_DECLARE(avx2, double)
DLK_CE_DECLARE(avx512, float)
DLK_CE_DECLARE(avx512, double)
#undef DLK_CE_DECLARE

}  // namespace dlk::cpu
