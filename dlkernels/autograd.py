"""torch.autograd.Function glue: each forward op paired with its backward op.

Functions use the forward/setup_context split so that torch.compile and torch.func can trace them.
Two things keep the Python cost per call near torch's own (a few microseconds, where it had been about
75 us per forward): `apply` skips autograd.Function.apply's per-call inspect.signature binding, and each
forward calls its op through `below_autograd`, past the op's own (Python) autograd kernel.
"""
import functools

import torch
import torch.nn.functional as TF
from torch.autograd.function import once_differentiable

from . import _C

_ops = torch.ops.dlkernels


def _private(get):
    """A private torch API, or None where this torch lacks it (then the public path is taken)."""
    try:
        return get()
    except AttributeError:
        return None


# The private torch APIs the fast paths below use (checked on torch 2.11 to 2.14). Where one is
# missing, FAST_APPLY / FAST_BELOW_AUTOGRAD are False and the public equivalents run instead, with the
# same results and only the per-call Python cost; tests/test_build.py runs both ways.
_unwrap_dead_wrappers = _private(lambda: torch._functorch.utils.unwrap_dead_wrappers)
_function_base_apply = _private(lambda: torch._C._FunctionBase.apply)
_functorch_active = _private(lambda: torch._C._are_functorch_transforms_active)
_below_autograd_guard = _private(lambda: torch._C._AutoDispatchBelowAutograd)
FAST_APPLY = None not in (_unwrap_dead_wrappers, _function_base_apply, _functorch_active)
FAST_BELOW_AUTOGRAD = _below_autograd_guard is not None


def _in_functorch():
    """Whether a torch.func transform (grad, vjp, vmap, jacrev...) is active."""
    if _functorch_active is not None:
        return _functorch_active()
    return torch._C._functorch.maybe_current_level() is not None


def apply(fn, *args):
    """fn.apply(*args) for a Function whose arguments are all given, positionally. Function.apply binds
    them to forward's signature with inspect on every call (about 60 us) only to fill in defaults; with
    nothing to fill in, what it then calls (the C++ apply underneath) is called directly. While
    torch.compile traces, under torch.func transforms, and on a torch without those private APIs, the
    full Function.apply runs. Outside torch.compile the Function is its forward-mode twin (_WITH_JVP)."""
    if torch.compiler.is_compiling():
        return fn.apply(*args)
    fn = _WITH_JVP.get(fn, fn)
    if not FAST_APPLY or _functorch_active():
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*_unwrap_dead_wrappers(args))


def below_autograd(op, *args):
    """op(*args) from a Function's forward, dispatched past the autograd key: the op's register_autograd
    kernel (Python) would otherwise run first, only to find grad mode off (about 25 us a call). While
    torch.compile traces, the op is called plainly (the guard is not traceable, and costs nothing there),
    as it is on a torch without the guard (the same result: grad mode is off inside forward)."""
    if not FAST_BELOW_AUTOGRAD or torch.compiler.is_compiling():
        return op(*args)
    with _below_autograd_guard():
        return op(*args)


def twice_differentiable(reference):
    """Replaces once_differentiable on a Function's backward. Without create_graph (grad mode off inside
    backward) the fused backward op runs. Under create_graph (a gradient penalty, a Hessian-vector product)
    the gradients come from torch's own differentiable ops, reference(ctx, *grads), which rebuild the
    forward from the saved inputs and differentiate it with create_graph=True: second-order gradients are
    torch's, where once_differentiable silently dropped the terms through the saved inputs."""

    def wrap(backward):
        fast = once_differentiable(backward)

        @functools.wraps(backward)
        def run(ctx, *grads):
            # Under torch.func transforms a higher-order derivative need not show as grad mode here
            # (jacrev(jacrev(f)) runs the inner backward with it off): the differentiable form always.
            if torch.is_grad_enabled() or _in_functorch():
                return reference(ctx, *grads)
            return fast(ctx, *grads)

        return run

    return wrap


