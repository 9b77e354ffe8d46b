"""The CUDA emulator itself (tools/cuda_emu), in the emulation build only (make test-cuda-emu): each
planted bug of tools/cuda_emu/probes.cu is reported as a GPU would hang on it or corrupt memory with it,
and the correct twin of each runs clean. Also checks that every launch the suite makes is replayed in the
second thread order (the race check)."""
import os
import re
import subprocess
import sys

import pytest
import torch

import dlkernels

from conftest import EMU

pytestmark = pytest.mark.skipif(not EMU, reason="the CUDA emulation build only (make test-cuda-emu)")


def probe(name):
    out = torch.zeros(128)
    return dlkernels._C.emu_probe(name, out.data_ptr(), out.numel()), out


@pytest.mark.parametrize("name", ["mirror_sync", "shuffle_whole_warp"])
def test_correct_kernels_run_clean(name):
    err, out = probe(name)
    assert err == ""
    if name == "mirror_sync":
        assert torch.equal(out[:64], torch.arange(63, -1, -1, dtype=torch.float32))
    else:
        lanes = torch.arange(64, dtype=torch.float32)
        assert torch.equal(out[:64], lanes + (torch.arange(64) ^ 1).float())


@pytest.mark.parametrize("name, expected", [
    ("mirror_no_sync", "a race"),                 # a missing __syncthreads
    ("cross_block", "a race"),                    # blocks reading other blocks' results
    ("divergent_barrier", "barrier divergence"),  # __syncthreads reached by half the block
    ("early_return", "returned"),                 # a thread gone while the others wait at a barrier
    ("shuffle_half_warp", "reached by part of its mask"),
    ("block_too_large", "at most 1024"),
    ("grid_y_too_large", "at most 65535"),
    ("empty_grid", "no blocks"),
])
def test_planted_bugs_are_reported(name, expected):
    before = dlkernels._C.emu_stats()["failed_launches"]
    err, _ = probe(name)
    assert expected in err, err
    assert "kernel " in err and "probes.cu:" in err  # names the kernel and where it was launched
    assert dlkernels._C.emu_stats()["failed_launches"] == before + 1


def test_shuffle_offset_uses_its_low_five_bits():
    err, out = probe("shuffle_offset_33")
    lane = torch.arange(64) % 32
    expected = torch.where(lane < 31, torch.arange(64) + 1, torch.arange(64)).float()
    assert err == "" and torch.equal(out[:64], expected)


def test_unwritten_shared_memory_reads_show_as_nan():
    err, out = probe("unwritten_shared")
    assert err == ""
    assert torch.equal(out[:32], torch.ones(32))
    assert torch.isnan(out[32:64]).all()  # 0xFF bytes: what no thread wrote


def test_barrier_report_names_source_lines():
    err, _ = probe("divergent_barrier")
    assert "__syncthreads() at tools/cuda_emu/probes.cu:" in err and "returned" in err


@pytest.mark.skipif(not getattr(dlkernels._C, "emu_sanitized", False), reason="needs the ASan build")
def test_out_of_bounds_write_fails_under_asan():
    code = "import torch, dlkernels; x = torch.zeros(64); dlkernels._C.emu_probe('off_by_one', x.data_ptr(), 64)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr, r.stderr[-2000:]


def test_launches_are_replayed_in_two_orders():
    before = dlkernels._C.emu_stats()
    x = torch.randn(32, 10, requires_grad=True)
    dlkernels.functional.cross_entropy(x, torch.randint(0, 10, (32,))).backward()
    after = dlkernels._C.emu_stats()
    launches = after["launches"] - before["launches"]
    assert launches >= 3  # forward, reduction, backward
    assert after["replayed_launches"] - before["replayed_launches"] == launches
    assert after["failed_launches"] == before["failed_launches"]


