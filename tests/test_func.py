"""torch.func over dlkernels: vmap of every functional op equals torch's, per-sample gradients
(vmap(grad(...))) of a converted model equal torch's, forward mode (torch.func.jvp, jacfwd,
torch.autograd.forward_ad) of every op, torch.func.hessian, and the error where torch also refuses (a
training batch norm updating unbatched running statistics under vmap)."""
import pytest
import torch
import torch.nn.functional as F
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

import dlkernels
import dlkernels.functional as DF
from conftest import assert_close, assert_lowp_close

CASES = {
    "max_pool2d": (lambda m: lambda a: m.max_pool2d(a, 3, 2, 1, ceil_mode=True), (4, 2, 3, 9, 8)),
    "avg_pool2d": (lambda m: lambda a: m.avg_pool2d(a, 3, 2, 1), (4, 2, 3, 9, 8)),
    "adaptive_avg_pool2d": (lambda m: lambda a: m.adaptive_avg_pool2d(a, (3, 2)), (4, 2, 3, 9, 8)),
    "conv2d": (lambda m: lambda a: m.conv2d(a, CONV_W, CONV_B, padding=1, groups=1), (4, 2, 3, 9, 8)),
    "batch_norm_train": (lambda m: lambda a: m.batch_norm(a, None, None, training=True), (4, 2, 3, 9, 8)),
    "batch_norm_eval": (lambda m: lambda a: m.batch_norm(a, torch.zeros(3, dtype=torch.float64),
                                                                torch.ones(3, dtype=torch.float64) * 2), (4, 2, 3, 9, 8)),
    "cross_entropy_mean": (lambda m: lambda a: m.cross_entropy(a, TARGET), (4, 6, 5)),
    "cross_entropy_none": (lambda m: lambda a: m.cross_entropy(a, TARGET, reduction="none", label_smoothing=0.1),
                           (4, 6, 5)),
}
CONV_W = torch.randn(4, 3, 3, 3, dtype=torch.float64)
CONV_B = torch.randn(4, dtype=torch.float64)
TARGET = torch.tensor([0, 4, 2, 1, 3, 3])
TORCH_F = type("TorchF", (), {k: staticmethod(getattr(F, k)) for k in
                              ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "conv2d", "batch_norm",
                               "cross_entropy")})


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_and_per_sample_grad_of_each_op(name):
    make, shape = CASES[name]
    x = torch.randn(*shape, dtype=torch.float64)
    ours, ref = make(DF), make(TORCH_F)
    assert_close(vmap(ours)(x), vmap(ref)(x), torch.float64)
    # a vmap dimension that is not the first
    assert_close(vmap(ours, in_dims=1)(x.movedim(0, 1).contiguous()), vmap(ref)(x), torch.float64)
    assert_close(vmap(grad(lambda a: ours(a).square().sum()))(x), vmap(grad(lambda a: ref(a).square().sum()))(x),
                 torch.float64)


def test_vmap_over_filters_loops():
    """Batched filters (a per-sample weight) cannot be folded into the batch: one call per index."""
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    ws = torch.randn(5, 4, 3, 3, 3, dtype=torch.float64)
    assert_close(vmap(lambda w: DF.conv2d(x, w))(ws), vmap(lambda w: F.conv2d(x, w))(ws), torch.float64)


def _model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 5)).double()


def test_per_sample_gradients_of_a_converted_model():
    torch.manual_seed(0)
    ref = _model().eval()  # batch norm in evaluation: per-sample gradients need no batch statistics
    ours = dlkernels.convert(ref, fuse_bn_relu=True).eval()
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))

    def per_sample(model, loss_fn):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, xi, yi):
            return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)

    got, expected = per_sample(ours, DF.cross_entropy), per_sample(ref, F.cross_entropy)
    assert got.keys() == expected.keys()
    for k in got:
        assert_close(got[k], expected[k], torch.float64, k)


