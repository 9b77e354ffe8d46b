"""python -m dlkernels.bench: side-by-side timings against PyTorch, in one process, on one device.

    python -m dlkernels.bench [--op NAME] [--all] [--device cpu|cuda] [--json FILE] [--markdown FILE]

Every case is defined once in CASES and used here, by bench/bench_*.py (pytest-benchmark) and by the
README table. Timing: warm-up runs, then the median of many, torch's and ours in alternating blocks;
CUDA events on the GPU; inputs rotated through enough copies to overflow the last-level cache, so that
no run finds its data already cached.
The machine's limits are measured once per run: memory bandwidth (bytes read + written per second, the
better of a large tensor copy and a large in-place update, which is spared the copy's write-allocate
reads) and the float32 GEMM rate (torch.mm), and each case reports its rate as a percentage of the
relevant one.
"""
import argparse
import dataclasses
import datetime
import glob
import json
import math
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF


def last_level_cache_bytes():
    """The CPU's largest cache as the OS reports it (0 where it does not say)."""
    sizes = [0]
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes)


# Rotate inputs through at least this much memory: twice the last-level cache (a 2026 AVX-512 Xeon host
# here reports 260 MiB of L3, more than the 128 MiB this used to be), and at least 128 MiB.
CACHE_FLUSH_BYTES = max(128 << 20, 2 * last_level_cache_bytes())


@dataclasses.dataclass
class Case:
    op: str
    name: str
    make: object  # make(device) -> dict(torch=fn, ours=fn, numpy=fn or None, inputs=[...], bytes=int, flops=int)
    goal: str = ""


# ----------------------------------------------------------------------------------- timing

