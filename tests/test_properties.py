"""Property tests (hypothesis): random shapes and options for every op against torch, forward and
backward. A few hundred examples per op in CI; `pytest --slow` runs ten times as many."""
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlkernels.functional as DF
import dlkernels.optim as dopt

from conftest import assert_lowp_close

# `pytest --slow` (conftest.py sets DLKERNELS_SLOW before this module is imported) runs 10x the examples
EXAMPLES = 2000 if os.environ.get("DLKERNELS_SLOW") == "1" else 200
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def fwd_bwd(fn, tensors, grad_seed=0):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    return [out.detach()] + [gr if gr is not None else torch.zeros_like(l) for gr, l in zip(grads, leaves)]


def agree(ours_fn, torch_fn, tensors):
    """float64: close to torch; float32 copies: error vs float64 at most 2x torch's."""
    ours64, ref64 = fwd_bwd(ours_fn, tensors), fwd_bwd(torch_fn, tensors)
    for a, b in zip(ours64, ref64):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    t32 = [t.float() for t in tensors]
    # the float64 truth of the float32 inputs (rounding the inputs is not the kernels' error)
    truth = fwd_bwd(torch_fn, [t.double() for t in t32])
    for a, b, r in zip(fwd_bwd(ours_fn, t32), fwd_bwd(torch_fn, t32), truth):
        assert_lowp_close(a, b, r)


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, ocg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 10))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 10))
    n = draw(st.integers(1, 3))
    return (n, cg * groups, h, w), (ocg * groups, cg, kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, draw(st.booleans())


@PROFILE
@given(conv_case(), st.integers(0, 2 ** 31 - 1))
def test_conv2d_property(case, seed):
    xs, ws, s, p, d, groups, bias = case
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(xs, generator=gen, dtype=torch.float64), torch.randn(ws, generator=gen, dtype=torch.float64)]
    if bias:
        tensors.append(torch.randn(ws[0], generator=gen, dtype=torch.float64))
    agree(lambda *a: DF.conv2d(*a, stride=s, padding=p, dilation=d, groups=groups),
          lambda *a: F.conv2d(*a, stride=s, padding=p, dilation=d, groups=groups), tensors)


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 12))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 12))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), draw(st.booleans())


@PROFILE
@given(pool_case(), st.integers(0, 2 ** 31 - 1), st.booleans(), st.booleans())
def test_pooling_property(case, seed, count_include_pad, use_max):
    shape, k, s, p, d, ceil = case
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if use_max:
        kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        agree(lambda a: DF.max_pool2d(a, **kw), lambda a: F.max_pool2d(a, **kw), [x])
    else:
        kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=count_include_pad)
        agree(lambda a: DF.avg_pool2d(a, **kw), lambda a: F.avg_pool2d(a, **kw), [x])
    out = (x.shape[2] // 2 + 1, x.shape[3] // 3 + 1)
    agree(lambda a: DF.adaptive_avg_pool2d(a, out), lambda a: F.adaptive_avg_pool2d(a, out), [x])


@PROFILE
@given(st.lists(st.integers(1, 6), min_size=0, max_size=3), st.integers(1, 5), st.integers(1, 9),
       st.integers(0, 2 ** 31 - 1), st.booleans(), st.booleans(), st.floats(-5, 1000))
def test_batch_norm_property(spatial, n, c, seed, training, relu, offset):
    shape = (n, c, *spatial)
    if training and n * int(torch.tensor(spatial).prod()) == 1:
        n, shape = 2, (2, c, *spatial)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + offset
    w, b = torch.randn(c, generator=gen, dtype=torch.float64), torch.randn(c, generator=gen, dtype=torch.float64)
    rm, rv = torch.randn(c, dtype=torch.float64, generator=gen) + offset, torch.rand(c, dtype=torch.float64, generator=gen) + 1
    rm, rv = rm.float().double(), rv.float().double()  # exact in float32 too, so every run sees the same statistics

    def ours(a, ww, bb):
        return (DF.batch_norm_relu if relu else DF.batch_norm)(a, rm.to(a.dtype), rv.to(a.dtype), ww, bb, training, 0.1)

    def ref(a, ww, bb):
        y = F.batch_norm(a, rm.to(a.dtype), rv.to(a.dtype), ww, bb, training, 0.1)
        return torch.relu(y) if relu else y

    agree(ours, ref, [x, w, b])


@PROFILE
@given(st.integers(1, 6), st.integers(1, 12), st.lists(st.integers(1, 4), max_size=2), st.integers(0, 2 ** 31 - 1),
       st.sampled_from(["none", "mean", "sum"]), st.floats(0, 1), st.booleans(), st.booleans())
def test_cross_entropy_property(n, c, spatial, seed, reduction, smoothing, use_weight, prob_target):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, *spatial), generator=gen, dtype=torch.float64) * 3
    weight = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1 if use_weight else None
    if prob_target:
        t = torch.rand((n, c, *spatial), generator=gen, dtype=torch.float64).softmax(1)
        ignore = -100
    else:
        t = torch.randint(0, c, (n, *spatial), generator=gen)
        ignore = int(t.flatten()[0]) if seed % 3 == 0 else -100
    kw = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, ignore_index=ignore)
    ours64 = fwd_bwd(lambda a: DF.cross_entropy(a, t, **kw), [x])
    ref64 = fwd_bwd(lambda a: F.cross_entropy(a, t, **kw), [x])
    for a, b in zip(ours64, ref64):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, equal_nan=True)


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None, derandomize=True)
@given(st.sampled_from(["Adam", "AdamW", "SGD", "Adagrad", "RMSprop"]), st.lists(st.integers(1, 300), min_size=1, max_size=4),
       st.integers(0, 2 ** 31 - 1), st.floats(0, 0.1), st.booleans())
def test_optimizer_property(name, sizes, seed, weight_decay, flag):
    gen = torch.Generator().manual_seed(seed)
    options = {"Adam": dict(lr=1e-2, amsgrad=flag), "AdamW": dict(lr=1e-2, amsgrad=flag),
               "SGD": dict(lr=0.1, momentum=0.9, nesterov=flag), "Adagrad": dict(lr=0.1),
               "RMSprop": dict(lr=1e-2, centered=flag, momentum=0.5 if flag else 0.0)}[name]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in sizes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in sizes] for _ in range(3)]
    results = []
    for cls in (getattr(torch.optim, name), getattr(dopt, name)):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        opt = cls(ps, weight_decay=weight_decay, **options)
        for step in grads:
            for p, g in zip(ps, step):
                p.grad = g.clone()
            opt.step()
        results.append(ps)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
