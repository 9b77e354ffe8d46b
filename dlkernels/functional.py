"""Functional API, mirroring torch.nn.functional: Python-level argument parsing and validation, then
the autograd Functions of dlkernels/autograd.py. Nothing is computed here."""
import torch
from torch.nn import _reduction as _torch_reduction

from . import _C
from .autograd import (AdaptiveAvgPool2dFunction, AvgPool2dFunction, BatchNormFunction, Col2imFunction, Conv2dFunction,
                       CrossEntropyFunction, Im2colFunction, MaxPool2dFunction)
from ._ops import _cpu_kernels
from .autograd import apply as _autograd_apply

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _reduction_code(fn, reduction, size_average, reduce):
    if size_average is not None or reduce is not None:
        reduction = _torch_reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"dlkernels.{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return _REDUCTIONS[reduction]


def _check_tensor(fn, name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"dlkernels.{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _check_device(fn, input):
    if input.is_cuda and not _C.with_cuda:
        raise RuntimeError(f"dlkernels.{fn}: input is on {input.device} but this dlkernels build is CPU-only "
                           "(reinstall with a CUDA torch and nvcc present, or DLKERNELS_CUDA=1)")


def _check_same_device(fn, input, **others):
    for name, t in others.items():
        if t is not None and isinstance(t, torch.Tensor) and t.device != input.device:
            raise RuntimeError(f"dlkernels.{fn}: {name} is on {t.device} but input is on {input.device}")


# --------------------------------------------------------------------------- low precision and autocast

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast_target(x, policy):
    """The dtype torch.autocast wants this op's floating inputs in, or None (outside autocast, or an op
    autocast leaves alone). Policies follow torch's own lists: "lower" for convolution (autocast's
    dtype), "fp32" for cross-entropy, None for pooling, im2col/col2im and batch norm (input's dtype)."""
    if policy is None:
        return None
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device) if policy == "lower" else torch.float32


def _cast(t, dtype):
    return t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t


def _autocast(t, dtype):
    """torch.autocast's cast: float16, bfloat16 and float32 tensors only (float64 is left alone)."""
    return _cast(t, dtype) if t is not None and t.dtype in (torch.float16, torch.bfloat16, torch.float32) else t


def _check_same_dtype(fn, input, **others):
    """Before a low-precision input is computed in float32: the dtype rule the kernels would apply."""
    for name, t in others.items():
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"dlkernels.{fn}: {name} must have the input's dtype {input.dtype}, got {t.dtype}")


def _compute_dtype(x):
    """(dtype the kernels run in, dtype of the result) for floating input x: the CPU kernels take float32
    and float64, so float16 and bfloat16 run there in float32 and the result is rounded once to the
    input's dtype (torch's CPU kernels also accumulate those in float32); the CUDA kernels take all four."""
    if x.dtype in _LOW_PRECISION and _cpu_kernels(x):
        return torch.float32, x.dtype
    return x.dtype, x.dtype


# --------------------------------------------------------------------------- softmax-cross-entropy

