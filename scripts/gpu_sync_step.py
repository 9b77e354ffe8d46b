"""A converted ResNet's training step on CUDA with host synchronisation forbidden, then step timings.

torch.cuda.set_sync_debug_mode("error") makes any synchronising call inside the step (a .item(), a
copy to the host, a nonzero) raise. The first step runs outside it (optimizer state, handles, lazy
initialisation), the next steps inside it. Then torch's model and the converted one are timed in one
process, alternating: ResNet-50 (torchvision's, if it imports) at batch 64, 224x224, SGD-momentum, in
float32 and under torch.autocast(bfloat16).
"""
import sys
import time
import traceback

import torch

import dlkernels
import dlkernels.optim as DO

dev = "cuda"
try:
    import torchvision
    make = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
except Exception as e:  # noqa: BLE001 - report and stop: the step needs the architecture
    print("torchvision does not import:", e)
    sys.exit(2)


def step_fn(model, opt, loss_fn, x, y, amp):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


torch.manual_seed(0)
base = make["resnet18"]().to(dev)
ours = dlkernels.convert(base, fuse_bn_relu=True)
opt = DO.SGD(ours.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
loss_fn = dlkernels.nn.CrossEntropyLoss()
x = torch.randn(16, 3, 112, 112, device=dev)
y = torch.randint(0, 1000, (16,), device=dev)
ok = True
for amp in (False, True):
    step_fn(ours, opt, loss_fn, x, y, amp)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            step_fn(ours, opt, loss_fn, x, y, amp)
        print(f"sync-free training step of a converted resnet18 (amp={amp}): ok")
    except Exception:  # noqa: BLE001 - report where the step synchronised, then go on
        ok = False
        print(f"host synchronisation in the converted resnet18 step (amp={amp}):")
        traceback.print_exc(file=sys.stdout)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()

# timings: torch vs converted, alternating, CUDA events, median of blocks
name = "resnet50"
torch.manual_seed(0)
tm = make[name]().to(dev)
om = dlkernels.convert(tm, fuse_bn_relu=True)
topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
oopt = DO.SGD(om.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
tl, ol = torch.nn.CrossEntropyLoss(), dlkernels.nn.CrossEntropyLoss()
x = torch.randn(64, 3, 224, 224, device=dev)
y = torch.randint(0, 1000, (64,), device=dev)
for amp in (False, True):
    res = {"torch": [], "dlkernels": []}
    runs = {"torch": (tm, topt, tl), "dlkernels": (om, oopt, ol)}
    for k, (m, o, lf) in runs.items():
        for _ in range(3):
            step_fn(m, o, lf, x, y, amp)
    torch.cuda.synchronize()
    t_end = time.time() + 20
    while time.time() < t_end and len(res["torch"]) < 8:
        for k, (m, o, lf) in runs.items():
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(5):
                step_fn(m, o, lf, x, y, amp)
            e.record()
            e.synchronize()
            res[k].append(s.elapsed_time(e) / 5)
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    print(f"{name} batch 64 224x224 training step ({'autocast bf16' if amp else 'float32'}): torch "
          f"{med['torch']:.2f} ms, converted {med['dlkernels']:.2f} ms, torch/ours {med['torch'] / med['dlkernels']:.2f}x")
sys.exit(0 if ok else 1)
