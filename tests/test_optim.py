"""Fused optimizers: trajectory parity with torch.optim over every option, the numpy textbook update
rules, state_dict round trips both ways, GradScaler, every ISA path, bad inputs."""
import copy
import itertools

import numpy as np
import pytest
import torch

import dlkernels
import dlkernels.optim as dopt

from conftest import KDEV, TOL, needs_cuda_kernels

# mixed shapes: a scalar, an empty tensor, odd lengths (tails of every vector width), a matrix, a
# conv-like 4-D weight and one large prime-length vector
SHAPES = [(), (0,), (1,), (7,), (33, 17), (16, 3, 3, 3), (1009,), (278011,)]

OPTIMIZERS = {
    "Adam": (torch.optim.Adam, dopt.Adam, [
        dict(lr=1e-2),
        dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
        dict(lr=1e-2, amsgrad=True, weight_decay=0.05),
        dict(lr=1e-2, maximize=True, amsgrad=True),
        # a float64 lr tensor: torch computes lr / (1 - beta1^t) in the tensor's dtype, we always in float64
        dict(lr=torch.tensor(3e-3, dtype=torch.float64), betas=(0.3, 0.4)),
    ]),
    "AdamW": (torch.optim.AdamW, dopt.AdamW, [
        dict(lr=1e-2),
        dict(lr=1e-2, weight_decay=0.3, amsgrad=True),
        dict(lr=1e-2, weight_decay=0.1, maximize=True, betas=(0.5, 0.9)),
    ]),
    "SGD": (torch.optim.SGD, dopt.SGD, [
        dict(lr=1e-2),
        dict(lr=1e-2, momentum=0.9),
        dict(lr=1e-2, momentum=0.9, dampening=0.3, weight_decay=0.1),
        dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.01),
        dict(lr=1e-2, momentum=0.5, maximize=True),
    ]),
    "Adagrad": (torch.optim.Adagrad, dopt.Adagrad, [
        dict(lr=1e-2),
        dict(lr=1e-2, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.5, eps=1e-6),
        dict(lr=1e-2, maximize=True),
    ]),
    "RMSprop": (torch.optim.RMSprop, dopt.RMSprop, [
        dict(lr=1e-2),
        dict(lr=1e-2, alpha=0.9, eps=1e-6, weight_decay=0.1),
        dict(lr=1e-2, centered=True),
        dict(lr=1e-2, momentum=0.8, centered=True, maximize=True),
        dict(lr=1e-2, momentum=0.5, weight_decay=0.02),
    ]),
}
CASES = [(name, i) for name, (_, _, configs) in OPTIMIZERS.items() for i in range(len(configs))]


def make_params(dtype, device, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device) for s in shapes]


def grads_for(step, params, seed=0):
    gen = torch.Generator().manual_seed(1000 * seed + step)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).to(p.device) for p in params]


def run_pair(torch_cls, ours_cls, config, dtype, device, steps, skip_grad=None):
    base = make_params(dtype, device)
    a = [p.clone().requires_grad_(True) for p in base]
    b = [p.clone().requires_grad_(True) for p in base]
    cfg_t = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in config.items()}
    opt_t, opt_o = torch_cls(a, **cfg_t), ours_cls(b, **config)
    for step in range(steps):
        for i, (x, y, g) in enumerate(zip(a, b, grads_for(step, base))):
            no_grad = skip_grad is not None and skip_grad(step, i)
            x.grad = None if no_grad else g.clone()
            y.grad = None if no_grad else g.clone()
        opt_t.step()
        opt_o.step()
    return a, b, opt_t, opt_o


def assert_states_equal(opt_t, opt_o, params_t, params_o, dtype):
    for pt, po in zip(params_t, params_o):
        st, so = opt_t.state[pt], opt_o.state[po]
        assert set(st.keys()) == set(so.keys()), (st.keys(), so.keys())
        for key in st:
            vt, vo = st[key], so[key]
            if isinstance(vt, torch.Tensor):
                assert vt.dtype == vo.dtype and vt.device == vo.device and vt.shape == vo.shape, key
                torch.testing.assert_close(vo, vt, **TOL[dtype])
            else:
                assert vt == vo, key


