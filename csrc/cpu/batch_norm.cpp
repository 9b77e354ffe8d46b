// Batch normalization: the scalar reference path (batch_norm_impl.h at the baseline ISA) and the ISA
// dispatch.
#include "cpu/batch_norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/batch_norm_impl.h"
// after the impl, so that the one-lane wrappers are compiled under its floating-point pragma too
#include "cpu/simd_scalar.h"
#include "cpu/isa.h"
#include "cpu/conv_bf16.h"  // bf16_widen, bf16_narrow

namespace dlk::cpu {

int64_t batch_norm_workspace_size(const BatchNormGeom& g) { return 2 * bn_split(g).blocks * g.C; }

// The channel's tensors (x, dy, y, dx) stay in the 1 MiB L2 between the two passes, and there are
// enough channels to share among the threads. 256 KiB a tensor takes in the benchmark's 16x64x56x56
// (196 KiB a channel), which the earlier 192 KiB bound missed: fwd+bwd 3.72 -> 2.97 ms (BN) and
// 3.87 -> 3.42 ms (BN+ReLU), medians of 30 alternating runs in one process. Depends on the sizes only,
// so results never depend on the thread count.
bool batch_norm_fused_fits(const BatchNormGeom& g, int64_t element_size) {
  return !g.channels_last && g.C >= 4 && g.count() * element_size <= (int64_t(256) << 10);
}

DLK_BN_DEFINE(scalar, scalar, float)
DLK_BN_DEFINE(scalar, scalar, double)

DLK_ISA_DISPATCH(batch_norm_stats, (const BatchNormGeom& g, const T* x, double* mean, double* var, double* work),
                (g, x, mean, var, work))
DLK_ISA_DISPATCH(batch_norm_apply,
                (const BatchNormGeom& g, const T* x, const double* mean, const double* scale, const double* beta,
                 const T* residual, bool relu, T* y),
                (g, x, mean, scale, beta, residual, relu, y))
DLK_ISA_DISPATCH(batch_norm_backward_reduce,
                (const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu, const double* mean,
                 double* sum_dz, double* sum_dz_xmu, double* work),
                (g, dy, x, y, relu, mean, sum_dz, sum_dz_xmu, work))
DLK_ISA_DISPATCH(batch_norm_backward_apply,
                (const BatchNormGeom& g, const T* dy, const T* x, const T* y, bool relu, const double* mean,
                 const double* k_dz, const double* k_x, const double* k_1, T* grad_input, T* grad_residual),
                (g, dy, x, y, relu, mean, k_dz, k_x, k_1, grad_input, grad_residual))
DLK_ISA_DISPATCH(batch_norm_train_forward,
                (const BatchNormGeom& g, const T* x, const double* weight, const double* bias, double eps,
                 const T* residual, bool relu, T* y, uint32_t* relu_bits, double* mean, double* var, double* invstd),
                (g, x, weight, bias, eps, residual, relu, y, relu_bits, mean, var, invstd))
DLK_ISA_DISPATCH(batch_norm_train_backward,
                (const BatchNormGeom& g, const T* dy, const T* x, const T* y, const uint32_t* relu_bits, bool relu,
                 const double* mean, const double* invstd, const double* weight, const double* bias, double* sum_dz,
                 double* sum_dz_xmu, T* grad_input, T* grad_residual),
                (g, dy, x, y, relu_bits, relu, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, grad_input,
                 grad_residual))

namespace {

// Channels c0 .. c0 + k - 1's planes of bfloat16 into (out of) a float32 buffer laid out as (N, k, L).
void widen_channels(const BatchNormGeom& g, const uint16_t* t, int64_t c0, int64_t k, float* buf) {
  for (int64_t n = 0; n < g.N; ++n) bf16_widen(t + (n * g.C + c0) * g.L, buf + n * k * g.L, k * g.L);
}
void narrow_channels(const BatchNormGeom& g, const float* buf, int64_t c0, int64_t k, uint16_t* t) {
  for (int64_t n = 0; n < g.N; ++n) bf16_narrow(buf + n * k * g.L, t + (n * g.C + c0) * g.L, k * g.L);
}

// Channels per group: the group's float32 values within 256 KiB (one call of the float32 kernel per
// group, not per channel: a call's fixed cost was most of the time at 512 channels of 4x4), and at least
// two groups to share.
int64_t channel_group(const BatchNormGeom& g) {
  const int64_t k = std::max<int64_t>(1, (int64_t(256) << 10) / (g.count() * 4));
  return std::max<int64_t>(1, std::min(k, (g.C + 1) / 2));
}

// The thread's float32 buffers: kept between calls (a fresh allocation of this size is a fresh mapping, whose
// page faults cost more than the kernel).
float* thread_buffer(int which, size_t count) {
  thread_local std::vector<float> buffers[5];
  std::vector<float>& b = buffers[which];
  if (b.size() < count) b.resize(count);
  return b.data();
}

}  // namespace

void batch_norm_train_forward_bf16(const BatchNormGeom& g, const uint16_t* x, const double* weight, const double* bias,
                                   double eps, const uint16_t* residual, bool relu, uint16_t* y, double* mean,
                                   double* var, double* invstd) {
  const int64_t K = channel_group(g), groups = (g.C + K - 1) / K;
  const size_t size = size_t(K * g.count());
#pragma omp parallel
  {
    float *xs = thread_buffer(0, size), *rs = residual ? thread_buffer(1, size) : nullptr,
          *ys = thread_buffer(2, size);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < groups; ++i) {
      const int64_t c0 = i * K, k = std::min(K, g.C - c0);
      const BatchNormGeom part{g.N, k, g.L, false};
      widen_channels(g, x, c0, k, xs);
      if (residual) widen_channels(g, residual, c0, k, rs);
      batch_norm_train_forward<float>(part, xs, weight ? weight + c0 : nullptr, bias ? bias + c0 : nullptr, eps, rs,
                                      relu, ys, nullptr, mean + c0, var + c0, invstd + c0);
      narrow_channels(g, ys, c0, k, y);
    }
  }
}