def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _timed_ms(fn, args, device):
    """Milliseconds of one fn(*args): CUDA events on the GPU, the wall clock on the CPU. The inputs'
    gradients left by the previous run on these copies are dropped first, outside the timed region: that
    run may have been the other library's, and freeing its gradient (torch's: a munmap of a 51 MB block;
    ours: a return to the output cache) would be charged to this one."""
    for t in args:
        if isinstance(t, torch.Tensor):
            t.grad = None
    _sync(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1e3


def _warm_up(fn, inputs_list, device, warmup):
    """Warm-up runs, once through every copy at least: on this project's VM hosts the first touch of
    guest memory never used before costs ~5 ms per MB (52 MB: 250 ms, then 12 ms with huge pages, 30 ms
    without), so a run whose gradient lands on such memory times the hypervisor, not the kernel."""
    for i in range(max(warmup, len(inputs_list))):
        fn(*inputs_list[i % len(inputs_list)])
    _sync(device)


def time_fn(fn, inputs_list, device, warmup=3, min_runs=10, min_seconds=1.0, max_runs=200):
    """Median milliseconds of fn(*inputs) cycling through inputs_list (fresh buffers each run)."""
    _warm_up(fn, inputs_list, device, warmup)
    times = []
    start_all = time.perf_counter()
    while (len(times) < min_runs or time.perf_counter() - start_all < min_seconds) and len(times) < max_runs:
        times.append(_timed_ms(fn, inputs_list[len(times) % len(inputs_list)], device))
    return statistics.median(times)


def time_pair(fn_a, fn_b, inputs_list, device, warmup=3, rounds=3, block_runs=4, block_seconds=0.4, max_block_runs=70):
    """Median milliseconds of fn_a and of fn_b, timed in alternating blocks (a's block, b's block, three
    rounds) over the same rotation of inputs, so that both see the same phases of a shared host whose
    speed moves (timed one after the other once, torch's 3x3 convolution came out at 49 ms in one run
    and 64 in the next, and the ratio moved 0.66-0.82x). Blocks, not single runs alternated: a run just
    after the other function's finds the cache full of its dirty lines, which cost our max pooling 25%
    (11.6 -> 14.5 ms) when runs alternated one by one."""
    _warm_up(fn_a, inputs_list, device, warmup)
    _warm_up(fn_b, inputs_list, device, warmup)
    times = ([], [])
    for _ in range(rounds):
        for fn, out in zip((fn_a, fn_b), times):
            start, n = time.perf_counter(), 0
            while (n < block_runs or time.perf_counter() - start < block_seconds) and n < max_block_runs:
                out.append(_timed_ms(fn, inputs_list[len(out) % len(inputs_list)], device))
                n += 1
    return statistics.median(times[0]), statistics.median(times[1])


_LIMITS = {}


def machine_limits(device):
    """Copy bandwidth (GB/s, read + write) and float32 GEMM rate (GFLOP/s), measured once per device."""
    if device in _LIMITS:
        return _LIMITS[device]
    n = max(256 << 20, CACHE_FLUSH_BYTES) // 4  # each of source and destination past the cache
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    # The limit is what the machine can do, so take the best of a few medians: on a shared host a
    # single measurement can land in a noisy moment.
    ms = min(time_fn(lambda: dst.copy_(src), [()], device, min_runs=10, min_seconds=0.3) for _ in range(3))
    copy_gbs = 2 * n * 4 / ms / 1e6
    # A copy into a cold destination also reads every destination line before writing it (write-allocate),
    # which an in-place update does not: its read + write rate is the memory system's real ceiling for
    # in-place kernels and for kernels with streaming stores.
    ms = min(time_fn(lambda: src.mul_(0.999), [()], device, min_runs=10, min_seconds=0.3) for _ in range(3))
    inplace_gbs = 2 * n * 4 / ms / 1e6
    del src, dst
    m = 4096 if device == "cuda" else 2048
    a = torch.randn(m, m, device=device)
    b = torch.randn(m, m, device=device)
    ms = time_fn(lambda: torch.mm(a, b), [()], device, min_runs=5, min_seconds=0.5)
    gemm = 2 * m ** 3 / ms / 1e6
    _LIMITS[device] = dict(copy_gbs=copy_gbs, inplace_gbs=inplace_gbs, mem_gbs=max(copy_gbs, inplace_gbs),
                           gemm_gflops=gemm)
    return _LIMITS[device]


def _fresh_copies(inputs, nbytes):
    """The inputs and enough copies of them to overflow the cache. Each copy is a leaf of its own: a
    plain clone of a tensor that requires grad would route every backward through CloneBackward into
    the original's .grad, adding an accumulation of the whole gradient (a read and a write of it) to
    every timed run after the first."""
    if nbytes == 0:  # nothing to copy (the optimizer cases keep their state in the optimizer)
        return [inputs]
    copies = max(1, math.ceil(CACHE_FLUSH_BYTES / nbytes))
    out = [inputs]
    for _ in range(copies - 1):
        out.append([x.detach().clone().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
                    for x in inputs])
    return out


# ----------------------------------------------------------------------------------- cases

def _cross_entropy_case(N, C):
    def make(device):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(N, C, generator=gen).to(device).requires_grad_(True)
        t = torch.randint(0, C, (N,), generator=gen).to(device)

        def step(fn):
            def run(x, t):
                x.grad = None
                fn(x, t).backward()
            return run

        x_np = x.detach().cpu().numpy()
        t_np = t.cpu().numpy()

        def numpy_step():
            # the textbook SoftmaxWithLoss, forward and backward, float32
            z = x_np - x_np.max(axis=1, keepdims=True)
            e = np.exp(z)
            y = e / e.sum(axis=1, keepdims=True)
            loss = -np.log(y[np.arange(N), t_np] + 1e-7).mean()
            y[np.arange(N), t_np] -= 1
            return loss, y / N

        return dict(torch=step(F.cross_entropy), ours=step(DF.cross_entropy), numpy=numpy_step, inputs=[x, t],
                    bytes=2 * N * C * 4, flops=0)
    return make


def resnet_like_shapes(blocks=(3, 4, 6, 3), width=52, classes=1000):
    """Parameter shapes of a ResNet-34-style network at width 52: 110 tensors, about 14.4M floats,
    from 52-element batch-norm vectors to 2.4M-element 3x3 convolutions."""
    shapes = [(width, 3, 7, 7), (width,), (width,)]
    cin = width
    for stage, n in enumerate(blocks):
        c = width * 2 ** stage
        for _ in range(n):
            shapes += [(c, cin, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,)]
            if cin != c:
                shapes += [(c, cin, 1, 1), (c,), (c,)]
            cin = c
    return shapes + [(classes, cin), (classes,)]


# optimizer name -> (torch class, our class name, kwargs, arrays read + written per element)
_OPTIMIZERS = {
    "Adam": ("Adam", dict(lr=1e-3), 7),
    "AdamW": ("AdamW", dict(lr=1e-3, weight_decay=1e-2), 7),
    "SGD-momentum": ("SGD", dict(lr=1e-2, momentum=0.9), 5),
    "Adagrad": ("Adagrad", dict(lr=1e-2), 5),
    "RMSprop": ("RMSprop", dict(lr=1e-2), 5),
}


def _optimizer_case(name, torch_variant):
    cls_name, kwargs, arrays = _OPTIMIZERS[name]

    def make(device):
        import dlkernels.optim as dopt

        gen = torch.Generator().manual_seed(0)
        shapes = resnet_like_shapes()

        def params():
            ps = [torch.randn(s, generator=gen).to(device).requires_grad_(True) for s in shapes]
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen).to(device)
            return ps

        variant = {} if torch_variant == "default" else ({"fused": True} if torch_variant == "fused" else
                                                         {"foreach": False})
        opt_t = getattr(torch.optim, cls_name)(params(), **kwargs, **variant)
        opt_o = getattr(dopt, cls_name)(params(), **kwargs)
        opt_t.step()  # create the state outside the timed runs
        opt_o.step()
        numel = sum(p.numel() for g in opt_o.param_groups for p in g["params"])

        def numpy_step(state={}):
            # the textbook update in numpy on one flat float32 vector of the same size
            if "w" not in state:
                state.update(w=np.random.rand(numel).astype(np.float32), g=np.random.rand(numel).astype(np.float32),
                             m=np.zeros(numel, np.float32), v=np.zeros(numel, np.float32))
            w, g, m, v = state["w"], state["g"], state["m"], state["v"]
            m += 0.1 * (g - m)
            v += 0.001 * (g * g - v)
            w -= 1e-3 * m / (np.sqrt(v) + 1e-8)

        return dict(torch=opt_t.step, ours=opt_o.step, numpy=numpy_step if name.startswith("Adam") else None,
                    inputs=[], bytes=arrays * 4 * numel, flops=0)
    return make


