"""The float32/float64 direct convolution kernels (csrc/cpu/conv_direct*.h, ops/conv.cpp direct_fits):
lanes over output channels, register tiles of output positions, padded taps skipped. Forced on with
set_direct_conv("always") for every one-group geometry of test_conv.py's configurations and for shapes
that cross the kernels' edges (channel counts off the vector width and off the block of filters, tiles
running on from one image into the next, 4x4 outputs whose tap classes hold 1-4 positions, strides
larger than the kernel, dilation, 4-value padding, both memory formats); the measured rule ("auto");
determinism over thread counts; bad modes."""
import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF

from conftest import check_fwd_bwd, cpu_kernels_only
from test_conv import CONV_CONFIGS


@pytest.fixture
def direct_always():
    before = dlkernels.set_direct_conv("always")
    yield
    dlkernels.set_direct_conv(before)


ONE_GROUP = [c for c in CONV_CONFIGS if c[5] == 1]

# (x shape, filters, kernel, stride, padding, dilation)
DIRECT_CONFIGS = [
    ((2, 3, 23, 21), 64, (7, 7), 2, 3, 1),       # a ResNet stem: 3 channels, 7x7/s2
    ((3, 64, 4, 4), 72, (3, 3), 1, 1, 1),        # 4x4 outputs: classes of 1-4 positions, tiles across images
    ((2, 17, 9, 7), 33, (3, 3), 2, 1, 1),        # channels and filters off the vector width and the block
    ((2, 16, 8, 8), 16, (1, 1), 2, 0, 1),        # 1x1 stride 2: a phase of the input gradient no tap reaches
    ((2, 5, 12, 11), 20, (3, 2), (3, 2), (2, 0), (2, 1)),  # asymmetric stride, padding, dilation
    ((1, 130, 5, 6), 129, (3, 3), 1, 2, 1),      # padding past the taps' reach, more filters than one block
    ((5, 8, 6, 6), 100, (5, 5), 3, 2, 1),        # stride larger than half the kernel
]


def _conv_check(x_shape, oc, k, s, p, d, bias, layout, dtype, device):
    x = torch.randn(x_shape, dtype=dtype, device=device)
    w = torch.randn(oc, x_shape[1], *k, dtype=dtype, device=device) / (x_shape[1] * k[0] * k[1]) ** 0.5
    b = torch.randn(oc, dtype=dtype, device=device) if bias else None
    if layout != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "nhwc-cl-weight":
        w = w.contiguous(memory_format=torch.channels_last)
    kw = dict(stride=s, padding=p, dilation=d)
    inputs, grads = ([x, w, b], (0, 1, 2)) if bias else ([x, w], (0, 1))
    ours, _ = check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), inputs, grad_inputs=grads,
                            dtype=dtype, error_vs_torch=True)

    def formats(t):  # (strides of size-1 dimensions are arbitrary)
        return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    assert formats(ours) == formats(F.conv2d(x, w, b, **kw))
    xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    DF.conv2d(xx, ww, b, **kw).sum().backward()
    assert formats(xx.grad) == formats(x) and formats(ww.grad) == formats(w)


@pytest.mark.parametrize("x_shape,oc,k,s,p,d", DIRECT_CONFIGS, ids=[str(i) for i in range(len(DIRECT_CONFIGS))])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhwc-cl-weight"])
def test_direct_matches_torch(device, dtype, direct_always, x_shape, oc, k, s, p, d, bias, layout):
    """Forward and all three gradients against torch (and float64), each result in torch's memory format."""
    _conv_check(x_shape, oc, k, s, p, d, bias, layout, dtype, device)


@pytest.mark.parametrize("x_shape,w_shape,s,p,d,groups,bias", ONE_GROUP, ids=[str(i) for i in range(len(ONE_GROUP))])
def test_direct_random_geometries(device, dtype, direct_always, x_shape, w_shape, s, p, d, groups, bias):
    """test_conv.py's random one-group geometries (kernels larger than the input, batch 1, 1x1, LeNet)."""
    _conv_check(x_shape, w_shape[0], w_shape[2:], s, p, d, bias, "nchw", dtype, device)


