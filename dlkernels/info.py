"""python -m dlkernels.info: what this build can do (cf. torch.__config__.show())."""
import platform

import torch


def build_info():
    import dlkernels
    from dlkernels import _C

    return {
        "dlkernels": dlkernels.__version__,
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "CPU": platform.processor() or platform.machine(),
        "CPU ISA in use": dlkernels.cpu_isa(),
        "CPU ISAs compiled": ", ".join(_C.compiled_cpu_isas()),
        "CPU ISAs this machine runs": ", ".join(dlkernels.supported_cpu_isas()),
        "CUDA archs compiled": _C.cuda_archs if _C.with_cuda else (
            "none: CUDA emulation build (CPU tensors run the CUDA kernels on tools/cuda_emu)"
            if getattr(_C, "cuda_emulated", False) else "CPU-only build"),
        "GPU": torch.cuda.get_device_name() if dlkernels.cuda_available() else "none",
        "threads": torch.get_num_threads(),
    }


def main():
    for key, value in build_info().items():
        print(f"{key:28s} {value}")


if __name__ == "__main__":
    main()
