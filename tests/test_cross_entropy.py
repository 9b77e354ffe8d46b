"""Fused softmax-cross-entropy: parity with F.cross_entropy over its whole argument surface, on every
device and CPU ISA path, against float64 and the numpy textbook reference; gradcheck; opcheck; compile."""
import itertools
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
import dlkernels.nn as dnn

from conftest import KDEV, TOL, assert_close, check_fwd_bwd, cuda_semantics, dtypes_for, needs_cuda_kernels
from reference import SoftmaxWithLoss, cross_entropy as ce_reference

REDUCTIONS = ["mean", "sum", "none"]


def make_case(shape, dtype, device, prob, n_ignored=0, ignore_index=-100, weighted=False, seed=0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    C = shape[1] if len(shape) > 1 else shape[0]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + offset).to(dtype).to(device)
    if prob:
        target = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64) * 2, dim=1 if len(shape) > 1 else 0)
        target = target.to(dtype).to(device)
    else:
        tshape = (shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ()
        target = torch.randint(0, C, tshape, generator=gen)
        flat = target.view(-1)
        if n_ignored:
            flat[torch.randperm(flat.numel(), generator=gen)[:n_ignored]] = ignore_index
        target = target.to(device)
    weight = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.1).to(dtype).to(device) if weighted else None
    return x, target, weight


# ------------------------------------------------------------------------------------------ parity

SHAPES = [(1, 1), (7, 3), (64, 10), (33, 1001), (5, 4, 7), (3, 6, 5, 9), (2, 3, 17, 1), (4, 37, 2, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity_with_torch(device, dtype, shape, prob, reduction):
    for weighted, smoothing in [(False, 0.0), (True, 0.0), (False, 0.25), (True, 0.7)]:
        x, t, w = make_case(shape, dtype, device, prob, n_ignored=0 if prob else 1, weighted=weighted,
                            seed=hash((shape, prob)) % 1000)
        kw = dict(reduction=reduction, label_smoothing=smoothing)
        check_fwd_bwd(lambda a, b, w: DF.cross_entropy(a, b, weight=w, **kw),
                      lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), [x, t, w], dtype=dtype)


@pytest.mark.parametrize("C", [1, 3, 1001, 32000])
def test_odd_class_counts(device, C):
    N = 9 if C < 32000 else 4
    for prob, smoothing in [(False, 0.0), (False, 0.1), (True, 0.0)]:
        x, t, w = make_case((N, C), torch.float32, device, prob, weighted=True, seed=C)
        kw = dict(label_smoothing=smoothing)
        check_fwd_bwd(lambda a, b, w: DF.cross_entropy(a, b, weight=w, **kw),
                      lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), [x, t, w])


@pytest.mark.parametrize("ignore_index", [-100, 0, 2, -1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index(device, ignore_index, reduction):
    x, t, w = make_case((40, 5), torch.float64, device, False, n_ignored=13, ignore_index=ignore_index, weighted=True)
    for smoothing in (0.0, 0.2):
        kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
        check_fwd_bwd(lambda a, b, w: DF.cross_entropy(a, b, weight=w, **kw),
                      lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), [x, t, w])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_all_ignored(device, reduction, smoothing):
    """Every row ignored: 'mean' is 0/0 = NaN (as torch), 'sum' is 0; gradients are 0."""
    x = torch.randn(6, 4, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.full((6,), -100, device=device)
    ours = DF.cross_entropy(x, t, reduction=reduction, label_smoothing=smoothing)
    ref = F.cross_entropy(x.detach(), t, reduction=reduction, label_smoothing=smoothing)
    torch.testing.assert_close(ours.detach(), ref, equal_nan=True)
    if reduction != "mean":
        (g,) = torch.autograd.grad(ours.sum(), x)
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(device, reduction):
    for target in (torch.zeros(0, dtype=torch.long), torch.rand(0, 5, dtype=torch.float64)):
        x = torch.randn(0, 5, device=device, dtype=torch.float64, requires_grad=True)
        target = target.to(device)
        ours = DF.cross_entropy(x, target, reduction=reduction)
        ref = F.cross_entropy(x.detach(), target, reduction=reduction)
        torch.testing.assert_close(ours.detach(), ref, equal_nan=True)
        ours.sum().backward()
        assert x.grad.shape == x.shape


def test_unbatched(device, dtype):
    for prob in (False, True):
        x, t, w = make_case((11,), dtype, device, prob, weighted=True)
        for reduction in REDUCTIONS:
            kw = dict(reduction=reduction, label_smoothing=0.1)
            check_fwd_bwd(lambda a, b, w: DF.cross_entropy(a, b, weight=w, **kw),
                          lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), [x, t, w], dtype=dtype)


def test_non_contiguous_and_channels_last(device):
    x = torch.randn(8, 6, 5, 7, device=device)
    targets = torch.randint(0, 6, (8, 5, 7), device=device)
    cases = [
        (torch.randn(8, 6, 5, 14, device=device)[..., ::2], targets),  # strided view
        (x.contiguous(memory_format=torch.channels_last), targets),
        (torch.randn(12, 40, device=device)[::2, ::3], torch.randint(0, 14, (6,), device=device)),
        (torch.randn(40, 9, device=device).t(), torch.randint(0, 40, (9,), device=device)),
    ]
    for inp, tgt in cases:
        assert not inp.is_contiguous()
        check_fwd_bwd(lambda a, b: DF.cross_entropy(a, b, label_smoothing=0.1),
                      lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1), [inp, tgt])
        probs = torch.softmax(torch.randn_like(inp), 1).transpose(0, -1).contiguous().transpose(0, -1)
        check_fwd_bwd(DF.cross_entropy, F.cross_entropy, [inp, probs])


