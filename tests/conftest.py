"""Shared test harness: device x ISA parametrization, the tolerance table, and the parity helpers."""
import os
import random
import zlib

import numpy as np
import pytest
import torch

import dlkernels

CUDA = dlkernels.cuda_available()
# The CUDA emulation build (make test-cuda-emu, tools/cuda_emu): the "cpu" device means the CUDA kernels,
# emulated, and takes every dtype the CUDA paths take; tests of the CPU kernels themselves skip.
EMU = bool(getattr(dlkernels._C, "cuda_emulated", False))
cpu_kernels_only = pytest.mark.skipif(EMU, reason="tests the CPU kernels; this build runs the emulated CUDA kernels")
# Where the CUDA kernels run: a GPU, or in the emulation build the CPU device; None where neither.
KDEV = "cuda" if CUDA else ("cpu" if EMU else None)
needs_cuda_kernels = pytest.mark.skipif(KDEV is None, reason="needs a GPU and a CUDA build, or the CUDA emulation build")


def cuda_semantics(device):
    """Whether tensors on device run the CUDA kernels (and so follow their documented behaviour)."""
    return device == "cuda" or EMU

# torch's CUDA convolutions default to TF32 (cudnn.allow_tf32), which rounds float32 operands to 10-bit
# mantissas: an error near 1e-3 that would make torch, not us, miss the float32 tolerance. References
# are computed in full float32 (and our at::mm-based CUDA conv honours the same flags a user sets).
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

# (device, cpu isa) pairs: every CPU path this machine runs, plus CUDA when there is a GPU.
DEVICE_ISAS = ([("cpu", None)] if EMU else [("cpu", isa) for isa in dlkernels.supported_cpu_isas()]) + (
    [("cuda", None)] if CUDA else [])

# Tolerances against a float64 reference and against torch at the same precision.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=1e-2, atol=1e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=1e-2),
}


def dtypes_for(device):
    if device == "cuda" or EMU:
        return [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    return [torch.float32, torch.float64]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="run the long property tests too")


# Every test starts from a seed derived from this run's seed and its own name, so that a failure on
# unlucky random inputs can be repeated: the seed is printed in the header and with each failure, and
# DLKERNELS_TEST_SEED=<seed> runs the same inputs again. Each run draws a new seed (so the suite keeps
# exploring inputs) unless the variable is set. Tests that seed themselves override it.
RUN_SEED = int(os.environ.get("DLKERNELS_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"dlkernels test seed: DLKERNELS_TEST_SEED={RUN_SEED}"


@pytest.fixture(autouse=True)
def _seed_each_test(request):
    seed = (RUN_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    yield


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        item.add_report_section("call", "seed", f"DLKERNELS_TEST_SEED={RUN_SEED} repeats this test's inputs")


def pytest_configure(config):
    # test_properties.py reads this when it is imported (after configuration): --slow runs 10x the examples
    if config.getoption("--slow"):
        os.environ["DLKERNELS_SLOW"] = "1"


@pytest.fixture(params=DEVICE_ISAS, ids=lambda p: p[0] if p[1] is None else f"{p[0]}-{p[1]}")
def device(request):
    """The device to test on; for CPU, with one ISA path forced for the whole test."""
    dev, isa = request.param
    if isa is None:
        yield dev
        return
    with dlkernels.use_cpu_isa(isa):
        yield dev


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


def assert_close(actual, expected, dtype=None, msg=""):
    """Compare with the shared tolerance of dtype (default: actual's dtype)."""
    tol = TOL[dtype or actual.dtype]
    torch.testing.assert_close(actual.to(expected.dtype) if actual.dtype != expected.dtype else actual,
                               expected, rtol=tol["rtol"], atol=tol["atol"], equal_nan=True, msg=msg or None)


def assert_lowp_close(actual, torch_lowp, reference64, msg=""):
    """float16/bfloat16 (and float32 results of long reductions): our error against the float64
    reference may be at most 2x torch's own (plus a small floor relative to the largest value), as
    DESIGN.md's testing notes require."""
    ours = (actual.double() - reference64).abs().max().item()
    theirs = (torch_lowp.double() - reference64).abs().max().item()
    scale = reference64.abs().max().item() + 1e-30
    floor = 1e-6 if actual.dtype == torch.float32 else 1e-3
    assert ours <= 2 * theirs + floor * scale, f"{msg}: error {ours} vs torch's {theirs}"


def check_fwd_bwd(ours_fn, torch_fn, inputs, grad_inputs=(0,), dtype=None, grad_out_seed=0, reference64=True,
                  error_vs_torch=False):
    """Run ours and torch's function on clones of inputs; compare the output and the gradients of the
    positions in grad_inputs with the same random incoming gradient. Also compares against torch in
    float64 (when the inputs are float32) so that both are measured against a higher-precision truth.
    reference64=False skips that (for functions holding float32 state, such as modules).
    error_vs_torch=True judges float32 results as float16 ones are: by their error against float64
    relative to torch's own error. For sums of thousands of products (convolution gradients) the
    summation order alone moves float32 results by more than the elementwise tolerance where terms
    cancel, in torch as in ours; an elementwise match there would only test that we sum in oneDNN's order.
    Returns (ours_out, torch_out)."""

    def run(fn, cast=None):
        xs = []
        for i, x in enumerate(inputs):
            if isinstance(x, torch.Tensor):
                y = x.detach().clone()
                if cast is not None and y.is_floating_point():
                    y = y.to(cast)
                if i in grad_inputs:
                    y.requires_grad_(True)
                xs.append(y)
            else:
                xs.append(x)
        out = fn(*xs)
        gen = torch.Generator(device="cpu").manual_seed(grad_out_seed)
        g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
        grads = torch.autograd.grad(out, [xs[i] for i in grad_inputs], g, allow_unused=False)
        return out.detach(), [gr.detach() for gr in grads]

    o_out, o_grads = run(ours_fn)
    t_out, t_grads = run(torch_fn)
    assert o_out.shape == t_out.shape, (o_out.shape, t_out.shape)
    assert o_out.dtype == t_out.dtype, (o_out.dtype, t_out.dtype)
    lowp = o_out.dtype in (torch.float16, torch.bfloat16) or (error_vs_torch and o_out.dtype == torch.float32)
    if lowp:
        r_out, r_grads = run(torch_fn, cast=torch.float64)
        assert_lowp_close(o_out, t_out, r_out, "output")
        for i, (a, b, r) in enumerate(zip(o_grads, t_grads, r_grads)):
            assert_lowp_close(a, b, r, f"grad {i}")
        return o_out, t_out
    assert_close(o_out, t_out, dtype, "output vs torch")
    for i, (a, b) in enumerate(zip(o_grads, t_grads)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(a, b, dtype, f"grad of input {grad_inputs[i]} vs torch")
    if reference64 and o_out.dtype == torch.float32:
        r_out, r_grads = run(torch_fn, cast=torch.float64)
        assert_close(o_out, r_out, torch.float32, "output vs float64")
        for a, r in zip(o_grads, r_grads):
            assert_close(a, r, torch.float32, "grad vs float64")
    return o_out, t_out
