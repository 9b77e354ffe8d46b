"""Does an argument error raised by a dlkernels op reach Python as an exception, on each device?

Each case runs in its own process (an error that crashes the process is the thing looked for) and
prints the exit status. Run by scripts/gpu_check.sh, which takes a native backtrace of the first crash.
python scripts/gpu_throw_probe.py            all cases, each in a subprocess
python scripts/gpu_throw_probe.py NAME       one case in this process
"""
import subprocess
import sys

CASES = {
    # an op's C++ argument check (TORCH_CHECK_VALUE) on each device
    "conv_cpu": "DF.conv2d(torch.randn(2, 4, 8, 8), torch.randn(6, 3, 3, 3))",
    "conv_cuda": "DF.conv2d(torch.randn(2, 4, 8, 8, device='cuda'), torch.randn(6, 3, 3, 3, device='cuda'))",
    # the same check called through the dispatcher directly (no autograd.Function around it)
    "conv_op_cuda": "torch.ops.dlkernels.conv2d_forward(torch.randn(2, 4, 8, 8, device='cuda'), "
                    "torch.randn(6, 3, 3, 3, device='cuda'), None, [1, 1], [0, 0], [1, 1], 1)",
    # a pybind11 helper's std::invalid_argument, and a torch op's own error on CUDA, for comparison
    "pybind_throw": "dlkernels.set_cpu_isa('no-such-isa')",
    "torch_cuda_error": "torch.randn(2, 3, device='cuda') @ torch.randn(4, 5, device='cuda')",
}


def run_one(name):
    import torch  # noqa: F401

    import dlkernels  # noqa: F401
    import dlkernels.functional as DF  # noqa: F401

    try:
        eval(CASES[name])
    except Exception as e:  # noqa: BLE001 - the point is that it arrives here
        print(f"{name}: raised {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return 0
    print(f"{name}: no error raised")
    return 1


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(run_one(sys.argv[1]))
    crashed = []
    for name in CASES:
        r = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True)
        print(r.stdout.strip() or f"{name}: exit status {r.returncode}, stderr tail: {r.stderr.strip()[-300:]}")
        if r.returncode < 0 or r.returncode > 1:
            crashed.append(name)
    print("crashed:", " ".join(crashed) if crashed else "none")
    sys.exit(1 if crashed else 0)
