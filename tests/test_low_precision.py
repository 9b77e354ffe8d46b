"""float16 and bfloat16 on every device, torch.autocast, and converted models in low precision.

On the CPU the kernels take float32 and float64: low-precision inputs run in float32 and each result is
rounded once (torch's CPU kernels also accumulate those dtypes in float32); optimizers update float16 and
bfloat16 parameters with float32 math. Each result is judged by DESIGN.md's rule: its error against
float64 at most twice torch's own at the same precision (conftest.assert_lowp_close)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
import dlkernels.optim as dopt
from conftest import assert_lowp_close, check_fwd_bwd

LOWP = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
def test_conv_im2col_col2im(device, dtype, bias):
    x = torch.randn(2, 6, 11, 9, device=device).to(dtype)
    w = (torch.randn(4, 3, 3, 3, device=device) / 4).to(dtype)
    b = torch.randn(4, device=device).to(dtype)
    args = [x, w, b] if bias else [x, w]
    out, _ = check_fwd_bwd(lambda *a: DF.conv2d(*a, stride=(2, 1), padding=1, groups=2),
                           lambda *a: F.conv2d(*a, stride=(2, 1), padding=1, groups=2), args,
                           grad_inputs=tuple(range(len(args))))
    assert out.dtype == dtype
    c = DF.im2col(x, 3, padding=1)
    assert c.dtype == dtype and torch.equal(c, F.unfold(x, 3, padding=1))
    assert_lowp_close(DF.col2im(c, (11, 9), 3, padding=1), F.fold(c, (11, 9), 3, padding=1),
                      F.fold(c.double(), (11, 9), 3, padding=1), "col2im")


@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
def test_pooling(device, dtype):
    x = torch.randn(2, 5, 13, 12, device=device).to(dtype)
    for ours, ref in ((lambda a: DF.max_pool2d(a, 3, 2, 1, ceil_mode=True), lambda a: F.max_pool2d(a, 3, 2, 1, ceil_mode=True)),
                      (lambda a: DF.avg_pool2d(a, 3, 2, 1), lambda a: F.avg_pool2d(a, 3, 2, 1)),
                      (lambda a: DF.adaptive_avg_pool2d(a, (4, 5)), lambda a: F.adaptive_avg_pool2d(a, (4, 5)))):
        out, _ = check_fwd_bwd(ours, ref, [x])
        assert out.dtype == dtype
    out, idx = DF.max_pool2d(x, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
@pytest.mark.parametrize("fused", ["plain", "relu", "add_relu"])
def test_batch_norm(device, dtype, fused):
    x64 = torch.randn(4, 6, 7, 5, device=device, dtype=torch.float64) * 2 + 3
    r64 = torch.randn_like(x64)
    w = torch.rand(6, device=device, dtype=torch.float64) + 0.5
    b = torch.randn(6, device=device, dtype=torch.float64)

    def run(fn, dt, training):
        x = x64.to(dt).requires_grad_()
        r = r64.to(dt).requires_grad_()
        rm, rv = torch.zeros(6, device=device, dtype=dt), torch.ones(6, device=device, dtype=dt)
        out = fn(x, r, rm, rv, w.to(dt), b.to(dt), training)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dt)
        gx, gr = torch.autograd.grad(out, (x, r), g, allow_unused=True)
        return [out, gx] + ([gr] if fused == "add_relu" else []) + ([rm, rv] if training else [])

    def ours(x, r, rm, rv, w_, b_, training):
        if fused == "plain":
            return DF.batch_norm(x, rm, rv, w_, b_, training) + 0 * r
        if fused == "relu":
            return DF.batch_norm_relu(x, rm, rv, w_, b_, training) + 0 * r
        return DF.batch_norm_add_relu(x, r, rm, rv, w_, b_, training)

    def ref(x, r, rm, rv, w_, b_, training, gate=None):
        y = F.batch_norm(x, rm, rv, w_, b_, training)
        if fused == "add_relu":
            y = y + r
        if fused != "plain":
            # The float64 truth takes our output's ReLU gate: where the pre-activation is within rounding
            # of 0 the gate is a coin toss between precisions (torch's low-precision result has its own).
            y = y.relu() if gate is None else y * gate
        return y + (0 * r if fused != "add_relu" else 0)

    for training in (True, False):
        got, theirs = run(ours, dtype, training), run(ref, dtype, training)
        gate = (got[0] > 0).double()
        truth = run(lambda *a: ref(*a, gate=gate), torch.float64, training)
        for i, (a, c, t) in enumerate(zip(got, theirs, truth)):
            assert a.dtype == dtype, (i, a.dtype)
            assert_lowp_close(a, c, t, f"training={training} tensor {i}")


@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
def test_cross_entropy(device, dtype):
    x = (torch.randn(16, 300, device=device) * 3).to(dtype)
    t = torch.randint(0, 300, (16,), device=device)
    w = torch.rand(300, device=device).to(dtype)
    out, _ = check_fwd_bwd(lambda a, b, c: DF.cross_entropy(a, b, weight=c, label_smoothing=0.1),
                           lambda a, b, c: F.cross_entropy(a, b, weight=c, label_smoothing=0.1), [x, t, w])
    assert out.dtype == dtype
    q = torch.softmax(torch.randn(16, 300, device=device), 1).to(dtype)
    check_fwd_bwd(lambda a, b: DF.cross_entropy(a, b), lambda a, b: F.cross_entropy(a, b), [x, q], grad_inputs=(0, 1))


@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop"])
def test_optimizers_update_low_precision_parameters(device, dtype, name):
    """Ten steps on float16/bfloat16 parameters: float32 math, parameters and states stored in their dtype.
    The reference is exactly that: torch's optimizer in float32, its parameters and states rounded to the
    dtype after every step. (torch's own float16 RMSprop/Adagrad/Adam round eps=1e-8 to 0 and overflow.)
    Ours may differ from it by the order of float32 operations within a step, which can flip a rounding of
    the stored values: at most one spacing of the dtype at the parameters' scale per step (states enter
    the parameter scaled by lr), so ten spacings over ten steps."""
    kw = dict(Adam=dict(lr=0.01, weight_decay=0.1, amsgrad=True), AdamW=dict(lr=0.01),
              SGD=dict(lr=0.1, momentum=0.9, nesterov=True), Adagrad=dict(lr=0.1),
              RMSprop=dict(lr=0.01, centered=True, momentum=0.5))[name]
    base = [torch.randn(1000, device=device).to(dtype), torch.randn(30, 7, device=device).to(dtype)]
    ref = [b.float().requires_grad_() for b in base]
    ours = [b.clone().requires_grad_() for b in base]
    opt_r, opt_o = getattr(torch.optim, name)(ref, **kw), getattr(dopt, name)(ours, **kw)
    for _ in range(10):
        for a, c in zip(ref, ours):
            g = torch.randn_like(c)
            a.grad, c.grad = g.float(), g
        opt_r.step()
        opt_o.step()
        with torch.no_grad():
            for a in ref:
                a.copy_(a.to(dtype))
                for k, v in opt_r.state[a].items():
                    if k != "step" and torch.is_tensor(v):
                        v.copy_(v.to(dtype))
    spacing = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)  # between neighbours in [1, 2)
    for a, c in zip(ref, ours):
        assert c.dtype == dtype and all(v.dtype == dtype for k, v in opt_o.state[c].items() if k != "step")
        err = (c.double() - a.double()).abs().max().item()
        assert err <= 10 * spacing * a.abs().max().item(), (err, a.abs().max().item())


def _small_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))


def test_autocast_training_matches_torch(device):
    """A converted model trains under torch.autocast (bfloat16 on the CPU, float16 on CUDA) as torch's
    does: the same output dtypes (conv in autocast's dtype, cross-entropy in float32) and losses within
    the low precision's rounding over five SGD steps."""
    torch.manual_seed(0)
    ref = _small_cnn().to(device)
    ours = dlkernels.convert(ref, fuse_bn_relu=True)
    lowp = torch.bfloat16 if device == "cpu" else torch.float16
    x = torch.randn(8, 3, 16, 16, device=device)
    y = torch.randint(0, 10, (8,), device=device)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt_o = dopt.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    for step in range(5):
        losses = []
        for model, opt, ce in ((ref, opt_r, F.cross_entropy), (ours, opt_o, DF.cross_entropy)):
            with torch.autocast(device, dtype=lowp):
                first = model[0](x)
                logits = model(x)
                loss = ce(logits, y)
            assert first.dtype == lowp and loss.dtype == torch.float32
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 0.05 * abs(losses[0]) + 0.02, (step, losses)


@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
def test_converted_model_in_low_precision(device, dtype):
    """model.to(dtype) of a converted model: forward and gradients against torch's model in the same
    dtype, judged against the float64 model."""
    torch.manual_seed(1)
    ref = _small_cnn().to(device)
    ours = dlkernels.convert(ref, fuse_bn_relu=True)
    x = torch.randn(8, 3, 16, 16, device=device)
    results = []
    for model, dt in ((ours, dtype), (ref, dtype), (ref, torch.float64)):
        m = __import__("copy").deepcopy(model).to(dt).train()
        out = m(x.to(dt))
        out.square().sum().backward()
        results.append([out] + [p.grad for p in m.parameters()])
    for i, (a, b, r) in enumerate(zip(*results)):
        assert a.dtype == dtype
        assert_lowp_close(a, b, r, f"tensor {i}")


def test_autocast_leaves_float64_alone(device):
    """torch.autocast casts float16, bfloat16 and float32 tensors only: float64 stays float64, in ours as in
    torch's."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    logits = torch.randn(5, 4, dtype=torch.float64, device=device)
    t = torch.randint(0, 4, (5,), device=device)
    with torch.autocast(device):
        assert DF.conv2d(x, w).dtype == F.conv2d(x, w).dtype == torch.float64
        assert DF.cross_entropy(logits, t).dtype == F.cross_entropy(logits, t).dtype == torch.float64


def test_low_precision_dtype_mismatch_raises(device):
    x = torch.randn(2, 3, 8, 8, device=device).to(torch.bfloat16)
    with pytest.raises(TypeError, match="weight must have the (input's dtype|dtype of input)"):
        DF.conv2d(x, torch.randn(4, 3, 3, 3, device=device))
    with pytest.raises(TypeError, match="weight must have the input's dtype"):
        DF.cross_entropy(torch.randn(5, 4, device=device).half(), torch.randint(0, 4, (5,), device=device),
                         weight=torch.rand(4, device=device))


@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
def test_conv_in_chunks_of_images(device, dtype):
    """A workspace limit of about one image: the low-precision forward and weight gradient run chunk by
    chunk (the weight gradient's chunks summed in float32), judged as in one chunk."""
    x = torch.randn(5, 4, 10, 10, device=device).to(dtype)
    w = (torch.randn(6, 4, 3, 3, device=device) / 4).to(dtype)
    previous = dlkernels.workspace_limit()
    try:
        dlkernels.set_workspace_limit(2 * (4 * 9 + 6) * 100 * 2)  # two images' column and rows buffers
        check_fwd_bwd(lambda *a: DF.conv2d(*a, padding=1), lambda *a: F.conv2d(*a, padding=1), [x, w],
                      grad_inputs=(0, 1))
    finally:
        dlkernels.set_workspace_limit(previous)


# stride-1 layers whose input gradient runs as a 16-bit convolution of grad_output (1x1; 3x3 padded 0, 1;
# 5x3 asymmetric; 2x2 even), and layers that keep the float32 path (padding past K - 1, dilation, stride 2)
GI_CASES = [((1, 1), dict()), ((3, 3), dict(padding=0)), ((3, 3), dict(padding=1)), ((5, 3), dict(padding=(2, 1))),
            ((2, 2), dict(padding=1)), ((3, 3), dict(padding=3)), ((3, 3), dict(padding=2, dilation=2)),
            ((3, 3), dict(padding=1, stride=2))]


@pytest.mark.parametrize("k,kw", GI_CASES, ids=[str(i) for i in range(len(GI_CASES))])
@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
def test_conv_input_gradient_paths(device, dtype, k, kw):
    x = torch.randn(3, 8, 9, 10, device=device).to(dtype)
    w = (torch.randn(5, 8, *k, device=device) / 6).to(dtype)
    check_fwd_bwd(lambda *a: DF.conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), [x, w], grad_inputs=(0, 1))


# bfloat16 layers of one group on the CPU run the pair-dot kernels (csrc/cpu/conv_bf16.h: AVX512-BF16, the
# scalar reference on the scalar path; AVX2 keeps the GEMM path): odd channel counts and row widths,
# output channels off a multiple of 16, strides past the kernel, padding past K - 1, dilation (its input
# gradient on the float32 path when strided), 1x1 stride 2, a first layer of 3 channels, both memory
# formats of input and weight.
PAIR_CASES = [
    dict(c=3, oc=20, k=7, stride=2, padding=3, hw=(19, 22)),
    dict(c=8, oc=16, k=3, stride=1, padding=1, hw=(7, 7)),
    dict(c=5, oc=33, k=3, stride=1, padding=1, hw=(9, 6)),
    dict(c=6, oc=12, k=3, stride=2, padding=1, hw=(9, 11)),
    dict(c=4, oc=8, k=1, stride=2, padding=0, hw=(7, 8)),
    dict(c=7, oc=9, k=3, stride=3, padding=2, hw=(11, 10)),
    dict(c=6, oc=10, k=3, stride=1, padding=3, hw=(6, 5)),
    dict(c=4, oc=6, k=3, stride=1, padding=2, dilation=2, hw=(9, 8)),
    dict(c=4, oc=6, k=3, stride=2, padding=2, dilation=2, hw=(11, 9)),
    dict(c=66, oc=70, k=3, stride=1, padding=1, hw=(5, 4)),
    dict(c=4, oc=5, k=(2, 3), stride=(2, 1), padding=(1, 0), hw=(7, 9)),
]


def _conv_and_grads(fn, x, w, b, **kw):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b, **kw)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(y)
    return [y] + list(torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g))