# Forward mode: each op with tangents on every differentiable input (weights, biases, residuals,
# probability targets included), against torch's composite.
W_T, B_T = torch.randn_like(CONV_W), torch.randn_like(CONV_B)
BN_W, BN_B = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
JVP_CASES = {
    **{k: (lambda m, make=make: (lambda a: make(m)(a)), [shape[1:]]) for k, (make, shape) in CASES.items()},
    "conv2d_weight_bias": (lambda m: lambda a, w, b: m.conv2d(a, w, b, stride=2, padding=1),
                           [(2, 3, 9, 8), (4, 3, 3, 3), (4,)]),
    "conv2d_groups": (lambda m: lambda a, w: m.conv2d(a, w, None, padding=(1, 2), dilation=2, groups=3),
                      [(2, 3, 9, 8), (6, 1, 3, 3)]),
    "batch_norm_affine_train": (lambda m: lambda a, w, b: m.batch_norm(a, None, None, w, b, True),
                                [(4, 3, 5, 5), (3,), (3,)]),
    "batch_norm_relu_train": (lambda m: lambda a, w, b: (
        DF.batch_norm_relu(a, None, None, w, b, True, 0.1, 1e-5) if m is DF
        else F.relu(F.batch_norm(a, None, None, w, b, True))), [(4, 3, 5, 5), (3,), (3,)]),
    "batch_norm_add_relu_eval": (lambda m: lambda a, r, w: (
        DF.batch_norm_add_relu(a, r, BN_W.abs(), BN_B.abs() + 1, w, None, False, 0.1, 1e-5) if m is DF
        else F.relu(F.batch_norm(a, BN_W.abs(), BN_B.abs() + 1, w, None, False) + r)),
        [(4, 3, 5, 5), (4, 3, 5, 5), (3,)]),
    "cross_entropy_prob_target": (lambda m: lambda a, q: m.cross_entropy(a, q.softmax(1), label_smoothing=0.2),
                                  [(6, 5), (6, 5)]),
    "im2col_col2im": (lambda m: lambda a: (DF.col2im(DF.im2col(a, 3, padding=1, stride=2), (9, 8), 3, padding=1,
                                                     stride=2) if m is DF
                                           else F.fold(F.unfold(a, 3, padding=1, stride=2), (9, 8), 3, padding=1,
                                                       stride=2)), [(2, 3, 9, 8)]),
}


@pytest.mark.parametrize("name", sorted(JVP_CASES))
def test_forward_mode_of_each_op(name):
    make, shapes = JVP_CASES[name]
    primals = tuple(torch.randn(*s, dtype=torch.float64) for s in shapes)
    tangents = tuple(torch.randn_like(p) for p in primals)
    ours, ref = make(DF), make(TORCH_F)
    out, tan = jvp(ours, primals, tangents)
    ref_out, ref_tan = jvp(ref, primals, tangents)
    assert_close(out, ref_out, torch.float64)
    assert_close(tan, ref_tan, torch.float64, "torch.func.jvp")
    with fwAD.dual_level():  # torch.autograd.forward_ad: the rules without torch.func around them
        dual = ours(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents)))
        assert_close(fwAD.unpack_dual(dual).tangent, ref_tan, torch.float64, "forward_ad")


def _bn_composite(a, w, b):
    m = a.mean((0, 2, 3), keepdim=True)
    y = (a - m) / torch.sqrt((a - m).square().mean((0, 2, 3), keepdim=True) + 1e-5)
    return torch.relu(y * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1))


