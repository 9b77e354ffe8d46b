"""Fake (meta) kernels: the output shapes and dtypes of every op, for torch.compile and meta tensors.

They must agree exactly with csrc/ops/*.cpp; torch.library.opcheck in the tests checks that they do.
"""
import torch


def _acc_dtype(dtype):
    # Statistics saved for backward: float64 for float64 inputs, float32 otherwise (half and bfloat16 too).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_shape(input):
    return (input.shape[0],) + tuple(input.shape[2:])


@torch.library.register_fake("dlkernels::cross_entropy_forward")
def _cross_entropy_forward_fake(input, target, weight, reduction, ignore_index, label_smoothing):
    rows = _row_shape(input)
    acc = _acc_dtype(input.dtype)
    loss = input.new_empty(rows if reduction == 0 else ())
    return loss, input.new_empty(rows, dtype=acc), input.new_empty((), dtype=acc)


@torch.library.register_fake("dlkernels::cross_entropy_backward")
def _cross_entropy_backward_fake(grad_loss, input, target, weight, lse, total_weight, reduction, ignore_index,
                                 label_smoothing):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("dlkernels::cross_entropy_target_backward")
def _cross_entropy_target_backward_fake(grad_loss, input, target, weight, lse, total_weight, reduction,
                                        label_smoothing):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


# Fused optimizer steps mutate their lists in place and return nothing.
@torch.library.register_fake("dlkernels::adam_")
def _adam_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2, eps,
               weight_decay, amsgrad, maximize, decoupled_weight_decay):
    return None


@torch.library.register_fake("dlkernels::sgd_")
def _sgd_fake(params, grads, momentum_buffers, first_step, lr, momentum, dampening, weight_decay, nesterov, maximize):
    return None


@torch.library.register_fake("dlkernels::adagrad_")
def _adagrad_fake(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize):
    return None


@torch.library.register_fake("dlkernels::rmsprop_")
def _rmsprop_fake(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps, weight_decay,
                  momentum, centered, maximize):
    return None