def test_uint8_target_and_promoted_prob_target(device):
    x = torch.randn(10, 7, device=device)
    t = torch.randint(0, 7, (10,), device=device)
    check_fwd_bwd(DF.cross_entropy, F.cross_entropy, [x, t.to(torch.uint8)])
    probs64 = torch.softmax(torch.randn(10, 7, dtype=torch.float64), 1).to(device)
    out = DF.cross_entropy(x, probs64)
    ref = F.cross_entropy(x, probs64)
    assert out.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


def test_target_gradient(device, dtype):
    """Probability targets are differentiable in torch; so here."""
    x, t, w = make_case((6, 9, 4), dtype, device, True, weighted=True)
    for reduction in REDUCTIONS:
        kw = dict(reduction=reduction, label_smoothing=0.3)
        check_fwd_bwd(lambda a, b, w: DF.cross_entropy(a, b, weight=w, **kw),
                      lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), [x, t, w], grad_inputs=(0, 1), dtype=dtype)


# ------------------------------------------------------------------------------------ numerics

def test_large_logits_no_overflow(device, dtype):
    """Logits far above exp's range: the max subtraction keeps everything finite."""
    x, t, _ = make_case((16, 50), dtype, device, False, offset=1000.0)
    check_fwd_bwd(lambda a, b: DF.cross_entropy(a, b, label_smoothing=0.2),
                  lambda a, b: F.cross_entropy(a, b, label_smoothing=0.2), [x, t], dtype=dtype)
    out = DF.cross_entropy(x, t)
    assert torch.isfinite(out)


def test_minus_inf_and_nan_logits(device):
    x = torch.randn(5, 8, device=device)
    x[0, 3] = float("-inf")   # a masked class: probability exactly 0, finite loss
    x[1, :] = float("-inf")   # a fully masked row: NaN as in torch
    x[2, 4] = float("nan")    # NaN propagates to its row
    t = torch.tensor([1, 2, 0, 3, 4], device=device)
    for reduction in ("none", "sum"):
        ours = DF.cross_entropy(x, t, reduction=reduction)
        ref = F.cross_entropy(x, t, reduction=reduction)
        torch.testing.assert_close(ours, ref, equal_nan=True)
    xg = x.clone().requires_grad_(True)
    DF.cross_entropy(xg, t, reduction="none")[0].backward()
    assert xg.grad[0, 3] == 0


# ------------------------------------------------------------------------ from-scratch reference

