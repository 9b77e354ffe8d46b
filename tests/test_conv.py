"""im2col convolution: parity of output and all three gradients with F.conv2d over random
configurations, im2col/col2im against F.unfold/F.fold, the numpy textbook Convolution, gradcheck,
opcheck, chunking under a tiny workspace limit, every ISA path, modules, bad inputs."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
import dlkernels.nn as dnn
from dlkernels.textbook import Convolution

from conftest import KDEV, assert_lowp_close, check_fwd_bwd, cpu_kernels_only, needs_cuda_kernels


def random_conv_configs(n, seed):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        groups = rng.choice([1, 1, 1, 2, 3])
        cg, ocg = rng.randint(1, 3), rng.randint(1, 3)
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, 3), rng.randint(0, 3))
        d = (rng.randint(1, 2), rng.randint(1, 2))
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        x_shape = (rng.randint(1, 3), cg * groups, h, w)
        w_shape = (ocg * groups, cg, k[0], k[1])
        try:
            F.conv2d(torch.zeros(x_shape), torch.zeros(w_shape), None, s, p, d, groups)
        except RuntimeError:
            continue  # torch rejects it: the bad-input tests cover those
        out.append((x_shape, w_shape, s, p, d, groups, rng.random() < 0.7))
    return out


CONV_CONFIGS = random_conv_configs(30, 0) + [
    ((2, 3, 3, 3), (4, 3, 5, 5), (1, 1), (2, 2), (1, 1), 1, True),     # kernel larger than the input, padded
    ((2, 2, 9, 9), (3, 2, 2, 2), (4, 3), (0, 1), (1, 1), 1, True),     # stride larger than the kernel
    ((1, 3, 11, 7), (5, 3, 3, 2), (2, 1), (1, 0), (2, 1), 1, False),   # asymmetric everything, batch 1
    ((2, 6, 7, 7), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6, True),     # depthwise
    ((2, 4, 7, 7), (8, 1, 3, 3), (2, 2), (1, 1), (1, 1), 4, True),     # depthwise with multiplier 2
    ((3, 8, 5, 6), (6, 8, 1, 1), (1, 1), (0, 0), (1, 1), 1, True),     # 1x1: the direct GEMM path
    ((3, 8, 5, 6), (6, 4, 1, 1), (1, 1), (0, 0), (1, 1), 2, True),     # 1x1 grouped
    ((2, 8, 9, 9), (4, 8, 1, 1), (2, 2), (0, 0), (1, 1), 1, True),     # 1x1 strided: im2col
    ((5, 1, 28, 28), (6, 1, 5, 5), (1, 1), (0, 0), (1, 1), 1, True),   # LeNet's first layer
]


@pytest.mark.parametrize("x_shape,w_shape,s,p,d,groups,bias", CONV_CONFIGS,
                         ids=[str(i) for i in range(len(CONV_CONFIGS))])
def test_conv2d_matches_torch(device, dtype, x_shape, w_shape, s, p, d, groups, bias):
    gen = torch.Generator().manual_seed(sum(x_shape) + sum(w_shape))
    x = torch.randn(x_shape, generator=gen, dtype=dtype).to(device)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    w = (torch.randn(w_shape, generator=gen, dtype=dtype) / fan_in ** 0.5).to(device)
    b = torch.randn(w_shape[0], generator=gen, dtype=dtype).to(device) if bias else None
    kw = dict(stride=s, padding=p, dilation=d, groups=groups)
    inputs, grads = ([x, w, b], (0, 1, 2)) if bias else ([x, w], (0, 1))
    check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), inputs, grad_inputs=grads, dtype=dtype,
                  error_vs_torch=True)


# On the CPU, the weight gradient of layers with at most 8 filters per group and at most 64 column rows
# takes the hand-written dot-product GEMM, the others at::mm; the forward and input-gradient GEMMs of
# layers with at most 64 filters per group take the hand-written register-tile GEMM, the others at::mm,
# except the forward of a layer with a column matrix, which takes it up to 128 filters per group:
# both sides of each bound, grouped and direct (1x1) too, over batches whose column count
# (N * positions) is no multiple of the tile's column strip, filter counts no multiple of its 4 (AVX-512: 8) rows.
SMALL_GEMM_CONFIGS = [((3, 4, 13, 11), (8, 4, 4, 4), 1, 1), ((3, 4, 13, 11), (9, 4, 4, 4), 1, 1),
                      ((3, 7, 13, 11), (5, 7, 3, 3), 1, 1), ((3, 8, 13, 11), (5, 8, 3, 3), 1, 1),
                      ((3, 6, 13, 11), (6, 3, 5, 5), 2, 2), ((5, 3, 9, 7), (6, 3, 1, 1), 1, 0),
                      ((64, 1, 28, 28), (6, 1, 5, 5), 1, 0),
                      ((3, 9, 7, 5), (64, 9, 3, 3), 1, 1), ((3, 9, 7, 5), (65, 9, 3, 3), 1, 1),
                      ((2, 10, 9, 7), (128, 5, 3, 3), 2, 1), ((2, 10, 9, 7), (130, 5, 3, 3), 2, 1),
                      ((2, 6, 9, 7), (128, 6, 3, 3), 1, 1), ((2, 6, 9, 7), (129, 6, 3, 3), 1, 1),
                      ((3, 5, 6, 5), (100, 5, 1, 1), 1, 0),
                      ((3, 17, 5, 7), (64, 17, 1, 1), 1, 0), ((3, 17, 5, 7), (65, 17, 1, 1), 1, 0),
                      ((1, 3, 1, 1), (64, 3, 1, 1), 1, 0)]


@pytest.mark.parametrize("x_shape,w_shape,groups,p", SMALL_GEMM_CONFIGS,
                         ids=[str(i) for i in range(len(SMALL_GEMM_CONFIGS))])
def test_small_filter_gemms_on_both_sides_of_the_bound(device, dtype, x_shape, w_shape, groups, p):
    gen = torch.Generator().manual_seed(sum(x_shape) + sum(w_shape))
    x = torch.randn(x_shape, generator=gen, dtype=dtype).to(device)
    w = (torch.randn(w_shape, generator=gen, dtype=dtype) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5).to(device)
    b = torch.randn(w_shape[0], generator=gen, dtype=dtype).to(device)
    kw = dict(padding=p, groups=groups)
    check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), [x, w, b], grad_inputs=(0, 1, 2),
                  dtype=dtype, error_vs_torch=True)


# The CPU's direct forward (ops/conv.cpp small_direct; conv_impl.h direct_forward): one group, dilation
# 1, column stride 1 or 2 (2: rows split into even and odd columns), any row stride, and either at most
# 32 input values per output and 16 filters, or at most 64 filters with one output row's input rows
# within 24 KiB (cpu::conv_direct_fits), and cases past those bounds. The input gradient of stride-1
# layers of at least 8 channels runs on the same kernel (a convolution of grad_output with the flipped
# filters: ops/conv.cpp direct_input_grad) when it fits there, checked by the same cases.
# Filter counts around the 6-filter tile (1, 5, 6, 7, 13, 16, 17) and the 12-filter one of rows of one
# vector (11, 16, 25, 64), output widths around the one-vector rows (7, 8, 9) and the 16- (AVX2) and
# 32-column (AVX-512) tiles (1, 15, 16, 17, 28, 31, 32, 33), up to 64 channels, padding symmetric,
# asymmetric ('same' with an even kernel) and larger than the kernel, 1xK and Kx1 kernels, batch 1.
DIRECT_CONFIGS = [((64, 1, 28, 28), (6, 1, 5, 5), dict()),                          # LeNet's first layer
                  ((2, 1, 9, 5), (1, 1, 5, 5), dict()),                             # OW 1
                  ((3, 2, 7, 19), (5, 2, 3, 4), dict(padding=1)),                   # OW 18
                  ((1, 3, 6, 17), (7, 3, 3, 3), dict(padding=(1, 0))),              # OW 15
                  ((2, 3, 5, 18), (13, 3, 3, 3), dict(padding=(2, 0))),             # OW 16, 13 filters
                  ((2, 2, 4, 17), (16, 2, 4, 4), dict(padding="same")),             # OW 17, asymmetric
                  ((1, 1, 3, 31), (6, 1, 1, 7), dict(padding=(0, 3))),              # OW 31
                  ((2, 4, 6, 32), (6, 4, 2, 4), dict(padding=(0, 1))),              # OW 31, 32 values
                  ((2, 2, 5, 32), (9, 2, 4, 1), dict(padding=(2, 0))),              # OW 32
                  ((1, 1, 6, 33), (12, 1, 5, 1), dict(padding=(6, 0))),             # OW 33, padding > kernel
                  ((2, 3, 8, 8), (17, 3, 3, 3), dict(padding=1)),                   # 17 filters, OW 8
                  ((2, 4, 8, 8), (6, 4, 3, 3), dict(padding=1)),                    # 36 values
                  ((2, 16, 8, 8), (16, 16, 3, 3), dict(padding=1)),                 # ResNet-like, OW 8
                  ((2, 32, 5, 7), (25, 32, 3, 3), dict(padding=1)),                 # OW 7, 25 filters
                  ((1, 64, 9, 9), (64, 64, 3, 3), dict(padding=1)),                 # 64 filters, OW 9
                  ((2, 24, 16, 16), (13, 24, 3, 3), dict(padding=1)),               # OW 16, 216 values
                  ((1, 16, 4, 30), (11, 16, 3, 3), dict(padding=(1, 0))),           # OW 28
                  ((2, 4, 8, 8), (65, 4, 3, 3), dict(padding=1)),                   # 65 filters: past the bound
                  ((1, 8, 6, 9), (10, 8, 3, 3), dict(padding=(3, 0))),              # padding past the kernel
                  ((2, 8, 7, 10), (9, 8, 4, 4), dict(padding="same")),              # even kernel, 'same'
                  ((1, 64, 4, 56), (8, 64, 3, 3), dict(padding=1)),                 # 50 KiB of rows: past it
                  ((2, 1, 12, 12), (6, 1, 3, 3), dict(stride=2)),                   # stride 2, no padding
                  ((2, 16, 32, 32), (32, 16, 3, 3), dict(stride=2, padding=1)),     # ResNet downsampling, OW 16
                  ((2, 3, 9, 11), (5, 3, 3, 3), dict(stride=2, padding=1)),         # odd width, OW 6
                  ((1, 4, 8, 7), (7, 4, 4, 4), dict(stride=2, padding=2)),          # even kernel and padding
                  ((2, 5, 6, 13), (13, 5, 5, 5), dict(stride=(1, 2), padding=(0, 2))),  # column stride only
                  ((2, 8, 12, 12), (6, 8, 3, 3), dict(stride=(3, 2), padding=1)),   # row stride 3
                  ((2, 6, 9, 40), (9, 6, 3, 2), dict(stride=(2, 1), padding=1)),    # row stride only, OW 41
                  ((1, 2, 11, 67), (3, 2, 3, 3), dict(stride=2, padding=1)),        # OW 34: two 32-output tiles
                  ((1, 3, 7, 8), (4, 3, 1, 1), dict(stride=2)),                     # 1x1 at stride 2: im2col
                  ((2, 4, 10, 10), (5, 4, 3, 3), dict(stride=3, padding=1)),        # column stride 3: im2col
                  ((2, 1, 12, 12), (6, 1, 3, 3), dict(dilation=2))]                 # dilated: not direct


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("x_shape,w_shape,kw", DIRECT_CONFIGS, ids=[str(i) for i in range(len(DIRECT_CONFIGS))])
def test_direct_forward_small_layers(device, dtype, x_shape, w_shape, kw, bias):
    gen = torch.Generator().manual_seed(sum(x_shape) + sum(w_shape))
    x = torch.randn(x_shape, generator=gen, dtype=dtype).to(device)
    w = (torch.randn(w_shape, generator=gen, dtype=dtype) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5).to(device)
    b = torch.randn(w_shape[0], generator=gen, dtype=dtype).to(device) if bias else None
    check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), [x, w, b] if bias else [x, w],
                  grad_inputs=(0, 1, 2) if bias else (0, 1), dtype=dtype, error_vs_torch=True)
    # unbatched and channels_last input take the same path
    tol = {} if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(DF.conv2d(x[0], w, b, **kw), F.conv2d(x[0], w, b, **kw), **tol)
    torch.testing.assert_close(DF.conv2d(x.to(memory_format=torch.channels_last), w, b, **kw), F.conv2d(x, w, b, **kw),
                               **tol)


# Depthwise layers (groups == channels > 1) take the direct depthwise kernels on the CPU: strides 1-3,
# dilation, asymmetric and larger-than-kernel padding, multipliers 1-3, planes down to 1x1 and outputs
# of one column, kernels wider than the input, odd widths around the vector lengths; stride-1 outputs
# under 16 wide take the flat form, the others the row form (16-output blocks inside the padded edges),
# each on both sides of the thread bound.
DEPTHWISE_CONFIGS = [((2, 8, 17, 13), (8, 1, 3, 3), dict(padding=1)),
                     ((3, 6, 9, 9), (6, 1, 3, 3), dict(stride=2, padding=1)),
                     ((2, 5, 11, 23), (5, 1, 5, 5), dict(stride=(1, 2), padding=2)),
                     ((2, 4, 10, 10), (8, 1, 3, 3), dict(dilation=2, padding=2)),
                     ((1, 3, 7, 19), (9, 1, 3, 2), dict(stride=(2, 3), padding=(0, 1))),
                     ((2, 7, 1, 1), (7, 1, 3, 3), dict(padding=1)),
                     ((2, 4, 4, 33), (4, 1, 1, 7), dict(padding=(0, 4))),
                     ((3, 16, 7, 7), (16, 1, 3, 3), dict(padding="same")),
                     ((2, 6, 8, 8), (6, 1, 4, 2), dict(padding="same")),
                     ((2, 5, 3, 3), (10, 1, 5, 5), dict(padding=3)),
                     ((2, 9, 15, 15), (9, 1, 7, 7), dict(stride=2, padding=3, dilation=(1, 2))),
                     # threads' shares of the 27 planes start inside a channel's 3 filters
                     ((3, 3, 12, 12), (9, 1, 3, 3), dict(padding=1)),
                     ((2, 32, 20, 20), (32, 1, 3, 3), dict(padding=1)),
                     ((4, 24, 4, 4), (24, 1, 3, 3), dict(padding=1)),
                     # several 16-output blocks between dilated edges, and a partial one
                     ((2, 8, 9, 70), (8, 1, 3, 3), dict(padding=1, dilation=(1, 3)))]


@pytest.mark.parametrize("where", ["input", "weight"])
def test_depthwise_inf_and_nan_like_torch(device, where):
    """Infinite inputs or filters give torch's gradients (inf where torch has inf, NaN where it has
    NaN), in the flat form (small planes) and the row form."""
    for shape in ((1, 2, 4, 4), (1, 2, 20, 20)):
        x = torch.randn(shape, dtype=torch.float64).to(device)
        w = torch.randn(2, 1, 3, 3, dtype=torch.float64).to(device)
        if where == "input":
            x[0, 1, 1, 0] = float("inf")
        else:
            w[1, 0, 0, 2] = float("inf")
        go = torch.randn(F.conv2d(x, w, groups=2).shape, dtype=torch.float64).to(device)
        grads = []
        for fn in (DF.conv2d, F.conv2d):
            xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
            out = fn(xs, ws, groups=2)
            grads.append([out, *torch.autograd.grad(out, (xs, ws), go)])
        for a, b in zip(*grads):
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
            fin = a.isfinite()
            torch.testing.assert_close(a[fin], b[fin], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("x_shape,w_shape,kw", DEPTHWISE_CONFIGS, ids=[str(i) for i in range(len(DEPTHWISE_CONFIGS))])
def test_depthwise(device, dtype, x_shape, w_shape, kw, bias):
    x = torch.randn(x_shape, dtype=dtype).to(device)
    w = torch.randn(w_shape, dtype=dtype).to(device) / (w_shape[2] * w_shape[3]) ** 0.5
    b = torch.randn(w_shape[0], dtype=dtype).to(device) if bias else None
    kw = dict(kw, groups=x_shape[1])
    check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), [x, w, b] if bias else [x, w],
                  grad_inputs=(0, 1, 2) if bias else (0, 1), dtype=dtype, error_vs_torch=True)
    # each gradient alone (the backward's output mask), and channels_last input
    go = torch.randn(F.conv2d(x, w, b, **kw).shape, dtype=dtype).to(device)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)

    def grad(fn, wrt, cast):
        xs, ws = x.to(cast).requires_grad_(wrt == "input"), w.to(cast).requires_grad_(wrt == "weight")
        bs = None if b is None else b.to(cast)
        return torch.autograd.grad(fn(xs, ws, bs, **kw), xs if wrt == "input" else ws, go.to(cast))[0]

    for wrt in ("input", "weight"):
        g, r = grad(DF.conv2d, wrt, dtype), grad(F.conv2d, wrt, dtype)
        if dtype == torch.float32:  # sums of up to N * OH * OW products: judged against float64
            assert_lowp_close(g, r, grad(F.conv2d, wrt, torch.float64), f"grad {wrt} alone")
        else:
            torch.testing.assert_close(g, r, **tol)
    xc = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(DF.conv2d(xc, w, b, **kw), F.conv2d(x, w, b, **kw), **tol)


@pytest.mark.parametrize("x_shape,w_shape,kw", DEPTHWISE_CONFIGS, ids=[str(i) for i in range(len(DEPTHWISE_CONFIGS))])
def test_depthwise_channels_last(device, x_shape, w_shape, kw):
    """channels_last input: one filter per channel runs the channels_last kernels (ops/conv.cpp,
    depthwise_nhwc), more filters compute contiguous. Output and every gradient against torch in float64
    at 1e-12, each gradient alone too, in torch's memory formats."""
    gen = torch.Generator().manual_seed(sum(x_shape) + sum(w_shape))
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(w_shape, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(w_shape[0], generator=gen, dtype=torch.float64).to(device)
    kw = dict(kw, groups=x_shape[1])
    xc = x.contiguous(memory_format=torch.channels_last)
    for bias in (b, None):
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (xc, w, b))
        ys = DF.conv2d(xs, ws, bs if bias is not None else None, **kw)
        xr, wr, br = (t.clone().requires_grad_(True) for t in (xc, w, b))
        yr = F.conv2d(xr, wr, br if bias is not None else None, **kw)
        torch.testing.assert_close(ys, yr, rtol=1e-12, atol=1e-12)
        assert _in_format_of(ys, xc), ys.stride()
        g = torch.randn(yr.shape, generator=gen, dtype=torch.float64).to(device).contiguous(
            memory_format=torch.channels_last)
        wrt_s, wrt_r = [xs, ws], [xr, wr]
        if bias is not None:
            wrt_s.append(bs)
            wrt_r.append(br)
        for i in range(len(wrt_s)):  # each gradient alone, then all
            got, = torch.autograd.grad(ys, wrt_s[i], g, retain_graph=True)
            want, = torch.autograd.grad(yr, wrt_r[i], g, retain_graph=True)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        got = torch.autograd.grad(ys, wrt_s, g)
        want = torch.autograd.grad(yr, wrt_r, g)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
        assert _in_format_of(got[0], xc), got[0].stride()