def test_reverse_over_forward_of_batch_norm():
    """The gradient of a function of a tangent (reverse over forward) through a training batch norm +
    ReLU: equal to that of the composite written out (torch's own F.batch_norm gets this one wrong in
    torch 2.13: its tangent treats the batch statistics as constants under reverse mode), by torch.func
    and by torch.autograd.forward_ad, and against central differences."""
    torch.manual_seed(1)
    x0 = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    w, b = torch.randn(2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    t = torch.randn_like(x0)
    ours = lambda a: DF.batch_norm_relu(a, None, None, w, b, True, 0.1, 1e-5)  # noqa: E731

    def phi(f):
        return lambda a: jvp(f, (a,), (t,))[1].square().sum()

    expected = grad(phi(lambda a: _bn_composite(a, w, b)))(x0)
    assert_close(grad(phi(ours))(x0), expected, torch.float64, "torch.func")
    x = x0.clone().requires_grad_(True)
    with fwAD.dual_level():
        fwAD.unpack_dual(ours(fwAD.make_dual(x, t))).tangent.square().sum().backward()
    assert_close(x.grad, expected, torch.float64, "forward_ad")
    v, e = torch.randn_like(x0), 1e-6
    fd = (phi(lambda a: _bn_composite(a, w, b))(x0 + e * v) - phi(lambda a: _bn_composite(a, w, b))(x0 - e * v)) / (2 * e)
    torch.testing.assert_close((expected * v).sum(), fd, rtol=1e-6, atol=1e-6)


def test_jacfwd_and_forward_over_reverse_hessian():
    """jacfwd, and torch.func.hessian (jacfwd(jacrev(f))) through conv, batch norm + ReLU, max pooling and
    cross-entropy, equal torch's."""
    img = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    t = torch.tensor([1, 0])

    def net(m, bn):
        def f(w):
            y = bn(m.conv2d(img, w, padding=1))
            return m.cross_entropy(m.max_pool2d(y, 2).flatten(1)[:, :4], t)
        return f

    ours = net(DF, lambda y: DF.batch_norm_relu(y, None, None, None, None, True, 0.1, 1e-5))
    ref = net(TORCH_F, lambda y: F.relu(F.batch_norm(y, None, None, training=True)))
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    assert_close(jacfwd(ours)(w), jacfwd(ref)(w), torch.float64)
    assert_close(hessian(ours)(w), hessian(ref)(w), torch.float64)


def test_reverse_over_reverse_hessian():
    """jacrev(jacrev(f)): second order by reverse mode."""
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([1, 0, 3])
    assert_close(jacrev(jacrev(lambda a: DF.cross_entropy(a, t)))(x), hessian(lambda a: F.cross_entropy(a, t))(x),
                 torch.float64)
    img = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    assert_close(jacrev(jacrev(lambda a: DF.conv2d(img, a).square().sum()))(w),
                 jacrev(jacrev(lambda a: F.conv2d(img, a).square().sum()))(w), torch.float64)


def test_vmap_training_batch_norm_with_running_stats_raises():
    x = torch.randn(3, 4, 2, 5, 5)
    rm, rv = torch.zeros(2), torch.ones(2)
    with pytest.raises(RuntimeError, match="running statistics"):
        vmap(lambda a: DF.batch_norm(a, rm, rv, training=True))(x)


@pytest.mark.parametrize("functorch_mode", [False, True], ids=["hooks", "functorch"])
def test_opacus_per_sample_gradients(functorch_mode):
    """Opacus' GradSampleModule on a converted model (its per-layer hooks, and its functorch mode, which
    vmaps our layers) gives the per-sample gradients it gives on the plain model."""
    opacus = pytest.importorskip("opacus")
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 8, 3),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).double()
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    samples = []
    for m, ce in ((model, F.cross_entropy), (dlkernels.convert(copy.deepcopy(model)), DF.cross_entropy)):
        g = opacus.GradSampleModule(m, loss_reduction="sum", force_functorch=functorch_mode)
        ce(g(x), y, reduction="sum").backward()
        samples.append({n: p.grad_sample for n, p in g.named_parameters()})
    assert samples[0].keys() == samples[1].keys()
    for k in samples[0]:
        assert samples[1][k].shape[0] == 6
        assert_close(samples[1][k], samples[0][k], torch.float64, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_forward_mode_of_batch_norm_in_low_precision(dtype):
    """Values past 256 square past float16's range: the tangent's statistics are accumulated in float32
    (on the CUDA kernels the op receives float16 as it is), judged against torch at the same precision."""
    x = (torch.randn(4, 3, 5, 5) * 300).to(dtype)
    t = torch.randn_like(x)
    args = dict(running_mean=None, running_var=None, training=True)
    ours = jvp(lambda a: DF.batch_norm(a, **args), (x,), (t,))[1]
    theirs = jvp(lambda a: F.batch_norm(a, **args), (x,), (t,))[1]
    ref = jvp(lambda a: F.batch_norm(a, **args), (x.double(),), (t.double(),))[1]
    assert ours.dtype == dtype
    assert_lowp_close(ours, theirs, ref, "tangent")
