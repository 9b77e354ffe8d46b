// Tensor-level ops, one section per family; registered with the dispatcher in csrc/register.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace dlk::ops {

// ---- softmax-cross-entropy (csrc/ops/cross_entropy.cpp)
// Returns (loss, lse, total_weight): loss is per row for reduction 'none' (0), else one value;
// lse (log-sum-exp per row) and total_weight (the 'mean' denominator) are what backward needs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward(const at::Tensor& input, const at::Tensor& target,
                                                                     const c10::optional<at::Tensor>& weight,
                                                                     int64_t reduction, int64_t ignore_index,
                                                                     double label_smoothing);
at::Tensor cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                  const c10::optional<at::Tensor>& weight, const at::Tensor& lse,
                                  const at::Tensor& total_weight, int64_t reduction, int64_t ignore_index,
                                  double label_smoothing);
at::Tensor cross_entropy_target_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                         const c10::optional<at::Tensor>& weight, const at::Tensor& lse,
                                         const at::Tensor& total_weight, int64_t reduction, double label_smoothing);

}  // namespace dlk::ops