# One-group CPU layers beyond the small-filter bound accumulate grad_weight transposed (ops/conv.cpp):
# many filters, the direct 1x1 path, strided and dilated, whole-batch chunks, one image per chunk
# (workspace limit 1) and two (a smaller last chunk), with and without bias.
TRANSPOSED_CONFIGS = [((1, 5, 16, 16), (32, 5, 3, 3), dict(padding=1)),
                      ((3, 5, 15, 17), (32, 5, 3, 3), dict(padding=1)),
                      ((2, 6, 18, 18), (31, 6, 3, 3), dict(padding=1)),
                      ((2, 16, 20, 20), (40, 16, 1, 1), {}),                        # direct 1x1
                      ((2, 7, 37, 35), (33, 7, 3, 2), dict(stride=(2, 1), dilation=(1, 2), padding=(1, 2))),
                      ((3, 4, 10, 10), (32, 4, 3, 3), dict(padding=1))]            # 2 x 100 cols a chunk, then 1 x 100


@pytest.mark.parametrize("limit", [None, 1, "two"], ids=["chunked", "one-image", "two-images"])
@pytest.mark.parametrize("x_shape,w_shape,kw", TRANSPOSED_CONFIGS, ids=[str(i) for i in range(len(TRANSPOSED_CONFIGS))])
def test_transposed_grad_weight_accumulation(device, dtype, x_shape, w_shape, kw, limit):
    gen = torch.Generator().manual_seed(sum(x_shape) + sum(w_shape))
    x = torch.randn(x_shape, generator=gen, dtype=dtype).to(device)
    w = (torch.randn(w_shape, generator=gen, dtype=dtype) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5).to(device)
    b = torch.randn(w_shape[0], generator=gen, dtype=dtype).to(device)
    before = dlkernels.workspace_limit()
    try:
        if limit == "two":  # chunks of two images, the last one smaller for odd batches
            positions = F.conv2d(x[:1], w, **kw).shape[2:].numel()
            dlkernels.set_workspace_limit(2 * w[0].numel() * positions * x.element_size())
        elif limit is not None:
            dlkernels.set_workspace_limit(limit)
        check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), [x, w, b],
                      grad_inputs=(0, 1, 2), dtype=dtype, error_vs_torch=True)
        check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), [x, w], grad_inputs=(0, 1),
                      dtype=dtype, error_vs_torch=True)
    finally:
        dlkernels.set_workspace_limit(before)


