"""Build dlkernels._C with torch.utils.cpp_extension.

CUDA extension when torch is a CUDA build and nvcc is found, CPU-only otherwise.
DLKERNELS_CUDA=1 forces CUDA (and fails loudly if it cannot be built); DLKERNELS_CUDA=0 forces CPU.
DLKERNELS_SANITIZE=address,undefined adds -fsanitize flags to the CPU build.
DLKERNELS_CUDA_EMU=1 builds the CUDA emulation (make test-cuda-emu): csrc/cuda/*.cu compiled as host C++
against tools/cuda_emu (CUDA's headers needed, no nvcc, no CUDA torch), CPU tensors running the ops
layer's CUDA branches on the emulated kernels.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def nvcc_flags():
    # One list of nvcc flags, shared with the CI compile check in .ci/run.
    with open(os.path.join(ROOT, "csrc", "cuda", "nvcc.flags")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def want_cuda():
    forced = os.environ.get("DLKERNELS_CUDA")
    have_torch_cuda = torch.version.cuda is not None
    have_nvcc = CUDA_HOME is not None and (
        shutil.which("nvcc") is not None or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )
    if forced == "0":
        return False
    if forced == "1":
        if not have_torch_cuda:
            raise RuntimeError(
                "DLKERNELS_CUDA=1 but the installed torch %s is a CPU-only build" % torch.__version__
            )
        if not have_nvcc:
            raise RuntimeError("DLKERNELS_CUDA=1 but nvcc was not found (CUDA_HOME=%s)" % CUDA_HOME)
        return True
    if forced not in (None, ""):
        raise RuntimeError("DLKERNELS_CUDA must be 0 or 1, got %r" % forced)
    return have_torch_cuda and have_nvcc


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def emulated_cuda_sources():
    """csrc/cuda/*.cu rewritten by tools/cuda_emu/rewrite.py into build/cuda_emu/, plus the emulator."""
    out_dir = os.path.join(ROOT, "build", "cuda_emu")
    os.makedirs(out_dir, exist_ok=True)
    out = []
    probes = os.path.join(ROOT, "tools", "cuda_emu", "probes.cu")  # planted bugs, for tests/test_cuda_emu.py
    for src in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))) + [probes]:
        dst = os.path.join(out_dir, os.path.basename(src) + ".cpp")
        subprocess.check_call([sys.executable, os.path.join(ROOT, "tools", "cuda_emu", "rewrite.py"), src, dst,
                               os.path.relpath(src, ROOT)])
        out.append(dst)
    return rel(out + [os.path.join(ROOT, "tools", "cuda_emu", "emu.cpp")])


def make_extension():
    emulate = os.environ.get("DLKERNELS_CUDA_EMU", "") == "1"
    use_cuda = not emulate and want_cuda()
    sources = rel(
        glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
        + glob.glob(os.path.join(ROOT, "csrc", "ops", "*.cpp"))
        + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    )
    # No -std here: torch.utils.cpp_extension picks the standard its headers need.
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    ldflags = ["-fopenmp"]
    sanitize = os.environ.get("DLKERNELS_SANITIZE", "")
    if sanitize:
        cxx += ["-fsanitize=" + sanitize, "-fno-omit-frame-pointer", "-g", "-O1"]
        ldflags += ["-fsanitize=" + sanitize]
    macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if emulate:
        cuda_include = os.path.join(CUDA_HOME or "/usr/local/cuda", "include")
        if not os.path.exists(os.path.join(cuda_include, "cuda_fp16.h")):
            raise RuntimeError("DLKERNELS_CUDA_EMU=1 needs CUDA's headers (cuda_fp16.h), not found in " + cuda_include)
        sources += emulated_cuda_sources()
        include_dirs += [os.path.join(ROOT, "tools", "cuda_emu", "include"), cuda_include]
        macros += [("DLKERNELS_WITH_CUDA", "1"), ("DLKERNELS_CUDA_EMU", "1")]
        cxx += ["-Wno-unknown-pragmas"]
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.5;8.0;8.6;8.9;9.0+PTX")
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        macros.append(("DLKERNELS_WITH_CUDA", "1"))
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        macros.append(("DLKERNELS_CUDA_ARCHS", '"%s"' % archs))
        return CUDAExtension(
            "dlkernels._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": [f for f in nvcc_flags() if not f.startswith("-std=")]},
            extra_link_args=ldflags,
        )
    return CppExtension(
        "dlkernels._C",
        sources,
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=ldflags,
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
