"""Pooling: parity of outputs, indices and gradients with torch over random configurations, the numpy
textbook im2col pooling, gradcheck, opcheck, every ISA path, bad inputs."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
import dlkernels.nn as dnn

from conftest import KDEV, check_fwd_bwd, cpu_kernels_only, cuda_semantics, needs_cuda_kernels


def random_max_configs(n, seed):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        k = (rng.randint(1, 4), rng.randint(1, 4))
        s = (rng.randint(1, 4), rng.randint(1, 4))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        d = (rng.randint(1, 2), rng.randint(1, 2))
        h, w = rng.randint(1, 13), rng.randint(1, 13)
        ceil = rng.random() < 0.5
        try:
            F.max_pool2d(torch.zeros(1, 1, h, w), k, s, p, d, ceil)
        except RuntimeError:
            continue  # torch rejects it: the bad-input tests cover those
        out.append(((rng.randint(1, 3), rng.randint(1, 4), h, w), k, s, p, d, ceil))
    return out


MAX_CONFIGS = random_max_configs(40, 0) + [
    ((16, 4, 14, 14), (3, 3), (2, 2), (1, 1), (1, 1), False),  # ResNet stem
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),     # non-overlapping
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), False),     # 1x1 plane
    ((2, 2, 5, 5), (3, 3), (2, 2), (1, 1), (1, 1), True),      # ceil_mode, last window in the padding
]


@pytest.mark.parametrize("shape,k,s,p,d,ceil", MAX_CONFIGS, ids=[str(i) for i in range(len(MAX_CONFIGS))])
def test_max_pool2d_matches_torch(device, dtype, shape, k, s, p, d, ceil):
    x = torch.randn(shape, dtype=dtype, device=device)
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    check_fwd_bwd(lambda a: DF.max_pool2d(a, **kw), lambda a: F.max_pool2d(a, **kw), [x], dtype=dtype)
    _, ours = DF.max_pool2d(x, return_indices=True, **kw)
    _, ref = F.max_pool2d(x, return_indices=True, **kw)
    assert torch.equal(ours, ref)


def taps_from_indices(idx, w, k, s, p, d):
    """torch's flat argmax in the H*W plane as the window tap kh * KW + kw of each output."""
    oh = torch.arange(idx.shape[-2]).view(-1, 1)
    ow = torch.arange(idx.shape[-1]).view(1, -1)
    kh = (idx // w - (oh * s[0] - p[0])) // d[0]
    kw = (idx % w - (ow * s[1] - p[1])) // d[1]
    return (kh * k[1] + kw).to(torch.uint8)


@cpu_kernels_only
@pytest.mark.parametrize("shape,k,s,p,d,ceil", MAX_CONFIGS, ids=[str(i) for i in range(len(MAX_CONFIGS))])
def test_max_pool2d_tap_bytes(dtype, shape, k, s, p, d, ceil):
    """What autograd saves without return_indices: a byte per output naming the window tap. On every
    ISA path: the same output, the taps of torch's indices (first maximum, last NaN, an -inf window's
    first tap inside the input), and a backward through them equal bit for bit to the one through the
    int64 indices."""
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[::3] = x.view(-1)[::3].round()  # ties
    if x.numel() > 4:
        x.view(-1)[1] = float("-inf")
        x.view(-1)[-2] = float("nan")
    if x.shape[0] > 1:
        x[1, 0] = float("-inf")  # windows of -inf only
    args = (list(k), list(s), list(p), list(d), ceil)
    ops = torch.ops.dlkernels
    _, ref_idx = F.max_pool2d(x, *args, return_indices=True)
    g = torch.randn(ref_idx.shape, dtype=dtype)
    for isa in dlkernels.supported_cpu_isas():
        with dlkernels.use_cpu_isa(isa):
            out, idx = ops.max_pool2d_forward(x, *args)
            out_t, taps = ops.max_pool2d_forward(x, *args, tap_index=True)
            assert taps.dtype == torch.uint8 and torch.equal(idx, ref_idx), isa
            assert torch.equal(out_t.nan_to_num(), out.nan_to_num()) and torch.equal(out_t.isnan(), out.isnan()), isa
            assert torch.equal(taps, taps_from_indices(ref_idx, x.shape[-1], k, s, p, d)), isa
            gi = ops.max_pool2d_backward(g, x, idx, *args)
            gt = ops.max_pool2d_backward(g, x, taps, *args)
            assert torch.equal(gt, gi), isa


@cpu_kernels_only
def test_max_pool2d_tap_bytes_out_of_the_window_are_skipped():
    """The backward op is public: a tap byte past the window (never written by the forward) adds nothing
    and writes nothing out of place, on the lanes (scratch padded around the plane) and the generic loop."""
    x = torch.randn(2, 3, 9, 11)
    ops = torch.ops.dlkernels
    for isa in dlkernels.supported_cpu_isas():
        with dlkernels.use_cpu_isa(isa):
            for dtype in (torch.float32, torch.float64):
                xx = x.to(dtype)
                _, taps = ops.max_pool2d_forward(xx, [3, 3], [2, 2], [1, 1], [1, 1], False, True)
                g = torch.randn(taps.shape, dtype=dtype)
                bad = taps.clone().view(-1)
                junk = torch.tensor([9, 200, 255, 17], dtype=torch.uint8)
                bad[::4] = junk.repeat(bad.numel())[:bad[::4].numel()]
                bad = bad.view_as(taps)
                want = ops.max_pool2d_backward(g.masked_fill(bad >= 9, 0), xx, taps, [3, 3], [2, 2], [1, 1], [1, 1], False)
                got = ops.max_pool2d_backward(g, xx, bad, [3, 3], [2, 2], [1, 1], [1, 1], False)
                assert torch.equal(got, want), (isa, dtype)


@pytest.mark.parametrize("shape,k,s,p,d,ceil", MAX_CONFIGS, ids=[str(i) for i in range(len(MAX_CONFIGS))])
def test_max_pool2d_channels_last(device, dtype, shape, k, s, p, d, ceil):
    """channels_last input (on the CPU pooled in that layout, ops/pooling.cpp): output, torch's indices,
    the tap bytes of the planar kernels, the gradient through either argmax form (equal to torch's, and
    to each other bit for bit), all in torch's memory formats; ties, NaN and windows of -inf; a tap
    byte past the window adds nothing."""
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[::3] = x.view(-1)[::3].round()  # ties
    if x.numel() > 4:
        x.view(-1)[1] = float("-inf")
        x.view(-1)[-2] = float("nan")
    if x.shape[0] > 1:
        x[1, 0] = float("-inf")  # windows of -inf only
    x = x.to(device)
    xc = x.contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if not xc.is_contiguous() else torch.contiguous_format
    args = (list(k), list(s), list(p), list(d), ceil)
    ops = torch.ops.dlkernels
    ref, ref_idx = F.max_pool2d(xc, *args, return_indices=True)
    out, idx = ops.max_pool2d_forward(xc, *args)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(idx, ref_idx)
    assert out.is_contiguous(memory_format=fmt) and idx.is_contiguous(memory_format=fmt)
    g = torch.randn(ref.shape, dtype=dtype).to(device).contiguous(memory_format=torch.channels_last)
    xr = xc.clone().requires_grad_(True)
    want, = torch.autograd.grad(F.max_pool2d(xr, *args), xr, g)
    gi = ops.max_pool2d_backward(g, xc, idx, *args)
    torch.testing.assert_close(gi, want, rtol=0, atol=0)
    assert gi.is_contiguous(memory_format=fmt)
    if device == "cpu" and not cuda_semantics(device):  # the uint8 tap form is CPU-only
        out_t, taps = ops.max_pool2d_forward(xc, *args, tap_index=True)
        _, planar_taps = ops.max_pool2d_forward(x, *args, tap_index=True)
        assert torch.equal(taps, planar_taps) and taps.is_contiguous(memory_format=fmt)
        assert torch.equal(out_t.nan_to_num(), out.nan_to_num()) and torch.equal(out_t.isnan(), out.isnan())
        assert torch.equal(ops.max_pool2d_backward(g, xc, taps, *args), gi)
        bad = taps.clone()
        bad[..., ::2] = 255
        masked = g.masked_fill(bad == 255, 0)
        assert torch.equal(ops.max_pool2d_backward(g, xc, bad, *args), ops.max_pool2d_backward(masked, xc, taps, *args))
    # and through the functional API, module included
    xs = xc.clone().requires_grad_(True)
    y = DF.max_pool2d(xs, *args[:4], ceil_mode=ceil)
    y.backward(g)
    assert y.is_contiguous(memory_format=fmt) and xs.grad.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(xs.grad, want, rtol=0, atol=0)


def test_max_pool2d_ties_nan_and_minus_inf(device):
    x = torch.zeros(1, 2, 6, 6, device=device)
    x[0, 0].random_(0, 3)                    # many ties: the first maximum must win
    x[0, 1] = float("-inf")
    x[0, 1, 2, 3] = float("nan")             # NaN wins its windows
    x[0, 1, 4, 4] = float("nan")
    for kw in (dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=2), dict(kernel_size=4, stride=2, padding=2)):
        out, idx = DF.max_pool2d(x, return_indices=True, **kw)
        ref, ridx = F.max_pool2d(x, return_indices=True, **kw)
        torch.testing.assert_close(out, ref, equal_nan=True)
        assert torch.equal(idx, ridx)