@pytest.mark.parametrize("case", range(len(PAIR_CASES)))
@pytest.mark.parametrize("fmt", ["nchw", "nhwc", "nhwc-weight"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_bf16_conv_paths_match_torch(device, case, fmt, bias):
    p = dict(PAIR_CASES[case])
    c, oc, k, hw = p.pop("c"), p.pop("oc"), p.pop("k"), p.pop("hw")
    k = (k, k) if isinstance(k, int) else k
    x = torch.randn(3, c, *hw, device=device).to(torch.bfloat16)
    w = (torch.randn(oc, c, *k, device=device) / (c * k[0] * k[1]) ** 0.5).to(torch.bfloat16)
    b = torch.randn(oc, device=device).to(torch.bfloat16) if bias else None
    if fmt != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    if fmt == "nhwc-weight":
        w = w.contiguous(memory_format=torch.channels_last)
    ours = _conv_and_grads(DF.conv2d, x, w, b, **p)
    theirs = _conv_and_grads(F.conv2d, x, w, b, **p)
    truth = _conv_and_grads(F.conv2d, x.double(), w.double(), b.double() if bias else None, **p)
    for i, (a, t, r) in enumerate(zip(ours, theirs, truth)):
        assert a.dtype == torch.bfloat16 and a.shape == t.shape
        assert_lowp_close(a, t, r, f"{PAIR_CASES[case]} {fmt} tensor {i}")
    assert ours[0].is_contiguous(memory_format=torch.channels_last) == (fmt != "nchw")


def test_bf16_conv_four_sided_padding(device):
    """Padding (top, left, bottom, right) through the op, against torch's convolution of the padded input."""
    x = torch.randn(2, 5, 8, 7, device=device).to(torch.bfloat16)
    w = (torch.randn(9, 5, 3, 3, device=device) / 6).to(torch.bfloat16)
    pad = [0, 2, 1, 0]
    xp = F.pad(x, (pad[1], pad[3], pad[0], pad[2]))
    y = torch.ops.dlkernels.conv2d_forward(x, w, None, [1, 1], pad, [1, 1], 1)
    gy = torch.randn(y.shape, device=device).to(torch.bfloat16)
    gi, gw, _ = torch.ops.dlkernels.conv2d_backward(gy, x, w, [1, 1], pad, [1, 1], 1, [True, True, False])
    for dt in (torch.bfloat16, torch.float64):
        xr = xp.to(dt).requires_grad_()
        wr = w.to(dt).requires_grad_()
        yr = F.conv2d(xr, wr)
        gir, gwr = torch.autograd.grad(yr, (xr, wr), gy.to(dt))
        gir = gir[:, :, pad[0]:pad[0] + 8, pad[1]:pad[1] + 7]
        if dt == torch.bfloat16:
            theirs = (yr, gir, gwr)
    for a, t, r, name in zip((y, gi, gw), theirs, (yr, gir, gwr), ("output", "grad_input", "grad_weight")):
        assert_lowp_close(a, t, r, name)


def test_bf16_conv_weight_grad_not_finite(device):
    """An infinite input value beside a row of odd width: the weight gradient's pair kernel would multiply
    it by the zero grad_output of the missing partner position (NaN where torch has a finite value), so
    that layer takes the GEMM path; the result's non-finite entries are torch's."""
    x = torch.randn(2, 4, 7, 7, device=device).to(torch.bfloat16)
    x[1, 2, 3, 6] = float("inf")
    w = (torch.randn(6, 4, 3, 3, device=device) / 6).to(torch.bfloat16)
    gy = torch.randn(2, 6, 7, 7, device=device).to(torch.bfloat16)
    gw = torch.ops.dlkernels.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [False, True, False])[1]
    ref = torch.ops.aten.convolution_backward(gy.float(), x.float(), w.float(), None, [1, 1], [1, 1], [1, 1], False,
                                              [0, 0], 1, [False, True, False])[1]
    assert torch.equal(gw.isnan(), ref.isnan()) and torch.equal(gw.isinf(), ref.isinf())
    assert bool(gw.isfinite().any())
    fin = ref.isfinite()
    assert_lowp_close(gw[fin], ref.to(torch.bfloat16)[fin], ref.double()[fin], "finite entries")


@pytest.mark.parametrize("shape,fmt", [((4, 6, 5, 3), "nhwc"), ((3, 5, 150, 160), "nchw")],
                         ids=["channels_last", "channels-past-L2"])
def test_bf16_batch_norm_other_layouts(device, shape, fmt):
    """bfloat16 batch norm off the fused path (channels_last input; a channel past the fused path's 256 KiB):
    the float32 computation inside the op, rounded once; the output keeps the input's memory format."""
    x64 = torch.randn(*shape, device=device, dtype=torch.float64) * 2 + 1
    r64 = torch.randn_like(x64)
    w = torch.rand(shape[1], device=device) + 0.5
    b = torch.randn(shape[1], device=device)
    mf = torch.channels_last if fmt == "nhwc" else torch.contiguous_format

    def run(fn, dt):
        x = x64.to(dt).contiguous(memory_format=mf).requires_grad_()
        r = r64.to(dt).contiguous(memory_format=mf).requires_grad_()
        out = fn(x, r, w.to(dt) if dt == torch.float64 else w, b.to(dt) if dt == torch.float64 else b)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device, dt)
        return [out] + list(torch.autograd.grad(out, (x, r), g))

    got = run(lambda x, r, w_, b_: DF.batch_norm_add_relu(x, r, None, None, w_, b_, True), torch.bfloat16)
    theirs = run(lambda x, r, w_, b_: F.relu(F.batch_norm(x, None, None, w_, b_, True) + r), torch.bfloat16)
    gate = (got[0] > 0).double()
    truth = run(lambda x, r, w_, b_: (F.batch_norm(x, None, None, w_, b_, True) + r) * gate, torch.float64)
    for i, (a, t, r) in enumerate(zip(got, theirs, truth)):
        assert a.dtype == torch.bfloat16
        assert_lowp_close(a, t, r, f"tensor {i}")
    assert got[0].is_contiguous(memory_format=mf)


