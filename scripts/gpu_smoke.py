"""Every CUDA kernel of dlkernels launched at least once, on small inputs, for compute-sanitizer.

Forward and backward of each op in float32 and in one 16-bit type, channels_last where an op has a
path for it, and one step of each optimizer (with and without its options that pick another kernel).
Each result is compared with torch's, so a run that the sanitizer passes is also checked for values.
Run by scripts/gpu_check.sh; alone: python scripts/gpu_smoke.py.
"""
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
import dlkernels.optim as DO

assert dlkernels.cuda_available(), "needs a GPU and a CUDA build of dlkernels"
dev = "cuda"
torch.manual_seed(0)
failures = []


def check(name, ours_fn, torch_fn, inputs, tol):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())

    def run(fn):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = fn(*xs)
        out = out[0] if isinstance(out, tuple) else out
        gen = torch.Generator(device="cpu").manual_seed(seed)  # the same incoming gradient for both
        g = torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)
        grads = torch.autograd.grad(out, [x for x in xs if x.requires_grad], g)
        return [out] + list(grads)

    try:
        a, b = run(ours_fn), run(torch_fn)
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(x.float(), y.float(), rtol=tol, atol=tol)
        print(f"ok   {name}")
    except Exception as e:  # report all, fail at the end
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {str(e)[:400]}")


for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 6e-2)):
    d = str(dtype).split(".")[1]
    x = torch.randn(3, 5, 11, 9, device=dev, dtype=dtype)
    w = (torch.randn(7, 5, 3, 3, device=dev) / 6).to(dtype)
    b = torch.randn(7, device=dev, dtype=dtype)
    check(f"conv2d {d}", lambda x, w, b: DF.conv2d(x, w, b, padding=1, stride=(1, 2)),
          lambda x, w, b: F.conv2d(x, w, b, padding=1, stride=(1, 2)), [x, w, b], tol)
    wg = (torch.randn(10, 1, 3, 3, device=dev) / 3).to(dtype)
    xg = torch.randn(2, 10, 8, 8, device=dev, dtype=dtype)
    check(f"conv2d depthwise {d}", lambda x, w: DF.conv2d(x, w, groups=10, padding=1),
          lambda x, w: F.conv2d(x, w, groups=10, padding=1), [xg, wg], tol)
    check(f"im2col {d}", lambda x: DF.im2col(x, (3, 2), padding=1, stride=2),
          lambda x: F.unfold(x, (3, 2), padding=1, stride=2), [x], tol)
    cols = torch.randn(3, 5 * 6, 6 * 5, device=dev, dtype=dtype)  # 6 x 5 windows of 3x2 over 11x9, pad 1, stride 2
    check(f"col2im {d}", lambda c: DF.col2im(c, (11, 9), (3, 2), padding=1, stride=2),
          lambda c: F.fold(c, (11, 9), (3, 2), padding=1, stride=2), [cols], tol)
    for cl in (False, True):
        xp = torch.randn(2, 6, 13, 10, device=dev, dtype=dtype)
        if cl:
            xp = xp.contiguous(memory_format=torch.channels_last)
        tag = f"{d}{' channels_last' if cl else ''}"
        check(f"max_pool2d {tag}", lambda x: DF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
              lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), [xp], tol)
        check(f"avg_pool2d {tag}", lambda x: DF.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
              lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [xp], tol)
        check(f"adaptive_avg_pool2d {tag}", lambda x: DF.adaptive_avg_pool2d(x, (3, 4)),
              lambda x: F.adaptive_avg_pool2d(x, (3, 4)), [xp], tol)
        check(f"global avg pool {tag}", lambda x: DF.adaptive_avg_pool2d(x, 1),
              lambda x: F.adaptive_avg_pool2d(x, 1), [xp], tol)
    xb = torch.randn(4, 6, 9, 7, device=dev, dtype=dtype) * 2 + 1
    r = torch.randn(4, 6, 9, 7, device=dev, dtype=dtype)
    wb = torch.rand(6, device=dev) + 0.5
    bb = torch.randn(6, device=dev)
    for training in (True, False):
        t = "train" if training else "eval"

        def stats():
            return torch.randn(6, device=dev) * 0.1, torch.rand(6, device=dev) + 0.5
        rm, rv = stats()
        check(f"batch_norm {t} {d}",
              lambda x, w, b: DF.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training),
              lambda x, w, b: F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training), [xb, wb, bb], tol)
        check(f"batch_norm_relu {t} {d}",
              lambda x, w, b: DF.batch_norm_relu(x, rm.clone(), rv.clone(), w, b, training=training),
              lambda x, w, b: F.relu(F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training)),
              [xb, wb, bb], tol)
        check(f"batch_norm_add_relu {t} {d}",
              lambda x, r, w, b: DF.batch_norm_add_relu(x, r, rm.clone(), rv.clone(), w, b, training=training),
              lambda x, r, w, b: F.relu(F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training) + r),
              [xb, r, wb, bb], tol)
    for shape in ((37, 1000), (5, 7, 4, 3)):
        logits = torch.randn(*shape, device=dev, dtype=dtype)
        tgt = torch.randint(0, shape[1], (shape[0],) + shape[2:], device=dev)
        tgt.view(-1)[::5] = -100
        cw = torch.rand(shape[1], device=dev, dtype=dtype) + 0.5
        for kw in (dict(), dict(weight=cw, label_smoothing=0.1), dict(reduction="none")):
            name = f"cross_entropy {shape} {sorted(kw)} {d}"
            check(name, lambda x: DF.cross_entropy(x, tgt, **kw), lambda x: F.cross_entropy(x, tgt, **kw),
                  [logits], tol if dtype == torch.float32 else 0.1)

# optimizers: one step each against torch's own, on parameters of an odd size (tails of vector loops)
opt_cases = [
    ("Adam", dict(lr=1e-2, weight_decay=0.1)), ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1)), ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True)), ("RMSprop", dict(lr=1e-2)),
]
for name, kw in opt_cases:
    for pdtype in (torch.float32, torch.float16):
        try:
            ps = [torch.randn(s, device=dev, dtype=pdtype) for s in ((1001,), (33, 7), (5,))]
            ours = [p.clone().requires_grad_() for p in ps]
            ref = [p.clone().requires_grad_() for p in ps]
            o = getattr(DO, name)(ours, **kw)
            t = getattr(torch.optim, name)(ref, **kw)
            for _ in range(3):
                for a, b in zip(ours, ref):
                    g = torch.randn_like(a)
                    a.grad, b.grad = g.clone(), g.clone()
                o.step()
                t.step()
            for a, b in zip(ours, ref):
                torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-3)
            print(f"ok   optim {name} {kw} {pdtype}")
        except Exception as e:
            failures.append(f"optim {name} {kw} {pdtype}")
            print(f"FAIL optim {name} {kw} {pdtype}: {type(e).__name__}: {str(e)[:400]}")

torch.cuda.synchronize()
print(f"{len(failures)} failures" + (": " + "; ".join(failures) if failures else ""))
raise SystemExit(1 if failures else 0)
