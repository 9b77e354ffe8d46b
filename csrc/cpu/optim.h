// Fused optimizer steps on the CPU: one pass per parameter that reads param, grad and state once and
// writes param and state once. Lists of tensors (raw pointers, one entry per parameter) are cut into
// chunks by the ops layer; the chunks run in parallel (OpenMP) on the ISA path current_isa() picks.
// The math follows torch.optim's single-tensor implementations operation by operation, in T precision.
#pragma once
#include <cstdint>

#include "common/optim.h"

namespace dlk::cpu {

template <class T> struct AdamTensors {
  T* const* param;
  const T* const* grad;
  T* const* exp_avg;
  T* const* exp_avg_sq;
  T* const* max_exp_avg_sq;  // used when amsgrad
  const AdamStepScalars* scalars;
};

template <class T> struct SgdTensors {
  T* const* param;
  const T* const* grad;
  T* const* momentum_buffer;    // used when momentum != 0
  const uint8_t* first_step;    // per tensor: the buffer is new and takes the gradient as it is
};

template <class T> struct AdagradTensors {
  T* const* param;
  const T* const* grad;
  T* const* state_sum;
  const double* clr;            // per tensor: lr / (1 + (step - 1) lr_decay)
};

template <class T> struct RmspropTensors {
  T* const* param;
  const T* const* grad;
  T* const* square_avg;
  T* const* grad_avg;           // used when centered
  T* const* momentum_buffer;    // used when momentum > 0
};

template <class T> void adam_step(const AdamOptions& o, const AdamTensors<T>& t, const TensorChunk* chunks, int64_t n);
template <class T> void sgd_step(const SgdOptions& o, const SgdTensors<T>& t, const TensorChunk* chunks, int64_t n);
template <class T>
void adagrad_step(const AdagradOptions& o, const AdagradTensors<T>& t, const TensorChunk* chunks, int64_t n);
template <class T>
void rmsprop_step(const RmspropOptions& o, const RmspropTensors<T>& t, const TensorChunk* chunks, int64_t n);

#define DLK_OPTIM_DECLARE(SUFFIX, T)                                                                       \
  void adam_step_##SUFFIX(const AdamOptions&, const AdamTensors<T>&, const TensorChunk*, int64_t);          \
  void sgd_step_##SUFFIX(const SgdOptions&, const SgdTensors<T>&, const TensorChunk*, int64_t);             \
  void adagrad_step_##SUFFIX(const AdagradOptions&, const AdagradTensors<T>&, const TensorChunk*, int64_t); \
  void rmsprop_step_##SUFFIX(const RmspropOptions&, const RmspropTensors<T>&, const TensorChunk*, int64_t);
DLK_OPTIM_DECLARE(scalar, float)
DLK_OPTIM_DECLARE(scalar, double)
DLK_OPTIM_DECLARE(avx2, float)
DLK_OPTIM_DECLARE(avx2, double)
DLK_OPTIM_DECLARE(avx512, float)
DLK_OPTIM_DECLARE(avx512, double)
#undef DLK_OPTIM_DECLARE

}  // namespace dlk::cpu