@pytest.mark.parametrize("shape", [(4, 3), (16, 10), (3, 5, 4)], ids=str)
def test_numpy_textbook_reference(device, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    x_np = rng.normal(size=shape) * 2
    C = shape[1]
    labels = rng.integers(0, C, size=(shape[0],) + shape[2:])
    x = torch.tensor(x_np, dtype=dtype, device=device, requires_grad=True)
    t = torch.tensor(labels, device=device)
    if len(shape) == 2:
        # the textbook layer itself: one-hot targets, mean over the batch, dx = (y - t) / N
        layer = SoftmaxWithLoss()
        onehot = np.eye(C)[labels]
        loss_ref = layer.forward(x_np, onehot)
        dx_ref = layer.backward(1.0)
        loss = DF.cross_entropy(x, t)
        loss.backward()
        np.testing.assert_allclose(loss.item(), loss_ref, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"])
        np.testing.assert_allclose(x.grad.cpu().double().numpy(), dx_ref, rtol=TOL[dtype]["rtol"] * 10,
                                   atol=TOL[dtype]["atol"] * 10)
        x.grad = None
    # the generalised reference: weights, smoothing, ignore_index, every reduction
    w_np = rng.uniform(0.2, 2.0, size=C)
    labels_ig = labels.copy().reshape(-1)
    labels_ig[0] = -100
    labels_ig = labels_ig.reshape(labels.shape)
    for reduction, smoothing in itertools.product(REDUCTIONS, (0.0, 0.15)):
        grad_np = rng.normal(size=labels.shape) if reduction == "none" else 1.7
        loss_ref, dx_ref = ce_reference(x_np, labels_ig, weight=w_np, reduction=reduction, label_smoothing=smoothing,
                                        grad=grad_np)
        xx = x.detach().clone().requires_grad_(True)
        loss = DF.cross_entropy(xx, torch.tensor(labels_ig, device=device), weight=torch.tensor(w_np, dtype=dtype, device=device),
                                reduction=reduction, label_smoothing=smoothing)
        loss.backward(torch.as_tensor(grad_np, dtype=dtype, device=device).expand_as(loss))
        tol = dict(rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)
        np.testing.assert_allclose(loss.detach().cpu().double().numpy(), loss_ref, **tol)
        np.testing.assert_allclose(xx.grad.cpu().double().numpy(), dx_ref, **tol)
    # probability targets
    probs = rng.dirichlet(np.ones(C), size=int(np.prod(labels.shape)))
    probs = np.moveaxis(probs.reshape(labels.shape + (C,)), -1, 1)
    loss_ref, dx_ref = ce_reference(x_np, probs, weight=w_np, reduction="mean", label_smoothing=0.1)
    xx = x.detach().clone().requires_grad_(True)
    loss = DF.cross_entropy(xx, torch.tensor(probs, dtype=dtype, device=device),
                            weight=torch.tensor(w_np, dtype=dtype, device=device), label_smoothing=0.1)
    loss.backward()
    tol = dict(rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)
    np.testing.assert_allclose(loss.item(), loss_ref, **tol)
    np.testing.assert_allclose(xx.grad.cpu().double().numpy(), dx_ref, **tol)


# ---------------------------------------------------------------------- ISA paths agree

@pytest.mark.parametrize("shape", [(37, 1001), (3, 19, 45), (2, 1, 5)], ids=str)
def test_isa_paths_match_scalar(shape):
    """The AVX2 and AVX-512 paths against the scalar specification, on poisoned output buffers."""
    isas = dlkernels.supported_cpu_isas()
    x, t, w = make_case(shape, torch.float32, "cpu", False, n_ignored=2, weighted=True)
    probs = make_case(shape, torch.float32, "cpu", True)[1]
    results = {}
    for isa in isas:
        with dlkernels.use_cpu_isa(isa):
            outs = []
            for target, kw in [(t, dict(weight=w, label_smoothing=0.2)), (probs, dict(weight=w, label_smoothing=0.1)),
                               (t, dict(reduction="none"))]:
                xx = x.clone().requires_grad_(True)
                loss = DF.cross_entropy(xx, target, **kw)
                loss.backward(torch.ones_like(loss) * 0.5)
                outs += [loss.detach(), xx.grad]
            results[isa] = outs
    for isa in isas[1:]:
        for a, b in zip(results[isa], results["scalar"]):
            assert_close(a, b, msg=f"{isa} vs scalar")


def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(ValueError, match="isa must be one of"):
        dlkernels.set_cpu_isa("sse9")


# ---------------------------------------------------------------------- gradcheck, opcheck

@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(device, prob, reduction):
    x, t, w = make_case((4, 5, 3), torch.float64, device, prob, n_ignored=0 if prob else 2, weighted=True)
    x.requires_grad_(True)
    if prob:
        t.requires_grad_(True)
        fn = lambda a, b: DF.cross_entropy(a, b, weight=w, reduction=reduction, label_smoothing=0.2)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, t))
    else:
        fn = lambda a: DF.cross_entropy(a, t, weight=w, reduction=reduction, label_smoothing=0.2)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))