def test_direct_4_value_padding_and_empty_batch(device, direct_always):
    """4-value padding (top, left, bottom, right), float64 against torch on the padded input to 1e-12;
    an empty batch gives empty outputs and zero weight gradients."""
    ops = torch.ops.dlkernels
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=device)
    w = torch.randn(5, 6, 3, 2, dtype=torch.float64, device=device)
    for pad, s in [((3, 1, 0, 2), 1), ((1, 2, 2, 0), 2), ((0, 0, 2, 1), 1)]:
        y = ops.conv2d_forward(x, w, None, [s, s], list(pad), [1, 1], 1)
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        ref = F.conv2d(F.pad(xr, (pad[1], pad[3], pad[0], pad[2])), wr, stride=s)
        torch.testing.assert_close(y, ref.detach(), rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        gx, gw, _ = ops.conv2d_backward(g, x, w, [s, s], list(pad), [1, 1], 1, [True, True, False])
        want = torch.autograd.grad(ref, (xr, wr), g)
        torch.testing.assert_close(gx, want[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gw, want[1], rtol=1e-12, atol=1e-12)
    e = torch.randn(0, 6, 9, 8, dtype=torch.float64, device=device)
    y = ops.conv2d_forward(e, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert y.shape == (0, 5, 9, 9)
    gx, gw, _ = ops.conv2d_backward(torch.zeros_like(y), e, w, [1, 1], [1, 1], [1, 1], 1, [True, True, False])
    assert gx.shape == e.shape and torch.equal(gw, torch.zeros_like(w))


def _run(mode, x, w, go, s=1, p=1):
    before = dlkernels.set_direct_conv(mode)
    try:
        xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = DF.conv2d(xx, ww, None, s, p)
        y.backward(go)
        return y.detach(), xx.grad, ww.grad
    finally:
        assert dlkernels.set_direct_conv(before) == mode


@cpu_kernels_only
def test_direct_rule_and_modes():
    """"auto" runs the direct kernels where the measured rule (ops/conv.cpp, direct_pays) says: the
    forward and input gradient of a 3x3 layer on a 4x4 output (bitwise "always"'s result, which rounds
    differently from "never"), not of one on a 28x28 output; the weight gradient of a 3-channel layer,
    not of a 64-channel one. set_direct_conv returns the old mode and rejects unknown ones."""
    assert dlkernels.direct_conv() == "auto"
    x, w = torch.randn(4, 64, 4, 4), torch.randn(64, 64, 3, 3) / 24
    go = torch.randn(4, 64, 4, 4)
    auto, always, never = (_run(m, x, w, go) for m in ("auto", "always", "never"))
    for i in range(2):
        assert torch.equal(auto[i], always[i]) and not torch.equal(always[i], never[i]), i
    assert torch.equal(auto[2], never[2]) and not torch.equal(always[2], never[2])
    x, w, go = torch.randn(2, 3, 30, 30), torch.randn(16, 3, 7, 7) / 12, torch.randn(2, 16, 12, 12)
    auto, always, never = (_run(m, x, w, go, 2, 0) for m in ("auto", "always", "never"))
    assert torch.equal(auto[2], always[2]) and not torch.equal(always[2], never[2])
    x, w, go = torch.randn(2, 64, 28, 28), torch.randn(64, 64, 3, 3) / 24, torch.randn(2, 64, 28, 28)
    auto, never = _run("auto", x, w, go), _run("never", x, w, go)
    for a, n in zip(auto, never):
        assert torch.equal(a, n)
    with pytest.raises(ValueError, match="set_direct_conv: mode must be one of"):
        dlkernels.set_direct_conv("fast")
    assert dlkernels.direct_conv() == "auto"


@cpu_kernels_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_direct_thread_counts(direct_always, dtype, layout):
    """Every output and gradient value is one thread's sum in a fixed order: 1 or 2 threads give bitwise
    the same results."""
    x = torch.randn(5, 12, 11, 13, dtype=dtype)
    w = torch.randn(40, 12, 3, 3, dtype=dtype)
    go = torch.randn(5, 40, 6, 7, dtype=dtype)
    if layout == "nhwc":
        x, go = x.contiguous(memory_format=torch.channels_last), go.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        two = _run("always", x, w, go, 2, 1)
        torch.set_num_threads(1)
        one = _run("always", x, w, go, 2, 1)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(two, one):
        assert torch.equal(a, b)


@cpu_kernels_only
@pytest.mark.parametrize("where", ["input", "weight"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_direct_non_finite_values(where, value, layout):
    """An infinite or NaN input or weight: infinities and NaN land where torch's do, in the output and
    both gradients (the forward skips padded taps, as torch's does: an infinite tap over the padding
    makes no 0 * inf = NaN; the im2col path, multiplying the column matrix's zeros, does); the finite
    values agree to rounding."""
    x = torch.randn(2, 9, 8, 7)
    w = torch.randn(10, 9, 3, 3).abs()
    (x if where == "input" else w).view(-1)[5] = value
    go = torch.randn(2, 10, 4, 4)
    if layout == "nhwc":
        x, go = x.contiguous(memory_format=torch.channels_last), go.contiguous(memory_format=torch.channels_last)
    got = _run("always", x, w, go, 2, 1)
    xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = F.conv2d(xx, ww, None, 2, 1)
    y.backward(go)
    want = (y.detach(), xx.grad, ww.grad)
    assert got[0].isinf().any() or got[0].isnan().any()
    for a, e in zip(got, want):
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf())
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, equal_nan=True)
