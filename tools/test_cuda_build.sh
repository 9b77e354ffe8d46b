#!/usr/bin/env bash
# The CUDA build, without a GPU: a venv with torch's CUDA build (TORCH_CUDA, default torch==2.14.1 and
# its nvidia-* wheels, a few GB), the extension built from a copy of the tracked files in .cuda-build/
# with DLKERNELS_CUDA=1 for one architecture (TORCH_CUDA_ARCH_LIST, default 9.0: ~2.5 min on 2 cores),
# nvcc from CUDA_HOME (default /usr/local/cuda) and the CUDA headers of the nvidia wheels; then the build
# tests and one CPU ISA path of every family's tests against it (the CUDA tests skip: no GPU). Proves that
# the CUDA build compiles, links and loads against the CUDA torch this project claims, and that its CPU
# paths pass there. Usage: tools/test_cuda_build.sh   (from the repository root)
set -euo pipefail
VENV=${DLKERNELS_CUDA_VENV:-.venv-cuda}
TORCH=${TORCH_CUDA:-torch==2.14.1}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "test_cuda_build: no nvcc at $CUDA_HOME/bin/nvcc" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda and torch.__version__.split('+')[0] == '${TORCH#torch==}' else 1)" 2>/dev/null \
  || "$VENV/bin/pip" install -q "$TORCH" numpy pytest setuptools wheel ninja
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
CPATH=$(ls -d "$site"/nvidia/*/include 2>/dev/null | paste -sd: -)
export CPATH
rm -rf .cuda-build && mkdir -p .cuda-build
git ls-files | tar -cf - -T - | tar -xf - -C .cuda-build
cd .cuda-build
PATH="$CUDA_HOME/bin:$PATH" DLKERNELS_CUDA=1 MAX_JOBS=2 "../$VENV/bin/python" setup.py -q build_ext --inplace
PYTHONPATH=. "../$VENV/bin/python" - <<'PY'
import torch, dlkernels
from dlkernels import _C
assert _C.with_cuda, "the CUDA build came out CPU-only"
print(f"dlkernels CUDA build: archs {_C.cuda_archs}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
PYTHONPATH=. "../$VENV/bin/python" -m pytest -q -p no:cacheprovider tests --ignore=tests/test_properties.py \
  -k "(avx512 or test_build or test_convert or test_fusion) and not two_processes and not distributed and not 2_31 and not demo"