def _opcheck_cases(device):
    x, t, w = make_case((6, 7), torch.float32, device, False, n_ignored=1, weighted=True)
    xs, ts, _ = make_case((3, 4, 5), torch.float64, device, False)
    xp, tp, _ = make_case((5, 3, 2), torch.float32, device, True)
    t3 = torch.where(t == -100, torch.full_like(t, 3), t)  # 3 as the ignored class
    return [(x, t, w, 1, -100, 0.1), (xs, ts, None, 0, -100, 0.0), (xp, tp, None, 2, -100, 0.3), (x, t3, w, 0, 3, 0.0)]


def test_opcheck(device):
    for x, t, w, red, ign, ls in _opcheck_cases(device):
        x = x.clone().requires_grad_(True)
        torch.library.opcheck(torch.ops.dlkernels.cross_entropy_forward.default, (x, t, w, red, ign, ls))
        loss, lse, tw = torch.ops.dlkernels.cross_entropy_forward(x.detach(), t, w, red, ign, ls)
        g = torch.randn_like(loss)
        torch.library.opcheck(torch.ops.dlkernels.cross_entropy_backward.default,
                              (g, x.detach(), t, w, lse, tw, red, ign, ls))
        if t.is_floating_point():
            torch.library.opcheck(torch.ops.dlkernels.cross_entropy_target_backward.default,
                                  (g, x.detach(), t, w, lse, tw, red, ls))


# ---------------------------------------------------------------------- module, compile

def test_module_is_drop_in(device):
    w = torch.rand(6, device=device) + 0.5
    ref = torch.nn.CrossEntropyLoss(weight=w, ignore_index=2, label_smoothing=0.05, reduction="sum")
    ours = dnn.CrossEntropyLoss(weight=w, ignore_index=2, label_smoothing=0.05, reduction="sum")
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys()) == ["weight"]
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(12, 6, device=device)
    t = torch.randint(0, 6, (12,), device=device)
    check_fwd_bwd(ours, ref, [x, t], reference64=False)
    legacy = dnn.CrossEntropyLoss(size_average=False)
    assert legacy.reduction == "sum"
    check_fwd_bwd(legacy, torch.nn.CrossEntropyLoss(size_average=False), [x, t], reference64=False)


def _train(model_fn, loss_fn, steps=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step_model = model_fn(model)
    x = torch.randn(64, 12)
    y = torch.randint(0, 10, (64,))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(step_model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_compile_fullgraph_trains():
    """torch.compile(fullgraph=True) traces the op (fake kernel + autograd) without a graph break, and
    training through it follows eager's loss curve."""
    eager = _train(lambda m: m, DF.cross_entropy)
    torch._dynamo.reset()

    def compiled(m):
        return torch.compile(lambda x: m(x), fullgraph=True, backend="aot_eager")

    loss_fn = torch.compile(lambda out, y: DF.cross_entropy(out, y, label_smoothing=0.0), fullgraph=True,
                            backend="aot_eager")
    got = _train(compiled, loss_fn)
    np.testing.assert_allclose(got, eager, rtol=1e-5)
    assert got[-1] < got[0]


def test_compile_inductor_whole_step():
    torch._dynamo.reset()

    def step(model, x, y):
        return DF.cross_entropy(model(x), y, label_smoothing=0.1)

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    eager = step(model, x, y)
    eager.backward()
    g_eager = model.weight.grad.clone()
    model.weight.grad = None
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(model, x, y)
    got.backward()
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(model.weight.grad, g_eager)


# ------------------------------------------------------------------------ determinism, threads

def test_deterministic_across_thread_counts():
    x, t, w = make_case((300, 517), torch.float32, "cpu", False, n_ignored=5, weighted=True)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            xx = x.clone().requires_grad_(True)
            loss = DF.cross_entropy(xx, t, weight=w, label_smoothing=0.1)
            loss.backward()
            results.append((loss.detach(), xx.grad))
    finally:
        torch.set_num_threads(before)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_concurrent_python_threads():
    cases = [make_case((64, 300), torch.float32, "cpu", False, seed=s) for s in range(4)]
    expected = [F.cross_entropy(x, t) for x, t, _ in cases]
    errors = []

    def work(i):
        x, t, _ = cases[i]
        for _ in range(20):
            got = DF.cross_entropy(x, t)
            if not torch.allclose(got, expected[i], rtol=1e-5):
                errors.append((i, got.item(), expected[i].item()))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


# ------------------------------------------------------------------------------ low precision (CUDA)

@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 1000), (8, 32000), (4, 21, 9, 11)], ids=str)
def test_cuda_low_precision(dtype, shape):
    for prob in (False, True):
        x, t, w = make_case(shape, dtype, KDEV, prob, weighted=True)
        kw = dict(label_smoothing=0.1)
        check_fwd_bwd(lambda a, b, w: DF.cross_entropy(a, b, weight=w, **kw),
                      lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), [x, t, w])


