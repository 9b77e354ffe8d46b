"""Reliability: bitwise determinism across runs and thread counts for every op, ops called from several
Python threads at once, bit-for-bit resumption from checkpoints, and an im2col buffer past 2^31 elements."""
import concurrent.futures
import copy
import io

import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
import dlkernels.nn as dnn
import dlkernels.optim as dopt
from dlkernels.demo import small_resnet


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(4, 6, 23, 21, generator=g), w=torch.randn(8, 3, 3, 3, generator=g),
                b=torch.randn(8, generator=g), r=torch.randn(4, 8, 12, 11, generator=g),
                logits=torch.randn(300, 37, generator=g), t=torch.randint(0, 37, (300,), generator=g))


def every_op(d):
    """Forward and backward of every op family on d's tensors; returns all outputs and gradients."""
    x, w, b = (d[k].clone().requires_grad_(True) for k in ("x", "w", "b"))
    r = d["r"].clone().requires_grad_(True)
    y = DF.conv2d(x, w, b, stride=2, padding=1, groups=2)
    z = DF.batch_norm_add_relu(y, r, None, None, training=True)
    p = DF.max_pool2d(z, 3, 2, 1) + DF.avg_pool2d(z, 3, 2, 1, count_include_pad=False)
    q = DF.adaptive_avg_pool2d(p, 1).flatten(1)
    u = torch.cat([DF.im2col(x, 2).flatten(), DF.col2im(DF.im2col(x, 3, padding=1), (23, 21), 3, padding=1).flatten()])
    logits = d["logits"].clone().requires_grad_(True)
    loss = DF.cross_entropy(logits, d["t"], label_smoothing=0.1) + q.square().sum() + u.sin().sum()
    loss.backward()
    outs = [y, z, p, q, u, loss]
    # one optimizer step of each kind on copies of the gradients
    steps = []
    for cls in (dopt.Adam, dopt.AdamW, dopt.SGD, dopt.Adagrad, dopt.RMSprop):
        params = [torch.nn.Parameter(t.detach().clone()) for t in (x, w, b, logits)]
        for param, src in zip(params, (x, w, b, logits)):
            param.grad = src.grad.clone()
        opt = cls(params, lr=0.01, **(dict(momentum=0.9) if cls is dopt.SGD else {}))
        opt.step()
        opt.step()
        steps += [param.detach() for param in params]
    return [o.detach() for o in outs] + [x.grad, w.grad, b.grad, r.grad, logits.grad] + steps


def test_bitwise_deterministic_across_runs_and_thread_counts():
    d = _inputs()
    # every_op's u.sin() is torch's: in torch 2.13 (CPU, 2 threads, AVX-512 host) the first sin call of a
    # process gave other bits in about one process in seven, so it is made once before the runs compared
    torch.linspace(-3, 3, 1 << 16).sin()
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            runs.append(every_op(d))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for i, (a, c) in enumerate(zip(runs[0], other)):
            assert torch.equal(a, c), f"result {i} differs between runs or thread counts"


def test_concurrent_calls_from_python_threads():
    seeds = list(range(6))
    serial = [every_op(_inputs(s)) for s in seeds]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda s: every_op(_inputs(s)), seeds))
    for s, (a_list, b_list) in enumerate(zip(serial, threaded)):
        for i, (a, c) in enumerate(zip(a_list, b_list)):
            assert torch.equal(a, c), f"seed {s}, result {i}"


def _train(model, opt, steps, start):
    loss_fn = dnn.CrossEntropyLoss()
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("opt_name", ["Adam", "SGD", "RMSprop"])
def test_checkpoint_resume_is_bit_for_bit(opt_name):
    kwargs = dict(Adam=dict(lr=1e-3), SGD=dict(lr=0.05, momentum=0.9, nesterov=True), RMSprop=dict(lr=1e-3, centered=True))
    torch.manual_seed(0)
    model = dlkernels.convert(small_resnet(), fuse_bn_relu=True)
    opt = getattr(dopt, opt_name)(model.parameters(), **kwargs[opt_name])
    _train(model, opt, 3, 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, 3, 3)  # uninterrupted

    buf.seek(0)
    ckpt = torch.load(buf)
    torch.manual_seed(123)  # a different initialization, overwritten by the checkpoint
    resumed = dlkernels.convert(small_resnet(), fuse_bn_relu=True)
    resumed.load_state_dict(ckpt["model"])
    opt2 = getattr(dopt, opt_name)(resumed.parameters(), **kwargs[opt_name])
    opt2.load_state_dict(ckpt["opt"])
    _train(resumed, opt2, 3, 3)
    for (k, a), (_, c) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, c), k


def test_im2col_buffer_past_2_31_elements_is_chunked():
    """A convolution whose whole-batch column matrix has 2.26e9 elements (> 2^31): processed in chunks
    within the workspace limit, with 64-bit offsets, and equal to torch's."""
    x = torch.randn(64, 8, 300, 300)
    w = torch.randn(1, 8, 7, 7) / 20
    rows, positions = 8 * 7 * 7, 300 * 300
    assert x.shape[0] * rows * positions > 2 ** 31
    y = DF.conv2d(x, w, padding=3)
    ref = F.conv2d(x, w, padding=3)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_torch_func_transforms_take_the_full_apply():
    """dlkernels.autograd.apply bypasses Function.apply's argument binding, except under torch.func
    transforms, where the full apply must run: torch.func.grad through every functional family equals
    torch's, in float64."""
    import dlkernels.functional as DF

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    target = torch.randint(0, 4, (5,), generator=gen)
    pairs = [
        (lambda a: DF.max_pool2d(a, 3, 2, 1).pow(2).sum(), lambda a: F.max_pool2d(a, 3, 2, 1).pow(2).sum(), x),
        (lambda a: DF.avg_pool2d(a, 2).pow(2).sum(), lambda a: F.avg_pool2d(a, 2).pow(2).sum(), x),
        (lambda a: DF.conv2d(a, w, padding=1).pow(2).sum(), lambda a: F.conv2d(a, w, padding=1).pow(2).sum(), x),
        (lambda a: DF.batch_norm(a, None, None, training=True).pow(3).sum(),
         lambda a: F.batch_norm(a, None, None, training=True).pow(3).sum(), x),
        (lambda a: DF.cross_entropy(a, target), lambda a: F.cross_entropy(a, target), logits),
    ]
    for ours, ref, inp in pairs:
        torch.testing.assert_close(torch.func.grad(ours)(inp), torch.func.grad(ref)(inp))
