"""One table of bad calls across every public function, module and optimizer: each raises a Python
exception of the expected type whose message names the argument; none crashes, hangs or writes out
of bounds (the per-family test files hold more of each family's cases)."""
import pytest
import torch

import dlkernels
import dlkernels.functional as DF
import dlkernels.nn as dnn
import dlkernels.optim as dopt
from conftest import EMU

X = torch.randn(2, 3, 8, 8)
W = torch.randn(4, 3, 3, 3)
LOGITS = torch.randn(5, 7)
TARGET = torch.randint(0, 7, (5,))
C3 = torch.ones(3)


def _param():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    return p


def _sparse_grad_step():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3).to_sparse()
    dopt.Adam([p]).step()


def _complex_step():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn(3, dtype=torch.complex64)
    dopt.SGD([p], lr=0.1).step()


BAD_CALLS = [
    # (id, call, exception type, fragment of the message: the argument's name and what was wrong)
    # cross-entropy
    ("ce target out of range", lambda: DF.cross_entropy(LOGITS, torch.tensor([0, 1, 7, 2, 3])), IndexError, "target 7"),
    ("ce negative target", lambda: DF.cross_entropy(LOGITS, torch.tensor([0, -2, 1, 2, 3])), IndexError, "target -2"),
    ("ce float32 index dtype", lambda: DF.cross_entropy(LOGITS, TARGET.int()), TypeError, "class-index target must be int64"),
    ("ce target batch", lambda: DF.cross_entropy(LOGITS, TARGET[:4]), ValueError, "target batch size 4"),
    ("ce prob shape", lambda: DF.cross_entropy(LOGITS, torch.rand(5, 6)), ValueError, "probability target must have"),
    ("ce weight shape", lambda: DF.cross_entropy(LOGITS, TARGET, weight=torch.ones(6)), ValueError, "weight"),
    ("ce reduction", lambda: DF.cross_entropy(LOGITS, TARGET, reduction="avg"), ValueError, "reduction must be"),
    ("ce smoothing", lambda: DF.cross_entropy(LOGITS, TARGET, label_smoothing=1.5), ValueError, "label_smoothing"),
    ("ce integer input", lambda: DF.cross_entropy(LOGITS.long(), TARGET), TypeError, "input"),
    ("ce 0-dim input", lambda: DF.cross_entropy(torch.tensor(1.0), TARGET), ValueError, "input must have shape"),
    ("ce input not tensor", lambda: DF.cross_entropy([1.0, 2.0], TARGET), TypeError, "input must be a torch.Tensor"),
    ("ce ignore_index float", lambda: DF.cross_entropy(LOGITS, TARGET, ignore_index=1.5), TypeError, "ignore_index"),
    # pooling
    ("pool padding > half kernel", lambda: DF.max_pool2d(X, 3, padding=2), ValueError, "padding must be at most half"),
    ("pool zero stride", lambda: DF.avg_pool2d(X, 2, stride=0), ValueError, "stride must be positive"),
    ("pool negative stride", lambda: DF.max_pool2d(X, 2, stride=(1, -2)), ValueError, "stride must be positive"),
    ("pool kernel too large", lambda: DF.max_pool2d(X, 9), ValueError, "too small"),
    ("pool absurd kernel", lambda: DF.max_pool2d(X, 2 ** 40), ValueError, "kernel_size must be at most"),
    ("pool rank", lambda: DF.max_pool2d(X[0, 0], 2), ValueError, "input must have shape (N, C, H, W)"),
    ("pool integer input", lambda: DF.avg_pool2d(X.long(), 2), TypeError, "input must be float32 or float64"),
    ("pool divisor", lambda: DF.avg_pool2d(X, 2, divisor_override=0), ValueError, "divisor_override"),
    ("adaptive output 0", lambda: DF.adaptive_avg_pool2d(X, 0), ValueError, "output_size must be positive"),
    ("pool empty channels", lambda: DF.max_pool2d(torch.randn(2, 0, 4, 4), 2), ValueError, "non-zero C, H and W"),
    # convolution
    ("conv channel mismatch", lambda: DF.conv2d(X, torch.randn(4, 2, 3, 3)), ValueError, "weight.size(1) * groups"),
    ("conv groups", lambda: DF.conv2d(X, W, groups=2), ValueError, "groups (2) must divide"),
    ("conv kernel > input", lambda: DF.conv2d(X, torch.randn(4, 3, 9, 9)), ValueError, "larger than the padded input"),
    ("conv negative stride", lambda: DF.conv2d(X, W, stride=-1), ValueError, "stride must be positive"),
    ("conv zero dilation", lambda: DF.conv2d(X, W, dilation=0), ValueError, "dilation must be positive"),
    ("conv absurd padding", lambda: DF.conv2d(X, W, padding=2 ** 62), ValueError, "padding must be at most"),
    ("conv absurd stride", lambda: DF.conv2d(X, W, stride=2 ** 40), ValueError, "stride must be at most"),
    ("conv weight rank", lambda: DF.conv2d(X, W[0]), ValueError, "weight must have shape (out_channels"),
    ("conv mixed dtypes", lambda: DF.conv2d(X, W.double()), TypeError, "weight must have the dtype of input"),
    ("conv bias shape", lambda: DF.conv2d(X, W, torch.randn(3)), ValueError, "bias must have shape (4)"),
    ("conv same + stride", lambda: DF.conv2d(X, W, stride=2, padding="same"), ValueError, "padding='same'"),
    ("unfold kernel > input", lambda: DF.im2col(X, 10), ValueError, "larger than the padded input"),
    ("fold blocks", lambda: DF.col2im(torch.randn(2, 27, 35), (8, 8), 3), ValueError, "sliding blocks"),
    ("workspace limit", lambda: dlkernels.set_workspace_limit(-5), ValueError, "nbytes must be a positive int"),
    # batch norm
    ("bn weight channels", lambda: DF.batch_norm(X, C3, C3, torch.ones(4)), ValueError, "weight must have shape (3)"),
    ("bn eval without stats", lambda: DF.batch_norm(X, None, None, training=False), ValueError, "running_mean"),
    ("bn single value", lambda: DF.batch_norm(torch.randn(1, 3), None, None, training=True), ValueError,
     "expected more than 1 value per channel"),
    ("bn integer input", lambda: DF.batch_norm(X.long(), None, None, training=True), TypeError,
     "input must be float32 or float64"),
    ("bn stats dtype", lambda: DF.batch_norm(X, C3.double(), C3.double()), TypeError, "running_mean must have the dtype"),
    ("bn residual shape", lambda: DF.batch_norm_add_relu(X, X[:1], None, None, training=True), ValueError,
     "residual must have the shape of input"),
    ("bn momentum None", lambda: DF.batch_norm(X, None, None, training=True, momentum=None), TypeError, "momentum"),
    ("bn module rank", lambda: dnn.BatchNorm2d(3)(torch.randn(2, 3)), ValueError, "expected 4D input"),
    # modules and conversion
    ("conv module channels", lambda: dnn.Conv2d(5, 4, 3)(X), ValueError, "weight.size(1) * groups"),
    ("ce module target", lambda: dnn.CrossEntropyLoss()(LOGITS, TARGET.float()), ValueError, "probability target"),
    ("convert non-module", lambda: dlkernels.convert(42), TypeError, "module must be a torch.nn.Module"),
    ("convert exclude", lambda: dlkernels.convert(torch.nn.Conv2d(1, 1, 1), exclude="0"), TypeError, "exclude"),
    # optimizers (torch's own constructor checks, then ours)
    ("adam lr", lambda: dopt.Adam([_param()], lr=-1.0), ValueError, "Invalid learning rate"),
    ("adam betas", lambda: dopt.Adam([_param()], betas=(1.5, 0.9)), ValueError, "Invalid beta parameter"),
    ("sgd nesterov", lambda: dopt.SGD([_param()], lr=0.1, nesterov=True), ValueError, "Nesterov momentum"),
    ("rmsprop alpha", lambda: dopt.RMSprop([_param()], alpha=-0.5), ValueError, "Invalid alpha value"),
    ("adagrad eps", lambda: dopt.Adagrad([_param()], eps=-1.0), ValueError, "Invalid epsilon value"),
    ("sparse grad", _sparse_grad_step, RuntimeError, "does not support sparse gradients"),
    ("complex param", _complex_step, NotImplementedError, "does not support complex parameters"),
    ("from_torch unsupported", lambda: dopt.from_torch(torch.optim.LBFGS([_param()])), NotImplementedError,
     "no fused version of LBFGS"),
    ("isa name", lambda: dlkernels.set_cpu_isa("sse9"), ValueError, "isa must be one of"),
]