def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Fused log-softmax + negative log-likelihood, with torch.nn.functional.cross_entropy's semantics.

    input: (C), (N, C) or (N, C, d1, ..., dk) logits. target: class indices of shape (), (N) or
    (N, d1, ..., dk) (int64 or uint8), or class probabilities shaped like input. weight: (C) class
    weights. ignore_index: a class index whose rows contribute neither loss nor weight (index targets
    only). reduction: 'none' | 'mean' | 'sum'. label_smoothing: eps in [0, 1].
    """
    fn = "cross_entropy"
    _check_tensor(fn, "input", input)
    _check_tensor(fn, "target", target)
    red = _reduction_code(fn, reduction, size_average, reduce)
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"dlkernels.{fn}: label_smoothing must be a number in [0.0, 1.0], got {label_smoothing!r}")
    if not isinstance(ignore_index, int):
        raise TypeError(f"dlkernels.{fn}: ignore_index must be an int, got {type(ignore_index).__name__}")
    _check_device(fn, input)
    _check_same_device(fn, input, target=target, weight=weight)
    if input.dim() == 0:
        raise ValueError(f"dlkernels.{fn}: input must have shape (C), (N, C) or (N, C, d1, ..., dk), got a 0-dim tensor")
    prob_target = target.is_floating_point()
    if prob_target:
        if ignore_index != -100:
            raise ValueError(f"dlkernels.{fn}: ignore_index is not supported for probability (floating point) "
                             f"targets, got ignore_index={ignore_index}")
        if target.shape != input.shape:
            raise ValueError(f"dlkernels.{fn}: probability target must have the input's shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        if target.dtype != input.dtype:
            # torch multiplies log_softmax(input) by target, so the result takes the promoted dtype.
            common = torch.promote_types(input.dtype, target.dtype)
            input, target = input.to(common), target.to(common)
    else:
        if target.dtype not in (torch.int64, torch.uint8):
            raise TypeError(f"dlkernels.{fn}: class-index target must be int64 (or uint8), got {target.dtype}")
        expected = tuple(input.shape[:1]) + tuple(input.shape[2:]) if input.dim() > 1 else ()
        if tuple(target.shape) != expected:
            if input.dim() >= 2 and target.dim() >= 1 and target.shape[0] != input.shape[0]:
                raise ValueError(f"dlkernels.{fn}: target batch size {target.shape[0]} does not match input batch "
                                 f"size {input.shape[0]} (target shape {tuple(target.shape)}, input shape "
                                 f"{tuple(input.shape)})")
            raise ValueError(f"dlkernels.{fn}: target must have shape {expected} for input of shape "
                             f"{tuple(input.shape)}, got {tuple(target.shape)}")
        if target.requires_grad:
            raise RuntimeError(f"dlkernels.{fn}: class-index target cannot require grad")
    if weight is not None:
        _check_tensor(fn, "weight", weight)
        if weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"dlkernels.{fn}: weight cannot require grad: the loss is not differentiable with "
                               "respect to the class weights (as in torch)")
    ac = _autocast_target(input, "fp32")
    if ac is not None:
        input, weight = _autocast(input, ac), _autocast(weight, ac)
        target = _autocast(target, ac) if prob_target else target
    compute, result = _compute_dtype(input)
    if compute != input.dtype:
        _check_same_dtype(fn, input, weight=weight)
        input, weight = _cast(input, compute), _cast(weight, compute)
        target = _cast(target, compute) if prob_target else target
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    loss, _, _ = _autograd_apply(CrossEntropyFunction, input, target, weight, red, ignore_index, float(label_smoothing))
    if unbatched and red == 0:
        loss = loss.squeeze(0)
    return _cast(loss, result)


# --------------------------------------------------------------------------- pooling

def _pair(fn, name, value, allow_none=False):
    if allow_none and value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"dlkernels.{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return (value[0], value[0])
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise TypeError(f"dlkernels.{fn}: {name} must be an int or a pair of ints, got {value!r}")


def _pool_input(fn, input):
    _check_tensor(fn, "input", input)
    _check_device(fn, input)
    if input.dim() not in (3, 4):
        raise ValueError(f"dlkernels.{fn}: input must have shape (N, C, H, W) or (C, H, W), got {tuple(input.shape)}")
    unbatched = input.dim() == 3
    channels_last = _channels_last(input)
    compute, result = _compute_dtype(input)
    x = _cast(input, compute)
    return (x.unsqueeze(0) if unbatched else x), unbatched, channels_last, result


def _channels_last(x):
    """Whether 4-D x is channels_last and not also contiguous (torch then answers in channels_last)."""
    if x.dim() != 4 or x.is_contiguous():
        return False
    try:
        return x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # inside torch.func.vmap only the default format can be queried
        return False


def _pool_output(t, unbatched, channels_last, dtype=None):
    if dtype is not None:
        t = _cast(t, dtype)
    if unbatched:
        return t.squeeze(0)
    # torch answers a channels_last input with a channels_last output; the values are the same either way
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """torch.nn.functional.max_pool2d: max over each (dilated) window; with return_indices, the argmax
    as a flat index into the input's H*W plane. NaN wins a window, the first maximum wins ties."""
    fn = "max_pool2d"
    x, unbatched, cl, result = _pool_input(fn, input)
    k = _pair(fn, "kernel_size", kernel_size)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else _pair(fn, "stride", stride)
    # Without return_indices, autograd keeps a byte per output naming the window's tap (CPU) instead of
    # torch's int64 flat index: the forward writes and the backward reads an eighth of those bytes.
    taps = not return_indices and _cpu_kernels(x) and k[0] * k[1] <= 256
    out, indices = _autograd_apply(MaxPool2dFunction, x, k, s, _pair(fn, "padding", padding), _pair(fn, "dilation", dilation),
                                   bool(ceil_mode), taps)
    out = _pool_output(out, unbatched, cl, result)
    return (out, _pool_output(indices, unbatched, cl)) if return_indices else out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """torch.nn.functional.avg_pool2d, with ceil_mode, count_include_pad and divisor_override."""
    fn = "avg_pool2d"
    x, unbatched, cl, result = _pool_input(fn, input)
    k = _pair(fn, "kernel_size", kernel_size)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else _pair(fn, "stride", stride)
    if divisor_override is not None and (not isinstance(divisor_override, int) or divisor_override == 0):
        raise ValueError(f"dlkernels.{fn}: divisor_override must be a non-zero int, got {divisor_override!r}")
    out = _autograd_apply(AvgPool2dFunction, x, k, s, _pair(fn, "padding", padding), bool(ceil_mode), bool(count_include_pad),
                                  divisor_override)
    return _pool_output(out, unbatched, cl, result)