def _pool_case(kind, shape, **kw):
    def make(device):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
        torch_fn, ours_fn = {
            "max": (F.max_pool2d, DF.max_pool2d),
            "avg": (F.avg_pool2d, DF.avg_pool2d),
            "adaptive": (F.adaptive_avg_pool2d, DF.adaptive_avg_pool2d),
        }[kind]

        out = torch_fn(x.detach(), **kw)
        grad = torch.randn(out.shape, generator=gen).to(device)  # made once, as the other families' cases

        def step(fn):
            def run(x):
                x.grad = None
                y = fn(x, **kw)
                y.backward(grad)
            return run

        # minimal bytes: read x, write y (forward); read dy, write dx (backward); max also writes and
        # reads its argmax: the byte per output that our CPU autograd keeps (int64 indices on CUDA)
        arg = (1 if torch.device(device).type == "cpu" else 8) if kind == "max" else 0
        per = 2 * (x.numel() + out.numel()) * 4 + 2 * out.numel() * arg
        return dict(torch=step(torch_fn), ours=step(ours_fn), numpy=None, inputs=[x], bytes=per, flops=0)
    return make


def _conv_case(N, C, H, OC, K, stride=1, padding=0):
    def make(device):
        from dlkernels.textbook import Convolution

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(N, C, H, H, generator=gen).to(device).requires_grad_(True)
        w = (torch.randn(OC, C, K, K, generator=gen) / (C * K * K) ** 0.5).to(device).requires_grad_(True)
        b = torch.randn(OC, generator=gen).to(device).requires_grad_(True)

        def step(fn):
            def run(x):
                x.grad = w.grad = b.grad = None
                y = fn(x, w, b, stride=stride, padding=padding)
                y.backward(grad)
            return run

        with torch.no_grad():
            grad = torch.randn_like(F.conv2d(x, w, b, stride=stride, padding=padding))
        OH = grad.shape[2]
        layer = Convolution(w.detach().cpu().numpy(), b.detach().cpu().numpy(), stride, padding)
        x_np, g_np = x.detach().cpu().numpy(), grad.cpu().numpy()

        def numpy_step():
            layer.forward(x_np)
            layer.backward(g_np)

        flops = 3 * 2 * N * OC * C * K * K * OH * OH  # forward, grad-input and grad-weight GEMMs
        return dict(torch=step(F.conv2d), ours=step(DF.conv2d), numpy=numpy_step, inputs=[x],
                    bytes=0, flops=flops)
    return make


