#!/usr/bin/env bash
# Builds the source distribution, installs it into a fresh venv that holds only torch (and the tools a
# --no-build-isolation build and the tests need), and runs a fast subset of the tests against the
# installed package, from a copy of tests/ outside the checkout so that `import dlkernels` cannot
# find the checkout. Usage: tools/test_sdist.sh [python-with-build]   (run from the repository root)
set -euo pipefail
PY=${1:-.venv/bin/python}
TORCH=${DLKERNELS_SDIST_TORCH:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m build --sdist --no-isolation --outdir "$work/dist" >/dev/null
sdist=$(ls "$work"/dist/dlkernels-*.tar.gz)
echo "built $(basename "$sdist")"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$TORCH" numpy pytest setuptools wheel ninja
DLKERNELS_CUDA=${DLKERNELS_CUDA:-0} "$work/venv/bin/pip" install -q --no-build-isolation "$sdist"
cp -r tests "$work/tests"
cd "$work"
"$work/venv/bin/python" - <<'PY'
import dlkernels, os, sys
where = os.path.dirname(dlkernels.__file__)
assert "site-packages" in where, f"dlkernels imported from {where}, not the installed package"
print(f"dlkernels {dlkernels.__version__} installed at {where}")
PY
# one ISA path of each family's parity and bad-input tests (the best this machine runs: "avx512" selected
# only the build tests on a host without AVX-512), and the build tests
isa=$("$work/venv/bin/python" -c "import dlkernels; print(dlkernels.supported_cpu_isas()[-1])")
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests --ignore=tests/test_properties.py \
  -k "($isa or test_build or test_convert) and not two_processes and not distributed and not 2_31 and not demo"
