"""Whole-model timings for `python -m dlkernels.bench --models`: a training step (forward, cross-entropy,
backward, SGD-momentum step) and an inference forward of ResNet-18, ResNet-50, MobileNetV2 and a CIFAR
ResNet-20 (dlkernels/models.py), plain torch against dlkernels.convert(model, fuse_bn_relu=True) with
dlkernels' cross-entropy and SGD, in the default (contiguous) and the channels_last memory format; and
each distinct convolution of those models alone (forward and the gradients a training step asks for),
torch's against ours, with the number of times the model runs it.

Both models start from the same weights; torch's and ours run in alternating blocks in one process, so
both see the same phases of a shared host; the figure is the median step. The rate is the step's
convolution and linear FLOPs (forward multiply-adds x 2; a training step counted as 3x the forward)
against the machine's measured float32 GEMM rate.
"""
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
import dlkernels.optim as dopt

from . import models as M


def forward_flops(model, x):
    """Multiply-adds x 2 of the convolutions and linear layers of one forward."""
    total = [0]

    def conv_hook(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0]


def _train_step(model, opt, loss_fn, x, y, autocast=False):
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


def _infer(model, x, autocast=False):
    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(x)
    return run


def _alternate(fn_a, fn_b, rounds=3, block=3, warmup=2):
    """Median seconds of fn_a and fn_b, timed in alternating blocks after warm-up runs."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times = ([], [])
    for _ in range(rounds):
        for fn, out in zip((fn_a, fn_b), times):
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_model(name, memory_format, gemm_gflops, rounds=3, block=3, seed=0):
    build, batch, size, _ = M.MODELS[name]
    torch.manual_seed(seed)
    theirs = build()
    ours = dlkernels.convert(copy.deepcopy(theirs), fuse_bn_relu=True)
    classes = theirs.fc.out_features if hasattr(theirs, "fc") else theirs.classifier[-1].out_features
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))
    autocast = memory_format == "bf16-autocast"  # contiguous, under torch.autocast("cpu", torch.bfloat16)
    if memory_format == "channels_last":
        theirs = theirs.to(memory_format=torch.channels_last)
        ours = ours.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    flops = forward_flops(theirs, x)
    row = dict(model=name, shape=f"{batch}x3x{size}x{size}", format=memory_format)
    theirs.train()
    ours.train()
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    opt_o = dopt.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    t, o = _alternate(_train_step(theirs, opt_t, F.cross_entropy, x, y, autocast),
                      _train_step(ours, opt_o, DF.cross_entropy, x, y, autocast), rounds, block)
    row.update(train_torch_ms=t * 1e3, train_ours_ms=o * 1e3, train_speedup=t / o,
               train_pct_gemm=100 * 3 * flops / o / 1e9 / gemm_gflops,
               train_torch_pct_gemm=100 * 3 * flops / t / 1e9 / gemm_gflops)
    theirs.eval()
    ours.eval()
    t, o = _alternate(_infer(theirs, x, autocast), _infer(ours, x, autocast), rounds, block)
    row.update(infer_torch_ms=t * 1e3, infer_ours_ms=o * 1e3, infer_speedup=t / o,
               infer_pct_gemm=100 * flops / o / 1e9 / gemm_gflops)
    return row


def run(names=None, formats=("contiguous", "channels_last"), gemm_gflops=None, log=None):
    if gemm_gflops is None:
        from .bench import machine_limits
        gemm_gflops = machine_limits("cpu")["gemm_gflops"]
    rows = []
    for name in names or list(M.MODELS):
        for fmt in formats:
            row = bench_model(name, fmt, gemm_gflops)
            rows.append(row)
            if log is not None:
                print(f"  {name:>14s} {fmt:>13s}: train torch {row['train_torch_ms']:7.1f} ms, ours "
                      f"{row['train_ours_ms']:7.1f} ms ({row['train_speedup']:.2f}x); inference torch "
                      f"{row['infer_torch_ms']:7.1f} ms, ours {row['infer_ours_ms']:7.1f} ms ({row['infer_speedup']:.2f}x)",
                      file=log)
    return rows


def run_layers(names=None, formats=("contiguous", "channels_last"), log=None):
    rows = []
    for name in names or list(M.MODELS):
        for fmt in formats:
            rs = bench_conv_layers(name, fmt)
            rows.extend(rs)
            if log is not None:
                t = sum(r["torch_ms"] * r["count"] for r in rs)
                o = sum(r["ours_ms"] * r["count"] for r in rs)
                print(f"  {name:>14s} {fmt:>13s}: {len(rs)} distinct convolutions, torch {t:7.1f} ms, ours {o:7.1f} ms "
                      f"({t / o:.2f}x) a step", file=log)
    return rows


def conv_layers(model, x):
    """The distinct convolutions of one training forward: {(input shape, weight shape, stride, padding,
    dilation, groups, bias, input needs its gradient): times run}."""
    seen = {}

    def hook(m, inp, out):
        key = (tuple(inp[0].shape), tuple(m.weight.shape), tuple(m.stride), tuple(m.padding), tuple(m.dilation),
               m.groups, m.bias is not None, inp[0].requires_grad)
        seen[key] = seen.get(key, 0) + 1
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def bench_conv_layers(name, memory_format, rounds=3, block=3, seed=0):
    """Each distinct convolution of the model alone: forward, then the backward a training step runs
    (weight and bias gradients; the input gradient unless the input is the image), torch's op against
    ours in alternating blocks; "bf16-autocast": contiguous, in bfloat16 (autocast's convolution dtype)."""
    build, batch, size, _ = M.MODELS[name]
    torch.manual_seed(seed)
    model = build()
    x = torch.randn(batch, 3, size, size)
    cl = memory_format == "channels_last"
    dtype = torch.bfloat16 if memory_format == "bf16-autocast" else torch.float32  # autocast's conv dtype
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    rows = []
    for (xs, ws, stride, padding, dilation, groups, bias, input_grad), count in conv_layers(model, x).items():
        fmt = torch.channels_last if cl else torch.contiguous_format
        xi = torch.randn(xs).to(dtype).contiguous(memory_format=fmt)
        w = (torch.randn(ws) / (ws[1] * ws[2] * ws[3]) ** 0.5).to(dtype).contiguous(memory_format=fmt)
        b = torch.randn(ws[0]).to(dtype) if bias else None
        gy = torch.randn_like(F.conv2d(xi, w, b, stride, padding, dilation, groups))
        mask = [input_grad, True, bias]
        args = (list(stride), list(padding), list(dilation))

        def theirs():
            F.conv2d(xi, w, b, stride, padding, dilation, groups)
            torch.ops.aten.convolution_backward(gy, xi, w, [ws[0]] if bias else None, *args, False, [0, 0], groups,
                                                mask)

        def ours():
            DF.conv2d(xi, w, b, stride, padding, dilation, groups)
            torch.ops.dlkernels.conv2d_backward(gy, xi, w, *args, groups, mask)
        t, o = _alternate(theirs, ours, rounds, block)
        desc = (f"{ws[1] * groups}->{ws[0]} {ws[2]}x{ws[3]}" + (f"/s{stride[0]}" if stride[0] > 1 else "") +
                (f" g{groups}" if groups > 1 else "") + f" at {xs[2]}x{xs[3]}")
        rows.append(dict(model=name, format=memory_format, layer=desc, count=count, torch_ms=t * 1e3, ours_ms=o * 1e3,
                         speedup=t / o))
    return rows


def format_layer_table(rows):
    lines = ["Each distinct convolution alone: forward and the training step's gradients (the input's unless it "
             "is the image), torch's op against ours; count: times per model step; total: the model's "
             "convolution time, counts included.", "",
             "| model | memory format | layer | count | torch ms | dlkernels ms | speedup |",
             "|---|---|---|---:|---:|---:|---:|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["format"]), []).append(r)
    for (model, fmt), rs in groups.items():
        for r in rs:
            lines.append(f"| {model} | {fmt} | {r['layer']} | {r['count']} | {r['torch_ms']:.2f} | {r['ours_ms']:.2f} "
                         f"| {r['speedup']:.2f}x |")
        t = sum(r["torch_ms"] * r["count"] for r in rs)
        o = sum(r["ours_ms"] * r["count"] for r in rs)
        lines.append(f"| {model} | {fmt} | **total** | | {t:.1f} | {o:.1f} | {t / o:.2f}x |")
    return "\n".join(lines)


def format_table(rows, gemm_gflops):
    lines = [f"Training step (forward, cross-entropy, backward, SGD-momentum) and inference; converted with "
             f"`fuse_bn_relu=True`; % of the measured GEMM rate ({gemm_gflops:.0f} GFLOP/s) by convolution and "
             "linear FLOPs.", "",
             "| model | input | memory format | train torch ms | train dlkernels ms | speedup | % of GEMM (torch / ours) "
             "| inference torch ms | inference dlkernels ms | speedup |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['shape']} | {r['format']} | {r['train_torch_ms']:.1f} | "
                     f"{r['train_ours_ms']:.1f} | {r['train_speedup']:.2f}x | {r['train_torch_pct_gemm']:.0f}% / "
                     f"{r['train_pct_gemm']:.0f}% | {r['infer_torch_ms']:.1f} | {r['infer_ours_ms']:.1f} | "
                     f"{r['infer_speedup']:.2f}x |")
    return "\n".join(lines)