def _kernels_in_sources():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cuda")
    names = set()
    for f in sorted(os.listdir(root)):
        if f.endswith(".cu"):
            with open(os.path.join(root, f)) as src:
                names |= set(re.findall(r"__global__\s+void\s+(\w+)", src.read()))
    return names


def _launched():
    return {re.sub(r"<.*", "", k): v for k, v in dlkernels._C.emu_launches_by_kernel().items()}


def test_every_kernel_runs():
    """One workload through every CUDA kernel (each launch path's correctness is the parity suite's)."""
    before = _launched()
    DF = dlkernels.functional
    for shape, c in (((8, 10), 10), ((4, 3000), 3000), ((2, 7, 5), 7)):  # rows, block per row, S > 1
        x = torch.randn(*shape, requires_grad=True)
        q = torch.softmax(torch.randn(*shape), 1).requires_grad_()
        DF.cross_entropy(x, torch.randint(0, c, (shape[0],) + shape[2:]), weight=torch.rand(c),
                         label_smoothing=0.1).backward()
        DF.cross_entropy(x, q).backward()  # probability target: its gradient too
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    for y in (DF.max_pool2d(x, 3, 2, 1, ceil_mode=True), DF.avg_pool2d(x, 3, 2, 1), DF.adaptive_avg_pool2d(x, 3)):
        y.sum().backward()
    w, b = torch.randn(6, 2, 3, 3, requires_grad=True), torch.randn(6, requires_grad=True)
    DF.conv2d(x, w, b, padding=1, groups=2).square().sum().backward()
    DF.col2im(DF.im2col(x, 3), (9, 8), 3).sum()
    xb = torch.randn(4, 6, 5, 5, requires_grad=True)
    r = torch.randn(4, 6, 5, 5, requires_grad=True)
    DF.batch_norm_add_relu(xb, r, None, None, None, None, True, 0.1, 1e-5).square().sum().backward()
    xc = torch.randn(2, 40, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    DF.batch_norm(xc, None, None, None, None, True).square().sum().backward()  # the column kernels
    p = [torch.randn(5, requires_grad=True)]
    p[0].grad = torch.randn(5)
    for opt in (dlkernels.optim.Adam(p), dlkernels.optim.SGD(p, lr=0.1, momentum=0.9), dlkernels.optim.Adagrad(p),
                dlkernels.optim.RMSprop(p)):
        opt.step()
    after = _launched()
    missing = {k for k in _kernels_in_sources() if after.get(k, 0) == before.get(k, 0)}
    assert not missing, f"kernels not launched: {sorted(missing)}"


@pytest.mark.skipif(getattr(dlkernels._C, "emu_sanitized", False),
                    reason="11M elements take minutes under ASan; make test-cuda-emu runs it")
@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
def test_optimizer_tensor_split_across_launches_and_many_tensors(name):
    """One tensor over a launch's 160 chunks of 65536 elements, and more tensors than a table's 36."""
    shapes = [(11_000_000,)] + [(3 + i,) for i in range(40)]
    # (no weight decay: with 11M elements some g + wd * p cancels to ~1e-7, where FMA or not in torch's
    # add moves the float32 update by 1e-4; test_optim covers weight decay on smaller tensors)
    kw = dict(Adam=dict(lr=0.01, amsgrad=True), SGD=dict(lr=0.1, momentum=0.9, nesterov=True),
              RMSprop=dict(lr=0.01, momentum=0.5, centered=True))[name]
    ref = [torch.randn(s, requires_grad=True) for s in shapes]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    opt_t = getattr(torch.optim, name)(ref, foreach=False, **kw)
    opt_o = getattr(dlkernels.optim, name)(ours, **kw)
    before = _launched().get("multi_tensor_kernel", 0)
    for _ in range(2):
        for a, b in zip(ref, ours):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt_t.step()
        opt_o.step()
    assert _launched()["multi_tensor_kernel"] - before >= 2 * 3  # the big tensor's two launches + the rest
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-6)
