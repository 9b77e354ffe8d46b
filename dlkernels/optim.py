"""Fused optimizers mirroring torch.optim: Adam, AdamW, SGD, Adagrad, RMSprop.

Each class subclasses its torch.optim counterpart, so the constructor (and its argument checks),
defaults, param_groups, add_param_group, state keys and layout, and state_dict / load_state_dict are
torch's own: a state_dict saved from torch.optim.Adam loads into dlkernels.optim.Adam and continues on
the same trajectory, and the other way round. Only step() differs: one fused pass per parameter
(torch.ops.dlkernels.<name>_) that reads param, grad and state once and writes them once, for all the
parameters of a group in one call (one launch per device and dtype on CUDA).

With torch.amp.GradScaler, scaler.step(optimizer) unscales the gradients and skips the step when they
hold inf/NaN, exactly as for torch's non-fused optimizers.
"""
import torch

from ._ops import _cpu_kernels

_ops = torch.ops.dlkernels


def _scalar_dtype():
    # torch keeps optimizer step counters in float32, or float64 when that is the default dtype
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _to_float(name, value):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"dlkernels.optim: {name} must be a number or a one-element tensor, got shape "
                             f"{tuple(value.shape)}")
        return float(value.item())
    return float(value)


def _lr(group, p):
    """lr for the op: (a float, a tensor or None). A one-element tensor lr on the parameters' device, for
    the CUDA kernels, is read there by the kernels (no host synchronisation: a step can be captured in a
    CUDA graph); any other lr is read here."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor) and lr.numel() == 1 and lr.device == p.device and not _cpu_kernels(p):
        return 0.0, lr
    return _to_float("lr", lr), None


def _capturable(group):
    # step counters on the parameters' device (see _new_step): the kernels advance and read them there
    return bool(group.get("capturable", False) or group.get("fused", False))


def _capturing():
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_capture(opt):
    """A step captured in a CUDA graph replays with the values it was captured with: host step counters
    would freeze there, so capture needs capturable=True (Adagrad: fused=True), as torch's does."""
    if _capturing():
        flag = "fused" if isinstance(opt, torch.optim.Adagrad) else "capturable"
        if not all(_capturable(g) for g in opt.param_groups):
            raise RuntimeError(f"dlkernels.optim.{type(opt).__name__}: CUDA graph capture of step() needs "
                               f"{flag}=True in every param group (the step counters then stay on the GPU)")


def _new_step(group, p):
    # where torch puts the counter: on the parameter's device when capturable or fused, else on the CPU
    if group.get("capturable", False) or group.get("fused", False):
        return torch.zeros((), dtype=_scalar_dtype(), device=p.device)
    return torch.tensor(0.0, dtype=_scalar_dtype())


def _params_with_grad(cls_name, group):
    """The group's parameters that have a gradient, with those gradients, split by (device, dtype): one
    kernel call per (device, dtype). A single pass, since this runs on every step (with ~100 parameters
    the attribute reads cost as much as the update of a small model)."""
    groups = {}
    for p in group["params"]:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            raise RuntimeError(f"dlkernels.optim.{cls_name} does not support sparse gradients (parameter of shape "
                               f"{tuple(p.shape)} has a sparse grad)")
        dtype = p.dtype
        if dtype.is_complex:
            raise NotImplementedError(f"dlkernels.optim.{cls_name} does not support complex parameters (got "
                                      f"{dtype} of shape {tuple(p.shape)})")
        key = (p.device, dtype)
        entry = groups.get(key)
        if entry is None:
            groups[key] = entry = ([], [])
        entry[0].append(p)
        entry[1].append(g)
    return groups.values()


def _fused(op, lists, *scalars, **options):
    """op(*lists, *scalars): a fused update of tensor lists in place (params, grads, states..., steps).
    float16/bfloat16 parameters on the CPU kernels (which take float32 and float64) are updated through
    float32 copies - float32 math, as torch's fused optimizers do - and every list but the gradients is
    written back, rounded once to its dtype."""
    first = lists[0][0]
    if first.dtype not in (torch.float16, torch.bfloat16) or not _cpu_kernels(first):
        return op(*lists, *scalars, **options)
    work = [[t.float() for t in ts] for ts in lists]
    op(*work, *scalars, **options)
    for k, (ts, ws) in enumerate(zip(lists, work)):
        if k == 1:
            continue  # the gradients: read only
        for t, w in zip(ts, ws):
            if w is not t:
                t.copy_(w)


def _check_supported(cls_name, group):
    if group.get("differentiable", False):
        raise NotImplementedError(f"dlkernels.optim.{cls_name}: differentiable=True is not supported")


