"""Fake (meta) kernels: the output shapes and dtypes of every op, for torch.compile and meta tensors.

They must agree exactly with csrc/ops/*.cpp; torch.library.opcheck in the tests checks that they do.
"""
import torch

from . import _C


def _cpu_kernels(t):
    """Whether t runs the CPU kernels: a CPU tensor, except in the CUDA emulation build (tools/cuda_emu),
    where CPU tensors run the emulated CUDA kernels (csrc/ops/device.h's cpu_kernels)."""
    return t.device.type == "cpu" and not getattr(_C, "cuda_emulated", False)

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
               weight_decay, amsgrad, maximize, decoupled_weight_decay, lr_tensor=None, capturable=False):
    return None


@torch.library.register_fake("dlkernels::sgd_")
def _sgd_fake(params, grads, momentum_buffers, first_step, lr, momentum, dampening, weight_decay, nesterov, maximize,
              lr_tensor=None):
    return None


@torch.library.register_fake("dlkernels::adagrad_")
def _adagrad_fake(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize, lr_tensor=None,
                  capturable=False):
    return None


@torch.library.register_fake("dlkernels::rmsprop_")
def _rmsprop_fake(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps, weight_decay,
                  momentum, centered, maximize, lr_tensor=None, capturable=False):
    return None


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """torch's pooling output-size rule; the Python twin of pool_output_size in csrc/common/pooling.h,
    needed here because fake kernels must know output shapes without running C++."""
    num = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = num // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_shape(input, kernel_size, stride, padding, dilation, ceil_mode):
    n, c, h, w = input.shape
    return (n, c, pool_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode),
            pool_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode))


@torch.library.register_fake("dlkernels::max_pool2d_forward")
def _max_pool2d_forward_fake(input, kernel_size, stride, padding, dilation, ceil_mode, tap_index=False):
    shape = _pool_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    return (_like_format(input.new_empty(shape), input),
            _like_format(input.new_empty(shape, dtype=torch.uint8 if tap_index else torch.int64), input))


