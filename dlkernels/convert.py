"""dlkernels.convert: swap the supported torch.nn layers of a model for dlkernels' ones.

Each dlkernels module subclasses the torch module it replaces, so a swap is a change of class over the
same attributes: parameters, buffers, hooks, train/eval mode, device and dtype are the original's
(shared with it when inplace=True, deep-copied otherwise), and state_dict keys do not change.
"""
import copy
import dataclasses
import inspect
import logging
import operator

import torch

from . import nn as dnn

log = logging.getLogger("dlkernels.convert")

# torch class -> dlkernels class. Exact types only: a user's subclass may override forward.
SWAPS = {
    torch.nn.Conv2d: dnn.Conv2d,
    torch.nn.BatchNorm1d: dnn.BatchNorm1d,
    torch.nn.BatchNorm2d: dnn.BatchNorm2d,
    torch.nn.BatchNorm3d: dnn.BatchNorm3d,
    torch.nn.SyncBatchNorm: dnn.SyncBatchNorm,
    torch.nn.MaxPool2d: dnn.MaxPool2d,
    torch.nn.AvgPool2d: dnn.AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: dnn.AdaptiveAvgPool2d,
    torch.nn.CrossEntropyLoss: dnn.CrossEntropyLoss,
}
_OURS = tuple(set(SWAPS.values()) | {dnn.BatchNormReLU2d})


@dataclasses.dataclass
class Row:
    name: str
    layer: str
    action: str  # "swapped", "fused", "kept"
    detail: str