def adaptive_avg_pool2d(input, output_size):
    """torch.nn.functional.adaptive_avg_pool2d; a None entry of output_size keeps that input size."""
    fn = "adaptive_avg_pool2d"
    x, unbatched, cl, result = _pool_input(fn, input)
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    if not isinstance(output_size, (tuple, list)) or len(output_size) != 2:
        raise ValueError(f"dlkernels.{fn}: output_size must be an int or a pair, got {output_size!r}")
    size = tuple(x.shape[2 + i] if v is None else v for i, v in enumerate(output_size))
    if not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"dlkernels.{fn}: output_size must be positive, got {output_size!r}")
    return _pool_output(_autograd_apply(AdaptiveAvgPool2dFunction, x, size), unbatched, cl, result)


# --------------------------------------------------------------------------- im2col convolution

def _conv_padding(fn, padding, kernel, stride, dilation):
    """padding as the ops take it: (PH, PW), or (top, left, bottom, right) when 'same' needs one more row
    or column after than before (even dilated kernel extent), as torch pads then."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"dlkernels.{fn}: padding='same' is not supported for strided convolutions, "
                                 f"got stride={stride}")
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            begin = [t // 2 for t in total]
            end = [t - b for t, b in zip(total, begin)]
            return tuple(begin) if begin == end else (begin[0], begin[1], end[0], end[1])
        raise ValueError(f"dlkernels.{fn}: padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
    return _pair(fn, "padding", padding)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d by im2col + GEMM: input (N, C, H, W) or (C, H, W), weight
    (out_channels, C / groups, kH, kW), bias (out_channels). stride, dilation: int or pair; padding: int,
    pair, 'valid' or 'same'; groups divides C and out_channels (groups == C: depthwise)."""
    fn = "conv2d"
    _check_tensor(fn, "input", input)
    _check_tensor(fn, "weight", weight)
    if bias is not None:
        _check_tensor(fn, "bias", bias)
    _check_device(fn, input)
    _check_same_device(fn, input, weight=weight, bias=bias)
    if input.dim() not in (3, 4):
        raise ValueError(f"dlkernels.{fn}: input must have shape (N, C, H, W) or (C, H, W), got {tuple(input.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"dlkernels.{fn}: groups must be an int, got {groups!r}")
    s, d = _pair(fn, "stride", stride), _pair(fn, "dilation", dilation)
    kernel = tuple(weight.shape[2:4]) if weight.dim() == 4 else (1, 1)
    p = _conv_padding(fn, padding, kernel, s, d)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    channels_last = not unbatched and _channels_last(x)
    ac = _autocast_target(x, "lower")
    if ac is not None:
        x, weight, bias = _autocast(x, ac), _autocast(weight, ac), _autocast(bias, ac)
    # float16/bfloat16 need no cast here: the op takes them on every device (on the CPU, GEMMs in that dtype)
    out = _autograd_apply(Conv2dFunction, x, weight, bias, s, p, d, groups)
    return _pool_output(out, unbatched, channels_last)


def im2col(input, kernel_size, dilation=1, padding=0, stride=1):
    """torch.nn.functional.unfold: (N, C, H, W) -> (N, C*kH*kW, L), or (C, H, W) -> (C*kH*kW, L); column l
    holds the receptive field of output position l, zeros where it lies in the padding."""
    fn = "im2col"
    _check_tensor(fn, "input", input)
    _check_device(fn, input)
    if input.dim() not in (3, 4):
        raise ValueError(f"dlkernels.{fn}: input must have shape (N, C, H, W) or (C, H, W), got {tuple(input.shape)}")
    unbatched = input.dim() == 3
    compute, result = _compute_dtype(input)
    x = _cast(input.unsqueeze(0) if unbatched else input, compute)
    out = _autograd_apply(Im2colFunction, x, _pair(fn, "kernel_size", kernel_size), _pair(fn, "dilation", dilation),
                               _pair(fn, "padding", padding), _pair(fn, "stride", stride))
    out = _cast(out, result)
    return out.squeeze(0) if unbatched else out


def col2im(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """torch.nn.functional.fold: (N, C*kH*kW, L) -> (N, C, H, W), or (C*kH*kW, L) -> (C, H, W); each pixel is
    the sum of the column entries that im2col would copy from it (the adjoint of im2col)."""
    fn = "col2im"
    _check_tensor(fn, "input", input)
    _check_device(fn, input)
    if input.dim() not in (2, 3):
        raise ValueError(f"dlkernels.{fn}: input must have shape (N, C*kH*kW, L) or (C*kH*kW, L), "
                         f"got {tuple(input.shape)}")
    unbatched = input.dim() == 2
    compute, result = _compute_dtype(input)
    x = _cast(input.unsqueeze(0) if unbatched else input, compute)
    out = _autograd_apply(Col2imFunction, x, _pair(fn, "output_size", output_size), _pair(fn, "kernel_size", kernel_size),
                               _pair(fn, "dilation", dilation), _pair(fn, "padding", padding),
                               _pair(fn, "stride", stride))
    out = _cast(out, result)
    return out.squeeze(0) if unbatched else out


# --------------------------------------------------------------------------- batch normalization

def _shape_of(t):
    return None if t is None else tuple(t.shape)


def _batch_norm(fn, input, residual, running_mean, running_var, weight, bias, training, momentum, eps, relu):
    _check_tensor(fn, "input", input)
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias), ("residual", residual)):
        if t is not None:
            _check_tensor(fn, name, t)
    _check_device(fn, input)
    _check_same_device(fn, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
                       residual=residual)
    if momentum is None or isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"dlkernels.{fn}: momentum must be a float (modules turn momentum=None into a cumulative "
                        f"average factor), got {momentum!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise TypeError(f"dlkernels.{fn}: eps must be a float, got {eps!r}")
    if input.dim() == 1 and input.shape[0] == 0:
        # A 1-D input of shape (0,) (one of torch's OpInfo samples): no channel dimension and nothing to
        # normalize. torch returns it as it is (an empty tensor, running statistics untouched) and fails
        # on a weight or bias with an index error; we say why.
        if weight is not None or bias is not None:
            raise ValueError(f"dlkernels.{fn}: an input of shape (0,) has no channel dimension, so weight and bias "
                             f"must be None, got weight {_shape_of(weight)} and bias {_shape_of(bias)}")
        if residual is not None and residual.shape != input.shape:
            raise ValueError(f"dlkernels.{fn}: residual must have the input's shape (0,), got {tuple(residual.shape)}")
        out = input.clone() if residual is None else input + residual
        return out.relu() if relu else out
    compute, result = _compute_dtype(input)
    if compute != input.dtype:
        # float16/bfloat16 on the CPU kernels: float16 computed in float32; bfloat16 input and residual
        # taken as they are by the ops (float32 inside, read and written in bfloat16), their per-channel
        # tensors in float32. Running statistics kept in their dtype (a model.to(torch.bfloat16) has
        # bfloat16 buffers), updated through float32 copies.
        native = input.dtype == torch.bfloat16 and (residual is None or residual.dtype == input.dtype)
        up = [t.to(compute) if t is not None and t.dtype in _LOW_PRECISION and not (native and i < 2) else t
              for i, t in enumerate((input, residual, weight, bias, running_mean, running_var))]
        input, residual, weight, bias = up[:4]
        stats = [(running_mean, up[4]), (running_var, up[5])]
        out, _, _, _ = _autograd_apply(BatchNormFunction, input, weight, bias, stats[0][1], stats[1][1],
                                       bool(training), float(momentum), float(eps), residual, relu)
        if training:
            with torch.no_grad():
                for kept, work in stats:
                    if kept is not None and work is not kept:
                        kept.copy_(work)
        return _cast(out, result)
    out, _, _, _ = _autograd_apply(BatchNormFunction, input, weight, bias, running_mean, running_var, bool(training),
                                        float(momentum), float(eps), residual, relu)
    return out


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm for (N, C), (N, C, L), (N, C, H, W) and (N, C, D, H, W) input:
    per-channel statistics over every dimension but C in training (running stats updated in place with the
    unbiased variance), the running statistics in evaluation."""
    return _batch_norm("batch_norm", input, None, running_mean, running_var, weight, bias, training, momentum, eps,
                       False)


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                    eps=1e-5):
    """relu(batch_norm(...)) in one pass each way: the ReLU mask is the output's sign (the CPU backward
    recomputes it from the input, the same bits, sparing a read of the output)."""
    return _batch_norm("batch_norm_relu", input, None, running_mean, running_var, weight, bias, training, momentum,
                       eps, True)


def batch_norm_add_relu(input, residual, running_mean, running_var, weight=None, bias=None, training=False,
                        momentum=0.1, eps=1e-5):
    """relu(batch_norm(input, ...) + residual), the end of a ResNet basic block, fused; residual has
    input's shape and gets the masked gradient."""
    return _batch_norm("batch_norm_add_relu", input, residual, running_mean, running_var, weight, bias, training,
                       momentum, eps, True)
