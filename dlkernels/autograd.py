"""torch.autograd.Function glue: each forward op paired with its backward op.

Functions use the forward/setup_context split so that torch.compile and torch.func can trace them.
"""
import torch
from torch.autograd.function import once_differentiable

_ops = torch.ops.dlkernels


class CrossEntropyFunction(torch.autograd.Function):
    """Fused softmax-cross-entropy. Saves the logits, the targets and one log-sum-exp per row; the
    backward recomputes softmax - target in one pass (no softmax tensor is ever stored)."""

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return _ops.cross_entropy_forward(input, target, weight, reduction, ignore_index, label_smoothing)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index, label_smoothing = inputs
        _, lse, total_weight = output
        ctx.save_for_backward(input, target, weight, lse, total_weight)
        ctx.reduction = reduction
        ctx.ignore_index = ignore_index
        ctx.label_smoothing = label_smoothing
        ctx.mark_non_differentiable(lse, total_weight)

    @staticmethod
    @once_differentiable
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


# The raw op gets the same backward, so torch.ops.dlkernels.cross_entropy_forward is differentiable on its
# own (opcheck's autograd checks, torch.func) and CrossEntropyFunction stays the one definition.
torch.library.register_autograd("dlkernels::cross_entropy_forward", CrossEntropyFunction.backward,
                                setup_context=CrossEntropyFunction.setup_context)
