#!/usr/bin/env bash
# Type-checks the CUDA branches (#ifdef DLKERNELS_WITH_CUDA) of csrc/ops/*.cpp and csrc/register.cpp
# against the installed CPU torch, with two stand-in headers for the CUDA parts torch's CPU build lacks
# (tools/cuda_stubs). Catches calls that do not match csrc/cuda/launch.h without a CUDA torch.
# Usage: tools/check_cuda_ops.sh [python]   (run from the repository root)
set -euo pipefail
PY=${1:-.venv/bin/python}
TI=$("$PY" -c "import torch.utils.cpp_extension as c; print(c.include_paths()[0])")
PYI=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
for f in csrc/ops/*.cpp csrc/register.cpp; do
  g++ -std=c++17 -fsyntax-only -w -DDLKERNELS_WITH_CUDA '-DDLKERNELS_CUDA_ARCHS="9.0"' -DTORCH_EXTENSION_NAME=_C \
    -I tools/cuda_stubs -I csrc -I "$TI" -I "$TI/torch/csrc/api/include" -I "$PYI" "$f"
  echo "CUDA branches type-check: $f"
done