AVG_CONFIGS = []
_rng = random.Random(1)
while len(AVG_CONFIGS) < 30:
    k = (_rng.randint(1, 4), _rng.randint(1, 4))
    s = (_rng.randint(1, 3), _rng.randint(1, 3))
    p = (_rng.randint(0, k[0] // 2), _rng.randint(0, k[1] // 2))
    h, w = _rng.randint(1, 12), _rng.randint(1, 12)
    opts = (_rng.random() < 0.5, _rng.random() < 0.5, _rng.choice([None, None, 3, -2]))
    try:
        F.avg_pool2d(torch.zeros(1, 1, h, w), k, s, p, *opts)
    except RuntimeError:
        continue
    AVG_CONFIGS.append(((_rng.randint(1, 3), _rng.randint(1, 3), h, w), k, s, p) + opts)


@pytest.mark.parametrize("shape,k,s,p,ceil,include_pad,divisor", AVG_CONFIGS, ids=[str(i) for i in range(len(AVG_CONFIGS))])
def test_avg_pool2d_matches_torch(device, dtype, shape, k, s, p, ceil, include_pad, divisor):
    x = torch.randn(shape, dtype=dtype, device=device)
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include_pad,
              divisor_override=divisor)
    check_fwd_bwd(lambda a: DF.avg_pool2d(a, **kw), lambda a: F.avg_pool2d(a, **kw), [x], dtype=dtype)


@pytest.mark.parametrize("shape,out", [((2, 3, 7, 7), 1), ((2, 3, 10, 9), (4, 3)), ((1, 2, 5, 13), (None, 6)),
                                       ((3, 4, 4, 4), (8, 8)), ((16, 8, 7, 7), (1, 1)), ((1, 1, 1, 1), 3),
                                       # global pooling's 8 partial sums: planes of 1, 7, 8, 15 and 1024 values
                                       ((2, 3, 1, 1), 1), ((3, 2, 1, 7), 1), ((2, 3, 2, 4), 1), ((2, 5, 3, 5), 1),
                                       ((2, 3, 32, 32), 1)])
def test_adaptive_avg_pool2d_matches_torch(device, dtype, shape, out):
    x = torch.randn(shape, dtype=dtype, device=device)
    check_fwd_bwd(lambda a: DF.adaptive_avg_pool2d(a, out), lambda a: F.adaptive_avg_pool2d(a, out), [x], dtype=dtype)


ADAPTIVE_CL = [((2, 3, 7, 7), (1, 1)), ((2, 3, 10, 9), (4, 3)), ((1, 2, 5, 13), (5, 6)), ((3, 4, 4, 4), (8, 8)),
               ((16, 8, 7, 7), (1, 1)), ((2, 3, 2, 4), (3, 3))]


def _channels_last_pool_case(device, dtype, shape, op, ref_op):
    """ours and torch's on a channels_last input in float64: output and gradient at 1e-12, both in
    torch's memory format, through the functional API and the ops directly."""
    x = torch.randn(shape, dtype=dtype).to(device).contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
    xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, r = op(xs), ref_op(xr)
    g = torch.randn(r.shape, dtype=dtype).to(device).contiguous(memory_format=torch.channels_last)
    y.backward(g)
    r.backward(g)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, r, **tol)
    torch.testing.assert_close(xs.grad, xr.grad, **tol)
    assert y.is_contiguous(memory_format=fmt) and xs.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("shape,k,s,p,ceil,include_pad,divisor", AVG_CONFIGS, ids=[str(i) for i in range(len(AVG_CONFIGS))])
