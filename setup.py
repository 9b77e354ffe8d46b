"""Build dlkernels._C with torch.utils.cpp_extension.

CUDA extension when torch is a CUDA build and nvcc is found, CPU-only otherwise.
DLKERNELS_CUDA=1 forces CUDA (and fails loudly if it cannot be built); DLKERNELS_CUDA=0 forces CPU.
DLKERNELS_SANITIZE=address,undefined adds -fsanitize flags to the CPU build.
"""
import glob
import os
import shutil

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


def make_extension():
    use_cuda = want_cuda()
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
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=ldflags,
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
