"""dlkernels.convert: swap the supported torch.nn layers of a model for dlkernels' ones.

Each dlkernels module subclasses the torch module it replaces, so a swap is a change of class over the
same attributes: parameters, buffers, hooks, train/eval mode, device and dtype are the original's
(shared with it when inplace=True, deep-copied otherwise), and state_dict keys do not change.
"""
import copy
import dataclasses
import logging

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
    so indices and state_dict keys stay). exclude: layer names (and their children) or classes to leave.
    Logs the table of what was swapped and what was kept, and why, on the "dlkernels.convert" logger;
    report=True returns (model, ConvertReport) instead of the model.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"dlkernels.convert: module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(exclude, (tuple, list, set)):
        raise TypeError(f"dlkernels.convert: exclude must be a tuple of names or classes, got {exclude!r}")
    if not inplace:
        module = copy.deepcopy(module)
    rows = ConvertReport()
    module = _convert(module, "", fuse_bn_relu, tuple(exclude), rows)
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
    return module