def _batch_norm_case(kind, shape=(16, 64, 56, 56)):
    def make(device):
        import dlkernels.nn as dnn

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
        r = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
        grad = torch.randn(shape, generator=gen).to(device)
        c = shape[1]
        ref = torch.nn.BatchNorm2d(c).to(device)
        ours = (dnn.BatchNormReLU2d if kind != "bn" else dnn.BatchNorm2d)(c).to(device)

        def torch_fn(x, r):
            x.grad = r.grad = None
            y = ref(x)
            if kind == "bn_add_relu":
                y = y + r
            if kind != "bn":
                y = torch.relu(y)
            y.backward(grad)

        def ours_fn(x, r):
            x.grad = r.grad = None
            y = ours.add_relu(x, r) if kind == "bn_add_relu" else ours(x)
            y.backward(grad)

        from dlkernels.textbook import BatchNormalization

        layer = BatchNormalization(np.ones(c, np.float32), np.zeros(c, np.float32))
        x_np, g_np = x.detach().cpu().numpy(), grad.cpu().numpy()

        def numpy_step():
            layer.forward(x_np)
            layer.backward(g_np)

        # minimal reads + writes of a full tensor (add+ReLU: x, r, y; dy, x, dx, dr: its gate saved as bits)
        tensors = {"bn": 5, "bn_relu": 6, "bn_add_relu": 7}[kind]
        return dict(torch=torch_fn, ours=ours_fn, numpy=numpy_step if kind == "bn" else None, inputs=[x, r],
                    bytes=tensors * x.numel() * 4, flops=0)
    return make


CASES = [
    Case("batch_norm", "BN 16x64x56x56 train", _batch_norm_case("bn"), goal="CPU: 2x torch; GPU: -"),
    Case("batch_norm", "BN+ReLU 16x64x56x56 train", _batch_norm_case("bn_relu"),
         goal="CPU: 2.5x torch BN then ReLU; GPU: 1.3x"),
    Case("batch_norm", "BN+add+ReLU 16x64x56x56 train", _batch_norm_case("bn_add_relu"),
         goal="CPU: 2.5x torch's three ops"),
    Case("conv", "LeNet 64x1x28x28 -> 6 5x5", _conv_case(64, 1, 28, 6, 5), goal="CPU: 2x torch"),
    Case("conv", "3x3 16x64x56x56 -> 64 p1", _conv_case(16, 64, 56, 64, 3, padding=1),
         goal="CPU: >= 1/1.3 of torch; GPU: >= 1/1.5 of cuDNN"),
    Case("conv", "3x3/s2 16x128x28x28 -> 128 p1", _conv_case(16, 128, 28, 128, 3, stride=2, padding=1),
         goal="CPU: >= 1/1.3 of torch"),
    Case("conv", "1x1 16x256x14x14 -> 256", _conv_case(16, 256, 14, 256, 1), goal="CPU: >= 1x torch"),
    Case("cross_entropy", "4096x1000", _cross_entropy_case(4096, 1000), goal="CPU: 2x torch"),
    Case("cross_entropy", "8192x8000", _cross_entropy_case(8192, 8000), goal="CPU: 5x torch, 60% of mem BW"),
    Case("cross_entropy", "8192x32000", _cross_entropy_case(8192, 32000), goal="GPU: 1.5x torch, 70% of BW"),
    Case("pooling", "max 3x3/s2/p1 16x64x112x112", _pool_case("max", (16, 64, 112, 112), kernel_size=3, stride=2,
                                                              padding=1), goal="CPU: 3x torch, 50% of BW"),
    Case("pooling", "max 2x2/s2 16x64x112x112", _pool_case("max", (16, 64, 112, 112), kernel_size=2),
         goal="CPU: 3x torch, 50% of BW"),
    Case("pooling", "avg 2x2/s2 16x64x112x112", _pool_case("avg", (16, 64, 112, 112), kernel_size=2),
         goal="CPU: 3x torch, 50% of BW"),
    Case("pooling", "global avg 16x2048x7x7", _pool_case("adaptive", (16, 2048, 7, 7), output_size=1),
         goal="CPU: 3x torch, 50% of BW"),
    Case("optim", "Adam vs torch fused", _optimizer_case("Adam", "fused"), goal="CPU: >= 1x; GPU: 80% of BW"),
    Case("optim", "Adam vs torch default", _optimizer_case("Adam", "default"), goal="CPU: 3x"),
    Case("optim", "Adam vs torch foreach=False", _optimizer_case("Adam", "single"), goal=""),
    Case("optim", "AdamW vs torch fused", _optimizer_case("AdamW", "fused"), goal="CPU: >= 1x"),
    Case("optim", "AdamW vs torch default", _optimizer_case("AdamW", "default"), goal="CPU: 3x"),
    Case("optim", "SGD-momentum vs torch fused", _optimizer_case("SGD-momentum", "fused"), goal="CPU: >= 1x"),
    Case("optim", "SGD-momentum vs torch default", _optimizer_case("SGD-momentum", "default"), goal="CPU: 3x"),
    Case("optim", "Adagrad vs torch fused", _optimizer_case("Adagrad", "fused"), goal="CPU: >= 1x"),
    Case("optim", "Adagrad vs torch default", _optimizer_case("Adagrad", "default"), goal="CPU: 3x"),
    Case("optim", "RMSprop vs torch foreach", _optimizer_case("RMSprop", "default"), goal="CPU: 3x (torch has no fused RMSprop)"),
]
GPU_ONLY = {("cross_entropy", "8192x32000")}
CPU_ONLY = {("optim", "Adagrad vs torch fused")}  # torch's fused Adagrad has no CUDA kernel


