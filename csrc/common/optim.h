// Hyperparameters and the multi-tensor chunk table of the fused optimizers, shared by the CPU and
// CUDA kernels and the ops layer. No torch; CUDA only through the __host__ __device__ marks.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define DLK_OPTIM_HD __host__ __device__
#else
#define DLK_OPTIM_HD
#endif

namespace dlk {

// torch.optim.Adam / AdamW (decoupled_weight_decay).
struct AdamOptions {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled_weight_decay;
};
// Per tensor, from its own step count t (tensors can be at different steps, e.g. after
// add_param_group): step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t).
struct AdamStepScalars {
  double step_size, bias_correction2_sqrt;
};
inline DLK_OPTIM_HD AdamStepScalars adam_step_scalars(double lr, double beta1, double beta2, double t) {
  return {lr / (1.0 - pow(beta1, t)), sqrt(1.0 - pow(beta2, t))};
}

// torch.optim.SGD.
struct SgdOptions {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

// torch.optim.Adagrad. Per tensor: clr = lr / (1 + (t - 1) lr_decay).
struct AdagradOptions {
  double weight_decay, eps, lr, lr_decay;
  bool maximize;
};
inline DLK_OPTIM_HD double adagrad_clr(double lr, double lr_decay, double t) { return lr / (1.0 + (t - 1.0) * lr_decay); }

// What the CUDA kernels read from device memory instead of taking from the host (capturable
// optimizers, a tensor lr on the parameters' device): nothing on the host needs a value that lives on
// the GPU, so a step runs without a synchronisation and can be captured in a CUDA graph. The per-tensor
// scalars are then computed in the kernel, from the same formulas as above.
struct DeviceScalars {
  const void* lr = nullptr;             // one float32/float64 element, or nullptr: the options' lr
  bool lr_double = false;
  const void* const* steps = nullptr;   // per tensor its step counter, already advanced; nullptr: host scalars
  bool steps_double = false;
};

// torch.optim.RMSprop.
struct RmspropOptions {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
};

// One unit of parallel work: elements [begin, end) of tensor `tensor` of the list.
struct TensorChunk {
  int64_t tensor, begin, end;
};

}  // namespace dlk