@pytest.mark.skipif(not dlkernels.cuda_available(), reason="needs a GPU and a CUDA build")
def test_cuda_runs_on_current_stream():
    x, t, _ = make_case((256, 1000), torch.float32, "cuda", False)
    ref = DF.cross_entropy(x, t)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = DF.cross_entropy(x, t)
    s.synchronize()
    torch.testing.assert_close(got, ref)


# ------------------------------------------------------------------------------------- bad inputs

def _bad_calls(device):
    x = torch.randn(4, 5, device=device)
    t = torch.randint(0, 5, (4,), device=device)
    other = "cpu" if device != "cpu" else "meta"
    return [
        # (call, exception type, fragment of the message)
        (lambda: DF.cross_entropy(x, torch.tensor([0, 5, 1, 2], device=device)), IndexError, "target 5 is out of bounds"),
        (lambda: DF.cross_entropy(x, torch.tensor([0, -2, 1, 2], device=device)), IndexError, "target -2 is out of bounds"),
        (lambda: DF.cross_entropy(x, torch.tensor([0, 1, 1, 7], device=device), ignore_index=7, weight=torch.ones(4, device=device)),
         ValueError, "weight must have shape (5,)"),
        (lambda: DF.cross_entropy(x, torch.rand(4, 4, device=device)), ValueError, "probability target must have the input's shape"),
        (lambda: DF.cross_entropy(x.long(), t), TypeError, "input must be float32 or float64"),
        (lambda: DF.cross_entropy(x, t.int()), TypeError, "class-index target must be int64"),
        (lambda: DF.cross_entropy(x, t[:3]), ValueError, "target batch size 3 does not match input batch size 4"),
        (lambda: DF.cross_entropy(x, t.view(4, 1)), ValueError, "target must have shape (4,)"),
        (lambda: DF.cross_entropy(x, t.to(other)), RuntimeError, "target is on"),
        (lambda: DF.cross_entropy(x, t, weight=torch.ones(5, device=other)), RuntimeError, "weight is on"),
        (lambda: DF.cross_entropy(x, t, weight=torch.ones(5, device=device, dtype=torch.float64)), TypeError,
         "weight must have the input's dtype"),
        (lambda: DF.cross_entropy(x, t, weight=torch.ones(5, 1, device=device)), ValueError, "weight must have shape (5,)"),
        (lambda: DF.cross_entropy(x, t, reduction="avg"), ValueError, "reduction must be 'none', 'mean' or 'sum'"),
        (lambda: DF.cross_entropy(x, t, label_smoothing=1.5), ValueError, "label_smoothing must be a number in [0.0, 1.0]"),
        (lambda: DF.cross_entropy(x, t, label_smoothing=-0.1), ValueError, "label_smoothing"),
        (lambda: DF.cross_entropy(x, torch.rand(4, 5, device=device), ignore_index=1), ValueError, "ignore_index is not supported"),
        (lambda: DF.cross_entropy(torch.tensor(1.0, device=device), torch.tensor(0, device=device)), ValueError, "0-dim"),
        (lambda: DF.cross_entropy(torch.randn(4, 0, device=device), t), ValueError, "at least one class"),
        (lambda: DF.cross_entropy(x.numpy() if device == "cpu" else x.cpu().numpy(), t), TypeError, "input must be a torch.Tensor"),
        (lambda: DF.cross_entropy(x, t, weight=torch.ones(5, device=device, requires_grad=True)), RuntimeError,
         "weight cannot require grad"),
        (lambda: torch.ops.dlkernels.cross_entropy_forward(x, t, None, 3, -100, 0.0), ValueError, "reduction must be 0"),
        (lambda: torch.ops.dlkernels.cross_entropy_forward(x, t, None, 1, -100, 2.0), ValueError, "label_smoothing"),
        (lambda: torch.ops.dlkernels.cross_entropy_forward(x[0], t, None, 1, -100, 0.0), ValueError, "input must have shape (N, C"),
        (lambda: torch.ops.dlkernels.cross_entropy_backward(torch.ones(3, device=device), x, t, None,
                                                            torch.zeros(4, device=device), torch.ones((), device=device),
                                                            0, -100, 0.0), ValueError, "grad_loss must have shape"),
        (lambda: torch.ops.dlkernels.cross_entropy_backward(torch.ones((), device=device), x, t, None,
                                                            torch.zeros(3, device=device), torch.ones((), device=device),
                                                            1, -100, 0.0), ValueError, "lse must be"),
    ]


