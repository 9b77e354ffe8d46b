// Fused optimizers: the scalar reference path (optim_impl.h on one-lane vectors) and the ISA dispatch.
#include "cpu/optim.h"

#include <cmath>
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/optim_impl.h"
#include "cpu/simd_scalar.h"

namespace dlk::cpu {

DLK_OPTIM_DEFINE(scalar, scalar, float)
DLK_OPTIM_DEFINE(scalar, scalar, double)

#define DLK_OPTIM_DISPATCH(NAME, OPTS, TENSORS)                                                      \
  template <class T> void NAME(const OPTS& o, const TENSORS<T>& t, const TensorChunk* c, int64_t n) { \
    switch (current_isa()) {                                                                         \
      case Isa::Avx512: return NAME##_avx512(o, t, c, n);                                            \
      case Isa::Avx2: return NAME##_avx2(o, t, c, n);                                                \
      case Isa::Scalar: return NAME##_scalar(o, t, c, n);                                            \
    }                                                                                                \
  }                                                                                                  \
  template void NAME<float>(const OPTS&, const TENSORS<float>&, const TensorChunk*, int64_t);        \
  template void NAME<double>(const OPTS&, const TENSORS<double>&, const TensorChunk*, int64_t);

DLK_OPTIM_DISPATCH(adam_step, AdamOptions, AdamTensors)
DLK_OPTIM_DISPATCH(sgd_step, SgdOptions, SgdTensors)
DLK_OPTIM_DISPATCH(adagrad_step, AdagradOptions, AdagradTensors)
DLK_OPTIM_DISPATCH(rmsprop_step, RmspropOptions, RmspropTensors)
#undef DLK_OPTIM_DISPATCH

}  // namespace dlk::cpu