def test_avg_pool2d_channels_last(device, dtype, shape, k, s, p, ceil, include_pad, divisor):
    """channels_last input (on the CPU pooled in that layout: ops/pooling.cpp), every option."""
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include_pad,
              divisor_override=divisor)
    _channels_last_pool_case(device, dtype, shape, lambda a: DF.avg_pool2d(a, **kw), lambda a: F.avg_pool2d(a, **kw))
    x = torch.randn(shape, dtype=dtype).to(device).contiguous(memory_format=torch.channels_last)
    args = (list(k), list(s), list(p), ceil, include_pad, divisor)
    out = torch.ops.dlkernels.avg_pool2d_forward(x, *args)
    g = torch.randn(out.shape, dtype=dtype).to(device)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.ops.dlkernels.avg_pool2d_backward(g, x, *args).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape,out", ADAPTIVE_CL, ids=[str(i) for i in range(len(ADAPTIVE_CL))])
def test_adaptive_avg_pool2d_channels_last(device, dtype, shape, out):
    _channels_last_pool_case(device, dtype, shape, lambda a: DF.adaptive_avg_pool2d(a, out),
                             lambda a: F.adaptive_avg_pool2d(a, out))


def test_unbatched_non_contiguous_channels_last(device):
    x = torch.randn(2, 5, 12, 10, device=device)
    for inp in (x[0], x[..., ::2], x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
        for ours, ref in ((lambda a: DF.max_pool2d(a, 3, 2, 1), lambda a: F.max_pool2d(a, 3, 2, 1)),
                          (lambda a: DF.avg_pool2d(a, 2, ceil_mode=True), lambda a: F.avg_pool2d(a, 2, ceil_mode=True)),
                          (lambda a: DF.adaptive_avg_pool2d(a, (3, 2)), lambda a: F.adaptive_avg_pool2d(a, (3, 2)))):
            o, r = check_fwd_bwd(ours, ref, [inp])
            if inp.dim() == 4 and inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous():
                assert o.is_contiguous(memory_format=torch.channels_last) == r.is_contiguous(
                    memory_format=torch.channels_last)


ISA_CASES = [
    lambda a: DF.max_pool2d(a, 3, 2, 1, ceil_mode=True), lambda a: DF.max_pool2d(a, 2),
    lambda a: DF.max_pool2d(a, 3, 1, 1), lambda a: DF.max_pool2d(a, (2, 4), (1, 2), (1, 2), dilation=(1, 2)),
    lambda a: DF.max_pool2d(a, (3, 3), 2, 1, dilation=2), lambda a: DF.max_pool2d(a, 3, 3, 1),
    lambda a: DF.avg_pool2d(a, 3, 2, 1), lambda a: DF.avg_pool2d(a, 2), lambda a: DF.avg_pool2d(a, 3, 1, 1),
    lambda a: DF.avg_pool2d(a, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    lambda a: DF.avg_pool2d(a, (2, 4), (2, 1), (1, 2), divisor_override=3), lambda a: DF.avg_pool2d(a, 3, 3, 1),
    lambda a: DF.adaptive_avg_pool2d(a, (5, 4)), lambda a: DF.adaptive_avg_pool2d(a, 1),
]


@pytest.mark.parametrize("width", [5, 19, 40])
def test_isa_paths_match_scalar(width):
    """The AVX paths (hand-written lanes for float32 at column stride 1 or 2, the generic loops otherwise)
    visit each window's taps in the scalar path's order: outputs, indices and gradients are the same bits,
    NaN and -inf windows included."""
    x = torch.randn(3, 7, 23, width)
    x[0, 0, 3:9, :] = float("-inf")
    x[1, 2, 5, 1] = float("nan")
    x[2, 3].random_(0, 3)  # ties
    results = {}
    for isa in dlkernels.supported_cpu_isas():
        with dlkernels.use_cpu_isa(isa):
            outs = []
            for fn in ISA_CASES:
                xx = x.clone().requires_grad_(True)
                y = fn(xx)
                y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
                outs += [y.detach(), xx.grad]
            _, idx = DF.max_pool2d(x, 3, 2, 1, return_indices=True)
            results[isa] = outs + [idx]
    for isa in results:
        for a, b in zip(results[isa], results["scalar"]):
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), isa
            assert torch.equal(a.isnan(), b.isnan()), isa


@pytest.mark.parametrize("width", [8, 19, 40])
def test_max_pool_nan_anywhere_and_signed_zero_ties(width):
    """Max pooling's AVX lanes take a plain max on planes without NaN and the exact test on planes with
    one, so the copy that looks for NaN must see every column (whole vectors and the row's tail), and a
    tie of -0.0 and +0.0 must keep the first, as torch does: outputs bitwise and indices equal to torch's
    on every ISA."""
    gen = torch.Generator().manual_seed(width)
    x = torch.where(torch.rand(4, 5, 9, width, generator=gen) < 0.5, -0.0, 0.0)  # batch 0: signed zeros
    x[1:] = torch.randn(3, 5, 9, width, generator=gen)
    x[1, :, ::2] = x[1, :, ::2].abs().neg().clamp(max=-0.0) * 0  # rows of -0.0 among values of both signs
    for c in range(5):  # batch 2: one NaN per plane, at a different row and column each
        x[2, c, (2 * c + 1) % 9, (7 * c + 3) % width] = float("nan")
    x[3, :, 4, width - 1] = float("nan")  # batch 3: the last column, in the copy's scalar tail when it has one
    for isa in dlkernels.supported_cpu_isas():
        with dlkernels.use_cpu_isa(isa):
            for k, s, p in ((3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 1, 0)):
                o, oi = DF.max_pool2d(x, k, s, p, return_indices=True)
                r, ri = F.max_pool2d(x, k, s, p, return_indices=True)
                assert torch.equal(o.view(torch.int32), r.view(torch.int32)), (isa, k, s, p)
                assert torch.equal(oi, ri), (isa, k, s, p)
    assert x[0].signbit().any() and (~x[0].signbit()).any()


def test_outputs_above_the_cache_are_streamed():
    """Outputs and gradients above 32 MiB leave the AVX kernels through non-temporal stores with a
    scalar head up to the first aligned address and a scalar tail: odd sizes put both at every plane."""
    x = torch.randn(3, 37, 229, 231, requires_grad=True)  # 94 MiB
    for ours, ref in ((lambda a: DF.max_pool2d(a, 2, 1, return_indices=True), lambda a: F.max_pool2d(a, 2, 1, return_indices=True)),
                      (lambda a: DF.avg_pool2d(a, 3, 1, 1), lambda a: F.avg_pool2d(a, 3, 1, 1))):
        o = ours(x)
        r = ref(x)
        o, r = (o, r) if isinstance(o, tuple) else ((o,), (r,))
        g = torch.randn_like(r[0])
        (go,) = torch.autograd.grad(o[0], x, g)
        (gr,) = torch.autograd.grad(r[0], x, g)
        torch.testing.assert_close(o[0], r[0])
        for a, b in zip(o[1:], r[1:]):
            assert torch.equal(a, b)
        torch.testing.assert_close(go, gr)


@pytest.mark.parametrize("hw", [(2040, 2040), (2100, 2050)], ids=["lanes", "generic"])
def test_planes_on_both_sides_of_the_lane_scratch_bound(hw):
    """Planes whose padded scratch copy would pass 2^22 elements take the generic loops on the AVX
    paths (no per-thread copy of a huge plane): both sides of the bound match torch."""
    x = torch.randn(1, 2, *hw, requires_grad=True)
    for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2)):
        o, oi = DF.max_pool2d(x, return_indices=True, **kw)
        r, ri = F.max_pool2d(x, return_indices=True, **kw)
        assert torch.equal(o, r) and torch.equal(oi, ri)
        g = torch.randn_like(r)
        rg = torch.autograd.grad(r, x, g)[0]
        assert torch.equal(torch.autograd.grad(o, x, g)[0], rg)
        o = DF.max_pool2d(x, **kw)  # autograd keeps tap bytes: a padded scratch plane, or the generic loop past it
        assert torch.equal(torch.autograd.grad(o, x, g)[0], rg)
        o, r = DF.avg_pool2d(x, **kw), F.avg_pool2d(x, **kw)
        torch.testing.assert_close(o, r)
        torch.testing.assert_close(torch.autograd.grad(o, x, g)[0], torch.autograd.grad(r, x, g)[0])