def test_table_is_large_enough():
    assert len(BAD_CALLS) >= 40


@pytest.mark.parametrize("name,call,exc,fragment", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises_a_clear_error(name, call, exc, fragment):
    # The CUDA kernels report a bad class index only with sync checks on (test_cross_entropy: off).
    with dlkernels.cuda_sync_checks_enabled(EMU), pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value), f"{name}: {info.value!r}"


def test_nan_and_inf_follow_torch():
    """Not errors: where torch defines NaN/inf behaviour, we match it."""
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 1, 1] = float("nan")
    x[1, 2, 3, 3] = float("inf")
    for ours, ref in ((DF.max_pool2d(x, 2), torch.nn.functional.max_pool2d(x, 2)),
                      (DF.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(x, 2)),
                      (DF.conv2d(x, W), torch.nn.functional.conv2d(x, W))):
        assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())
    logits = torch.randn(3, 4)
    logits[1, 2] = float("inf")
    assert torch.equal(DF.cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="none").isnan(),
                       torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="none").isnan())


def test_empty_tensors():
    e = torch.randn(0, 3, 8, 8, requires_grad=True)
    for out in (DF.conv2d(e, W), DF.max_pool2d(e, 2), DF.avg_pool2d(e, 2), DF.adaptive_avg_pool2d(e, 1),
                DF.batch_norm(e, None, None, training=True)):
        assert out.shape[0] == 0
        out.sum().backward()
    loss = DF.cross_entropy(torch.randn(0, 5, requires_grad=True), torch.zeros(0, dtype=torch.int64), reduction="sum")
    assert loss.item() == 0.0