@pytest.mark.parametrize("k,d", [((3, 3), (1, 1)), ((4, 2), (1, 1)), ((2, 5), (2, 1)), ((4, 4), (2, 1))])
def test_padding_same_and_valid(device, k, d):
    x = torch.randn(2, 3, 9, 8, device=device)
    w = torch.randn(4, 3, *k, device=device)
    b = torch.randn(4, device=device)
    for padding in ("same", "valid"):
        o, r = check_fwd_bwd(lambda *a: DF.conv2d(*a, padding=padding, dilation=d),
                             lambda *a: F.conv2d(*a, padding=padding, dilation=d), [x, w, b], grad_inputs=(0, 1, 2),
                             error_vs_torch=True)
        if padding == "same":
            assert o.shape[2:] == x.shape[2:]


def test_unbatched_non_contiguous_channels_last(device):
    x = torch.randn(2, 5, 12, 10, device=device)
    w = torch.randn(3, 5, 3, 3, device=device) / 5
    wt = torch.randn(3, 5, 3, 3, device=device).transpose(2, 3) / 5  # non-contiguous weight
    for inp in (x[0], x[..., ::2], x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
        for weight in (w, wt):
            o, r = check_fwd_bwd(lambda a, b: DF.conv2d(a, b, padding=1), lambda a, b: F.conv2d(a, b, padding=1),
                                 [inp, weight], grad_inputs=(0, 1), error_vs_torch=True)
            if inp.dim() == 4 and not inp.is_contiguous() and inp.is_contiguous(memory_format=torch.channels_last):
                assert o.is_contiguous(memory_format=torch.channels_last) == r.is_contiguous(
                    memory_format=torch.channels_last)


def test_gradient_subsets(device):
    """Frozen weights, frozen input, no bias: only the gradients asked for are computed, and right."""
    x = torch.randn(2, 4, 7, 7, device=device)
    w = torch.randn(5, 4, 3, 3, device=device)
    b = torch.randn(5, device=device)
    for grads in ((0,), (1,), (2,), (1, 2), (0, 2)):
        check_fwd_bwd(lambda *a: DF.conv2d(*a, stride=2, padding=1), lambda *a: F.conv2d(*a, stride=2, padding=1),
                      [x, w, b], grad_inputs=grads, error_vs_torch=True)


# --------------------------------------------------------------------------- im2col / col2im

UNFOLD_CONFIGS = [((2, 3, 9, 8), (3, 2), (2, 1), (1, 0), (2, 3)), ((1, 1, 5, 5), (5, 5), (1, 1), (0, 0), (1, 1)),
                  ((3, 2, 6, 7), (2, 2), (1, 1), (1, 1), (1, 1)), ((2, 4, 4, 4), (1, 1), (1, 1), (0, 0), (1, 1)),
                  ((2, 2, 3, 4), (3, 3), (1, 2), (2, 1), (3, 1)), ((1, 3, 13, 11), (4, 3), (2, 2), (3, 1), (2, 4)),
                  # Large enough to run on every thread, with rows narrower than, equal to and just past a
                  # vector (the stride-1 rows are written in whole vectors that spill into the next row of
                  # their own run, never into another thread's): output widths 9, 3, 8, 17 and 6 (stride 2)
                  ((8, 16, 9, 9), (3, 3), (1, 1), (1, 1), (1, 1)), ((6, 20, 5, 3), (3, 3), (1, 1), (1, 1), (1, 1)),
                  ((4, 12, 10, 8), (3, 3), (1, 1), (1, 1), (1, 1)), ((3, 9, 7, 17), (3, 2), (1, 2), (2, 1), (1, 1)),
                  ((5, 8, 12, 12), (3, 3), (1, 1), (1, 1), (2, 2)),
                  # column stride 2 (rows gathered from the even lanes of two loads, the last masked at
                  # src[2 * hi]), multithreaded: output widths 17, 16, 32 and 34 (around and past 8- and
                  # 16-lane vectors), padding on either side, dilation 2, and 6 with taps wholly in the 2-wide
                  # padding
                  ((6, 6, 10, 33), (3, 3), (1, 1), (1, 1), (1, 2)), ((12, 5, 7, 32), (3, 3), (1, 1), (1, 1), (2, 2)),
                  ((6, 7, 6, 66), (2, 3), (1, 1), (0, 0), (1, 2)), ((12, 4, 8, 67), (3, 2), (1, 2), (1, 1), (2, 2)),
                  ((12, 9, 9, 9), (3, 3), (1, 1), (2, 2), (2, 2)),
                  # an input row wider than col2im's 512-element row buffer (the general loop)
                  ((2, 2, 3, 600), (1, 3), (1, 1), (0, 1), (1, 1)),
                  # padding and stride near 2^31 on tiny buffers: coordinates past 32 bits (CUDA's index
                  # math must not pick 32 bits from the buffer sizes alone)
                  ((1, 1, 2, 1), (1, 1), (1, 1), (2 ** 31 - 1, 0), (2 ** 30, 1))]


@pytest.mark.parametrize("shape,k,d,p,s", UNFOLD_CONFIGS, ids=[str(i) for i in range(len(UNFOLD_CONFIGS))])
def test_im2col_col2im_match_unfold_fold(device, dtype, shape, k, d, p, s):
    x = torch.randn(shape, dtype=dtype, device=device)
    kw = dict(kernel_size=k, dilation=d, padding=p, stride=s)
    cols = DF.im2col(x, **kw)
    assert torch.equal(cols, F.unfold(x, **kw))  # a copy: exact
    check_fwd_bwd(lambda a: DF.im2col(a, **kw), lambda a: F.unfold(a, **kw), [x], dtype=dtype)
    c = torch.randn(cols.shape, dtype=dtype, device=device)
    check_fwd_bwd(lambda a: DF.col2im(a, shape[2:], **kw), lambda a: F.fold(a, shape[2:], **kw), [c], dtype=dtype)
    # unbatched forms
    torch.testing.assert_close(DF.im2col(x[0], **kw), F.unfold(x[0], **kw), rtol=0, atol=0)
    torch.testing.assert_close(DF.col2im(c[0], shape[2:], **kw), F.fold(c[0], shape[2:], **kw))


# ------------------------------------------------------------------ the textbook Convolution in numpy

@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 1), (2, 2, 0, 1), (3, 1, 2, 2)])
def test_numpy_textbook_convolution(device, k, stride, pad, dil):
    rng = np.random.default_rng(k * 100 + stride * 10 + pad)
    x_np, w_np, b_np = rng.normal(size=(2, 3, 10, 9)), rng.normal(size=(4, 3, k, k)), rng.normal(size=4)
    layer = Convolution(w_np, b_np, stride, pad, dil)
    y_np = layer.forward(x_np)
    g_np = rng.normal(size=y_np.shape)
    dx_np = layer.backward(g_np)
    x, w, b = (torch.tensor(a, device=device, requires_grad=True) for a in (x_np, w_np, b_np))
    y = DF.conv2d(x, w, b, stride, pad, dil)
    y.backward(torch.tensor(g_np, device=device))
    for ours, ref in ((y, y_np), (x.grad, dx_np), (w.grad, layer.dW), (b.grad, layer.db)):
        np.testing.assert_allclose(ours.detach().cpu().numpy(), ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------ gradcheck, opcheck, chunking

def test_gradcheck(device):
    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: DF.conv2d(a, b, c, (2, 1), (1, 2), (1, 2)),
                                    (t(2, 3, 7, 6), t(4, 3, 3, 2), t(4)))
    assert torch.autograd.gradcheck(lambda a, b: DF.conv2d(a, b, None, 1, "same", 1, 2), (t(2, 4, 5, 6), t(6, 2, 4, 3)))
    assert torch.autograd.gradcheck(lambda a, b: DF.conv2d(a, b), (t(2, 4, 3, 5), t(3, 4, 1, 1)))
    assert torch.autograd.gradcheck(lambda a: DF.im2col(a, (3, 2), (1, 2), (1, 1), (2, 1)), (t(2, 2, 6, 7),))
    assert torch.autograd.gradcheck(lambda a: DF.col2im(a, (6, 7), (3, 2), (1, 2), (1, 1), (2, 1)), (t(2, 12, 21),))