def test_bad_inputs(device):
    # on CUDA a class index out of range is only raised with sync checks on (the next test: off)
    with dlkernels.cuda_sync_checks_enabled(True):
        for i, (call, exc, fragment) in enumerate(_bad_calls(device)):
            with pytest.raises(exc) as info:
                call()
            assert fragment in str(info.value), f"case {i}: {info.value!r} lacks {fragment!r}"


@pytest.mark.parametrize("bad", [5, -2])
def test_bad_target_without_sync_checks(device, bad):
    """Sync checks off (the default): the CPU still raises; CUDA gives the offending row a NaN loss
    (and so NaN for its mean) without a host synchronisation, and leaves the other rows right."""
    x = torch.randn(6, 5, device=device)
    t = torch.randint(0, 5, (6,), device=device)
    t[3] = bad
    with dlkernels.cuda_sync_checks_enabled(False):
        if not cuda_semantics(device):
            with pytest.raises(IndexError, match=f"target {bad} is out of bounds"):
                DF.cross_entropy(x, t)
            return
        rows = DF.cross_entropy(x, t, reduction="none")
        mean = DF.cross_entropy(x, t)
    assert torch.isnan(rows[3]) and torch.isnan(mean)
    keep = torch.tensor([0, 1, 2, 4, 5], device=device)
    torch.testing.assert_close(rows[keep], F.cross_entropy(x[keep], t[keep], reduction="none"))


def test_cuda_sync_checks_switch():
    previous = dlkernels.cuda_sync_checks()
    with dlkernels.cuda_sync_checks_enabled(not previous):
        assert dlkernels.cuda_sync_checks() == (not previous)
    assert dlkernels.cuda_sync_checks() == previous
    with pytest.raises(TypeError, match="enabled must be a bool"):
        dlkernels.set_cuda_sync_checks(1)


@pytest.mark.parametrize("C", [3, 1000, 40000])
def test_inf_logit_gives_nan_like_torch(device, C):
    """A row holding +inf: torch subtracts the row max, exp(inf - inf) is NaN, so the row's loss and
    whole gradient row are NaN (whatever the target). -inf logits elsewhere are ordinary (exp gives 0).
    C picks the CUDA kernels' widths (a few lanes, a warp or more, a block per row)."""
    x = torch.randn(4, C, device=device)
    x[1, 1] = float("inf")
    x[2, 0] = float("-inf")
    t = torch.tensor([0, 0, 1, 2], device=device)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ours = DF.cross_entropy(xs[0], t, reduction="none")
    ref = F.cross_entropy(xs[1], t, reduction="none")
    g = torch.randn(4, device=device)
    (go,), (gt,) = torch.autograd.grad(ours, xs[0], g), torch.autograd.grad(ref, xs[1], g)
    assert torch.isnan(ref[1]) and torch.isnan(gt[1]).all()  # torch's behaviour, as the docstring says
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)) and torch.equal(torch.isnan(go), torch.isnan(gt))
    keep = torch.tensor([0, 2, 3], device=device)
    assert_close(ours[keep], ref[keep])
    assert_close(go[keep], gt[keep])
