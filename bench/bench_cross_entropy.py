"""pytest-benchmark view of the cross-entropy cases (the case registry is dlkernels.bench.CASES).

    .venv/bin/python -m pytest bench/bench_cross_entropy.py --benchmark-only
Not part of `make test`: speed is measured, never asserted.
"""
import pytest

from dlkernels.bench import _fresh_copies, cases_for

CASES = cases_for("cross_entropy", "cpu")


@pytest.mark.parametrize("impl", ["torch", "ours"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cross_entropy(benchmark, case, impl):
    spec = case.make("cpu")
    copies = _fresh_copies(spec["inputs"], spec["bytes"] // 2)
    state = {"i": 0}

    def run():
        args = copies[state["i"] % len(copies)]
        state["i"] += 1
        spec[impl](*args)

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