def test_opcheck(device):
    ops = torch.ops.dlkernels
    x = torch.randn(2, 4, 9, 7, device=device, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    torch.library.opcheck(ops.conv2d_forward.default, (x, w, b, [2, 1], [1, 0], [1, 2], 2))
    torch.library.opcheck(ops.conv2d_forward.default, (x, w, None, [1, 1], [1, 0, 2, 1], [1, 1], 2))
    y = ops.conv2d_forward(x.detach(), w.detach(), b.detach(), [2, 1], [1, 0], [1, 2], 2)
    for mask in ([True, True, True], [False, True, False], [True, False, False]):
        torch.library.opcheck(ops.conv2d_backward.default,
                              (torch.randn_like(y), x.detach(), w.detach(), [2, 1], [1, 0], [1, 2], 2, mask))
    torch.library.opcheck(ops.im2col.default, (x, [3, 2], [1, 2], [1, 0], [2, 1]))
    cols = ops.im2col(x.detach(), [3, 2], [1, 2], [1, 0], [2, 1])
    torch.library.opcheck(ops.col2im.default, (cols.clone().requires_grad_(True), [9, 7], [3, 2], [1, 2], [1, 0], [2, 1]))


# channels_last input: one-group CPU layers run in that layout (ops/conv.cpp, nhwc: the column matrix
# has a row per output position, a 1x1 stride-1 layer multiplies the input's rows); the others compute
# contiguous and hand back channels_last. Every one-group random config, 1x1 and 1x1 strided, 4-value
# padding, a weight in either format, chunks of one and of two images (a smaller last one) and whole
# batches: output and every gradient subset against torch in float64 at 1e-12, and the results' memory
# formats those torch gives (output and grad_input channels_last; grad_weight in the weight's format).
CL_CONFIGS = [c for c in CONV_CONFIGS if c[5] == 1 and c[0][1] > 1] + [
    ((3, 5, 6, 7), (4, 5, 2, 3), (1, 1), (0, 1, 1, 2), (1, 1), 1, True),     # 4-value padding (top, left, bottom, right)
    ((2, 9, 6, 6), (33, 9, 1, 1), (1, 1), (0, 0), (1, 1), 1, False),          # 1x1 direct, filters past 32
    ((2, 12, 8, 8), (10, 6, 3, 3), (1, 1), (1, 1), (1, 1), 2, True)]          # grouped: contiguous compute


def _cl(t):
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _in_format_of(t, like):
    """t is stored as torch stores a result for `like`: channels_last if like is, else contiguous."""
    return t.is_contiguous(memory_format=torch.channels_last if _cl(like) else torch.contiguous_format)


@pytest.mark.parametrize("limit", [None, 1, "two"], ids=["chunked", "one-image", "two-images"])
@pytest.mark.parametrize("weight_cl", [False, True], ids=["w", "w_cl"])
@pytest.mark.parametrize("x_shape,w_shape,s,p,d,groups,bias", CL_CONFIGS, ids=[str(i) for i in range(len(CL_CONFIGS))])
def test_channels_last_input(device, x_shape, w_shape, s, p, d, groups, bias, weight_cl, limit):
    gen = torch.Generator().manual_seed(sum(x_shape) + 7 * sum(w_shape))
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(w_shape, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(w_shape[0], generator=gen, dtype=torch.float64).to(device) if bias else None
    xc = x.contiguous(memory_format=torch.channels_last)
    wc = w.contiguous(memory_format=torch.channels_last) if weight_cl else w
    ops = torch.ops.dlkernels
    pad = list(p)
    ref_pad = [p[1], p[3], p[0], p[2]] if len(p) == 4 else None  # F.pad order: left, right, top, bottom
    xr = F.pad(x, ref_pad) if ref_pad else x
    ref = F.conv2d(xr, w, b, s, (0, 0) if ref_pad else p, d, groups)
    gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(device).contiguous(
        memory_format=torch.channels_last)
    before = dlkernels.workspace_limit()
    try:
        if limit == "two":
            dlkernels.set_workspace_limit(2 * w[0].numel() * ref.shape[2] * ref.shape[3] * 8 + 8)
        elif limit is not None:
            dlkernels.set_workspace_limit(limit)
        y = ops.conv2d_forward(xc, wc, b, list(s), pad, list(d), groups)
        grads = {}
        for mask in ([True, True, bias], [True, False, False], [False, True, False], [False, False, bias]):
            grads[tuple(mask)] = ops.conv2d_backward(gy, xc, wc, list(s), pad, list(d), groups, mask)
    finally:
        dlkernels.set_workspace_limit(before)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert _in_format_of(y, xc), y.stride()
    xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    bb = b.clone().requires_grad_(True) if bias else None
    out = F.conv2d(F.pad(xx, ref_pad) if ref_pad else xx, ww, bb, s, (0, 0) if ref_pad else p, d, groups)
    want = torch.autograd.grad(out, [xx, ww] + ([bb] if bias else []), gy)
    for mask, got in grads.items():
        for i, on in enumerate(mask):
            if not on:
                assert got[i].numel() == 0
                continue
            torch.testing.assert_close(got[i], want[i], rtol=1e-12, atol=1e-12, msg=f"gradient {i}, mask {mask}")
        if mask[0]:
            assert _in_format_of(got[0], xc), got[0].stride()
        if mask[1]:
            assert _in_format_of(got[1], wc), got[1].stride()


def test_channels_last_through_autograd_and_fake_tensors(device):
    """The layer in a channels_last model: results and .grad in torch's formats, and the fake kernels
    (torch.compile, opcheck) agree with the real ones on them."""
    x = torch.randn(3, 6, 9, 8, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 6, 3, 3, device=device).contiguous(memory_format=torch.channels_last) / 6
    b = torch.randn(5, device=device)
    ops = torch.ops.dlkernels
    for weight in (w, w.contiguous()):
        torch.library.opcheck(ops.conv2d_forward.default, (x.requires_grad_(True), weight.requires_grad_(True), b,
                                                           [2, 1], [1, 1], [1, 1], 1))
        y = ops.conv2d_forward(x.detach(), weight.detach(), b, [2, 1], [1, 1], [1, 1], 1)
        for mask in ([True, True, True], [True, False, False], [False, True, False]):
            torch.library.opcheck(ops.conv2d_backward.default,
                                  (torch.randn_like(y), x.detach(), weight.detach(), [2, 1], [1, 1], [1, 1], 1, mask))
    xx, ww = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    xt, wt = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    y = DF.conv2d(xx, ww, b, padding=1)
    r = F.conv2d(xt, wt, b, padding=1)
    g = torch.randn_like(r)
    y.backward(g)
    r.backward(g)
    for ours, theirs in ((y, r), (xx.grad, xt.grad), (ww.grad, wt.grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        assert ours.stride() == theirs.stride()
    compiled = torch.compile(lambda a, c: DF.conv2d(a, c, b, padding=1), fullgraph=True)
    yc = compiled(x.detach(), w.detach())
    assert yc.stride() == r.stride()
    torch.testing.assert_close(yc, r.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,w_shape,kw", [((7, 3, 10, 9), (5, 3, 3, 3), dict(padding=1)),
                                              ((5, 4, 8, 8), (6, 2, 3, 3), dict(stride=2, groups=2)),
                                              ((6, 8, 6, 6), (4, 8, 1, 1), {})])
def test_chunking_with_a_tiny_workspace_gives_the_same_results(shape, w_shape, kw):
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(w_shape, dtype=torch.float64)
    b = torch.randn(w_shape[0], dtype=torch.float64)
    before = dlkernels.workspace_limit()
    # The upstream gradient is made once: torch 2.13's CPU sin gave other values on its first call in
    # about one process in ten (2 threads, AVX-512 host; float32 and float64 alike), so a gradient made
    # inside run() could differ between the runs compared here.
    y_shape = F.conv2d(x, w, b, **kw).shape
    gy = torch.arange(torch.Size(y_shape).numel(), dtype=x.dtype).reshape(y_shape).sin()

    def run():
        xx, ww, bb = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = DF.conv2d(xx, ww, bb, **kw)
        y.backward(gy)
        return [y.detach(), xx.grad, ww.grad, bb.grad]

    try:
        whole = run()
        dlkernels.set_workspace_limit(1)  # one image per chunk
        chunked = run()
        dlkernels.set_workspace_limit(3 * 8 * shape[1] * w_shape[2] * w_shape[3] * 100)  # a few images per chunk
        some = run()
    finally:
        dlkernels.set_workspace_limit(before)
    for a, b_, c in zip(whole, chunked, some):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    ref = F.conv2d(x, w, b, **kw)
    torch.testing.assert_close(whole[0], ref, rtol=1e-12, atol=1e-12)


# Winograd F(2x2, 3x3) (ops/conv.cpp, winograd_fits): one-group 3x3 layers of stride 1 and dilation 1,
# padded by at most 2 on each side, forward and input gradient. Forced on ("always") for every geometry:
# 1x1 to odd-sized images (output rows and columns past the last whole tile), every padding it takes,
# 4-value padding, channel counts off the vector width and off the register tile's rows, batches whose
# tiles cross the 48-tile blocks and images within one block, and a ResNet-sized layer (float32 error
# of sums over 64 channels and 672 tiles against torch's).
WINOGRAD_CONFIGS = [((2, 3, 7, 9), 5, 1), ((3, 17, 8, 8), 9, 0), ((1, 4, 1, 1), 4, 1), ((2, 8, 5, 6), 13, 2),
                    ((1, 20, 13, 11), 33, (1, 2)), ((4, 33, 3, 2), 17, 1), ((5, 16, 2, 3), 8, (2, 1)),
                    ((7, 9, 10, 14), 16, 1), ((2, 6, 33, 35), 7, (0, 2)), ((2, 5, 6, 7), 3, "same"),
                    ((4, 64, 14, 12), 72, 1)]


@pytest.fixture
def winograd_always():
    # the direct kernels (test_conv_direct.py) take precedence where their rule applies: off here
    before, direct = dlkernels.set_winograd("always"), dlkernels.set_direct_conv("never")
    yield
    dlkernels.set_winograd(before)
    dlkernels.set_direct_conv(direct)


@pytest.mark.parametrize("x_shape,oc,p", WINOGRAD_CONFIGS, ids=[str(i) for i in range(len(WINOGRAD_CONFIGS))])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhwc-cl-weight"])
def test_winograd_matches_torch(device, dtype, winograd_always, x_shape, oc, p, bias, layout):
    """Forward and all three gradients; channels_last input (the NHWC kernels, lanes over channels) with
    either weight format, each result in torch's memory format."""
    x = torch.randn(x_shape, dtype=dtype, device=device)
    w = torch.randn(oc, x_shape[1], 3, 3, dtype=dtype, device=device) / (3 * x_shape[1] ** 0.5)
    b = torch.randn(oc, dtype=dtype, device=device) if bias else None
    if layout != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "nhwc-cl-weight":
        w = w.contiguous(memory_format=torch.channels_last)
    inputs, grads = ([x, w, b], (0, 1, 2)) if bias else ([x, w], (0, 1))
    ours, _ = check_fwd_bwd(lambda *a: DF.conv2d(*a, padding=p), lambda *a: F.conv2d(*a, padding=p), inputs,
                            grad_inputs=grads, dtype=dtype, error_vs_torch=True)
    def formats(t):  # (strides of size-1 dimensions are arbitrary)
        return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    assert formats(ours) == formats(F.conv2d(x, w, b, padding=p))
    xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    DF.conv2d(xx, ww, b, padding=p).sum().backward()
    assert formats(xx.grad) == formats(x) and formats(ww.grad) == formats(w)


def test_winograd_padding_past_two_and_asymmetric_4_value_padding(device, winograd_always):
    """Padding of 3 (beyond Winograd's bound) takes the other paths; 4-value padding (top, left, bottom,
    right) with the bottom/right side 0, 1 or 2 takes Winograd; both equal torch in float64."""
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=device)
    w = torch.randn(5, 6, 3, 3, dtype=torch.float64, device=device)
    ops = torch.ops.dlkernels
    for pad in [(3, 1, 3, 1), (1, 2, 0, 1), (0, 0, 2, 2), (2, 1, 1, 0)]:
        y = ops.conv2d_forward(x, w, None, [1, 1], list(pad), [1, 1], 1)
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        ref = F.conv2d(F.pad(xr, (pad[1], pad[3], pad[0], pad[2])), wr)
        torch.testing.assert_close(y, ref.detach(), rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        gx, gw, _ = ops.conv2d_backward(g, x, w, [1, 1], list(pad), [1, 1], 1, [True, True, False])
        want = torch.autograd.grad(ref, (xr, wr), g)
        torch.testing.assert_close(gx, want[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gw, want[1], rtol=1e-12, atol=1e-12)


def _winograd_run(mode, x, w, go, layout="nchw"):
    """Output and the input and weight gradients of a padding-1 layer under the given Winograd mode
    (layout "nhwc": input and grad_output channels_last)."""
    if layout == "nhwc":
        x, go = x.contiguous(memory_format=torch.channels_last), go.contiguous(memory_format=torch.channels_last)
    before, direct = dlkernels.set_winograd(mode), dlkernels.set_direct_conv("never")  # the other paths: im2col's
    try:
        xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = DF.conv2d(xx, ww, None, 1, 1)
        y.backward(go)
        return y.detach(), xx.grad, ww.grad
    finally:
        assert dlkernels.set_winograd(before) == mode
        dlkernels.set_direct_conv(direct)


@cpu_kernels_only
def test_winograd_rule_and_modes():
    """"auto" takes Winograd for the forward and input gradient of layers of at least 8 input and 8
    output channels (bitwise the "always" result, which rounds differently from "never"), not below;
    for the weight gradient likewise with channels_last input, from 32 channels on with NCHW input.
    set_winograd returns the old mode and rejects unknown ones."""
    assert dlkernels.winograd() == "auto"
    for c, layout, wgrad_too in [(8, "nchw", False), (16, "nchw", False), (32, "nchw", True), (8, "nhwc", True)]:
        x, w, go = torch.randn(3, c, 12, 10), torch.randn(c, c, 3, 3) / c, torch.randn(3, c, 12, 10)
        auto, always, never = (_winograd_run(m, x, w, go, layout) for m in ("auto", "always", "never"))
        for i, (a, b, n) in enumerate(zip(auto, always, never)):
            torch.testing.assert_close(a, n, rtol=1e-4, atol=1e-4)
            assert not torch.equal(b, n), (c, i)
            assert torch.equal(a, b if i < 2 or wgrad_too else n), (c, i)
    small = torch.randn(8, 7, 3, 3)
    x, go = torch.randn(3, 7, 12, 10), torch.randn(3, 8, 12, 10)
    for a, n in zip(_winograd_run("auto", x, small, go), _winograd_run("never", x, small, go)):
        assert torch.equal(a, n)
    with pytest.raises(ValueError, match="set_winograd: mode must be one of"):
        dlkernels.set_winograd("fast")
    assert dlkernels.winograd() == "auto"


@cpu_kernels_only
@pytest.mark.parametrize("where", ["input", "weight"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_winograd_non_finite_values_take_the_other_paths(where, value, layout):
    """An infinite or NaN input or weight sends each computation that reads it to the other paths
    ("never"'s result, NaN and inf where it has them): the transforms' differences would make NaN
    (inf - inf) of outputs that the other paths' sums make infinite. The input gradient reads
    grad_output and the weight, the weight gradient the input and grad_output."""
    x = torch.randn(2, 9, 7, 6)
    w = torch.randn(10, 9, 3, 3).abs()
    (x if where == "input" else w).view(-1)[5] = value
    go = torch.randn(2, 10, 7, 6)
    got, want = _winograd_run("always", x, w, go, layout), _winograd_run("never", x, w, go, layout)
    assert got[0].isinf().any() or got[0].isnan().any()
    reads = {0: True, 1: where == "weight", 2: where == "input"}  # does the result read the bad value
    for i, (a, e) in enumerate(zip(got, want)):
        if reads[i]:
            torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True)
        else:  # Winograd's, finite, rounded its own way
            assert bool(a.isfinite().all()) and not torch.equal(a, e)
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@cpu_kernels_only
@pytest.mark.parametrize("where", ["input", "weight"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_winograd_huge_values_take_the_other_paths(where, layout):
    """A finite float32 value within 64x of the largest float (the transforms' sums could overflow where
    the direct sum does not) sends each computation that reads it to the other paths; 1/64 of it below
    the bound does not."""
    for value, other in [(1e37, True), (1e37 / 64 / 4, False)]:
        x = torch.randn(2, 9, 7, 6)
        w = torch.randn(10, 9, 3, 3) * 1e-3
        (x if where == "input" else w).view(-1)[5] = value
        go = torch.randn(2, 10, 7, 6) * 1e-3
        got, want = _winograd_run("always", x, w, go, layout), _winograd_run("never", x, w, go, layout)
        reads = {0: True, 1: where == "weight", 2: where == "input"}
        for i, (a, e) in enumerate(zip(got, want)):
            assert bool(a.isfinite().all()), (value, i)
            assert torch.equal(a, e) == (reads[i] and other), (value, i)


@cpu_kernels_only
def test_winograd_chunks_and_thread_counts():
    """Each tile's sums do not depend on the block it falls in, nor the weight gradient's on the thread
    count: 1 or 2 threads give bitwise the same results, and so do chunks of images under a small
    workspace limit for the output and input gradient; the weight gradient sums the chunks' tiles in
    other groups (float64: within 1e-12 of the whole batch's)."""
    for dtype, layout in [(torch.float32, "nchw"), (torch.float64, "nchw"), (torch.float32, "nhwc"),
                          (torch.float64, "nhwc")]:
        x = torch.randn(5, 12, 11, 13, dtype=dtype)
        w = torch.randn(10, 12, 3, 3, dtype=dtype)
        go = torch.randn(5, 10, 11, 13, dtype=dtype)
        before, threads = dlkernels.workspace_limit(), torch.get_num_threads()
        try:
            whole = _winograd_run("always", x, w, go, layout)
            dlkernels.set_workspace_limit(1)  # one image per chunk
            one = _winograd_run("always", x, w, go, layout)
            dlkernels.set_workspace_limit(before)
            torch.set_num_threads(1)
            single = _winograd_run("always", x, w, go, layout)
        finally:
            dlkernels.set_workspace_limit(before)
            torch.set_num_threads(threads)
        for i, (a, b, c) in enumerate(zip(whole, one, single)):
            assert torch.equal(a, c), i
            if i < 2:
                assert torch.equal(a, b), i
            elif dtype == torch.float64:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# A 1x1 layer beyond the tile GEMM's filter bound (64) runs the forward and the input gradient on the
# tile GEMM over the whole batch when its images have at most 256 positions (ops/conv.cpp, tile_direct:
# 7x9, column strips that run on into the next image; two groups too), else, with one group, as one
# batched GEMM with the filter broadcast over the batch (batched_direct: 17x16): every subset of the
# three gradients, a channels_last input, batch 1 and an empty batch, against torch.
@pytest.mark.parametrize("hw,groups", [((7, 9), 1), ((7, 9), 2), ((17, 16), 1)])
@pytest.mark.parametrize("n", [0, 1, 5])
def test_direct_1x1_batched_gemm_each_gradient_subset(device, n, hw, groups):
    gen = torch.Generator().manual_seed(11 + n)
    x = torch.randn(n, 24, *hw, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(144, 24 // groups, 1, 1, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(144, generator=gen, dtype=torch.float64).to(device)
    gy = torch.randn(n, 144, *hw, generator=gen, dtype=torch.float64).to(device)
    ops = torch.ops.dlkernels
    ref_y = F.conv2d(x, w, b, groups=groups)
    for xin in (x, x.to(memory_format=torch.channels_last)):
        torch.testing.assert_close(ops.conv2d_forward(xin, w, b, [1, 1], [0, 0], [1, 1], groups), ref_y,
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ops.conv2d_forward(xin, w, None, [1, 1], [0, 0], [1, 1], groups),
                                   ref_y - b.view(-1, 1, 1), rtol=1e-12, atol=1e-12)
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    ref = torch.autograd.grad(F.conv2d(xr, wr, br, groups=groups), (xr, wr, br), gy)
    for mask in ([True, True, True], [True, False, False], [False, True, False], [False, False, True],
                 [True, True, False]):
        got = ops.conv2d_backward(gy, x, w, [1, 1], [0, 0], [1, 1], groups, mask)
        for want, have, on in zip(ref, got, mask):
            if on:
                torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)
            else:
                assert have.numel() == 0


def _conv_and_grads(conv, x, w, b, kw, transform=lambda t: t):
    xx, ww, bb = (transform(t).clone().requires_grad_(True) for t in (x, w, b))
    y = conv(xx, ww, bb, **kw)
    y.backward(torch.ones_like(y))
    return [y.detach(), xx.grad, ww.grad, bb.grad]


def test_isa_paths_match_float64():
    """Every ISA path's float32 output and gradients, within the worst-case float32 summation bound of
    the float64 result: |error| <= n * 2^-24 * (the same sum over absolute values), n the most terms any
    output sums, whatever the order of summation (the paths sum in different orders, with and without
    FMA). A bound relative to the result itself fails on sums that cancel (a weight gradient of 0.28 from
    663 terms of size ~1 differed between paths by 1.9e-5); a missing or doubled term (~1/n of the
    absolute sum) exceeds this bound n^2 * 2^-24 times over. im2col moves values: bitwise equal."""
    x = torch.randn(3, 5, 17, 13)
    w = torch.randn(7, 5, 3, 3)
    b = torch.randn(7)
    cases = [dict(padding=1), dict(stride=2, padding=(2, 1), dilation=(1, 2))]
    results = {}
    for isa in dlkernels.supported_cpu_isas():
        with dlkernels.use_cpu_isa(isa):
            results[isa] = [_conv_and_grads(DF.conv2d, x, w, b, kw) for kw in cases]
            results[isa].append([DF.im2col(x, 3, 2, 1, 2)])
    for i, kw in enumerate(cases):
        ref = _conv_and_grads(F.conv2d, x, w, b, kw, torch.Tensor.double)
        mag = _conv_and_grads(F.conv2d, x, w, b, kw, lambda t: t.double().abs())
        n = max(5 * 9 + 1, 7 * 9, ref[0].shape[0] * ref[0].shape[2] * ref[0].shape[3])
        for isa in results:
            for name, a, r, m in zip(["output", "grad_input", "grad_weight", "grad_bias"], results[isa][i], ref, mag):
                err = (a.double() - r).abs()
                bound = n * 2.0**-24 * m
                assert bool((err <= bound).all()), f"{isa} {kw} {name}: error {err.max().item()} over the bound"
    for isa in results:
        assert torch.equal(results[isa][-1][0], results["scalar"][-1][0]), isa


def test_deterministic_across_thread_counts():
    x = torch.randn(4, 6, 21, 19)
    w = torch.randn(8, 3, 3, 3)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
            y = DF.conv2d(xx, ww, None, 2, 1, 1, 2)
            y.backward(torch.ones_like(y))
            results.append((y.detach(), xx.grad, ww.grad))
    finally:
        torch.set_num_threads(before)
    # col2im and the layout kernels are deterministic by construction; the GEMM library (MKL) may block
    # differently per thread count, so bitwise equality is required for the same thread count.
    for a, c in zip(results[0], results[2]):
        assert torch.equal(a, c)
    for a, c in zip(results[0], results[1]):
        torch.testing.assert_close(a, c)


# ------------------------------------------------------------------------------------------- modules

@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_is_drop_in(device, padding_mode):
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2,
                          padding_mode=padding_mode).to(device)
    torch.manual_seed(3)
    ours = dnn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2,
                      padding_mode=padding_mode).to(device)
    assert isinstance(ours, torch.nn.Conv2d) and repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for a, c in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, c)  # same initialization
    x = torch.randn(3, 4, 9, 8, device=device)
    check_fwd_bwd(ours, ref, [x], reference64=False)
    ours.zero_grad()
    ref.zero_grad()
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)


def test_compile_fullgraph():
    torch._dynamo.reset()
    model = torch.nn.Sequential(dnn.Conv2d(2, 4, 3, padding="same"), torch.nn.ReLU(), dnn.Conv2d(4, 3, 2, stride=2),
                                torch.nn.Flatten())
    x = torch.randn(3, 2, 9, 9)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    compiled.sum().backward()
    assert model[0].weight.grad is not None


def test_empty_batch(device):
    x = torch.randn(0, 3, 6, 6, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    ours, ref = DF.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1)
    assert ours.shape == ref.shape
    ours.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


# ------------------------------------------------------------------------------------------ bad inputs

def test_bad_inputs(device):
    x = torch.randn(2, 4, 8, 8, device=device)
    w = torch.randn(6, 4, 3, 3, device=device)
    cases = [
        (lambda: DF.conv2d(x, torch.randn(6, 3, 3, 3, device=device)), ValueError, "weight.size(1) * groups"),
        (lambda: DF.conv2d(x, torch.randn(6, 4, 3, 3, device=device), groups=3), ValueError, "groups (3) must divide"),
        (lambda: DF.conv2d(x, torch.randn(5, 2, 3, 3, device=device), groups=2), ValueError,
         "must divide the output channels"),
        (lambda: DF.conv2d(x, w, groups=0), ValueError, "groups must be positive"),
        (lambda: DF.conv2d(x, torch.randn(6, 4, 9, 9, device=device)), ValueError, "larger than the padded input"),
        (lambda: DF.conv2d(x, torch.randn(6, 4, 3, 3, device=device), dilation=5), ValueError, "larger than the padded"),
        (lambda: DF.conv2d(x, w, stride=0), ValueError, "stride must be positive"),
        (lambda: DF.conv2d(x, w, stride=(1, -1)), ValueError, "stride must be positive"),
        (lambda: DF.conv2d(x, w, dilation=0), ValueError, "dilation must be positive"),
        (lambda: DF.conv2d(x, w, padding=-1), ValueError, "padding must be non-negative"),
        (lambda: DF.conv2d(x, w, padding="full"), ValueError, "padding must be 'valid', 'same'"),
        (lambda: DF.conv2d(x, w, stride=2, padding="same"), ValueError, "not supported for strided"),
        (lambda: DF.conv2d(x, w[0]), ValueError, "weight must have shape (out_channels"),
        (lambda: DF.conv2d(x, w.unsqueeze(0)), ValueError, "weight must have shape (out_channels"),
        (lambda: DF.conv2d(x[0, 0], w), ValueError, "input must have shape (N, C, H, W) or (C, H, W)"),
        (lambda: DF.conv2d(x, w.double()), TypeError, "weight must have the dtype of input"),
        (lambda: DF.conv2d(x.long(), w.long()), TypeError, "input must be float32 or float64"),
        (lambda: DF.conv2d(x, w, torch.randn(5, device=device)), ValueError, "bias must have shape (6)"),
        (lambda: DF.conv2d(x, w, torch.randn(6, device=device).double()), TypeError, "bias must have the dtype"),
        (lambda: DF.conv2d(x, w, stride=2.0), TypeError, "stride must be an int or a pair"),
        (lambda: DF.conv2d(x, w, groups=1.5), TypeError, "groups must be an int"),
        (lambda: DF.conv2d(x, "w"), TypeError, "weight must be a torch.Tensor"),
        (lambda: DF.conv2d(torch.randn(2, 0, 8, 8, device=device), torch.randn(6, 0, 3, 3, device=device)),
         ValueError, "non-zero C, H and W"),
        (lambda: DF.im2col(x, 9), ValueError, "larger than the padded input"),
        (lambda: DF.im2col(x, 3, stride=0), ValueError, "stride must be positive"),
        (lambda: DF.im2col(x[0, 0], 3), ValueError, "input must have shape"),
        (lambda: DF.col2im(torch.randn(2, 10, 36, device=device), (8, 8), 3), ValueError, "multiple of kH * kW"),
        (lambda: DF.col2im(torch.randn(2, 9, 35, device=device), (8, 8), 3), ValueError, "sliding blocks"),
        (lambda: DF.col2im(torch.randn(2, 9, 36, device=device), (8, 8), 3, padding=-1), ValueError,
         "padding must be non-negative"),
        (lambda: dlkernels.set_workspace_limit(0), ValueError, "nbytes must be a positive int"),
    ]
    for i, (call, exc, fragment) in enumerate(cases):
        with pytest.raises(exc) as info:
            call()
        assert fragment in str(info.value), f"case {i}: {info.value!r}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_devices():
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="weight is on cuda"):
        DF.conv2d(x, torch.randn(6, 4, 3, 3, device="cuda"))


@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision(dtype):
    # with a bias, each forward path: a chunk of images with groups, one image, the batched 1x1 GEMM
    # (the bias enters the GEMM's float32 accumulator: added to its rounded output it rounds twice)
    for n, k, kw in ((2, 3, dict(stride=2, padding=1, groups=2)), (1, 3, dict(padding=1)), (3, 1, {})):
        x = torch.randn(n, 8, 15, 13, device=KDEV, dtype=dtype)
        w = (torch.randn(6, 8 // kw.get("groups", 1), k, k, device=KDEV) / (2 * k)).to(dtype)
        b = torch.randn(6, device=KDEV, dtype=dtype)
        check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), [x, w, b], grad_inputs=(0, 1, 2))
    x = torch.randn(2, 8, 15, 13, device=KDEV, dtype=dtype)
    c = DF.im2col(x, 3, padding=1)
    assert torch.equal(c, F.unfold(x, 3, padding=1))
    # col2im sums up to 9 copies: ours in float32 and rounded once, torch's CPU fold in the low precision
    assert_lowp_close(DF.col2im(c, (15, 13), 3, padding=1), F.fold(c, (15, 13), 3, padding=1),
                      F.fold(c.double(), (15, 13), 3, padding=1), "col2im")


@pytest.mark.skipif(not dlkernels.cuda_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason="needs a GPU with TF32 (Ampere or later) and a CUDA build")
def test_cuda_precision_follows_the_matmul_tf32_flag():
    """Our CUDA conv's GEMMs are at::mm: full float32 unless torch.backends.cuda.matmul.allow_tf32,
    whatever torch.backends.cudnn.allow_tf32 (which F.conv2d follows) says."""
    x = torch.randn(8, 64, 16, 16, device="cuda")
    w = torch.randn(64, 64, 3, 3, device="cuda")
    ref = F.conv2d(x.double(), w.double(), padding=1)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        errors = []
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            errors.append(((DF.conv2d(x, w, padding=1).double() - ref).abs().max() / ref.abs().max()).item())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert errors[0] < 1e-6, errors  # float32: ~1e-7 of the largest value
    assert errors[1] > 1e-5, errors  # TF32's 10-bit mantissas: ~1e-4


@pytest.mark.skipif(not dlkernels.cuda_available(), reason="needs a GPU and a CUDA build")
def test_cuda_current_stream():
    x = torch.randn(4, 8, 30, 30, device="cuda")
    w = torch.randn(8, 8, 3, 3, device="cuda")
    ref = DF.conv2d(x, w, padding=1)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = DF.conv2d(x, w, padding=1)
    s.synchronize()
    assert torch.equal(out, ref)
