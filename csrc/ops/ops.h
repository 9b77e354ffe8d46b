// Tensor-level ops, one section per family; registered with the dispatcher in csrc/register.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/util/Optional.h>

#include <array>
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

namespace dlk::ops {

// ---- fused optimizers (csrc/ops/optim.cpp): in-place updates of every list; state_steps incremented.
void adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
           at::TensorList max_exp_avg_sqs, at::TensorList state_steps, double lr, double beta1, double beta2,
           double eps, double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay,
           const c10::optional<at::Tensor>& lr_tensor, bool capturable);
void sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, c10::List<bool> first_step,
          double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
          const c10::optional<at::Tensor>& lr_tensor);
void adagrad_(at::TensorList params, at::TensorList grads, at::TensorList state_sums, at::TensorList state_steps,
              double lr, double lr_decay, double weight_decay, double eps, bool maximize,
              const c10::optional<at::Tensor>& lr_tensor, bool capturable);
void rmsprop_(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, at::TensorList grad_avgs,
              at::TensorList momentum_buffers, at::TensorList state_steps, double lr, double alpha, double eps,
              double weight_decay, double momentum, bool centered, bool maximize,
              const c10::optional<at::Tensor>& lr_tensor, bool capturable);

}  // namespace dlk::ops

namespace dlk::ops {

// ---- pooling (csrc/ops/pooling.cpp); input (N, C, H, W)
// max_pool2d_forward's second output: int64 flat positions in the H*W plane (torch's indices), or with
// tap_index (CPU, KH * KW <= 256) uint8 window taps kh * KW + kw; the backward takes either.
std::tuple<at::Tensor, at::Tensor> max_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, bool ceil_mode, bool tap_index);
at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode);
at::Tensor avg_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                              c10::optional<int64_t> divisor_override);
at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                               bool count_include_pad, c10::optional<int64_t> divisor_override);
at::Tensor adaptive_avg_pool2d_forward(const at::Tensor& input, at::IntArrayRef output_size);
at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input);

}  // namespace dlk::ops

namespace dlk::ops {

// ---- im2col convolution (csrc/ops/conv.cpp); input (N, C, H, W); padding 2 values or 4 (top, left,
// bottom, right). The column buffer is processed in batch chunks within workspace_limit() bytes.
at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                               const at::Tensor& weight, at::IntArrayRef stride,
                                                               at::IntArrayRef padding, at::IntArrayRef dilation,
                                                               int64_t groups, std::array<bool, 3> output_mask);
// F.unfold / F.fold on (N, C, H, W) / (N, C*kH*kW, L).
at::Tensor im2col(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                  at::IntArrayRef padding, at::IntArrayRef stride);
at::Tensor col2im(const at::Tensor& input, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                  at::IntArrayRef dilation, at::IntArrayRef padding, at::IntArrayRef stride);
int64_t workspace_limit();
void set_workspace_limit(int64_t bytes);
// Which CPU layers take Winograd F(2x2, 3x3): 0 none, 1 those the measured rule picks, 2 all it can take.
int64_t winograd_mode();
int64_t direct_mode();
void set_direct_mode(int64_t mode);
void set_winograd_mode(int64_t mode);

// Whether CUDA ops may read device values on the host to raise a clear error (today: cross-entropy
// class indices out of range). Off by default: a training step then never synchronises with the GPU,
// and a bad index makes its row's loss NaN instead (see cross_entropy_forward).
bool cuda_sync_checks();
void set_cuda_sync_checks(bool enabled);

}  // namespace dlk::ops

namespace dlk::ops {

// ---- batch normalization (csrc/ops/batch_norm.cpp); input (N, C, ...) with 2 to 5 dims.
// Saved statistics (mean, invstd) and the backward sums are float64 (C,). relu: fused ReLU whose
// backward mask comes from `output`; residual: added before the ReLU (batch_norm_add_relu).
// batch_norm_forward's relu_mask: the gate output > 0 as int32 bit words (N, C, ceil(L / 32)), produced
// exactly where the CPU fused path runs with float32, residual and relu (training, planar layout, a
// channel within cpu::batch_norm_fused_fits; dlkernels/_ops.py's fake mirrors this), else an empty tensor; batch_norm_backward takes it in place of
// output (a 32nd of the bytes to read).
std::tuple<at::Tensor, at::Tensor> batch_norm_stats(const at::Tensor& input);
at::Tensor batch_norm_elemt(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& invstd,
                            const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& residual, bool relu);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_forward(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, bool training,
    double momentum, double eps, const c10::optional<at::Tensor>& residual, bool relu);
std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce(const at::Tensor& grad_output, const at::Tensor& input,
                                                              const c10::optional<at::Tensor>& output,
                                                              const at::Tensor& mean, const at::Tensor& invstd,
                                                              bool relu);
std::tuple<at::Tensor, at::Tensor> batch_norm_backward_elemt(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& output,
    const at::Tensor& mean, const at::Tensor& invstd, const c10::optional<at::Tensor>& weight,
    const at::Tensor& sum_dz, const at::Tensor& sum_dz_xmu, int64_t count, bool relu, std::array<bool, 2> output_mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& output,
    const c10::optional<at::Tensor>& weight, const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    bool relu, std::array<bool, 4> output_mask, const c10::optional<at::Tensor>& bias, bool relu_from_input,
    const c10::optional<at::Tensor>& relu_mask);

}  // namespace dlk::ops