def test_resnet18_autocast_trains_like_torch():
    """A converted ResNet-18 under torch.autocast("cpu", torch.bfloat16) trains as torch's does: over 20
    SGD-momentum steps from the same weights on the same batches, the losses stay within twice the
    largest deviation of torch's own autocast losses from its float32 training (plus 1% of the loss):
    the runs drift apart step by step as training amplifies rounding, so the bound is over the run."""
    from dlkernels import models as M
    base = M.MODELS["resnet18"][0]()
    batches = [(torch.randn(4, 3, 64, 64), torch.randint(0, 1000, (4,))) for _ in range(20)]

    def train(model, opt_cls, ce, autocast):
        opt = opt_cls(model.parameters(), lr=0.01, momentum=0.9)
        losses = []
        for x, y in batches:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = ce(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return torch.tensor(losses, dtype=torch.float64)

    f32 = train(copy.deepcopy(base), torch.optim.SGD, F.cross_entropy, False)
    theirs = train(copy.deepcopy(base), torch.optim.SGD, F.cross_entropy, True)
    ours = train(dlkernels.convert(copy.deepcopy(base), fuse_bn_relu=True), dopt.SGD, DF.cross_entropy, True)
    deviation, bound = (ours - theirs).abs().max(), 2 * (theirs - f32).abs().max() + 0.01 * theirs.abs().max()
    assert deviation <= bound, (ours, theirs, f32)


def test_bf16_batch_norm_keeps_subnormals(device):
    """Outputs below float's smallest normal (a weight of 1e-38) are rounded to bfloat16's subnormals, as
    torch's conversion rounds them, not flushed to zero (this CPU's vcvtneps2bf16 flushes them)."""
    x64 = torch.randn(4, 8, 6, 6, device=device, dtype=torch.float64) * 3
    w = torch.rand(8, device=device) * 1e-38
    b = torch.zeros(8, device=device)
    got = DF.batch_norm(x64.to(torch.bfloat16), None, None, w, b, True)
    truth = F.batch_norm(x64, None, None, w.double(), b.double(), True)
    sub = (truth.abs() < 1.1754944e-38) & (truth.abs() > 1e-40)  # bfloat16 subnormals, not rounding to 0
    assert bool(sub.any()) and bool((got[sub] != 0).all())
    assert_lowp_close(got, F.batch_norm(x64.to(torch.bfloat16), None, None, w, b, True), truth, "subnormal outputs")