# ------------------------------------------------------------- the textbook's im2col pooling in numpy

def im2col_pool_reference(x, kh, kw, stride, pad, op):
    """The textbook's Pooling layer: im2col, then max or mean over each window's row. Max pooling pads
    with -inf (PyTorch's convention); average pooling pads with zeros and counts the padding."""
    n, c, h, w = x.shape
    fill = -np.inf if op == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (w + 2 * pad - kw) // stride + 1
    col = np.empty((n, c, kh, kw, oh, ow))
    for y in range(kh):
        for z in range(kw):
            col[:, :, y, z] = xp[:, :, y:y + stride * oh:stride, z:z + stride * ow:stride]
    col = col.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow * c, kh * kw)
    red = col.max(axis=1) if op == "max" else col.mean(axis=1)
    return red.reshape(n, oh, ow, c).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_numpy_im2col_reference(device, k, stride, pad):
    x_np = np.random.default_rng(k * 10 + stride).normal(size=(2, 3, 9, 8))
    x = torch.tensor(x_np, device=device)
    np.testing.assert_allclose(DF.max_pool2d(x, k, stride, pad).cpu().numpy(),
                               im2col_pool_reference(x_np, k, k, stride, pad, "max"), rtol=1e-12)
    np.testing.assert_allclose(DF.avg_pool2d(x, k, stride, pad).cpu().numpy(),
                               im2col_pool_reference(x_np, k, k, stride, pad, "mean"), rtol=1e-12)


