// Launchers of the CUDA kernels, as the ops layer sees them: raw pointers, the stream as void*
// (a cudaStream_t), and an int result that is a cudaError_t (0 = success). No CUDA header needed here.
#pragma once
#include <cstdint>

#include "common/batch_norm.h"
#include "common/conv.h"
#include "common/cross_entropy.h"
#include "common/optim.h"
#include "common/pooling.h"

namespace dlk::cuda {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Accumulation type of dt: double for Float64, float otherwise. "acc" pointers below have that type;
// the others have type dt. target is int64 class indices (or nullptr), target_prob has type dt (or nullptr).

// Writes per-row loss, lse and row weight (acc type). A class index outside [0, C) that is not
// ignore_index sets *bad_row (device memory, initialised by the caller to INT64_MAX) to the smallest
// such row, and that row's loss to NaN.
// workspace_acc: one acc-type value of scratch (the weight sum) when weight is given, else unused.
int cross_entropy_forward(DType dt, const CrossEntropyGeom& g, const CrossEntropyOptions& o, const void* input,
                          const int64_t* target, const void* target_prob, const void* weight, void* loss_acc,
                          void* lse_acc, void* row_weight_acc, unsigned long long* bad_row, void* workspace_acc,
                          void* stream);
// Deterministic sum of the rows: out (type dt) = sum(loss) [/ sum(row_weight) for mean];
// total_weight (acc) = sum(row_weight). out may be nullptr (reduction 'none').
int cross_entropy_reduce(DType dt, int64_t rows, const void* loss_acc, const void* row_weight_acc,
                         Reduction reduction, void* out, void* total_weight_acc, void* stream);
// grad_loss has type dt ((N, S) for 'none', else one value); grad_input has type dt.
int cross_entropy_backward(DType dt, const CrossEntropyGeom& g, const CrossEntropyOptions& o, const void* grad_loss,
                           const void* total_weight_acc, const void* input, const int64_t* target,
                           const void* target_prob, const void* weight, const void* lse_acc, void* grad_input,
                           void* workspace_acc, void* stream);
int cross_entropy_target_backward(DType dt, const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                  const void* grad_loss, const void* total_weight_acc, const void* input,
                                  const void* weight, const void* lse_acc, void* grad_target, void* stream);
const char* error_string(int err);

}  // namespace dlk::cuda

namespace dlk::cuda {

// Multi-tensor fused optimizers: `count` tensors of `numel` elements each; every table holds one
// device pointer per tensor (of type dt; math in float, double for Float64). Many tensors per launch.
int multi_tensor_adam(DType dt, const AdamOptions& o, int64_t count, const void* const* params,
                      const void* const* grads, const void* const* exp_avgs, const void* const* exp_avg_sqs,
                      const void* const* max_exp_avg_sqs, const int64_t* numel, const AdamStepScalars* scalars,
                      const DeviceScalars& ds, void* stream);
int multi_tensor_sgd(DType dt, const SgdOptions& o, int64_t count, const void* const* params, const void* const* grads,
                     const void* const* momentum_buffers, const int64_t* numel, const uint8_t* first_step,
                     const DeviceScalars& ds, void* stream);
int multi_tensor_adagrad(DType dt, const AdagradOptions& o, int64_t count, const void* const* params,
                         const void* const* grads, const void* const* state_sums, const int64_t* numel,
                         const double* clr, const DeviceScalars& ds, void* stream);
int multi_tensor_rmsprop(DType dt, const RmspropOptions& o, int64_t count, const void* const* params,
                         const void* const* grads, const void* const* square_avgs, const void* const* grad_avgs,
                         const void* const* momentum_buffers, const int64_t* numel, const DeviceScalars& ds,
                         void* stream);

}  // namespace dlk::cuda

namespace dlk::cuda {

// Pooling on contiguous (N, C, H, W) of type dt; indices int64 flat positions in the H*W plane.
// Backward kernels write every input gradient element (gather form, deterministic, no atomics).
int max_pool2d_forward(DType dt, const Pool2dGeom& g, const void* in, void* out, int64_t* indices, void* stream);
int max_pool2d_backward(DType dt, const Pool2dGeom& g, const void* grad_out, const int64_t* indices, void* grad_in,
                        void* stream);
int avg_pool2d_forward(DType dt, const Pool2dGeom& g, const AvgPoolOptions& o, const void* in, void* out, void* stream);
int avg_pool2d_backward(DType dt, const Pool2dGeom& g, const AvgPoolOptions& o, const void* grad_out, void* grad_in,
                        void* stream);
int adaptive_avg_pool2d_forward(DType dt, const Pool2dGeom& g, const void* in, void* out, void* stream);
int adaptive_avg_pool2d_backward(DType dt, const Pool2dGeom& g, const void* grad_out, void* grad_in, void* stream);

}  // namespace dlk::cuda

namespace dlk::cuda {

// im2col convolution (csrc/cuda/conv.cu); every buffer of type dt, layouts as in common/conv.h.
// im2col: one thread per column element. col2im: gather form, one thread per input pixel summing the
// column entries that copied it (in acc type): no atomics, deterministic; out fully written.
int im2col(DType dt, const Im2colGeom& g, const void* in, void* col, void* stream);
int col2im(DType dt, const Im2colGeom& g, const void* col, void* out, void* stream);
// out[b, oc, l] = rows[oc, b*L + l] + bias[oc] (bias may be nullptr; rows may equal out when B == 1).
int conv_rows_to_images(DType dt, int64_t B, int64_t OC, int64_t L, const void* rows, const void* bias, void* out,
                        void* stream);
int conv_images_to_rows(DType dt, int64_t B, int64_t OC, int64_t L, const void* images, void* rows, void* stream);
// out[c] = sum over n, l of in[n, c, l]: one block per channel, a fixed-order tree (deterministic).
int channel_sum(DType dt, int64_t N, int64_t C, int64_t L, const void* in, void* out, void* stream);

}  // namespace dlk::cuda

namespace dlk::cuda {

// Batch normalization (csrc/cuda/batch_norm.cu); x, y, dy, residual, grads of type dt in the layout of g;
// every per-channel array is float64 (C). workspace: 3 * C * 64 doubles (per-block partials).
// Reductions: per-block partials combined per channel in a fixed order (deterministic); statistics by
// Welford/Chan merging, accurate for N*H*W in the millions and for large means.
int batch_norm_stats(DType dt, const BatchNormGeom& g, const void* x, double* mean, double* var, double* workspace,
                     void* stream);
int batch_norm_apply(DType dt, const BatchNormGeom& g, const void* x, const double* mean, const double* scale,
                     const double* beta, const void* residual, bool relu, void* y, void* stream);
int batch_norm_backward_reduce(DType dt, const BatchNormGeom& g, const void* dy, const void* x, const void* y,
                               bool relu, const double* mean, double* sum_dz, double* sum_dz_xmu, double* workspace,
                               void* stream);
int batch_norm_backward_apply(DType dt, const BatchNormGeom& g, const void* dy, const void* x, const void* y,
                              bool relu, const double* mean, const double* k_dz, const double* k_x, const double* k_1,
                              void* grad_input, void* grad_residual, void* stream);

}  // namespace dlk::cuda
