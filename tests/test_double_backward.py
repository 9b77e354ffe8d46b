"""Second-order gradients through every op family (gradient penalties, Hessian-vector products): under
create_graph the backward builds its graph from torch's differentiable ops, so torch.autograd.gradgradcheck
passes in float64 and a gradient penalty equals torch's; without create_graph the fused backward runs."""
import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_cross_entropy_gradient_penalty_equals_torch():
    lin = torch.nn.Linear(20, 10).double()
    x = torch.randn(8, 20, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    grads = []
    for ce in (DF.cross_entropy, F.cross_entropy):
        lin.zero_grad(set_to_none=True)
        x.grad = None
        (g,) = torch.autograd.grad(ce(lin(x), y, label_smoothing=0.1), x, create_graph=True)
        g.pow(2).sum().backward()
        grads.append([lin.weight.grad.clone(), lin.bias.grad.clone(), x.grad.clone()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


CASES = {
    "cross_entropy": (lambda x: DF.cross_entropy(x, torch.tensor([0, 2, 1]), reduction="sum"), lambda: [_x(3, 4)]),
    "cross_entropy_probs": (lambda x, t: DF.cross_entropy(x, t.softmax(1)), lambda: [_x(3, 4), _x(3, 4)]),
    "conv2d": (lambda x, w, b: DF.conv2d(x, w, b, stride=(1, 2), padding=1, dilation=(2, 1)),
               lambda: [_x(2, 2, 5, 6), _x(3, 2, 3, 2), _x(3)]),
    "conv2d_grouped_same": (lambda x, w: DF.conv2d(x, w, padding="same", groups=2),
                            lambda: [_x(1, 4, 5, 5), _x(4, 2, 2, 3)]),
    "conv2d_depthwise": (lambda x, w: DF.conv2d(x, w, padding=1, groups=3), lambda: [_x(2, 3, 4, 4), _x(3, 1, 3, 3)]),
    "im2col": (lambda x: DF.im2col(x, (2, 3), padding=1), lambda: [_x(2, 2, 4, 5)]),
    "max_pool2d": (lambda x: DF.max_pool2d(x, 3, 2, 1), lambda: [_x(2, 2, 7, 7)]),
    "avg_pool2d": (lambda x: DF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), lambda: [_x(2, 2, 7, 7)]),
    "adaptive_avg_pool2d": (lambda x: DF.adaptive_avg_pool2d(x, (2, 3)), lambda: [_x(2, 2, 5, 7)]),
    "batch_norm_train": (lambda x, w, b: DF.batch_norm(x, None, None, w, b, True), lambda: [_x(4, 3, 3, 3), _x(3), _x(3)]),
    "batch_norm_eval": (lambda x, w, b: DF.batch_norm(x, torch.full((3,), 0.3, dtype=torch.float64),
                                                      torch.ones(3, dtype=torch.float64) * 2, w, b, False),
                        lambda: [_x(4, 3, 3, 3), _x(3), _x(3)]),
    "batch_norm_relu": (lambda x, w, b: DF.batch_norm_relu(x, None, None, w, b, True),
                        lambda: [_x(4, 3, 3, 3), _x(3), _x(3)]),
    "batch_norm_add_relu": (lambda x, r, w, b: DF.batch_norm_add_relu(x, r, None, None, w, b, True),
                            lambda: [_x(4, 3, 3, 3), _x(4, 3, 3, 3), _x(3), _x(3)]),
    "batch_norm_2d_input": (lambda x, w, b: DF.batch_norm(x, None, None, w, b, True), lambda: [_x(6, 5), _x(5), _x(5)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradgradcheck(name):
    fn, make = CASES[name]
    inputs = make()
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_float32_add_relu_bit_mask_second_order():
    """The CPU float32 fused add+ReLU saves its gate as bits: the second-order graph reads the same gate."""
    x = torch.randn(4, 3, 9, 9, requires_grad=True)
    r = torch.randn(4, 3, 9, 9, requires_grad=True)
    w = torch.rand(3, requires_grad=True)
    outs = []
    for fn in (lambda: DF.batch_norm_add_relu(x, r, None, None, w, None, True),
               lambda: torch.relu(F.batch_norm(x, None, None, w, None, True) + r)):
        (gx,) = torch.autograd.grad(fn().pow(2).sum(), x, create_graph=True)
        gw, gr = torch.autograd.grad(gx.square().sum(), (w, r))
        outs.append((gx, gw, gr))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_first_order_backward_stays_fused():
    """Without create_graph the backward is the fused op: the graph it returns has no history."""
    x = _x(3, 4)
    (g,) = torch.autograd.grad(DF.cross_entropy(x, torch.tensor([0, 1, 2])), x)
    assert g.grad_fn is None and not g.requires_grad
    (g2,) = torch.autograd.grad(DF.cross_entropy(x, torch.tensor([0, 1, 2])), x, create_graph=True)
    assert g2.requires_grad