def _substituting(fn, inputs, idx):
    """fn as a function of inputs[k] for k in idx only (the others fixed): what torch.func.vjp and jvp
    differentiate."""
    def partial(*wrt):
        args = list(inputs)
        for k, t in zip(idx, wrt):
            args[k] = t
        return fn(*args)

    return partial


def _grads(fn, inputs, grad, needed):
    """The gradients of fn(*inputs) (torch's differentiable ops) with respect to the needed inputs (None for
    the others), themselves differentiable (the next order): torch.autograd.grad with create_graph, or
    under torch.func transforms torch.func.vjp, which composes with them (saved tensors there carry
    functorch's levels, not autograd's requires_grad)."""
    idx = [k for k, (t, n) in enumerate(zip(inputs, needed)) if n and t is not None]
    out = [None] * len(inputs)
    if not idx:
        return out
    if _in_functorch():
        _, pullback = torch.func.vjp(_substituting(fn, inputs, idx), *[inputs[k] for k in idx])
        got = pullback(grad)
    else:
        args = [_leaf_or_self(t, k in idx) for k, t in enumerate(inputs)]
        with torch.enable_grad():
            got = torch.autograd.grad(fn(*args), [args[k] for k in idx], grad, create_graph=True, allow_unused=True)
    for k, g in zip(idx, got):
        out[k] = g
    return out


def _leaf_or_self(t, needed):
    """The saved tensor itself where its gradient is wanted (its history carries the second order); a
    detached copy that requires grad where it is a leaf without history."""
    if t is None or not needed or t.requires_grad:
        return t
    return t.detach().requires_grad_(True)


def _tangent(fn, primals, tangents):
    """Forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) of the ops without a cheaper
    rule: the tangent of fn(*primals) (torch's differentiable ops) along tangents (None: zero); under
    torch.func transforms by torch.func.jvp (higher orders compose)."""
    idx = [k for k, t in enumerate(tangents) if t is not None]
    if not idx:
        return None
    if _in_functorch():
        return torch.func.jvp(_substituting(fn, primals, idx), tuple(primals[k] for k in idx),
                              tuple(tangents[k] for k in idx))[1]
    # torch.autograd.forward_ad (which does not nest, and inside a Function's jvp computes no tangents):
    # J t as the derivative of the vector-Jacobian product u -> (J^T u) . t with respect to u, its graph
    # kept where a primal or a tangent has a history (reverse mode over the tangent)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in list(primals) + list(tangents))
    with torch.enable_grad():
        args = [_leaf_or_self(p, k in idx) for k, p in enumerate(primals)]
        out = fn(*args)
        u = torch.zeros_like(out, requires_grad=True)
        grads = torch.autograd.grad(out, [args[k] for k in idx], u, create_graph=True, allow_unused=True)
        dot = sum((g * tangents[k]).sum() for g, k in zip(grads, idx) if g is not None)
        if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
            return torch.zeros_like(out)
        (jt,) = torch.autograd.grad(dot, u, create_graph=keep, allow_unused=True)
    return jt if jt is not None else torch.zeros_like(out)


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


_REDUCTION_NAMES = {0: "none", 1: "mean", 2: "sum"}  # the ops' reduction codes (functional._REDUCTIONS)


def _ce_reference(ctx, grad_loss, _grad_lse, _grad_total_weight):
    input, target, weight, _, _ = ctx.saved_tensors
    need = ctx.needs_input_grad
    prob = target.is_floating_point()

    def loss(x, t):
        return TF.cross_entropy(x, t, weight, reduction=_REDUCTION_NAMES[ctx.reduction], ignore_index=ctx.ignore_index,
                                label_smoothing=ctx.label_smoothing)

    gi, gt = _grads(loss, [input, target], grad_loss, [need[0], need[1] and prob])
    return gi, gt, None, None, None, None


