"""pytest-benchmark view of the conv cases (the case registry is dlkernels.bench.CASES).

    .venv/bin/python -m pytest bench/bench_conv.py --benchmark-only
Not part of `make test`: speed is measured, never asserted.
"""
import pytest

from dlkernels.bench import cases_for, run_with_pytest_benchmark

CASES = cases_for("conv", "cpu")


@pytest.mark.parametrize("impl", ["torch", "ours"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conv(benchmark, case, impl):
    run_with_pytest_benchmark(benchmark, case, impl)