void batch_norm_train_backward_bf16(const BatchNormGeom& g, const uint16_t* dy, const uint16_t* x, const uint16_t* y,
                                    bool relu, const double* mean, const double* invstd, const double* weight,
                                    const double* bias, double* sum_dz, double* sum_dz_xmu, uint16_t* grad_input,
                                    uint16_t* grad_residual) {
  const int64_t K = channel_group(g), groups = (g.C + K - 1) / K;
  const size_t size = size_t(K * g.count());
#pragma omp parallel
  {
    float *dys = thread_buffer(0, size), *xs = thread_buffer(1, size), *ys = y ? thread_buffer(2, size) : nullptr,
          *gis = thread_buffer(3, size), *grs = grad_residual ? thread_buffer(4, size) : nullptr;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < groups; ++i) {
      const int64_t c0 = i * K, k = std::min(K, g.C - c0);
      const BatchNormGeom part{g.N, k, g.L, false};
      widen_channels(g, dy, c0, k, dys);
      widen_channels(g, x, c0, k, xs);
      if (y) widen_channels(g, y, c0, k, ys);
      batch_norm_train_backward<float>(part, dys, xs, ys, nullptr, relu, mean + c0, invstd + c0,
                                       weight ? weight + c0 : nullptr, bias ? bias + c0 : nullptr, sum_dz + c0,
                                       sum_dz_xmu + c0, gis, grs);
      narrow_channels(g, gis, c0, k, grad_input);
      if (grad_residual) narrow_channels(g, grs, c0, k, grad_residual);
    }
  }
}

#define DLK_BN_INSTANTIATE(T)                                                                                 \
  template void batch_norm_stats<T>(const BatchNormGeom&, const T*, double*, double*, double*);               \
  template void batch_norm_train_forward<T>(const BatchNormGeom&, const T*, const double*, const double*, double, \
                                            const T*, bool, T*, uint32_t*, double*, double*, double*);        \
  template void batch_norm_train_backward<T>(const BatchNormGeom&, const T*, const T*, const T*,              \
                                             const uint32_t*, bool,                                           \
                                             const double*, const double*, const double*, const double*,      \
                                             double*, double*, T*, T*);                                       \
  template void batch_norm_apply<T>(const BatchNormGeom&, const T*, const double*, const double*,             \
                                    const double*, const T*, bool, T*);                                       \
  template void batch_norm_backward_reduce<T>(const BatchNormGeom&, const T*, const T*, const T*, bool,       \
                                              const double*, double*, double*, double*);                      \
  template void batch_norm_backward_apply<T>(const BatchNormGeom&, const T*, const T*, const T*, bool,        \
                                             const double*, const double*, const double*, const double*, T*, \
                                             T*);
DLK_BN_INSTANTIATE(float)
DLK_BN_INSTANTIATE(double)
#undef DLK_BN_INSTANTIATE

}  // namespace dlk::cpu
