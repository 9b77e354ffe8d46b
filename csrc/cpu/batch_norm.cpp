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
