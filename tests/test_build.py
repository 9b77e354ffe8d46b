"""The build and runtime plumbing: ISA dispatch, build info, the CPU output cache."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
from conftest import cpu_kernels_only
from dlkernels import _C


def test_isa_switching_round_trip():
    supported = dlkernels.supported_cpu_isas()
    assert supported[0] == "scalar"
    before = dlkernels.cpu_isa()
    for isa in supported:
        with dlkernels.use_cpu_isa(isa):
            assert dlkernels.cpu_isa() == isa
    assert dlkernels.cpu_isa() == before


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_env_var_forces_isa(isa):
    if isa not in dlkernels.supported_cpu_isas():
        pytest.skip(f"{isa} not supported here")
    out = subprocess.run([sys.executable, "-c", "import dlkernels; print(dlkernels.cpu_isa())"],
                         env=dict(os.environ, DLKERNELS_CPU_ISA=isa), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == isa


def test_env_var_rejects_unknown_isa():
    out = subprocess.run([sys.executable, "-c", "import dlkernels"], env=dict(os.environ, DLKERNELS_CPU_ISA="sse9"),
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "DLKERNELS_CPU_ISA must be one of scalar, avx2, avx512, got 'sse9'" in out.stderr


def test_info_reports_build():
    out = subprocess.run([sys.executable, "-m", "dlkernels.info"], capture_output=True, text=True, check=True).stdout
    assert f"CPU ISA in use               {dlkernels.cpu_isa()}" in out
    assert "CPU ISAs compiled            scalar, avx2, avx512" in out
    assert torch.__version__ in out
    emulated = bool(getattr(_C, "cuda_emulated", False))
    assert ("CPU-only build" in out) == (not _C.with_cuda and not emulated)
    assert ("CUDA emulation build" in out) == emulated


@cpu_kernels_only
def test_large_outputs_do_not_alias():
    """Gradients above the cache threshold come from the block cache: live ones must never share memory,
    and a recycled block must be fully rewritten."""
    x = torch.randn(700, 1001)  # 2.8 MB gradients: cached blocks
    t = torch.randint(0, 1001, (700,))
    grads = []
    for i in range(4):
        xx = (x + i).requires_grad_(True)
        DF.cross_entropy(xx, t, reduction="sum").backward()
        grads.append(xx.grad)
    ptrs = {g.data_ptr() for g in grads}
    assert len(ptrs) == 4
    for i, g in enumerate(grads):
        xr = (x + i).requires_grad_(True)
        F.cross_entropy(xr, t, reduction="sum").backward()
        torch.testing.assert_close(g, xr.grad)
    del grads, g
    idle = _C.cpu_cache_idle_bytes()
    assert idle >= 4 * 700 * 1001 * 4
    # a recycled block: poison it through a live gradient, free it, and check the next result
    xx = x.clone().requires_grad_(True)
    DF.cross_entropy(xx, t).backward()
    xx.grad.fill_(float("nan"))
    xx.grad = None
    DF.cross_entropy(xx, t).backward()
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(xr, t).backward()
    torch.testing.assert_close(xx.grad, xr.grad)
    _C.empty_cache()
    assert _C.cpu_cache_idle_bytes() == 0


def test_cache_limit_is_respected():
    old = _C.cpu_cache_limit()
    try:
        _C.set_cpu_cache_limit(0)
        xx = torch.randn(600, 1000).requires_grad_(True)
        DF.cross_entropy(xx, torch.randint(0, 1000, (600,))).backward()
        xx.grad = None
        assert _C.cpu_cache_idle_bytes() == 0
    finally:
        _C.set_cpu_cache_limit(old)


def _cache_stats():
    s = dlkernels.cpu_cache_stats()
    assert s["held_bytes"] == s["in_use_bytes"] + s["idle_bytes"]
    return s


@cpu_kernels_only
def test_cache_holds_about_the_working_set_of_varying_shapes():
    """A loop of ever-changing cross-entropy shapes: the cache keeps at most twice the largest number of
    bytes the loop had in use at once (the unbounded cache kept every size it was ever asked for: 5-14x
    that here), and sizes no longer asked for go back to the OS once the window passes."""
    dlkernels.empty_cache()
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    most_in_use = 0
    for _ in range(150):
        n = 8 * int(torch.randint(1, 33, (), generator=gen))
        c = [1000, 5000, 20000][int(torch.randint(0, 3, (), generator=gen))]
        x = torch.randn(n, c, generator=gen).requires_grad_(True)
        DF.cross_entropy(x, torch.randint(0, c, (n,), generator=gen)).backward()
        most_in_use = max(most_in_use, _cache_stats()["in_use_bytes"])
        del x
    s = _cache_stats()
    assert s["in_use_bytes"] == 0
    assert s["misses"] > 0 and s["hits"] > 0
    assert 0 < s["held_bytes"] <= 2 * most_in_use, (s, most_in_use)
    # a size not asked for within the window goes back to the OS
    old_window = dlkernels.cpu_cache_stats()["window"]
    try:
        dlkernels.set_cpu_cache_window(4)
        dlkernels.empty_cache()
        x = torch.randn(1000, 1000).requires_grad_(True)  # a 4 MB gradient block
        DF.cross_entropy(x, torch.randint(0, 1000, (1000,))).backward()
        idle_before = _cache_stats()["idle_bytes"]
        x.grad = None
        assert _cache_stats()["idle_bytes"] >= idle_before + 4_000_000
        y = torch.randn(4000, 1000).requires_grad_(True)
        for _ in range(5):  # 16 MB gradients: the idle 4 MB block is not a fit for them
            DF.cross_entropy(y, torch.randint(0, 1000, (4000,))).backward()
            y.grad = None
        s = _cache_stats()
        block = -(-4000 * 1000 * 4 // 2**21) * 2**21  # whole 2 MiB pages
        assert s["idle_bytes"] == block, s  # only the block the loop reuses stays
        dlkernels.set_cpu_cache_window(0)
        assert _cache_stats()["idle_bytes"] == 0
    finally:
        dlkernels.set_cpu_cache_window(old_window)
    dlkernels.empty_cache()
    assert _cache_stats()["idle_bytes"] == 0


@cpu_kernels_only
def test_cache_hits_on_every_allocation_of_a_steady_training_loop():
    """After a warm-up step, a training loop of fixed shapes maps no new block: every large output
    (activations, gradients, the loss gradient) reuses one the previous step freed."""
    torch.manual_seed(int(torch.randint(0, 2**31, ()).item()))
    model = dlkernels.convert(torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)))
    opt = dlkernels.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    big = torch.randn(4096, 1000).requires_grad_(True)
    big_t = torch.randint(0, 1000, (4096,))

    def step():
        opt.zero_grad()
        DF.cross_entropy(model(x), y).backward()
        opt.step()
        DF.cross_entropy(big, big_t).backward()
        big.grad = None

    for _ in range(2):
        step()
    before = _cache_stats()
    for _ in range(4):
        step()
    after = _cache_stats()
    assert after["misses"] == before["misses"], (before, after)
    assert after["hits"] - before["hits"] >= 4 * 3, (before, after)
    assert after["released"] == before["released"], (before, after)


@cpu_kernels_only
def test_cache_keeps_its_blocks_when_a_block_above_the_limit_is_freed():
    old = dlkernels.cpu_cache_stats()["limit_bytes"]
    dlkernels.empty_cache()
    try:
        dlkernels.set_cpu_cache_limit(12 * 2**20)
        small = torch.randn(1000, 1000).requires_grad_(True)  # 4 MB gradients
        DF.cross_entropy(small, torch.randint(0, 1000, (1000,))).backward()
        small.grad = None
        idle = _cache_stats()["idle_bytes"]
        assert idle >= 4_000_000
        big = torch.randn(4000, 1000).requires_grad_(True)  # a 16 MB gradient: above the limit
        DF.cross_entropy(big, torch.randint(0, 1000, (4000,))).backward()
        big.grad = None
        assert _cache_stats()["idle_bytes"] == idle  # the big block went, the small one stayed
    finally:
        dlkernels.set_cpu_cache_limit(old)


def test_cache_settings_reject_bad_values():
    for bad in (-1, 1.5, "8", True):
        with pytest.raises(ValueError, match="allocations must be an int >= 0"):
            dlkernels.set_cpu_cache_window(bad)
        with pytest.raises(ValueError, match="nbytes must be an int >= 0"):
            dlkernels.set_cpu_cache_limit(bad)
    out = subprocess.run([sys.executable, "-c", "import torch, dlkernels, dlkernels.functional as DF;"
                          "x = torch.randn(1000, 1000, requires_grad=True);"
                          "DF.cross_entropy(x, torch.zeros(1000, dtype=torch.long)).backward();"
                          "print(dlkernels.cpu_cache_stats()['window'])"],
                         env={**os.environ, "DLKERNELS_CPU_CACHE_WINDOW": "lots"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1024"
    assert "DLKERNELS_CPU_CACHE_WINDOW must be a non-negative integer, got 'lots'" in out.stderr


def test_public_fallbacks_of_private_torch_apis(monkeypatch):
    """Where torch lacks the private APIs of dlkernels/autograd.py's fast paths, the public ones run:
    the same forward and backward results, through every family's Function."""
    import dlkernels.autograd as A

    assert A.FAST_APPLY and A.FAST_BELOW_AUTOGRAD  # this torch has them: the rest of the suite runs them
    x = torch.randn(3, 4, 9, 9, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    t = torch.randint(0, 6, (3,))

    def run():
        y = DF.conv2d(x, w, padding=1)
        y = DF.batch_norm_relu(y, None, None, training=True)
        y = DF.max_pool2d(y, 2)
        y = DF.adaptive_avg_pool2d(y, 1).flatten(1)
        loss = DF.cross_entropy(y, t)
        return [loss.detach()] + [g.detach() for g in torch.autograd.grad(loss, (x, w))]

    fast = run()
    monkeypatch.setattr(A, "FAST_APPLY", False)
    monkeypatch.setattr(A, "FAST_BELOW_AUTOGRAD", False)
    monkeypatch.setattr(A, "_unwrap_dead_wrappers", None)  # a fallback that still used them would raise
    monkeypatch.setattr(A, "_below_autograd_guard", None)
    for a, b in zip(run(), fast):
        assert torch.equal(a, b)