# ------------------------------------------------------------------------ gradcheck, opcheck, nn

def test_gradcheck(device):
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: DF.max_pool2d(a, 3, 2, 1, dilation=(1, 2), ceil_mode=True), (x,))
    assert torch.autograd.gradcheck(lambda a: DF.avg_pool2d(a, 3, 2, 1, ceil_mode=True, count_include_pad=False), (x,))
    assert torch.autograd.gradcheck(lambda a: DF.adaptive_avg_pool2d(a, (4, 5)), (x,))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    """The fake kernels agree with the real ones, memory formats included (channels_last in, out)."""
    x = torch.randn(2, 3, 9, 7, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ops = torch.ops.dlkernels
    torch.library.opcheck(ops.max_pool2d_forward.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))
    out, idx = ops.max_pool2d_forward(x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True)
    torch.library.opcheck(ops.max_pool2d_backward.default,
                          (torch.randn_like(out), x.detach(), idx, [3, 3], [2, 2], [1, 1], [1, 1], True))
    if not cuda_semantics(device):  # uint8 window taps: CPU kernels only
        torch.library.opcheck(ops.max_pool2d_forward.default, (x, [3, 2], [2, 2], [1, 1], [2, 1], True, True))
        out, taps = ops.max_pool2d_forward(x.detach(), [3, 2], [2, 2], [1, 1], [2, 1], True, True)
        torch.library.opcheck(ops.max_pool2d_backward.default,
                              (torch.randn_like(out), x.detach(), taps, [3, 2], [2, 2], [1, 1], [2, 1], True))
    torch.library.opcheck(ops.avg_pool2d_forward.default, (x, [2, 3], [2, 1], [1, 0], False, False, None))
    y = ops.avg_pool2d_forward(x.detach(), [2, 3], [2, 1], [1, 0], False, False, 5)
    torch.library.opcheck(ops.avg_pool2d_backward.default,
                          (torch.randn_like(y), x.detach(), [2, 3], [2, 1], [1, 0], False, False, 5))
    torch.library.opcheck(ops.adaptive_avg_pool2d_forward.default, (x, [4, 3]))
    torch.library.opcheck(ops.adaptive_avg_pool2d_backward.default, (torch.randn(2, 3, 4, 3, device=device), x.detach()))