class CrossEntropyFunction(torch.autograd.Function):
    """Fused softmax-cross-entropy. Saves the logits, the targets and one log-sum-exp per row; the
    backward recomputes softmax - target in one pass (no softmax tensor is ever stored)."""
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return below_autograd(_ops.cross_entropy_forward, input, target, weight, reduction, ignore_index, label_smoothing)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index, label_smoothing = inputs
        _, lse, total_weight = output
        ctx.save_for_backward(input, target, weight, lse, total_weight)
        ctx.save_for_forward(input, target, weight)
        ctx.reduction = reduction
        ctx.ignore_index = ignore_index
        ctx.label_smoothing = label_smoothing
        ctx.mark_non_differentiable(lse, total_weight)

    @staticmethod
    @twice_differentiable(_ce_reference)
    def backward(ctx, grad_loss, _grad_lse, _grad_total_weight):
        input, target, weight, lse, total_weight = ctx.saved_tensors
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_input = _ops.cross_entropy_backward(grad_loss, input, target, weight, lse, total_weight,
                                                     ctx.reduction, ctx.ignore_index, ctx.label_smoothing)
        if ctx.needs_input_grad[1]:
            grad_target = _ops.cross_entropy_target_backward(grad_loss, input, target, weight, lse, total_weight,
                                                             ctx.reduction, ctx.label_smoothing)
        return grad_input, grad_target, None, None, None, None

    @staticmethod
    def tangent(ctx, input_t, target_t, *_):
        input, target, weight = ctx.saved_tensors

        def loss(x, t):
            return TF.cross_entropy(x, t, weight, reduction=_REDUCTION_NAMES[ctx.reduction],
                                    ignore_index=ctx.ignore_index, label_smoothing=ctx.label_smoothing)

        prob = target.is_floating_point()
        return _tangent(loss, [input, target], [input_t, target_t if prob else None]), None, None


# The raw op gets the same backward, so torch.ops.dlkernels.cross_entropy_forward is differentiable on its
# own (opcheck's autograd checks, torch.func) and CrossEntropyFunction stays the one definition.
torch.library.register_autograd("dlkernels::cross_entropy_forward", CrossEntropyFunction.backward,
                                setup_context=CrossEntropyFunction.setup_context)


def _max_pool_reference(ctx, grad_output, _grad_indices):
    input, _ = ctx.saved_tensors
    (gi,) = _grads(lambda x: TF.max_pool2d(x, ctx.kernel_size, ctx.stride, ctx.padding, ctx.dilation, ctx.ceil_mode),
                   [input], grad_output, [True])
    return gi, None, None, None, None, None, None


def _avg_pool_reference(ctx, grad_output):
    (input,) = ctx.saved_tensors
    (gi,) = _grads(lambda x: TF.avg_pool2d(x, *ctx.args), [input], grad_output, [True])
    return (gi,) + (None,) * 6


def _adaptive_avg_pool_reference(ctx, grad_output):
    (input,) = ctx.saved_tensors
    (gi,) = _grads(lambda x: TF.adaptive_avg_pool2d(x, ctx.output_size), [input], grad_output, [True])
    return gi, None