@torch.library.register_fake("dlkernels::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return _like_format(torch.empty_like(input, memory_format=torch.contiguous_format), input)


@torch.library.register_fake("dlkernels::avg_pool2d_forward")
def _avg_pool2d_forward_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _like_format(input.new_empty(_pool_shape(input, kernel_size, stride, padding, (1, 1), ceil_mode)), input)


@torch.library.register_fake("dlkernels::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override):
    return _like_format(torch.empty_like(input, memory_format=torch.contiguous_format), input)


@torch.library.register_fake("dlkernels::adaptive_avg_pool2d_forward")
def _adaptive_avg_pool2d_forward_fake(input, output_size):
    return _like_format(input.new_empty((input.shape[0], input.shape[1], output_size[0], output_size[1])), input)


@torch.library.register_fake("dlkernels::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    return _like_format(torch.empty_like(input, memory_format=torch.contiguous_format), input)


def conv_output_size(size, kernel, stride, pad_begin, pad_end, dilation):
    """torch's convolution output-size rule; the Python twin of conv_output_size in csrc/common/conv.h."""
    num = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    return 0 if num < 0 else num // stride + 1


def _padding4(padding):
    p = list(padding)
    return p * 2 if len(p) == 2 else p  # (top, left, bottom, right)


@torch.library.register_fake("dlkernels::conv2d_forward")
def _conv2d_forward_fake(input, weight, bias, stride, padding, dilation, groups):
    p = _padding4(padding)
    kh, kw = weight.shape[2], weight.shape[3]
    out = input.new_empty((input.shape[0], weight.shape[0],
                           conv_output_size(input.shape[2], kh, stride[0], p[0], p[2], dilation[0]),
                           conv_output_size(input.shape[3], kw, stride[1], p[1], p[3], dilation[1])))
    return _like_format(out, input)


def _channels_last(t):
    """Whether the conv and pooling ops take t as channels_last (mirrors channels_last in csrc/ops/alloc.h)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _like_format(t, like):
    """t in channels_last where `like` is (the conv and pooling ops' results follow their counterparts' format)."""
    return t.contiguous(memory_format=torch.channels_last) if _channels_last(like) else t


@torch.library.register_fake("dlkernels::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    def grad(mask, like):
        if not mask:
            return input.new_empty((0,))
        return _like_format(torch.empty_like(like, memory_format=torch.contiguous_format), like)
    return (grad(output_mask[0], input), grad(output_mask[1], weight),
            input.new_empty((weight.shape[0],)) if output_mask[2] else input.new_empty((0,)))


@torch.library.register_fake("dlkernels::im2col")
def _im2col_fake(input, kernel_size, dilation, padding, stride):
    n, c, h, w = input.shape
    oh = conv_output_size(h, kernel_size[0], stride[0], padding[0], padding[0], dilation[0])
    ow = conv_output_size(w, kernel_size[1], stride[1], padding[1], padding[1], dilation[1])
    return input.new_empty((n, c * kernel_size[0] * kernel_size[1], oh * ow))


@torch.library.register_fake("dlkernels::col2im")
def _col2im_fake(input, output_size, kernel_size, dilation, padding, stride):
    n, ckk, _ = input.shape
    return input.new_empty((n, ckk // (kernel_size[0] * kernel_size[1]), output_size[0], output_size[1]))


def _bn_like(input):
    """An empty tensor in the layout the batch-norm ops write: channels_last where the input is stored
    that way, else contiguous (mirrors layout_of in csrc/ops/batch_norm.cpp)."""
    fmt = torch.contiguous_format
    if not input.is_contiguous():
        if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
            fmt = torch.channels_last
        elif input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
            fmt = torch.channels_last_3d
    return torch.empty_like(input, memory_format=fmt)


def _per_channel(input, dtype=torch.float64):
    return input.new_empty((input.shape[1],), dtype=dtype)


def _relu_mask_shape(input, training, residual, relu):
    """The shape of batch_norm_forward's relu_mask: bit words (N, C, ceil(L / 32)) where the CPU float32
    fused training path makes one for batch_norm_add_relu (planar layout, C >= 4, a channel of at most
    256 KiB: mirrors batch_norm_fused_fits in csrc/cpu/batch_norm.cpp), else (0,)."""
    if not (training and relu and residual is not None and _cpu_kernels(input)
            and input.dtype == torch.float32 and input.dim() >= 3):
        return (0,)
    planar = input.is_contiguous() or not (
        (input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last))
        or (input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d)))
    n, c = input.shape[0], input.shape[1]
    count = input.numel() // c if c else 0
    if not planar or c < 4 or count == 0 or count * 4 > 256 * 1024:
        return (0,)
    length = count // n
    return (n, c, (length + 31) // 32)


@torch.library.register_fake("dlkernels::batch_norm_forward")
def _batch_norm_forward_fake(input, weight, bias, running_mean, running_var, training, momentum, eps, residual, relu):
    return (_bn_like(input), _per_channel(input), _per_channel(input),
            input.new_empty(_relu_mask_shape(input, training, residual, relu), dtype=torch.int32))


@torch.library.register_fake("dlkernels::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, output, weight, save_mean, save_invstd, training, relu, output_mask,
                              bias=None, relu_from_input=False, relu_mask=None):
    param = weight.dtype if weight is not None else input.dtype
    return (_bn_like(input) if output_mask[0] else input.new_empty((0,)),
            _per_channel(input, param) if output_mask[1] else input.new_empty((0,)),
            _per_channel(input, param) if output_mask[2] else input.new_empty((0,)),
            _bn_like(input) if output_mask[3] else input.new_empty((0,)))


@torch.library.register_fake("dlkernels::batch_norm_stats")
def _batch_norm_stats_fake(input):
    return _per_channel(input), _per_channel(input)


@torch.library.register_fake("dlkernels::batch_norm_elemt")
def _batch_norm_elemt_fake(input, mean, invstd, weight, bias, residual, relu):
    return _bn_like(input)


@torch.library.register_fake("dlkernels::batch_norm_backward_reduce")
def _batch_norm_backward_reduce_fake(grad_output, input, output, mean, invstd, relu):
    return _per_channel(input), _per_channel(input)


@torch.library.register_fake("dlkernels::batch_norm_backward_elemt")
def _batch_norm_backward_elemt_fake(grad_output, input, output, mean, invstd, weight, sum_dz, sum_dz_xmu, count, relu,
                                    output_mask):
    return (_bn_like(input) if output_mask[0] else input.new_empty((0,)),
            _bn_like(input) if output_mask[1] else input.new_empty((0,)))


# Autocast: cross-entropy runs in float32 inside torch.autocast, as on torch's autocast float32 list. The
# functional layer applies torch's lists to every op (dlkernels/functional.py, _autocast_target: conv in
# autocast's dtype); this rule covers calls of the op itself.
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("dlkernels::cross_entropy_forward", _device, torch.float32)