def test_modules_are_drop_in(device):
    x = torch.randn(2, 4, 11, 9, device=device)
    pairs = [(dnn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
             (dnn.AvgPool2d(2, count_include_pad=False), torch.nn.AvgPool2d(2, count_include_pad=False)),
             (dnn.AdaptiveAvgPool2d((2, None)), torch.nn.AdaptiveAvgPool2d((2, None)))]
    for ours, ref in pairs:
        assert isinstance(ours, type(ref)) and repr(ours) == repr(ref)
        check_fwd_bwd(ours, ref, [x])
    out, idx = dnn.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(idx, torch.nn.MaxPool2d(2, return_indices=True)(x)[1])


def test_compile_fullgraph():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), dnn.MaxPool2d(2), dnn.AvgPool2d(2, ceil_mode=True),
                                dnn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(3, 2, 13, 13)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    compiled.sum().backward()


def test_deterministic_across_thread_counts():
    x = torch.randn(4, 16, 33, 31)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xx = x.clone().requires_grad_(True)
            y = DF.max_pool2d(xx, 3, 1, 1) + DF.avg_pool2d(xx, 3, 1, 1)
            y.backward(torch.ones_like(y))
            results.append((y.detach(), xx.grad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# ------------------------------------------------------------------------------------ bad inputs

def test_bad_inputs(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    cases = [
        (lambda: DF.max_pool2d(x, 3, padding=2), ValueError, "padding must be at most half of kernel_size"),
        (lambda: DF.avg_pool2d(x, 2, padding=2), ValueError, "padding must be at most half of kernel_size"),
        (lambda: DF.max_pool2d(x, 0), ValueError, "kernel_size must be positive"),
        (lambda: DF.max_pool2d(x, (2, -1)), ValueError, "kernel_size must be positive"),
        (lambda: DF.max_pool2d(x, 2, stride=0), ValueError, "stride must be positive"),
        (lambda: DF.avg_pool2d(x, 2, stride=(1, -2)), ValueError, "stride must be positive"),
        (lambda: DF.max_pool2d(x, 2, dilation=0), ValueError, "dilation must be positive"),
        (lambda: DF.max_pool2d(x, 2, padding=-1), ValueError, "padding must be non-negative"),
        (lambda: DF.max_pool2d(x, 9), ValueError, "too small"),
        (lambda: DF.max_pool2d(x[0, 0], 2), ValueError, "input must have shape (N, C, H, W) or (C, H, W)"),
        (lambda: DF.max_pool2d(x.unsqueeze(0), 2), ValueError, "input must have shape"),
        (lambda: DF.max_pool2d(x.long(), 2), TypeError, "input must be float32 or float64"),
        (lambda: DF.max_pool2d(x, (2, 2, 2)), TypeError, "kernel_size must be an int or a pair of ints"),
        (lambda: DF.max_pool2d(x, 2.5), TypeError, "kernel_size must be an int or a pair"),
        (lambda: DF.avg_pool2d(x, 2, divisor_override=0), ValueError, "divisor_override must be a non-zero int"),
        (lambda: DF.adaptive_avg_pool2d(x, 0), ValueError, "output_size must be positive"),
        (lambda: DF.adaptive_avg_pool2d(x, (1, 2, 3)), ValueError, "output_size must be an int or a pair"),
        (lambda: DF.max_pool2d(torch.randn(2, 0, 4, 4, device=device), 2), ValueError, "non-zero C, H and W"),
    ]
    ops = torch.ops.dlkernels
    big = torch.randn(1, 1, 20, 20, device=device)
    out, idx = ops.max_pool2d_forward(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    taps_17 = torch.zeros(1, 1, 4, 4, dtype=torch.uint8, device=device)
    cases += [
        (lambda: ops.max_pool2d_forward(big, [17, 17], [1, 1], [0, 0], [1, 1], False, True),
         RuntimeError if cuda_semantics(device) else ValueError,
         "tap_index (uint8 window taps) is CPU-only" if cuda_semantics(device) else "tap_index needs kernel_size[0] * kernel_size[1] <= 256"),
        (lambda: ops.max_pool2d_backward(out, x, idx.float(), [2, 2], [2, 2], [0, 0], [1, 1], False), ValueError,
         "indices must be int64 (flat positions) or uint8 (window taps, CPU) of shape"),
        (lambda: ops.max_pool2d_backward(out, x, idx[:1], [2, 2], [2, 2], [0, 0], [1, 1], False), ValueError,
         "indices must be int64"),
        (lambda: ops.max_pool2d_backward(torch.randn(1, 1, 4, 4, device=device), big, taps_17, [17, 17], [1, 1], [0, 0],
                                         [1, 1], False), RuntimeError, "uint8 window taps need a CPU input and kernel_size"),
    ]
    for i, (call, exc, fragment) in enumerate(cases):
        with pytest.raises(exc) as info:
            call()
        if fragment:
            assert fragment in str(info.value), f"case {i}: {info.value!r}"


def test_empty_batch(device):
    x = torch.randn(0, 3, 6, 6, device=device, requires_grad=True)
    for ours, ref in ((DF.max_pool2d(x, 2), F.max_pool2d(x, 2)), (DF.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(x, 3, 1, 1)),
                      (DF.adaptive_avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 2))):
        assert ours.shape == ref.shape
        ours.sum().backward()


@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision(dtype):
    x = torch.randn(2, 8, 15, 13, device=KDEV, dtype=dtype)
    for ours, ref in ((lambda a: DF.max_pool2d(a, 3, 2, 1), lambda a: F.max_pool2d(a, 3, 2, 1)),
                      (lambda a: DF.avg_pool2d(a, 3, 2, 1), lambda a: F.avg_pool2d(a, 3, 2, 1)),
                      (lambda a: DF.adaptive_avg_pool2d(a, 4), lambda a: F.adaptive_avg_pool2d(a, 4))):
        check_fwd_bwd(ours, ref, [x])