@pytest.mark.parametrize("name,config_index", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_trajectory_matches_torch(device, dtype, name, config_index):
    torch_cls, ours_cls, configs = OPTIMIZERS[name]
    # some parameters miss their gradient on some steps: they must be skipped (state untouched)
    a, b, opt_t, opt_o = run_pair(torch_cls, ours_cls, configs[config_index], dtype, device, steps=25,
                                  skip_grad=lambda step, i: i == 3 and step % 4 == 1)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    for x, y in zip(a, b):
        torch.testing.assert_close(y.detach(), x.detach(), **tol)
    assert_states_equal(opt_t, opt_o, a, b, dtype) if dtype == torch.float64 else None


@pytest.mark.parametrize("name,config_index", [("Adam", 2), ("SGD", 2), ("Adagrad", 1), ("RMSprop", 3)])
def test_isa_paths_close_to_scalar(name, config_index):
    """The AVX paths against the scalar specification (they differ by FMA contraction only)."""
    torch_cls, ours_cls, configs = OPTIMIZERS[name]
    results = {}
    for isa in dlkernels.supported_cpu_isas():
        with dlkernels.use_cpu_isa(isa):
            _, b, _, _ = run_pair(torch_cls, ours_cls, configs[config_index], torch.float32, "cpu", steps=6)
            results[isa] = [p.detach().clone() for p in b]
    for isa, params in results.items():
        for p, q in zip(params, results["scalar"]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=2e-6, msg=f"{isa} vs scalar")


# ----------------------------------------------------------------- numpy textbook update rules

def _textbook(name, params, grads_seq, lr, **hp):
    """The textbook's optimizer classes (SGD, Momentum, AdaGrad, RMSprop, Adam) in numpy float64,
    under PyTorch's conventions where the two differ (Adam's eps after the bias-corrected sqrt)."""
    params = [p.copy() for p in params]
    state = [dict() for _ in params]
    for t, grads in enumerate(grads_seq, start=1):
        for i, (W, g) in enumerate(zip(params, grads)):
            s = state[i]
            if name == "sgd":
                W -= lr * g
            elif name == "momentum":  # v = momentum * v - lr * grad; W += v
                s.setdefault("v", np.zeros_like(W))
                s["v"] = hp["momentum"] * s["v"] - lr * g
                W += s["v"]
            elif name == "adagrad":  # h += grad^2; W -= lr * grad / (sqrt(h) + eps)
                s.setdefault("h", np.zeros_like(W))
                s["h"] += g * g
                W -= lr * g / (np.sqrt(s["h"]) + hp["eps"])
            elif name == "rmsprop":  # h = decay * h + (1 - decay) grad^2
                s.setdefault("h", np.zeros_like(W))
                s["h"] = hp["decay"] * s["h"] + (1 - hp["decay"]) * g * g
                W -= lr * g / (np.sqrt(s["h"]) + hp["eps"])
            elif name == "adam":
                s.setdefault("m", np.zeros_like(W))
                s.setdefault("v", np.zeros_like(W))
                b1, b2 = hp["beta1"], hp["beta2"]
                s["m"] += (1 - b1) * (g - s["m"])
                s["v"] += (1 - b2) * (g * g - s["v"])
                m_hat = s["m"] / (1 - b1 ** t)
                v_hat = s["v"] / (1 - b2 ** t)
                W -= lr * m_hat / (np.sqrt(v_hat) + hp["eps"])
    return params


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "rmsprop", "adam"])
def test_numpy_textbook_rules(device, name):
    rng = np.random.default_rng(7)
    shapes = [(5,), (3, 4), (17,)]
    params0 = [rng.normal(size=s) for s in shapes]
    grads_seq = [[rng.normal(size=s) for s in shapes] for _ in range(12)]
    lr = 0.05
    ours = {
        "sgd": lambda ps: dopt.SGD(ps, lr=lr),
        "momentum": lambda ps: dopt.SGD(ps, lr=lr, momentum=0.9),
        "adagrad": lambda ps: dopt.Adagrad(ps, lr=lr, eps=1e-7),
        "rmsprop": lambda ps: dopt.RMSprop(ps, lr=lr, alpha=0.99, eps=1e-7),
        "adam": lambda ps: dopt.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8),
    }[name]
    hp = dict(momentum=0.9, eps=1e-7 if name != "adam" else 1e-8, decay=0.99, beta1=0.9, beta2=0.999)
    expected = _textbook(name, params0, grads_seq, lr, **hp)
    ps = [torch.tensor(p, dtype=torch.float64, device=device, requires_grad=True) for p in params0]
    opt = ours(ps)
    for grads in grads_seq:
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(g, dtype=torch.float64, device=device)
        opt.step()
    for p, e in zip(ps, expected):
        np.testing.assert_allclose(p.detach().cpu().numpy(), e, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ state_dict

@pytest.mark.parametrize("name,config_index", [("Adam", 2), ("AdamW", 1), ("SGD", 3), ("Adagrad", 1), ("RMSprop", 3)])
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_round_trip(name, config_index, direction):
    torch_cls, ours_cls, configs = OPTIMIZERS[name]
    config = configs[config_index]
    first, second = (torch_cls, ours_cls) if direction == "torch_to_ours" else (ours_cls, torch_cls)
    base = make_params(torch.float64, "cpu", shapes=[(7,), (5, 3), ()])
    p1 = [p.clone().requires_grad_(True) for p in base]
    opt1 = first(p1, **config)
    for step in range(5):
        for p, g in zip(p1, grads_for(step, base)):
            p.grad = g
        opt1.step()
    saved = copy.deepcopy(opt1.state_dict())
    # continue the first optimizer, and a fresh one of the other kind loaded from the state_dict
    p2 = [p.detach().clone().requires_grad_(True) for p in p1]
    opt2 = second(p2, **config)
    opt2.load_state_dict(saved)
    for step in range(5, 12):
        for p, q, g in zip(p1, p2, grads_for(step, base)):
            p.grad, q.grad = g.clone(), g.clone()
        opt1.step()
        opt2.step()
    for p, q in zip(p1, p2):
        torch.testing.assert_close(q.detach(), p.detach(), **TOL[torch.float64])
    assert set(opt1.state_dict()["state"][0].keys()) == set(opt2.state_dict()["state"][0].keys())


CAPTURABLE = [("Adam", torch.optim.Adam, dopt.Adam, dict(betas=(0.7, 0.9), weight_decay=0.1, amsgrad=True)),
              ("AdamW", torch.optim.AdamW, dopt.AdamW, dict(weight_decay=0.3)),
              ("SGD", torch.optim.SGD, dopt.SGD, dict(momentum=0.9, weight_decay=0.1)),
              ("Adagrad", torch.optim.Adagrad, dopt.Adagrad, dict(lr_decay=0.3, weight_decay=0.05)),
              ("RMSprop", torch.optim.RMSprop, dopt.RMSprop, dict(momentum=0.5, centered=True))]


@pytest.mark.parametrize("name,torch_cls,ours_cls,config", CAPTURABLE, ids=[c[0] for c in CAPTURABLE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capturable_with_a_tensor_lr_matches_torch(name, torch_cls, ours_cls, config, dtype):
    """capturable=True (step counters on the parameters' device) with a one-element tensor lr there: on
    the CUDA kernels (a GPU, or the emulation build) the kernels read both from device memory and compute
    the per-tensor scalars themselves; the trajectory is torch's with a float lr (torch's capturable mode
    needs a GPU). Parameters at different step counts (a group added later) and an lr changed in place
    between steps (what a scheduler writing into the tensor does under a CUDA graph) both count."""
    device = KDEV or "cpu"
    base = make_params(dtype, device, shapes=[(7,), (33, 17), (1009,)])
    late = make_params(dtype, device, seed=1, shapes=[(5, 3), (70000,)])  # 70000: two chunks of one tensor
    a, b = [[p.clone().requires_grad_(True) for p in ps] for ps in (base, base)]
    la, lb = [[p.clone().requires_grad_(True) for p in ps] for ps in (late, late)]
    # torch's Adagrad has no capturable flag: fused=True keeps its counters on the parameters' device
    capturable = {"SGD": {}, "Adagrad": dict(fused=True)}.get(name, dict(capturable=True))
    lr = torch.tensor(0.05, dtype=dtype, device=device)
    opt_t, opt_o = torch_cls(a, lr=0.05, **config), ours_cls(b, lr=lr, **capturable, **config)
    for step in range(6):
        if step == 2:
            opt_t.add_param_group(dict(params=la, lr=0.02))
            opt_o.add_param_group(dict(params=lb, lr=torch.tensor(0.02, dtype=dtype, device=device)))
        if step == 4:
            opt_t.param_groups[0]["lr"] = 0.01
            lr.fill_(0.01)
        grads = grads_for(step, base + late)
        for x, y, g in zip(a + la, b + lb, grads):
            x.grad, y.grad = g.clone(), g.clone()
        opt_t.step()
        opt_o.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else TOL[dtype]
    for x, y in zip(a + la, b + lb):
        torch.testing.assert_close(y.detach(), x.detach(), **tol)
    if name != "SGD":
        for x, y in zip(a + la, b + lb):
            st, so = opt_t.state[x]["step"], opt_o.state[y]["step"]
            assert so.device == y.device and so.item() == st.item()


@needs_cuda_kernels
def test_capturable_steps_must_share_a_dtype():
    p = [torch.zeros(3, device=KDEV), torch.zeros(2, device=KDEV)]
    steps = [torch.tensor(0.0, device=KDEV), torch.tensor(0.0, dtype=torch.float64, device=KDEV)]
    with pytest.raises(TypeError, match=r"capturable state_steps must all be float32 or all float64, got Double "
                                        r"for state_steps\[1\]"):
        torch.ops.dlkernels.adam_(p, [q.clone() for q in p], [q.clone() for q in p], [q.clone() for q in p], [],
                                  steps, 0.1, 0.9, 0.99, 1e-8, 0.0, False, False, False, capturable=True)
    assert steps[0].item() == 0.0 and steps[1].item() == 0.0  # checked before anything moved


@pytest.mark.skipif(not dlkernels.cuda_available(), reason="needs a GPU and a CUDA build")
def test_capturable_step_captured_in_a_cuda_graph():
    """A capturable step with a tensor lr neither synchronises with the host nor reads a value there: it
    captures in a CUDA graph, and replays (with the lr changed in place) follow torch's eager steps."""
    base = make_params(torch.float32, "cuda", shapes=[(7,), (33, 17), (100000,)])
    a, b = [[p.clone().requires_grad_(True) for p in base] for _ in range(2)]
    lr = torch.tensor(0.01, device="cuda")
    opt_t = torch.optim.Adam(a, lr=0.01, capturable=True, weight_decay=0.1)
    opt_o = dopt.Adam(b, lr=lr, capturable=True, weight_decay=0.1)
    grads = [torch.randn_like(p) for p in base]
    for x, y, g in zip(a, b, grads):
        x.grad, y.grad = g.clone(), g.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up: the state is created outside the graph
        opt_t.step()
        opt_o.step()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.set_sync_debug_mode("error")
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt_o.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    plain = dopt.Adam([torch.zeros(3, device="cuda", requires_grad=True)])
    plain.param_groups[0]["params"][0].grad = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="capture of step\\(\\) needs capturable=True"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            plain.step()
    for step in range(3):
        if step == 2:
            lr.fill_(0.003)
            opt_t.param_groups[0]["lr"] = 0.003
        opt_t.step()
        graph.replay()
    torch.cuda.synchronize()
    for x, y in zip(a, b):
        torch.testing.assert_close(y.detach(), x.detach(), rtol=1e-5, atol=1e-6)


def test_add_param_group_and_mixed_dtypes():
    a = [torch.randn(5, requires_grad=True), torch.randn(4, dtype=torch.float64, requires_grad=True)]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    extra_a = torch.randn(9, requires_grad=True)
    extra_b = extra_a.detach().clone().requires_grad_(True)
    opt_t, opt_o = torch.optim.Adam(a, lr=0.1), dopt.Adam(b, lr=0.1)
    for step in range(6):
        if step == 2:
            opt_t.add_param_group(dict(params=[extra_a], lr=0.05, weight_decay=0.1))
            opt_o.add_param_group(dict(params=[extra_b], lr=0.05, weight_decay=0.1))
        for x, y in zip(a + [extra_a], b + [extra_b]):
            g = torch.randn_like(x)
            x.grad, y.grad = g.clone(), g.clone()
        opt_t.step()
        opt_o.step()
    for x, y in zip(a + [extra_a], b + [extra_b]):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_non_contiguous_parameter():
    w_t = torch.randn(6, 9).t().requires_grad_(True)  # a transposed (non-contiguous) leaf
    w_o = torch.randn(6, 9).t().requires_grad_(True)
    with torch.no_grad():
        w_o.copy_(w_t)
    opt_t, opt_o = torch.optim.Adam([w_t], lr=0.1), dopt.Adam([w_o], lr=0.1)
    for _ in range(4):
        g = torch.randn(9, 6)
        w_t.grad, w_o.grad = g.clone(), g.clone().t().contiguous().t()  # grad with other strides
        opt_t.step()
        opt_o.step()
    torch.testing.assert_close(w_o, w_t, rtol=1e-5, atol=1e-6)
    assert not w_o.is_contiguous()


def test_grad_scaler_skips_inf_steps():
    model_t = torch.nn.Linear(4, 3)
    model_o = copy.deepcopy(model_t)
    opt_t, opt_o = torch.optim.Adam(model_t.parameters(), lr=0.1), dopt.Adam(model_o.parameters(), lr=0.1)
    scaler_t, scaler_o = torch.amp.GradScaler("cpu", init_scale=8.0), torch.amp.GradScaler("cpu", init_scale=8.0)
    x = torch.randn(10, 4)
    for step in range(4):
        for model, opt, scaler in ((model_t, opt_t, scaler_t), (model_o, opt_o, scaler_o)):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            scaler.scale(loss).backward()
            if step == 1:
                model.weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
    for p, q in zip(model_t.parameters(), model_o.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert scaler_o.get_scale() == scaler_t.get_scale() < 8.0


def test_opcheck_optimizer_ops():
    ps = make_params(torch.float32, "cpu", shapes=[(5,), (3, 2)])
    gs = [torch.randn_like(p) for p in ps]
    z = lambda: [torch.zeros_like(p) for p in ps]  # noqa: E731
    steps = lambda: [torch.tensor(0.0) for _ in ps]  # noqa: E731
    torch.library.opcheck(torch.ops.dlkernels.adam_.default,
                          ([p.clone() for p in ps], gs, z(), z(), z(), steps(), 0.1, 0.9, 0.99, 1e-8, 0.1, True, False,
                           False))
    torch.library.opcheck(torch.ops.dlkernels.sgd_.default,
                          ([p.clone() for p in ps], gs, z(), [True, False], 0.1, 0.9, 0.0, 0.0, True, False))
    torch.library.opcheck(torch.ops.dlkernels.adagrad_.default,
                          ([p.clone() for p in ps], gs, z(), steps(), 0.1, 0.0, 0.0, 1e-10, False))
    torch.library.opcheck(torch.ops.dlkernels.rmsprop_.default,
                          ([p.clone() for p in ps], gs, z(), z(), z(), steps(), 0.1, 0.99, 1e-8, 0.0, 0.5, True, False))


def test_deterministic_across_thread_counts():
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            _, b, _, _ = run_pair(torch.optim.Adam, dopt.Adam, dict(lr=0.01), torch.float32, "cpu", steps=3)
            results.append([p.detach() for p in b])
    finally:
        torch.set_num_threads(before)
    for p, q in zip(*results):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------ bad inputs

BAD_CONSTRUCTIONS = [
    ("Adam", dict(lr=-1.0)), ("Adam", dict(betas=(1.0, 0.9))), ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(eps=-1e-8)), ("Adam", dict(weight_decay=-0.1)), ("AdamW", dict(lr=-0.5)),
    ("SGD", dict(lr=-0.1)), ("SGD", dict(lr=0.1, nesterov=True)), ("SGD", dict(lr=0.1, momentum=-1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)), ("Adagrad", dict(lr_decay=-1)),
    ("Adagrad", dict(initial_accumulator_value=-1)), ("RMSprop", dict(alpha=-0.5)), ("RMSprop", dict(eps=-1)),
]


@pytest.mark.parametrize("name,kwargs", BAD_CONSTRUCTIONS, ids=[f"{n}-{list(k)[-1]}" for n, k in BAD_CONSTRUCTIONS])
def test_bad_hyperparameters_give_torchs_errors(name, kwargs):
    torch_cls, ours_cls, _ = OPTIMIZERS[name]
    with pytest.raises(ValueError) as expected:
        torch_cls([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError) as got:
        ours_cls([torch.zeros(2, requires_grad=True)], **kwargs)
    assert str(got.value) == str(expected.value)


def test_sparse_gradient_and_complex_parameter_rejected():
    p = torch.zeros(4, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0, 2]], [1.0, 2.0], (4,))
    for cls in (dopt.Adam, dopt.SGD, dopt.Adagrad, dopt.RMSprop, dopt.AdamW):
        with pytest.raises(RuntimeError, match="does not support sparse gradients"):
            cls([p], lr=0.1).step()
    c = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    c.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(NotImplementedError, match="complex parameters"):
        dopt.Adam([c]).step()


def test_op_level_bad_lists():
    p = [torch.zeros(3), torch.zeros(2)]
    g = [torch.zeros(3)]
    s = [torch.tensor(0.0), torch.tensor(0.0)]
    with pytest.raises(ValueError, match="grads must have one tensor per parameter"):
        torch.ops.dlkernels.adam_(p, g, p, p, [], s, 0.1, 0.9, 0.99, 1e-8, 0.0, False, False, False)
    with pytest.raises(ValueError, match=r"exp_avgs\[1\] has shape"):
        torch.ops.dlkernels.adam_(p, [torch.zeros(3), torch.zeros(2)], [torch.zeros(3), torch.zeros(5)], p, [], s,
                                  0.1, 0.9, 0.99, 1e-8, 0.0, False, False, False)
    with pytest.raises(TypeError, match="must be float32 or float64"):
        torch.ops.dlkernels.sgd_([torch.zeros(3, dtype=torch.int32)], [torch.zeros(3, dtype=torch.int32)], [], [],
                                 0.1, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match=r"state_steps\[0\] must be a one-element"):
        torch.ops.dlkernels.adagrad_([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(2)], 0.1, 0.0,
                                     0.0, 1e-10, False)
    steps = [torch.tensor(0.0)]
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype"):
        torch.ops.dlkernels.adagrad_([torch.zeros(3)], [torch.zeros(3, dtype=torch.float64)], [torch.zeros(3)], steps,
                                     0.1, 0.0, 0.0, 1e-10, False)
    assert steps[0].item() == 0.0  # nothing changed by a rejected call


def test_step_counters_advance_like_add():
    # state_steps are advanced in place: the float32/float64 CPU counters directly, any other through
    # add_(1). Each must end where add_(1) would put it (float32 stops counting at 2^24), move its
    # version counter, and feed that value into the update (Adagrad's lr_decay reads it).
    big = torch.tensor([5.0, 7.0, 11.0], dtype=torch.float64)
    counters = [torch.tensor(3.0), torch.tensor(41.0, dtype=torch.float64), torch.tensor(2.0 ** 24),
                torch.tensor(9.0, dtype=torch.float16), big[1]]  # the last a view with a storage offset
    expected = [c.clone().add_(1) for c in counters]
    versions = [c._version for c in counters]
    n = len(counters)
    params = [torch.randn(5, dtype=torch.float64) for _ in range(n)]
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(n)]
    sums = [torch.rand(5, dtype=torch.float64) for _ in range(n)]
    want = []
    for p, g, s, e in zip(params, grads, sums, expected):
        clr = 0.1 / (1 + (e.item() - 1) * 0.5)
        want.append(p - clr * g / ((s + g * g).sqrt() + 1e-10))
    torch.ops.dlkernels.adagrad_(params, grads, sums, counters, 0.1, 0.5, 0.0, 1e-10, False)
    for c, e, v in zip(counters, expected, versions):
        assert c.dtype == e.dtype and c.item() == e.item()
        assert c._version > v
    assert big.tolist() == [5.0, 8.0, 11.0]
    for p, w in zip(params, want):
        torch.testing.assert_close(p, w, rtol=1e-12, atol=0)


@pytest.mark.skipif(not dlkernels.cuda_available(), reason="needs a GPU and a CUDA build")
def test_whole_training_step_captured_in_a_cuda_graph():
    """A converted model's whole step - forward, cross-entropy, backward, capturable Adam - captures in one
    CUDA graph (nothing in it reads a GPU value on the host) and its replays follow the same steps run
    eagerly on a copy."""
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 5)).cuda()
    graphed, eager = dlkernels.convert(ref), dlkernels.convert(ref)
    opt_g = dopt.Adam(graphed.parameters(), lr=torch.tensor(0.01, device="cuda"), capturable=True)
    opt_e = dopt.Adam(eager.parameters(), lr=torch.tensor(0.01, device="cuda"), capturable=True)
    x, y = torch.randn(8, 3, 16, 16, device="cuda"), torch.randint(0, 5, (8,), device="cuda")
    loss_fn = dlkernels.nn.CrossEntropyLoss()

    def step(model, opt):
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up: the optimizer state and gradients exist before the capture
        for _ in range(2):
            step(graphed, opt_g)
            step(eager, opt_e)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            captured_loss = step(graphed, opt_g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(3):
        graph.replay()
        eager_loss = step(eager, opt_e)
    torch.cuda.synchronize()
    torch.testing.assert_close(captured_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for p, q in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