class MaxPool2dFunction(torch.autograd.Function):
    """Max pooling; saves the argmax and routes gradients through it: torch's flat index in the H*W plane,
    or with tap_index (CPU, when the caller does not want the indices) one byte per output naming the
    window's tap, an eighth of the bytes for the forward to write and the backward to read."""
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)

    @staticmethod
    def forward(input, kernel_size, stride, padding, dilation, ceil_mode, tap_index):
        return below_autograd(_ops.max_pool2d_forward, input, kernel_size, stride, padding, dilation, ceil_mode,
                              tap_index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.kernel_size, ctx.stride, ctx.padding, ctx.dilation, ctx.ceil_mode = inputs[:6]
        ctx.save_for_backward(input, output[1])
        ctx.save_for_forward(input)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    @twice_differentiable(_max_pool_reference)
    def backward(ctx, grad_output, _grad_indices):
        input, indices = ctx.saved_tensors
        grad = _ops.max_pool2d_backward(grad_output, input, indices, ctx.kernel_size, ctx.stride, ctx.padding,
                                        ctx.dilation, ctx.ceil_mode)
        return grad, None, None, None, None, None, None

    @staticmethod
    def tangent(ctx, input_t, *_):
        (input,) = ctx.saved_tensors
        return _tangent(lambda x: TF.max_pool2d(x, ctx.kernel_size, ctx.stride, ctx.padding, ctx.dilation,
                                                ctx.ceil_mode), [input], [input_t]), None


class AvgPool2dFunction(torch.autograd.Function):
    """Average pooling; backward spreads each output gradient evenly over its window."""
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)

    @staticmethod
    def forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return below_autograd(_ops.avg_pool2d_forward, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                       divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *ctx.args = inputs
        ctx.save_for_backward(input)

    @staticmethod
    @twice_differentiable(_avg_pool_reference)
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return (_ops.avg_pool2d_backward(grad_output, input, *ctx.args),) + (None,) * 6

    @staticmethod
    def tangent(ctx, input_t, *_):  # linear: the op itself on the tangent
        return apply(AvgPool2dFunction, input_t, *ctx.args)


class AdaptiveAvgPool2dFunction(torch.autograd.Function):
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)
    @staticmethod
    def forward(input, output_size):
        return below_autograd(_ops.adaptive_avg_pool2d_forward, input, output_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.output_size = inputs[1]

    @staticmethod
    @twice_differentiable(_adaptive_avg_pool_reference)
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return _ops.adaptive_avg_pool2d_backward(grad_output, input), None

    @staticmethod
    def tangent(ctx, input_t, _):  # linear
        return apply(AdaptiveAvgPool2dFunction, input_t, ctx.output_size)


for _name, _fn in (("max_pool2d_forward", MaxPool2dFunction), ("avg_pool2d_forward", AvgPool2dFunction),
                   ("adaptive_avg_pool2d_forward", AdaptiveAvgPool2dFunction)):
    torch.library.register_autograd("dlkernels::" + _name, _fn.backward, setup_context=_fn.setup_context)


def _conv_reference(ctx, grad_output):
    input, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    p = list(ctx.padding)

    def conv(x, w):
        if len(p) == 4:  # (top, left, bottom, right)
            return TF.conv2d(TF.pad(x, (p[1], p[3], p[0], p[2])), w, None, ctx.stride, 0, ctx.dilation, ctx.groups)
        return TF.conv2d(x, w, None, ctx.stride, p, ctx.dilation, ctx.groups)

    gi, gw = _grads(conv, [input, weight], grad_output, [need[0], need[1]])
    gb = grad_output.sum((0, 2, 3)) if ctx.has_bias and need[2] else None
    return gi, gw, gb, None, None, None, None


class Conv2dFunction(torch.autograd.Function):
    """im2col convolution. Saves input and weight (not the column matrix: backward rebuilds it chunk by
    chunk, so memory stays bounded by the workspace limit); backward asks only for the gradients needed."""
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return below_autograd(_ops.conv2d_forward, input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, ctx.stride, ctx.padding, ctx.dilation, ctx.groups = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    @twice_differentiable(_conv_reference)
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2])]
        gi, gw, gb = _ops.conv2d_backward(grad_output, input, weight, ctx.stride, ctx.padding, ctx.dilation,
                                          ctx.groups, mask)
        return (gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None, None, None)

    @staticmethod
    def tangent(ctx, input_t, weight_t, bias_t, *_):
        # bilinear: conv(dx, w) + conv(x, dw) + db, each through the op itself
        input, weight = ctx.saved_tensors
        args = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups)
        out = None
        if input_t is not None:
            out = apply(Conv2dFunction, input_t, weight, None, *args)
        if weight_t is not None:
            out = _add(out, apply(Conv2dFunction, input, weight_t, None, *args))
        if bias_t is not None:
            out = _add(out, bias_t.view(1, -1, 1, 1))
        return out


