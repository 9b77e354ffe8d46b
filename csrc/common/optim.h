// Hyperparameters and the multi-tensor chunk table of the fused optimizers, shared by the CPU and
// CUDA kernels and the ops layer. No torch, no CUDA.
#pragma once
#include <cstdint>

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

// torch.optim.SGD.
struct SgdOptions {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

// torch.optim.Adagrad. Per tensor: clr = lr / (1 + (t - 1) lr_decay).
struct AdagradOptions {
  double weight_decay, eps;
  bool maximize;
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
