"""The CUDA emulator itself (tools/cuda_emu), in the emulation build only (make test-cuda-emu): each
planted bug of tools/cuda_emu/probes.cu is reported as a GPU would hang on it or corrupt memory with it,
and the correct twin of each runs clean. Also checks that every launch the suite makes is replayed in the
second thread order (the race check)."""
import os
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