class Im2colFunction(torch.autograd.Function):
    """F.unfold; its adjoint col2im is the backward."""
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)

    @staticmethod
    def forward(input, kernel_size, dilation, padding, stride):
        return below_autograd(_ops.im2col, input, kernel_size, dilation, padding, stride)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride = inputs
        ctx.output_size = tuple(input.shape[2:])

    @staticmethod
    def backward(ctx, grad_output):
        return (apply(Col2imFunction, grad_output, ctx.output_size, ctx.kernel_size, ctx.dilation, ctx.padding,
                                     ctx.stride), None, None, None, None)

    @staticmethod
    def tangent(ctx, input_t, *_):  # linear
        return apply(Im2colFunction, input_t, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride)


class Col2imFunction(torch.autograd.Function):
    """F.fold; its adjoint im2col is the backward."""
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)

    @staticmethod
    def forward(input, output_size, kernel_size, dilation, padding, stride):
        return below_autograd(_ops.col2im, input, output_size, kernel_size, dilation, padding, stride)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.output_size, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride = inputs

    @staticmethod
    def backward(ctx, grad_output):
        return (apply(Im2colFunction, grad_output, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride),
                None, None, None, None, None)

    @staticmethod
    def tangent(ctx, input_t, *_):  # linear
        return apply(Col2imFunction, input_t, ctx.output_size, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride)


for _name, _fn in (("conv2d_forward", Conv2dFunction), ("im2col", Im2colFunction), ("col2im", Col2imFunction)):
    torch.library.register_autograd("dlkernels::" + _name, _fn.backward, setup_context=_fn.setup_context)


def _relu_gate(out, relu_mask, like):
    """The forward's ReLU gate as a 0/1 tensor shaped like `like`: out > 0, or the mask's bits (one
    int32 word per 32 values of each (n, c) plane, bit j of word k for value 32k + j)."""
    if out is not None:
        return (out > 0).to(like.dtype)
    planes = like.shape[0] * like.shape[1]
    plane = like[0, 0].numel()
    words = relu_mask.reshape(planes, -1).to(torch.int64) & 0xFFFFFFFF
    bits = (words.unsqueeze(-1) >> torch.arange(32, device=words.device)) & 1
    return bits.reshape(planes, -1)[:, :plane].reshape(like.shape).to(like.dtype)


def _batch_norm_reference(ctx, grad_output, _grad_mean, _grad_invstd, _grad_mask):
    input, weight, bias, out, save_mean, save_invstd, relu_mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    shape = [1, -1] + [1] * (input.dim() - 2)
    gate = _relu_gate(out, relu_mask, input) if ctx.relu else None

    def bn(x, w, b):
        if ctx.training:  # batch statistics, differentiated through (running stats untouched)
            y = TF.batch_norm(x, None, None, w, b, True, 0.0, ctx.eps)
        else:  # the running statistics the forward used, as constants
            y = (x - save_mean.to(x.dtype).view(shape)) * save_invstd.to(x.dtype).view(shape)
            if w is not None:
                y = y * w.view(shape)
            if b is not None:
                y = y + b.view(shape)
        # the gate is piecewise constant: its derivative is 0 almost everywhere
        return y * gate if gate is not None else y

    gi, gw, gb = _grads(bn, [input, weight, bias], grad_output,
                        [need[0], ctx.has_weight and need[1], ctx.has_bias and need[2]])
    gr = None
    if ctx.has_residual and need[8]:
        gr = grad_output * gate if gate is not None else grad_output
    return gi, gw, gb, None, None, None, None, None, gr, None


