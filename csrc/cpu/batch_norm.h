// CPU batch-normalization kernels on raw pointers (T = float or double). Per-channel arrays are double:
// statistics are accumulated in double around a per-channel shift (the channel's first value), so an
// input of 1000 + noise keeps its variance (no E[x^2] - E[x]^2 cancellation). The float32 fused training
// paths sum short runs in float lanes before adding them in double, around a shift near the mean, and
// fall back to the double sums for a channel where that would lose accuracy (batch_norm_impl.h).
// Work is split in a fixed way that depends only on the sizes (never on the thread count), and partial
// sums are combined in a fixed order: results are bitwise the same for any number of threads.
#pragma once
#include <cstdint>

#include "common/batch_norm.h"

namespace dlk::cpu {

// Doubles of scratch the reductions need (the ops layer allocates it).
int64_t batch_norm_workspace_size(const BatchNormGeom& g);

// mean[c] and biased var[c] over the N * L values of channel c.
template <class T> void batch_norm_stats(const BatchNormGeom& g, const T* x, double* mean, double* var, double* work);
// y = (x - mean[c]) * scale[c] + beta[c] (+ residual) (then max(., 0) if relu), computed in double.
// residual may be nullptr.
template <class T>
void batch_norm_apply(const BatchNormGeom& g, const T* x, const double* mean, const double* scale, const double* beta,
                      const T* residual, bool relu, T* y);
// dz = relu ? (y > 0 ? dy : 0) : dy;  sum_dz[c] = sum dz,  sum_dz_xmu[c] = sum dz * (x - mean[c]).
template <class T>
void batch_norm_backward_reduce(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,
                                const double* mean, double* sum_dz, double* sum_dz_xmu, double* work);
// grad_input = dz * k_dz[c] + (x - mean[c]) * k_x[c] + k_1[c] (may be nullptr); grad_residual = dz (may be nullptr).
template <class T>
void batch_norm_backward_apply(const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu,
                               const double* mean, const double* k_dz, const double* k_x, const double* k_1,
                               T* grad_input, T* grad_residual);

// Training on the planar layout, a channel at a time (statistics then normalization while the channel is
// in cache; reduce then gradient likewise): the same results as the two-pass functions above in fewer
// memory passes. weight/bias (double, C) may be nullptr. Use when batch_norm_fused_fits(g, sizeof(T)).
bool batch_norm_fused_fits(const BatchNormGeom& g, int64_t element_size);
// The ReLU gate as bits (float32 only; relu_bits may be nullptr): word w of plane p = n * C + c holds
// y > 0 for values 32 w .. 32 w + 31 of that plane, bit i for value 32 w + i, zeros past the plane's end.
// The backward then reads N * C * words * 4 bytes instead of y (a 32nd of it): batch_norm_add_relu's
// gate, which cannot be recomputed from x.
inline int64_t batch_norm_relu_bit_words(int64_t L) { return (L + 31) / 32; }
template <class T>
void batch_norm_train_forward(const BatchNormGeom& g, const T* x, const double* weight, const double* bias, double eps,
                              const T* residual, bool relu, T* y, uint32_t* relu_bits, double* mean, double* var,
                              double* invstd);
// With relu, the ReLU gate comes from relu_bits (float32) if given, else from y if given; with neither it
// is recomputed from x: the forward's pre-activation (x - mean) * weight * invstd + bias, with its exact
// arithmetic (so the same mask bits), > 0; valid for batch_norm_relu without a residual, and saves
// reading y. bias (double, C) may be nullptr (0).
template <class T>
void batch_norm_train_backward(const BatchNormGeom& g, const T* dy, const T* x, const T* y, const uint32_t* relu_bits,
                               bool relu, const double* mean, const double* invstd, const double* weight,
                               const double* bias, double* sum_dz, double* sum_dz_xmu, T* grad_input,
                               T* grad_residual);

// bfloat16 (as uint16_t bits) on the fused training path: groups of channels in parallel, each group's
// planes widened into float32 buffers of the thread, the float32 kernels above run on that group, the
// results rounded once back to bfloat16. bfloat16 is read and written once; no float32 copy of the
// tensors. Use when batch_norm_fused_fits(g, 4) (the float32 buffers in L2). No gate bits.
void batch_norm_train_forward_bf16(const BatchNormGeom& g, const uint16_t* x, const double* weight, const double* bias,
                                   double eps, const uint16_t* residual, bool relu, uint16_t* y, double* mean,
                                   double* var, double* invstd);
void batch_norm_train_backward_bf16(const BatchNormGeom& g, const uint16_t* dy, const uint16_t* x, const uint16_t* y,
                                    bool relu, const double* mean, const double* invstd, const double* weight,
                                    const double* bias, double* sum_dz, double* sum_dz_xmu, uint16_t* grad_input,
                                    uint16_t* grad_residual);

#define DLK_BN_DECLARE(SUFFIX, T)                                                                               \
  void batch_norm_stats_##SUFFIX(const BatchNormGeom&, const T*, double*, double*, double*);                    \
  void batch_norm_train_forward_##SUFFIX(const BatchNormGeom&, const T*, const double*, const double*, double,    \
                                         const T*, bool, T*, uint32_t*, double*, double*, double*);              \
  void batch_norm_train_backward_##SUFFIX(const BatchNormGeom&, const T*, const T*, const T*, const uint32_t*,  \
                                          bool,                                                                 \
                                          const double*, const double*, const double*, const double*, double*,    \
                                          double*, T*, T*);                                                       \
  void batch_norm_apply_##SUFFIX(const BatchNormGeom&, const T*, const double*, const double*, const double*,   \
                                 const T*, bool, T*);                                                           \
  void batch_norm_backward_reduce_##SUFFIX(const BatchNormGeom&, const T*, const T*, const T*, bool,            \
                                           const double*, double*, double*, double*);                           \
  void batch_norm_backward_apply_##SUFFIX(const BatchNormGeom&, const T*, const T*, const T*, bool,             \
                                          const double*, const double*, const double*, const double*, T*, T*);
DLK_BN_DECLARE(scalar, float)
DLK_BN_DECLARE(scalar, double)
DLK_BN_DECLARE(avx2, float)
DLK_BN_DECLARE(avx2, double)
DLK_BN_DECLARE(avx512, float)
DLK_BN_DECLARE(avx512, double)
#undef DLK_BN_DECLARE

}  // namespace dlk::cpu