def cases_for(op=None, device="cpu"):
    out = []
    for c in CASES:
        if op not in (None, "all") and c.op != op:
            continue
        if device == "cpu" and (c.op, c.name) in GPU_ONLY:
            continue
        if device != "cpu" and (c.op, c.name) in CPU_ONLY:
            continue
        out.append(c)
    return out


# ----------------------------------------------------------------------------------- running

def run_with_pytest_benchmark(benchmark, case, impl, device="cpu"):
    """The pytest-benchmark view of one case (bench/bench_<family>.py): impl is "torch" or "ours"."""
    spec = case.make(device)
    nbytes = sum(x.numel() * x.element_size() for x in spec["inputs"] if isinstance(x, torch.Tensor))
    copies = _fresh_copies(spec["inputs"], nbytes)
    state = {"i": 0}

    def run():
        args = copies[state["i"] % len(copies)]
        state["i"] += 1
        spec[impl](*args)
        _sync(device)

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)


def run_case(case, device, with_numpy=True):
    spec = case.make(device)
    nbytes = sum(x.numel() * x.element_size() for x in spec["inputs"] if isinstance(x, torch.Tensor))
    inputs_list = _fresh_copies(spec["inputs"], nbytes)
    torch_ms, ours_ms = time_pair(spec["torch"], spec["ours"], inputs_list, device)
    numpy_ms = None
    if with_numpy and spec.get("numpy") is not None:
        numpy_ms = time_fn(spec["numpy"], [()], "cpu", warmup=1, min_runs=3, min_seconds=0.2, max_runs=10)
    limits = machine_limits(device)
    row = dict(op=case.op, case=case.name, device=device, torch_ms=torch_ms, ours_ms=ours_ms,
               speedup=torch_ms / ours_ms, numpy_ms=numpy_ms, goal=case.goal)
    if spec["flops"]:
        row["gflops"] = spec["flops"] / ours_ms / 1e6
        row["pct_limit"] = 100 * row["gflops"] / limits["gemm_gflops"]
        row["limit"] = "GEMM"
    else:
        row["gbs"] = spec["bytes"] / ours_ms / 1e6
        row["pct_limit"] = 100 * row["gbs"] / limits["mem_gbs"]
        row["pct_copy"] = 100 * row["gbs"] / limits["copy_gbs"]  # the issues' goals name copy bandwidth
        row["limit"] = "mem BW"
    return row


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def device_slug(device="cpu"):
    if device == "cuda":
        return "h100" if "H100" in torch.cuda.get_device_name() else torch.cuda.get_device_name().lower().replace(" ", "-")
    return "cpu-" + (platform.machine() or "unknown")