class BatchNormFunction(torch.autograd.Function):
    """Batch normalization, optionally with a residual added and a ReLU, fused. Saves the input, the
    float64 per-channel mean and inverse std, weight and bias and (for ReLU) the output, whose sign is
    the ReLU mask, or the forward's mask as bits where it made one (the CPU float32 fused path of
    batch_norm_add_relu: a 32nd of the output's bytes); without a residual the CPU planar path recomputes
    the mask from the input."""
    generate_vmap_rule = True  # torch.func.vmap: the ops' batching rules (dlkernels/_vmap.py)

    @staticmethod
    def forward(input, weight, bias, running_mean, running_var, training, momentum, eps, residual, relu):
        return below_autograd(_ops.batch_norm_forward, input, weight, bias, running_mean, running_var, training, momentum, eps,
                                       residual, relu)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, _, _, ctx.training, _, ctx.eps, residual, ctx.relu = inputs
        out, save_mean, save_invstd, relu_mask = output
        # bias too: without a residual, the ReLU mask is recomputed from the input (the forward's own
        # arithmetic, the same bits as out > 0), which spares backward a read of out.
        has_bits = relu_mask.numel() > 0
        ctx.save_for_backward(input, weight, bias, out if ctx.relu and not has_bits else None, save_mean,
                              save_invstd, relu_mask if has_bits else None)
        ctx.has_weight, ctx.has_bias, ctx.has_residual = weight is not None, bias is not None, residual is not None
        ctx.save_for_forward(input, weight, out, save_mean, save_invstd)
        ctx.mark_non_differentiable(save_mean, save_invstd, relu_mask)

    @staticmethod
    @twice_differentiable(_batch_norm_reference)
    def backward(ctx, grad_output, _grad_mean, _grad_invstd, _grad_mask):
        input, weight, bias, out, save_mean, save_invstd, relu_mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [bool(need[0]), bool(ctx.has_weight and need[1]), bool(ctx.has_bias and need[2]),
                bool(ctx.has_residual and need[8])]
        gi, gw, gb, gr = _ops.batch_norm_backward(grad_output, input, out, weight, save_mean, save_invstd,
                                                  ctx.training, ctx.relu, mask, bias, not ctx.has_residual, relu_mask)
        return (gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None, None, None,
                None, gr if mask[3] else None, None)

    @staticmethod
    def tangent(ctx, input_t, weight_t, bias_t, _rm, _rv, _training, _momentum, _eps, residual_t, _relu):
        # The closed form, in torch's differentiable ops (exact at every order): with x^ = (x - mean) invstd,
        # training: d(x^) = invstd ((dx - mean(dx)) - x^ mean(x^ dx)) (per channel, over batch and space);
        # evaluation (the running statistics, constants): d(x^) = invstd dx. Then y = x^ w + b.
        input, weight, out, save_mean, save_invstd = ctx.saved_tensors
        # float16/bfloat16 (the CUDA kernels take them as they are): at least float32 here, as the kernels
        # accumulate (squares of values past 256 overflow float16), rounded once at the end
        acc = torch.promote_types(input.dtype, torch.float32)
        up = [t.to(acc) if t is not None else None for t in (input, weight, input_t, weight_t, bias_t, residual_t)]
        x, w, input_t, weight_t, bias_t, residual_t = up
        shape = [1, -1] + [1] * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        if ctx.training:  # the batch statistics again, as functions of the input (reverse mode over this)
            mean = x.mean(dims, keepdim=True)
            invstd = torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + ctx.eps)
        else:
            mean, invstd = save_mean.to(acc).view(shape), save_invstd.to(acc).view(shape)
        xhat = (x - mean) * invstd
        t = None
        if input_t is not None:
            if ctx.training:
                d = input_t - input_t.mean(dims, keepdim=True)
                t = invstd * (d - xhat * (xhat * input_t).mean(dims, keepdim=True))
            else:
                t = invstd * input_t
            if w is not None:
                t = t * w.view(shape)
        if weight_t is not None:
            t = _add(t, xhat * weight_t.view(shape))
        if bias_t is not None:
            t = _add(t, bias_t.view(shape).expand_as(x))
        t = _add(t, residual_t)
        if t is not None and ctx.relu:
            t = t * (out > 0).to(t.dtype)  # the gate is piecewise constant
        return (t.to(input.dtype) if t is not None else None), None, None, None


class SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalization whose statistics span every rank of a torch.distributed process group: each
    rank computes its per-channel count, mean and variance in one pass, they are all-gathered and merged
    (Chan's formula, float64), and backward all-reduces the two per-channel sums grad_input needs.
    grad_weight and grad_bias stay local, as in torch.nn.SyncBatchNorm (DistributedDataParallel averages
    them)."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, momentum, eps, process_group, world_size,
                relu=False):
        import torch.distributed as dist

        mean, var = _ops.batch_norm_stats(input)
        count = input.numel() // input.shape[1]
        # Nothing here reads a GPU value on the host (no synchronisation per layer): the count is filled
        # in on the device, the total stays a device tensor.
        local = torch.cat([torch.full((1,), float(count), dtype=torch.float64, device=input.device), mean, var])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=process_group)
        table = torch.stack(gathered)  # (ranks, 1 + 2C)
        c = input.shape[1]
        counts, means, variances = table[:, :1], table[:, 1:1 + c], table[:, 1 + c:]
        n = counts.sum()
        # The total count is checked where reading it costs nothing (CPU tensors) or where asked for
        # (dlkernels.set_cuda_sync_checks); on a GPU otherwise, as torch.nn.SyncBatchNorm, a total of one
        # value makes the running variance inf (its n / (n - 1) correction).
        if (input.device.type == "cpu" or _C.cuda_sync_checks()) and n.item() <= 1:
            raise ValueError(f"dlkernels.SyncBatchNorm: expected more than 1 value per channel when training, got "
                             f"{int(n.item())} over all ranks")
        g_mean = (counts * means).sum(0) / n
        g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / n
        invstd = torch.rsqrt(g_var + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_((g_mean * momentum).to(running_mean.dtype))
                running_var.mul_(1 - momentum).add_((g_var * (momentum * n / (n - 1))).to(running_var.dtype))
        out = _ops.batch_norm_elemt(input, g_mean, invstd, weight, bias, None, relu)
        ctx.save_for_backward(input, weight, g_mean, invstd, out if relu else None)
        ctx.relu = relu
        ctx.save_count = n  # a device tensor: backward divides by it there
        ctx.process_group, ctx.has_weight, ctx.has_bias = process_group, weight is not None, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            raise NotImplementedError("dlkernels.SyncBatchNorm: double backward (create_graph=True) is not "
                                      "supported; use torch.nn.SyncBatchNorm for gradient penalties")
        with torch.no_grad():
            return SyncBatchNormFunction._backward(ctx, grad_output)

    @staticmethod
    def _backward(ctx, grad_output):
        import torch.distributed as dist

        input, weight, mean, invstd, out = ctx.saved_tensors
        sum_dz, sum_dz_xmu = _ops.batch_norm_backward_reduce(grad_output, input, out, mean, invstd, ctx.relu)
        need = ctx.needs_input_grad
        param_dtype = weight.dtype if weight is not None else input.dtype
        gw = (sum_dz_xmu * invstd).to(param_dtype) if ctx.has_weight and need[1] else None
        gb = sum_dz.to(param_dtype) if ctx.has_bias and need[2] else None
        gi = None
        if need[0]:
            sums = torch.cat([sum_dz, sum_dz_xmu])
            dist.all_reduce(sums, group=ctx.process_group)
            # the per-value means over all ranks, divided on the device (the op's count is then 1)
            sums = (sums / ctx.save_count).to(sums.dtype)
            c = input.shape[1]
            gi, _ = _ops.batch_norm_backward_elemt(grad_output, input, out, mean, invstd, weight, sums[:c].contiguous(),
                                                   sums[c:].contiguous(), 1, ctx.relu, [True, False])
        return gi, gw, gb, None, None, None, None, None, None, None


def _with_jvp(cls):
    """cls with its `tangent` rule as the jvp of forward-mode AD. Eager calls (apply) take this twin;
    torch.compile traces cls itself, since Dynamo (torch 2.13) refuses a Function that defines a jvp
    ("Unsupported custom jvp") - under torch.compile, forward mode through our ops is not available."""
    return type(cls.__name__, (cls,), {"jvp": staticmethod(cls.tangent), "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


_WITH_JVP = {cls: _with_jvp(cls) for cls in (CrossEntropyFunction, MaxPool2dFunction, AvgPool2dFunction,
                                             AdaptiveAvgPool2dFunction, Conv2dFunction, Im2colFunction,
                                             Col2imFunction, BatchNormFunction)}
