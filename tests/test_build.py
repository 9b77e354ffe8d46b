"""The build and runtime plumbing: ISA dispatch, build info, the CPU output cache."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dlkernels
import dlkernels.functional as DF
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
    assert ("CPU-only build" in out) == (not _C.with_cuda)


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