def format_table(rows, device):
    limits = machine_limits(device)
    lines = [
        f"Device: {device_name(device)}; torch {torch.__version__}; dlkernels CPU ISA {dlkernels.cpu_isa()}; "
        f"{datetime.date.today().isoformat()}",
        f"Measured limits: memory {limits['mem_gbs']:.1f} GB/s (best of copy {limits['copy_gbs']:.1f} and in-place "
        f"update {limits['inplace_gbs']:.1f}, bytes read + written), float32 GEMM {limits['gemm_gflops']:.0f} GFLOP/s",
        "",
        "| op | case | torch ms | dlkernels ms | speedup | rate | % of limit | numpy ms | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rate = f"{r['gflops']:.1f} GFLOP/s" if "gflops" in r else f"{r['gbs']:.1f} GB/s"
        numpy_ms = f"{r['numpy_ms']:.1f}" if r["numpy_ms"] is not None else "-"
        copy = f" ({r['pct_copy']:.0f}% of copy)" if "pct_copy" in r else ""
        lines.append(f"| {r['op']} | {r['case']} | {r['torch_ms']:.2f} | {r['ours_ms']:.2f} | {r['speedup']:.2f}x | "
                     f"{rate} | {r['pct_limit']:.0f}% of {r['limit']}{copy} | {numpy_ms} | {r['goal']} |")
    return "\n".join(lines)


def plot_speedups(rows, path, title):
    """Horizontal bars: torch time / dlkernels time per case (right of 1: dlkernels is faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op']}: {r['case']}" for r in rows]
    speed = [r["speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    ax.barh(range(len(rows)), speed, color=["tab:green" if v >= 1 else "tab:red" for v in speed])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speedup over torch (torch ms / dlkernels ms), log scale")
    ax.set_title(f"dlkernels vs torch: {title}", fontsize=9)
    for i, v in enumerate(speed):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", default=None, help="one op family (e.g. cross_entropy); default all")
    p.add_argument("--all", action="store_true", help="every family's cases")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    p.add_argument("--no-numpy", action="store_true", help="skip the numpy from-scratch column")
    p.add_argument("--plot", default=None, help="draw the speedup chart (dlkernels vs torch) into this PNG file")
    p.add_argument("--models", nargs="?", const="all", default=None,
                   help="whole-model training and inference timings (dlkernels/model_bench.py); optionally a "
                        "comma-separated subset of resnet18,resnet50,mobilenet_v2,resnet20_cifar")
    p.add_argument("--autocast", action="store_true",
                   help="with --models: also each model under torch.autocast('cpu', torch.bfloat16) (format "
                        "'bf16-autocast')")
    args = p.parse_args(argv)
    if args.device == "cuda" and not dlkernels.cuda_available():
        p.error("--device cuda: no GPU, or this dlkernels build is CPU-only")
    op = None if args.all else args.op
    rows = []
    run_ops = args.all or args.op is not None or args.models is None
    model_rows, layer_rows = [], []
    for case in (cases_for(op, args.device) if run_ops else []):
        row = run_case(case, args.device, with_numpy=not args.no_numpy)
        rows.append(row)
        print(f"  {row['op']:>14s} {row['case']:>12s}: torch {row['torch_ms']:8.2f} ms, dlkernels {row['ours_ms']:8.2f} ms,"
              f" {row['speedup']:.2f}x", file=sys.stderr)
    table = format_table(rows, args.device) if run_ops else ""
    if args.models is not None:
        from . import model_bench
        if args.device != "cpu":
            p.error("--models: the model benchmark runs on the CPU only so far")
        names = None if args.models == "all" else args.models.split(",")
        unknown = sorted(set(names or ()) - set(model_bench.M.MODELS))
        if unknown:
            p.error(f"--models: unknown model(s) {unknown}; choose from {sorted(model_bench.M.MODELS)}")
        gemm = machine_limits(args.device)["gemm_gflops"]
        formats = ("contiguous", "channels_last") + (("bf16-autocast",) if args.autocast else ())
        model_rows = model_bench.run(names, formats=formats, gemm_gflops=gemm, log=sys.stderr)
        layer_rows = model_bench.run_layers(names, formats=formats, log=sys.stderr)
        model_table = model_bench.format_table(model_rows, gemm)
        if not run_ops:
            table = f"Device: {device_name(args.device)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}\n"
        table += "\n\n## Models\n\n" + model_table
        table += "\n\n## Convolution layers of the models\n\n" + model_bench.format_layer_table(layer_rows)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name(args.device), limits=machine_limits(args.device), rows=rows,
                           models=model_rows, model_conv_layers=layer_rows), f, indent=2)
    if args.plot and rows:
        plot_speedups(rows, args.plot, device_name(args.device))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"# dlkernels benchmark: {device_name(args.device)}\n\n")
            f.write("Written by `make bench` (`python -m dlkernels.bench --all`). Forward+backward unless noted; "
                    "median of many runs with fresh buffers.\n\n")
            f.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
