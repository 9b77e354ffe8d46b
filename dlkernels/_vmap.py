"""torch.func.vmap support: a batching rule for every dlkernels op (torch.library.register_vmap), and
through them vmap of every autograd Function (generate_vmap_rule in dlkernels/autograd.py), so that
vmap(grad(...)) per-sample gradients, torch.func.hessian and Opacus' functorch mode work.

Ops whose images are independent (pooling, im2col/col2im, the convolution forward with unbatched
filters) fold the vmap dimension into the batch: one call. The others (batch norm's statistics span the
batch; convolution gradients sum over it; cross-entropy's reductions) run once per vmap index and stack
the results - exactly the per-sample semantics, at per-sample cost. The optimizers are not vmapped.
"""
import torch

_ops = torch.ops.dlkernels

# op -> positions of the arguments that are images (their dim 0 is the batch); every other tensor
# argument must be unbatched for the fold.
_FOLD = {
    "max_pool2d_forward": (0,),
    "max_pool2d_backward": (0, 1, 2),
    "avg_pool2d_forward": (0,),
    "avg_pool2d_backward": (0, 1),
    "adaptive_avg_pool2d_forward": (0,),
    "adaptive_avg_pool2d_backward": (0, 1),
    "im2col": (0,),
    "col2im": (0,),
    "conv2d_forward": (0,),
}
_LOOP = ("cross_entropy_forward", "cross_entropy_backward", "cross_entropy_target_backward", "conv2d_backward",
         "batch_norm_forward", "batch_norm_backward", "batch_norm_stats", "batch_norm_elemt",
         "batch_norm_backward_reduce", "batch_norm_backward_elemt")


def _is_tensor(a):
    return isinstance(a, torch.Tensor)


def _stack(results):
    if isinstance(results[0], (tuple, list)):
        return tuple(torch.stack([r[k] for r in results]) for k in range(len(results[0]))), (0,) * len(results[0])
    return torch.stack(results), 0


def _loop_rule(name):
    op = getattr(_ops, name)

    def rule(info, in_dims, *args):
        if name == "batch_norm_forward" and args[5] and any(
                a is not None and d is None for a, d in zip(args[3:5], in_dims[3:5])):
            raise RuntimeError("dlkernels.batch_norm under torch.func.vmap: training would update the unbatched "
                               "running statistics once per vmap index (torch refuses this too); use "
                               "track_running_stats=False, evaluation mode, or batched running statistics")
        results = [op(*[a.select(d, i) if _is_tensor(a) and d is not None else a for a, d in zip(args, in_dims)])
                   for i in range(info.batch_size)]
        return _stack(results)

    return rule


def _fold_rule(name, images):
    op = getattr(_ops, name)
    loop = _loop_rule(name)

    def rule(info, in_dims, *args):
        if any(_is_tensor(args[k]) and d is not None for k, d in enumerate(in_dims) if k not in images):
            return loop(info, in_dims, *args)  # e.g. per-sample filters: one call per vmap index
        b = info.batch_size
        new_args, n = list(args), None
        for k in images:
            a, d = args[k], in_dims[k]
            a = a.movedim(d, 0) if d is not None else a.unsqueeze(0).expand(b, *a.shape)
            n = a.shape[1]
            new_args[k] = a.reshape(b * n, *a.shape[2:])
        out = op(*new_args)
        if isinstance(out, (tuple, list)):
            return tuple(o.reshape(b, n, *o.shape[1:]) for o in out), (0,) * len(out)
        return out.reshape(b, n, *out.shape[1:]), 0

    return rule


def register():
    for name, images in _FOLD.items():
        torch.library.register_vmap("dlkernels::" + name, _fold_rule(name, images))
    for name in _LOOP:
        torch.library.register_vmap("dlkernels::" + name, _loop_rule(name))