class ConvertReport(list):
    """What convert() did, one Row per layer it looked at; str() is a table."""

    def counts(self):
        out = {}
        for r in self:
            out[r.action] = out.get(r.action, 0) + 1
        return out

    def __str__(self):
        if not self:
            return "dlkernels.convert: no layers"
        w = [max(len(getattr(r, f)) for r in self) for f in ("name", "layer", "action")]
        w = [max(a, len(h)) for a, h in zip(w, ("layer", "type", "action"))]
        lines = [f"{'layer':<{w[0]}}  {'type':<{w[1]}}  {'action':<{w[2]}}  detail",
                 f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  ------"]
        for r in self:
            lines.append(f"{r.name:<{w[0]}}  {r.layer:<{w[1]}}  {r.action:<{w[2]}}  {r.detail}")
        c = self.counts()
        lines.append(f"{c.get('swapped', 0)} swapped, {c.get('fused', 0)} fused, {c.get('kept', 0)} kept")
        return "\n".join(lines)


def _excluded(name, module, exclude):
    for e in exclude:
        if isinstance(e, str) and (name == e or name.startswith(e + ".")):
            return f"excluded by name {e!r}"
        if isinstance(e, type) and isinstance(module, e):
            return f"excluded by type {e.__name__}"
    return None


def _swap(module, cls):
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()  # the same Parameters, buffers, hooks and flags
    return new


def _why_kept(module):
    """Why a torch layer of a swappable kind stays (None: it can be swapped)."""
    t = type(module)
    if t not in SWAPS:
        for base in SWAPS:
            if isinstance(module, base):
                return f"subclass {t.__name__} of {base.__name__} (its forward may differ)"
        return None
    for p in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if p.is_floating_point() and p.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            return f"dtype {p.dtype} not supported"
    return None


def convert(module, inplace=False, fuse_bn_relu=False, exclude=(), report=False):
    """Replace every supported torch.nn layer of module (Conv2d, BatchNorm1d/2d/3d, SyncBatchNorm,
    MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, CrossEntropyLoss) by dlkernels' drop-in version.

    inplace: modify module itself (default: a deep copy). fuse_bn_relu: a BatchNorm2d directly followed
    by a ReLU inside an nn.Sequential becomes one BatchNormReLU2d (the ReLU's slot becomes nn.Identity,
    so indices and state_dict keys stay); and in every other module whose forward has a BatchNorm2d
    followed by a ReLU, or by an add and a ReLU (torchvision's BasicBlock and Bottleneck), found by
    tracing that forward with torch.fx, the pair or triple runs as one fused call (see _fuse_forward).
    exclude: layer names (and their children) or classes to leave.
    Logs the table of what was swapped and what was kept, and why, on the "dlkernels.convert" logger;
    report=True returns (model, ConvertReport) instead of the model.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"dlkernels.convert: module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(exclude, (tuple, list, set)):
        raise TypeError(f"dlkernels.convert: exclude must be a tuple of names or classes, got {exclude!r}")
    names = {n for n, _ in module.named_modules()}
    for e in exclude:
        if not isinstance(e, (str, type)):
            raise TypeError(f"dlkernels.convert: exclude holds layer names (str) and classes, got {e!r}")
        if isinstance(e, str) and e not in names:
            last = e.rsplit(".", 1)[-1]
            close = sorted(n for n in names if n and (e in n or n.rsplit(".", 1)[-1] == last))[:5]
            raise ValueError(f"dlkernels.convert: exclude names a layer {e!r} the model does not have"
                             + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    if not inplace:
        module = copy.deepcopy(module)
    rows = ConvertReport()
    module = _convert(module, "", fuse_bn_relu, tuple(exclude), rows)
    if fuse_bn_relu:
        module = _fuse_graphs(module, "", tuple(exclude), rows)
    log.info("dlkernels.convert:\n%s", rows)
    return (module, rows) if report else module


def _convert_one(module, name, exclude, rows):
    label = name or "(root)"
    if isinstance(module, _OURS):
        rows.append(Row(label, type(module).__name__, "kept", "already dlkernels"))
        return module
    is_candidate = any(isinstance(module, base) for base in SWAPS)
    if not is_candidate:
        return None
    why = _excluded(name, module, exclude) or _why_kept(module)
    if why:
        rows.append(Row(label, type(module).__name__, "kept", why))
        return module
    cls = SWAPS[type(module)]
    rows.append(Row(label, type(module).__name__, "swapped", f"-> dlkernels.nn.{cls.__name__}"))
    return _swap(module, cls)


def _convert(module, prefix, fuse, exclude, rows):
    done = _convert_one(module, prefix, exclude, rows)
    if done is not None:
        return done
    if _excluded(prefix, module, exclude) and prefix:
        rows.append(Row(prefix, type(module).__name__, "kept", _excluded(prefix, module, exclude) + " (with children)"))
        return module
    children = list(module.named_children())  # as they were: a fused ReLU's slot is skipped below
    fused_relus = set()
    for i, (name, child) in enumerate(children):
        if name in fused_relus:
            continue
        full = f"{prefix}.{name}" if prefix else name
        if (fuse and isinstance(module, torch.nn.Sequential) and type(child) is torch.nn.BatchNorm2d
                and i + 1 < len(children) and type(children[i + 1][1]) is torch.nn.ReLU
                and not _excluded(full, child, exclude)):
            relu_name = children[i + 1][0]
            setattr(module, name, _swap(child, dnn.BatchNormReLU2d))
            setattr(module, relu_name, torch.nn.Identity())
            fused_relus.add(relu_name)
            rows.append(Row(full, "BatchNorm2d", "fused", f"+ ReLU {prefix + '.' if prefix else ''}{relu_name} "
                                                          "-> dlkernels.nn.BatchNormReLU2d"))
            continue
        new = _convert(child, full, fuse, exclude, rows)
        if new is not child:
            setattr(module, name, new)
        if fuse and isinstance(module, torch.nn.Sequential) and type(child) is torch.nn.BatchNorm2d:
            row = _row_for(rows, full)
            if row is not None and row.action == "swapped":
                after = (f"the next layer of its nn.Sequential is a {type(children[i + 1][1]).__name__}"
                         if i + 1 < len(children) else "it ends its nn.Sequential")
                row.detail += f"; not fused: {after}, not a ReLU"
    return module


# ---- fusion inside forward, through torch.fx ------------------------------------------------------------
#
# A module whose forward calls a BatchNorm2d child and then a ReLU (nn.ReLU, F.relu, torch.relu,
# .relu()), or an add (+, +=, torch.add, .add) of its output and something else and then a ReLU, is traced
# with torch.fx, every submodule call one node. Each such BatchNorm2d whose output goes only to that ReLU
# (or that add, whose result goes only to the ReLU), and which forward calls only there, becomes a
# BatchNormReLU2d, called with the add's other operand as its residual; the ReLU and add nodes go. The
# module keeps its class (a per-instance subclass carries the new forward), attributes, children and
# state_dict keys; pickling and deepcopy rebuild the subclass by tracing again. A forward that does not
# trace, or that takes optional arguments (whose defaults tracing would bake in), keeps its modules
# swapped and unfused, and the report says why.

_RELU_FUNCS = {torch.relu, torch.relu_, torch.nn.functional.relu}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_BN_TYPES = (torch.nn.BatchNorm2d, dnn.BatchNorm2d, dnn.BatchNormReLU2d)


class _ChildCallTracer(torch.fx.Tracer):
    """Every submodule call is one node: the forward of the module being traced, and nothing below."""

    def is_leaf_module(self, m, module_qualified_name):
        return True


def _is_relu(node, root):
    if node.op == "call_module":
        return type(root.get_submodule(node.target)) is torch.nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCS and set(node.kwargs) <= {"inplace"} and len(node.args) == 1
    if node.op == "call_method":
        return node.target in ("relu", "relu_") and len(node.args) == 1 and not node.kwargs
    return False


def _is_add(node):
    if node.op == "call_function":
        return node.target in _ADD_FUNCS and len(node.args) == 2 and not node.kwargs
    if node.op == "call_method":  # not add_: it mutates its receiver, which the fused call would not
        return node.target == "add" and len(node.args) == 2 and not node.kwargs
    return False


def _has_hooks(m):
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _is_inplace(node):
    if node.op == "call_method":
        return node.target.endswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.kwargs.get("inplace", False) is True or (name.endswith("_") and not name.startswith("_"))
    return False


def _between_why(bn, relu, root):
    """Why the BN cannot move to the ReLU's place (the fused call runs where the ReLU was): an in-place
    op between them in forward (it could change the BN's input before the BN reads it), or hooks on a
    ReLU module that would no longer run."""
    if relu.op == "call_module" and _has_hooks(root.get_submodule(relu.target)):
        return "its ReLU module has hooks"
    n = bn.next
    while n is not relu:
        inplace_module = n.op == "call_module" and getattr(root.get_submodule(n.target), "inplace", False) is True
        if inplace_module or _is_inplace(n):
            return f"the in-place {_describe(n, root)} runs between it and its ReLU"
        n = n.next
    return None


def _bn_nodes(graph, root):
    """The call_module nodes of BatchNorm2d children, with how many times each target is called."""
    calls = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    nodes = [n for n in graph.nodes if n.op == "call_module" and type(root.get_submodule(n.target)) in _BN_TYPES]
    return nodes, calls


def _describe(node, root):
    if node.op == "call_module":
        return f"{node.target} ({type(root.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', node.target)}()"
    if node.op == "call_method":
        return f".{node.target}()"
    return "the forward's result" if node.op == "output" else node.op


def _plan(graph, root, allowed):
    """[(bn node, relu node, add node or None, other operand or None, why-not or None)] for each
    BatchNorm2d call; allowed(target) says whether a BN may be fused (exclusions)."""
    nodes, calls = _bn_nodes(graph, root)
    plans = []
    for bn in nodes:
        why = allowed(bn.target)
        users = list(bn.users)
        if why is None and calls[bn.target] > 1:
            why = f"forward calls it {calls[bn.target]} times"
        if why is None and (len(bn.args) != 1 or bn.kwargs):
            why = "called with more than its input"
        if why is None and len(users) != 1:
            why = f"its output goes to {len(users)} places"
        if why is None and _has_hooks(root.get_submodule(bn.target)):
            why = "it has hooks (they would see the fused call)"
        if why is not None:
            plans.append((bn, None, None, None, why))
            continue
        nxt = users[0]
        if _is_relu(nxt, root):
            why = _between_why(bn, nxt, root)
            plans.append((bn, nxt if why is None else None, None, None, why))
            continue
        if _is_add(nxt) and len(nxt.users) == 1 and _is_relu(next(iter(nxt.users)), root):
            a, b = nxt.args
            other = b if a is bn else a
            if (a is bn) != (b is bn) and isinstance(other, torch.fx.Node):
                relu = next(iter(nxt.users))
                why = _between_why(bn, relu, root)
                plans.append((bn, relu if why is None else None, nxt if why is None else None,
                              other if why is None else None, why))
                continue
        plans.append((bn, None, None, None, f"its output goes to {_describe(nxt, root)}, not to a ReLU or an add "
                                            "then a ReLU"))
    return plans


def _set_submodule(root, target, new):
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _rewrite(graph, plans):
    """Applies the fusable plans to graph; returns {target: "relu"|"add_relu"}. The BN modules are
    swapped by the caller, once the new forward compiled."""
    done = {}
    for bn, relu, add, other, why in plans:
        if why is not None:
            continue
        if add is None:
            relu.replace_all_uses_with(bn)
            graph.erase_node(relu)
            done[bn.target] = "relu"
        else:
            with graph.inserting_before(relu):
                fused = graph.call_module(bn.target, (bn.args[0], other))
            relu.replace_all_uses_with(fused)
            graph.erase_node(relu)
            graph.erase_node(add)
            graph.erase_node(bn)
            done[bn.target] = "add_relu"
    graph.lint()
    return done


def _traceable_signature(module):
    """None if module.forward takes only positional tensors without defaults; else why not."""
    try:
        sig = inspect.signature(type(module).forward)
    except (TypeError, ValueError) as e:
        return f"forward's signature cannot be read ({e})"
    params = list(sig.parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return f"forward takes *{p.name}"
        if p.default is not p.empty:
            return f"forward takes an optional argument {p.name!r} (tracing would fix its default)"
    return _augmented_argument(type(module).forward, {p.name for p in params})


def _augmented_argument(fn, names):
    """torch.fx records `a += b` as `a + b`: a forward that adds in place into one of its arguments (or
    a name bound to one) would lose that mutation. Returns why not, or None."""
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError) as e:
        return f"forward's source cannot be read to check for in-place adds ({type(e).__name__})"
    aliases, grew = set(names), True
    while grew:  # names bound directly to an argument or to such a name
        grew = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id not in aliases:
                        aliases.add(t.id)
                        grew = True
    for node in ast.walk(tree):
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id in aliases:
            return f"forward updates {node.target.id!r} in place, which may be its argument"
    return None


def _fused_class(base, forward):
    """A subclass of base that runs forward, made for one instance."""
    return type(base.__name__, (base,), {"forward": forward, "__reduce__": _fused_reduce,
                                          "__module__": base.__module__, "_dlk_fused_base": base})


def _fused_reduce(self):
    # (callable, args, state): pickle and deepcopy make the object first and fill it after, so the state
    # may refer back to it (a hook bound to the module itself)
    return _new_unfused, (type(self)._dlk_fused_base,), self.__dict__.copy()


def _new_unfused(base):
    """An empty instance whose __setstate__ restores the state, then fuses its forward again."""
    cls = type(base.__name__, (base,), {"__setstate__": _refuse_setstate, "__module__": base.__module__,
                                         "_dlk_fused_base": base})
    return cls.__new__(cls)


def _refuse_setstate(self, state):
    base = type(self)._dlk_fused_base
    base.__setstate__(self, state)
    targets = state["_dlk_fused_targets"]
    _, _, done = _fuse_forward(self, lambda t: None if t in targets else "not fused when converted")
    if done != targets:
        raise RuntimeError(f"dlkernels.convert: rebuilding the fused forward of {base.__name__} fused {done}, "
                           f"not {targets} as when it was converted")


def _trace_modes(module, base):
    """module's forward traced in training and in eval mode (every submodule's mode restored after)."""
    view = module if base is type(module) else _as_base(module, base)
    modes = [(m, m.training) for m in module.modules()]
    graphs = {}
    try:
        for training in (True, False):
            for m, _ in modes:
                m.training = training
            graphs[training] = _ChildCallTracer().trace(view)
    finally:
        for m, mode in modes:
            m.training = mode
    return graphs


def _fuse_forward(module, allowed):
    """Traces module's forward and fuses what _plan allows. Returns (module, plans, done) where module
    is the same object (its class replaced when something was fused). A forward that reads
    self.training (dropout, a branch) is traced in both modes and the fused forward picks one by
    self.training at each call; both must fuse alike."""
    base = getattr(type(module), "_dlk_fused_base", type(module))
    graphs = _trace_modes(module, base)
    results = {}
    for training, graph in graphs.items():
        plans = _plan(graph, module, allowed)
        done = _rewrite(graph, plans)
        results[training] = (plans, done, graph)
    plans, done, _ = results[True]
    if results[False][1] != done:
        raise RuntimeError(f"fusion differs between training ({sorted(done)}) and eval "
                           f"({sorted(results[False][1])})")
    if done:
        fns, srcs = {}, {}
        for training, (_, _, graph) in results.items():
            code = graph.python_code(root_module="self")
            namespace = dict(code.globals)
            exec(compile(code.src, f"<dlkernels fused forward of {base.__name__}>", "exec"), namespace)
            fns[training], srcs[training] = namespace["forward"], code.src
        forward = fns[True] if srcs[True] == srcs[False] else _by_mode(fns[True], fns[False])
        for target in done:  # swapped last: nothing above changed the module
            m = module.get_submodule(target)
            if type(m) is not dnn.BatchNormReLU2d:
                _set_submodule(module, target, _swap(m, dnn.BatchNormReLU2d))
        module.__dict__["_dlk_fused_targets"] = dict(done)
        module.__class__ = _fused_class(base, forward)
    return module, plans, done


def _by_mode(train_forward, eval_forward):
    def forward(self, *args):
        return train_forward(self, *args) if self.training else eval_forward(self, *args)
    return forward


def _as_base(module, base):
    """A shallow view of module with its original class, to trace the original forward again."""
    view = base.__new__(base)
    view.__dict__ = module.__dict__
    return view


def _row_for(rows, name):
    for r in rows:
        if r.name == name:
            return r
    return None


def _fuse_graphs(module, prefix, exclude, rows):
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if not _excluded(full, child, exclude):
            _fuse_graphs(child, full, exclude, rows)
    if (type(module).__module__.startswith("torch.nn") or isinstance(module, _OURS)
            or _excluded(prefix, module, exclude) or hasattr(type(module), "_dlk_fused_base")):
        return module  # torch's containers (Sequential: fused above), leaves, our modules, done ones
    if not any(type(c) in _BN_TYPES for c in module.children()):
        return module
    label = prefix or "(root)"

    def allowed(target):
        full = f"{prefix}.{target}" if prefix else target
        m = module.get_submodule(target)
        # only BNs this conversion swapped: a BatchNormReLU2d applies its ReLU before any add
        return _excluded(full, m, exclude) or (None if type(m) is dnn.BatchNorm2d else
                                               f"a {type(m).__name__}, not a swapped BatchNorm2d")

    why = _traceable_signature(module)
    if why is None:
        try:
            _, plans, done = _fuse_forward(module, allowed)
        except Exception as e:  # noqa: BLE001 - any tracing failure leaves the module as it was
            why = f"forward does not trace with torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if why is not None:
        rows.append(Row(label, type(module).__name__, "kept", f"BatchNorm2d children not fused: {why}"))
        return module
    for bn, relu, add, other, why_not in plans:
        full = f"{prefix}.{bn.target}" if prefix else bn.target
        row = _row_for(rows, full)
        if why_not is None:
            what = "+ ReLU" if add is None else f"+ add ({other.name}) + ReLU"
            detail = f"{what} in {type(module).__name__}.forward -> dlkernels.nn.BatchNormReLU2d (torch.fx)"
            if row is not None:
                row.action, row.detail = "fused", detail
            else:
                rows.append(Row(full, "BatchNorm2d", "fused", detail))
        elif row is not None and row.action == "swapped":
            row.detail += f"; not fused: {why_not}"
    return module
