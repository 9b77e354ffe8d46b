"""python -m dlkernels.demo: train a small CNN on scikit-learn's handwritten digits (8x8 images that ship
with scikit-learn: no download) twice from the same seed, once with plain torch layers and once after
dlkernels.convert, and compare loss curves, test accuracy and time.

    python -m dlkernels.demo [--epochs N] [--device cpu|cuda] [--plot FILE.png] [--ddp 2] [--model resnet]

--ddp 2 runs the same training in 2 processes (torch.distributed: gloo on CPU, NCCL on GPU) with
SyncBatchNorm and DistributedDataParallel. --model resnet trains a small ResNet on synthetic 32x32 data
and reports images/second, torch vs dlkernels.
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

import dlkernels
import dlkernels.optim as dopt


# ------------------------------------------------------------------------------------------ models

def simple_conv_net(classes=10):
    """The textbook's SimpleConvNet, with batch norm: conv-BN-ReLU-pool twice, then affine-ReLU-affine."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, classes))


class BasicBlock(nn.Module):
    """ResNet's basic block: (conv-BN-ReLU-conv-BN) + shortcut, then ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def small_resnet(classes=10, width=16):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        BasicBlock(width, width), BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))


# -------------------------------------------------------------------------------------------- data

def digits(device):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_test = len(x) // 5
    return (x[n_test:].to(device), y[n_test:].to(device)), (x[:n_test].to(device), y[:n_test].to(device))


# ---------------------------------------------------------------------------------------- training

def train(model, loss_fn, opt, train_set, test_set, epochs, batch_size, seed, label, rank=0, world=1,
          show_progress=True):
    """Returns per-epoch (mean loss, test accuracy, seconds) and the per-step losses."""
    from tqdm import tqdm

    x, y = train_set
    n = len(x)
    steps_per_epoch = (n // world) // batch_size
    history, step_losses = [], []
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        shard = perm[rank::world][:steps_per_epoch * batch_size]  # the same order for torch and dlkernels
        t0 = time.perf_counter()
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"{label:>9s} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not show_progress, file=sys.stdout, ncols=90)
        for s in bar:
            idx = shard[s * batch_size:(s + 1) * batch_size].to(x.device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step_losses.append(loss.item())
            total += step_losses[-1]
            bar.set_postfix(loss=f"{step_losses[-1]:.4f}")
        if x.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        acc = accuracy(model, test_set)
        history.append((total / steps_per_epoch, acc, seconds))
        if show_progress:
            print(f"{label:>9s} epoch {epoch + 1:2d}/{epochs}: loss {history[-1][0]:.4f}, test accuracy "
                  f"{100 * acc:.2f}%, {seconds:.2f} s", flush=True)
    return history, step_losses


@torch.no_grad()
def accuracy(model, test_set):
    model.eval()
    x, y = test_set
    return (model(x).argmax(1) == y).float().mean().item()


def make_pair(device, lr, seed, sync_bn=False):
    """The torch model and optimizer and their dlkernels twins, from the same initial weights."""
    torch.manual_seed(seed)
    model = simple_conv_net().to(device)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ours = dlkernels.convert(model, fuse_bn_relu=True)
    if sync_bn:
        ours = dlkernels.nn.SyncBatchNorm.convert_sync_batchnorm(ours)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ours_opt = dopt.from_torch(torch.optim.Adam(ours.parameters(), lr=lr))
    return (model, nn.CrossEntropyLoss(), opt), (ours, dlkernels.nn.CrossEntropyLoss(), ours_opt)


def report(histories, step_losses, same_math=True):
    (th, dh), (ts, ds) = histories, step_losses
    print("\n| epoch | torch loss | dlkernels loss | torch acc | dlkernels acc | torch s | dlkernels s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for e, (a, b) in enumerate(zip(th, dh)):
        print(f"| {e + 1} | {a[0]:.4f} | {b[0]:.4f} | {100 * a[1]:.2f}% | {100 * b[1]:.2f}% | {a[2]:.2f} | {b[2]:.2f} |")
    first = min(len(ts), 20)
    diff = max(abs(a - b) for a, b in zip(ts[:first], ds[:first]))
    if same_math:
        print(f"\nfirst {first} steps: largest loss difference {diff:.2e} (float32 rounding; the curves then drift "
              "apart slowly, as any two summation orders do)")
    else:
        print(f"\nfirst {first} steps: largest loss difference {diff:.2e}: the torch baseline normalizes with each "
              "rank's own batch statistics (torch's SyncBatchNorm runs on GPUs only), dlkernels with the global ones")
    print(f"final test accuracy: torch {100 * th[-1][1]:.2f}%, dlkernels {100 * dh[-1][1]:.2f}%; "
          f"time per epoch: torch {np.mean([h[2] for h in th]):.2f} s, dlkernels {np.mean([h[2] for h in dh]):.2f} s")
    return diff


def plot(path, step_losses, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(step_losses[0], label="torch", linewidth=1.5)
    ax.plot(step_losses[1], label="dlkernels (converted)", linewidth=1, linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def run_digits(args):
    train_set, test_set = digits(args.device)
    print(f"digits: {len(train_set[0])} training and {len(test_set[0])} test images of 8x8, 10 classes; "
          f"device {args.device}; dlkernels CPU ISA {dlkernels.cpu_isa()}")
    (tm, tl, to), (om, ol, oo) = make_pair(args.device, args.lr, args.seed)
    print(dlkernels.convert(tm, fuse_bn_relu=True, report=True)[1])
    histories, steps = [], []
    for label, (m, lf, o) in (("torch", (tm, tl, to)), ("dlkernels", (om, ol, oo))):
        h, s = train(m, lf, o, train_set, test_set, args.epochs, args.batch_size, args.seed, label)
        histories.append(h)
        steps.append(s)
    report(histories, steps)
    if args.plot:
        plot(args.plot, steps, "digits: SimpleConvNet, torch vs dlkernels")
    return histories


# ----------------------------------------------------------------------------------------------- DDP

def _ddp_worker(rank, world, init_file, args, queue):
    import torch.distributed as dist

    device = args.device
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = f"cuda:{rank % torch.cuda.device_count()}"
    # rendezvous through a file: no free-port search that another process could race
    dist.init_process_group(backend, init_method="file://" + init_file, rank=rank, world_size=world)
    try:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
        train_set, test_set = digits(device)
        (tm, tl, _), (om, ol, _) = make_pair(device, args.lr, args.seed, sync_bn=True)
        results = []
        for label, m, lf, opt_cls in (("torch", tm, tl, torch.optim.Adam), ("dlkernels", om, ol, dopt.Adam)):
            if label == "torch" and device == "cpu":
                # torch's SyncBatchNorm runs on GPUs only: on CPU the torch baseline uses plain BatchNorm2d
                # per rank (statistics over the local half batch)
                m = _plain_bn(m)
            ddp = nn.parallel.DistributedDataParallel(m)
            opt = opt_cls(ddp.parameters(), lr=args.lr)
            h, s = train(ddp, lf, opt, train_set, test_set, args.epochs, args.batch_size // world, args.seed,
                         f"{label}[{rank}]", rank, world, show_progress=rank == 0)
            results.append((h, s))
        if rank == 0:
            queue.put(results)
    finally:
        dist.destroy_process_group()


def _plain_bn(model):
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats).to(child.weight.device)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            _plain_bn(child)
    return model


def run_ddp(args):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    print(f"DistributedDataParallel over {args.ddp} processes ({'nccl' if args.device == 'cuda' else 'gloo'}), "
          f"dlkernels SyncBatchNorm, global batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as path:
        mp.spawn(_ddp_worker, args=(args.ddp, os.path.join(path, "rendezvous"), args, queue), nprocs=args.ddp,
                 join=True)
    results = queue.get()
    report([r[0] for r in results], [r[1] for r in results], same_math=args.device == "cuda")
    if args.plot:
        plot(args.plot, [r[1] for r in results], f"digits, DDP x{args.ddp}: torch vs dlkernels")
    return results


# -------------------------------------------------------------------------------------------- ResNet

def run_resnet(args):
    gen = torch.Generator().manual_seed(args.seed)
    n = args.resnet_images
    x = torch.randn(n, 3, 32, 32, generator=gen).to(args.device)
    y = torch.randint(0, 10, (n,), generator=gen).to(args.device)
    torch.manual_seed(args.seed)
    model = small_resnet().to(args.device)
    ours, table = dlkernels.convert(model, fuse_bn_relu=True, report=True)
    print(table)
    results = {}
    for label, m, lf, opt in (("torch", model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.01, 0.9)),
                              ("dlkernels", ours, dlkernels.nn.CrossEntropyLoss(),
                               dopt.SGD(ours.parameters(), 0.01, 0.9))):
        m.train()
        losses = []
        for step in range(args.resnet_steps + 1):
            if step == 1:
                t0 = time.perf_counter()  # the first step warms up (allocations, caches)
            idx = torch.arange(step * args.batch_size, (step + 1) * args.batch_size) % n
            opt.zero_grad(set_to_none=True)
            loss = lf(m(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if x.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        results[label] = (args.resnet_steps * args.batch_size / seconds, losses)
        print(f"{label:>9s}: {results[label][0]:8.1f} images/s, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    t, d = results["torch"], results["dlkernels"]
    print(f"\nResNet preset ({args.device}, batch {args.batch_size}, 32x32): torch {t[0]:.1f} images/s, dlkernels "
          f"{d[0]:.1f} images/s ({d[0] / t[0]:.2f}x); final loss torch {t[1][-1]:.4f}, dlkernels {d[1][-1]:.4f}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--plot", default=None, help="draw both loss curves into this PNG file")
    p.add_argument("--ddp", type=int, default=0, help="number of processes for DistributedDataParallel")
    p.add_argument("--model", default="simple", choices=["simple", "resnet"])
    p.add_argument("--resnet-steps", type=int, default=10)
    p.add_argument("--resnet-images", type=int, default=1024)
    args = p.parse_args(argv)
    if args.device == "cuda" and not dlkernels.cuda_available():
        p.error("--device cuda: no GPU, or this dlkernels build is CPU-only")
    if args.model == "resnet":
        if args.batch_size == 64 and "--batch-size" not in (argv or sys.argv):
            args.batch_size = 32
        return run_resnet(args)
    if args.ddp > 1:
        return run_ddp(args)
    return run_digits(args)


if __name__ == "__main__":
    main()
