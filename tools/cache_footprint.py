"""Resident memory of a varying-shape training-like loop, torch's ops against dlkernels', each in a fresh
process: what the CPU output cache (csrc/ops/alloc.cpp) keeps beyond torch's own footprint.

    python tools/cache_footprint.py [--steps 1000] [--seed 0]

Each step: cross-entropy forward and backward on (8N, C) logits, N uniform in 1..64 and C in
{100, 1000, 5000, 20000}; then a 3x3 convolution, batch norm and 2x2 max pool, forward and backward, on
4x16xHxH, H in {16, 32, 56}. Prints the RSS after import, at a few checkpoints and at the end, and for
dlkernels the cache's statistics.
"""
import argparse
import json
import os
import subprocess
import sys


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run(lib, steps, seed):
    import random

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    if lib == "dlkernels":
        import dlkernels
        import dlkernels.functional as D

        ce, conv, bn, pool = D.cross_entropy, D.conv2d, D.batch_norm, D.max_pool2d
    else:
        ce, conv, bn, pool = F.cross_entropy, F.conv2d, F.batch_norm, F.max_pool2d
    rng = random.Random(seed)
    torch.manual_seed(seed)
    w = torch.randn(16, 16, 3, 3, requires_grad=True)
    gamma = torch.ones(16, requires_grad=True)
    beta = torch.zeros(16, requires_grad=True)
    out = {"lib": lib, "rss_start": rss_mib(), "checkpoints": []}
    for step in range(steps):
        n = 8 * rng.randint(1, 64)
        c = rng.choice([100, 1000, 5000, 20000])
        logits = torch.randn(n, c, requires_grad=True)
        ce(logits, torch.randint(0, c, (n,))).backward()
        h = rng.choice([16, 32, 56])
        x = torch.randn(4, 16, h, h, requires_grad=True)
        y = pool(bn(conv(x, w, padding=1), None, None, gamma, beta, training=True), 2)
        y.sum().backward()
        del logits, x, y
        if (step + 1) % max(1, steps // 5) == 0:
            out["checkpoints"].append((step + 1, rss_mib()))
    out["rss_end"] = rss_mib()
    if lib == "dlkernels":
        stats = getattr(dlkernels, "cpu_cache_stats", None)
        out["cache"] = stats() if stats else {"idle_bytes": dlkernels._C.cpu_cache_idle_bytes()}
        dlkernels.empty_cache()
        out["rss_after_empty_cache"] = rss_mib()
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["torch", "dlkernels"])
    args = ap.parse_args()
    if args.child:
        run(args.child, args.steps, args.seed)
        return
    results = {}
    for lib in ("torch", "dlkernels"):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", lib, "--steps", str(args.steps),
               "--seed", str(args.seed)]
        results[lib] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    for lib, r in results.items():
        cps = ", ".join(f"{s}: {m:.0f}" for s, m in r["checkpoints"])
        print(f"{lib:10s} RSS MiB: start {r['rss_start']:.0f}; after steps {cps}; end {r['rss_end']:.0f}")
    d = results["dlkernels"]
    print(f"dlkernels - torch at the end: {d['rss_end'] - results['torch']['rss_end']:+.0f} MiB; "
          f"after empty_cache(): {d['rss_after_empty_cache']:.0f} MiB")
    print("cache:", d["cache"])


if __name__ == "__main__":
    main()
