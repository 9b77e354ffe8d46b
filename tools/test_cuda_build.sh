#!/usr/bin/env bash
# The CUDA build, without a GPU, as a user installs it: the sdist (built with the main venv's python)
# installed with --no-build-isolation into a venv holding torch's CUDA build (TORCH_CUDA, default
# torch==2.14.1 and its nvidia-* wheels, a few GB, plus the test tools) with DLKERNELS_CUDA=1 for one
# architecture (TORCH_CUDA_ARCH_LIST, default 9.0: ~2.5 min on 2 cores), nvcc from CUDA_HOME (default
# /usr/local/cuda) and the CUDA headers of the nvidia wheels; then the build tests and one CPU ISA path of
# every family's tests run from a copy of tests/ outside the checkout against the installed package (the
# CUDA tests skip: no GPU). Proves that the CUDA build compiles, links and loads against the CUDA torch
# this project claims, and that its CPU paths pass there.
# Usage: tools/test_cuda_build.sh [python-with-build]   (from the repository root)
set -euo pipefail
PY=${1:-.venv/bin/python}
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
"$VENV/bin/pip" uninstall -q -y dlkernels 2>/dev/null || true
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
CPATH=$(ls -d "$site"/nvidia/*/include 2>/dev/null | paste -sd: -)
export CPATH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m build --sdist --no-isolation --outdir "$work/dist" >/dev/null
sdist=$(ls "$work"/dist/dlkernels-*.tar.gz)
echo "built $(basename "$sdist")"
PATH="$CUDA_HOME/bin:$PATH" DLKERNELS_CUDA=1 MAX_JOBS=2 "$VENV/bin/pip" install -q --no-build-isolation "$sdist"
cp -r tests "$work/tests"
venv_python=$(cd "$VENV" && pwd)/bin/python
cd "$work"
"$venv_python" - <<'PY'
import os, torch, dlkernels
from dlkernels import _C
where = os.path.dirname(dlkernels.__file__)
assert "site-packages" in where, f"dlkernels imported from {where}, not the installed package"
assert _C.with_cuda, "the CUDA build came out CPU-only"
print(f"dlkernels {dlkernels.__version__} CUDA build at {where}: archs {_C.cuda_archs}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}")
PY
isa=$("$venv_python" -c "import dlkernels; print(dlkernels.supported_cpu_isas()[-1])")  # the best path here
"$venv_python" -m pytest -q -p no:cacheprovider tests --ignore=tests/test_properties.py \
  -k "($isa or test_build or test_convert or test_fusion or test_double_backward) and not two_processes and not distributed and not 2_31 and not demo"