def _run_closure(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Adam(torch.optim.Adam):
    """torch.optim.Adam with one fused update pass per parameter (see the module docstring)."""

    _decoupled_default = False

    @torch.no_grad()
    def step(self, closure=None):
        _check_capture(self)
        loss = _run_closure(closure)
        name = type(self).__name__
        for group in self.param_groups:
            _check_supported(name, group)
            amsgrad = group["amsgrad"]
            beta1, beta2 = group["betas"]
            decoupled = group.get("decoupled_weight_decay", self._decoupled_default)
            for ps, grads in _params_with_grad(name, group):
                st = [self.state[p] for p in ps]
                lr, lr_tensor = _lr(group, ps[0])
                for p, state in zip(ps, st):
                    if len(state) == 0:
                        state["step"] = _new_step(group, p)
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        if amsgrad:
                            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                _fused(_ops.adam_, (ps, grads, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                                    [s["max_exp_avg_sq"] for s in st] if amsgrad else [], [s["step"] for s in st]),
                       lr, _to_float("beta1", beta1), _to_float("beta2", beta2), float(group["eps"]),
                       float(group["weight_decay"]), amsgrad, group["maximize"], decoupled, lr_tensor=lr_tensor,
                       capturable=_capturable(group))
        return loss


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW (decoupled weight decay) with one fused update pass per parameter."""

    _decoupled_default = True
    step = Adam.step


class SGD(torch.optim.SGD):
    """torch.optim.SGD (momentum, dampening, Nesterov, weight decay, maximize), one fused pass per parameter."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            _check_supported("SGD", group)
            momentum = float(group["momentum"])
            for ps, grads in _params_with_grad("SGD", group):
                bufs, first = [], []
                if momentum != 0:
                    for p in ps:
                        state = self.state[p]
                        buf = state.get("momentum_buffer")
                        first.append(buf is None)
                        if buf is None:  # torch clones the first gradient into a new buffer; the kernel writes it
                            buf = torch.empty_like(p, memory_format=torch.preserve_format)
                            state["momentum_buffer"] = buf
                        bufs.append(buf)
                if any(first) and _capturing():
                    raise RuntimeError("dlkernels.optim.SGD: CUDA graph capture of a first momentum step (no "
                                       "momentum buffer yet) would replay it as a first step every time; run "
                                       "one step before capturing")
                lr, lr_tensor = _lr(group, ps[0])
                _fused(_ops.sgd_, (ps, grads, bufs), first, lr, momentum, float(group["dampening"]),
                       float(group["weight_decay"]), group["nesterov"], group["maximize"], lr_tensor=lr_tensor)
        return loss


class Adagrad(torch.optim.Adagrad):
    """torch.optim.Adagrad (lr_decay, initial_accumulator_value, weight decay, maximize), fused."""

    @torch.no_grad()
    def step(self, closure=None):
        _check_capture(self)
        loss = _run_closure(closure)
        for group in self.param_groups:
            _check_supported("Adagrad", group)
            for ps, grads in _params_with_grad("Adagrad", group):
                st = [self.state[p] for p in ps]
                for p, state in zip(ps, st):
                    if len(state) == 0:  # torch fills state in __init__; groups added later get the same here
                        state["step"] = _new_step(group, p)
                        init = group["initial_accumulator_value"]
                        state["sum"] = torch.full_like(p, init, memory_format=torch.preserve_format)
                lr, lr_tensor = _lr(group, ps[0])
                _fused(_ops.adagrad_, (ps, grads, [s["sum"] for s in st], [s["step"] for s in st]),
                       lr, float(group["lr_decay"]), float(group["weight_decay"]), float(group["eps"]),
                       group["maximize"], lr_tensor=lr_tensor, capturable=_capturable(group))
        return loss


class RMSprop(torch.optim.RMSprop):
    """torch.optim.RMSprop (alpha, centered, momentum, weight decay, maximize), fused."""

    @torch.no_grad()
    def step(self, closure=None):
        _check_capture(self)
        loss = _run_closure(closure)
        for group in self.param_groups:
            _check_supported("RMSprop", group)
            momentum, centered = float(group["momentum"]), group["centered"]
            for ps, grads in _params_with_grad("RMSprop", group):
                st = [self.state[p] for p in ps]
                for p, state in zip(ps, st):
                    if len(state) == 0:
                        state["step"] = _new_step(group, p)
                        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        if momentum > 0:
                            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        if centered:
                            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                lists = (ps, grads, [s["square_avg"] for s in st], [s["grad_avg"] for s in st] if centered else [],
                         [s["momentum_buffer"] for s in st] if momentum > 0 else [], [s["step"] for s in st])
                lr, lr_tensor = _lr(group, ps[0])
                _fused(_ops.rmsprop_, lists, lr, float(group["alpha"]), float(group["eps"]),
                       float(group["weight_decay"]), momentum, centered, group["maximize"], lr_tensor=lr_tensor,
                       capturable=_capturable(group))
        return loss


def from_torch(optimizer):
    """Our fused optimizer for a torch.optim one (Adam, AdamW, SGD, Adagrad, RMSprop): the same parameter
    group dicts (an LR scheduler built on the torch optimizer keeps acting) and a copy of its state (so
    training continues on the same trajectory)."""
    classes = {torch.optim.Adam: Adam, torch.optim.AdamW: AdamW, torch.optim.SGD: SGD, torch.optim.Adagrad: Adagrad,
               torch.optim.RMSprop: RMSprop}
    if isinstance(optimizer, tuple(classes.values())):
        return optimizer
    cls = classes.get(type(optimizer))
    if cls is None:
        raise NotImplementedError(f"dlkernels.optim.from_torch: no fused version of {type(optimizer).__name__}; "
                                  f"supported: {', '.join(c.__name__ for c in classes)}")
    groups = [dict(g) for g in optimizer.param_groups]
    for g in groups:
        g["params"] = list(g["params"])
    ours = cls(groups)
    ours.load_state_dict(optimizer.state_dict())
    # The torch optimizer's own group dicts, so that what holds them (an LR scheduler made before the
    # conversion, code that sets group["lr"]) keeps acting on the fused optimizer.
    for theirs, mine in zip(optimizer.param_groups, ours.param_groups):
        for k, v in mine.items():
            theirs.setdefault(k, v)
    ours.param_groups = optimizer.param_groups
    return ours
