#!/usr/bin/env bash
# scripts/gpu_check.sh OUTDIR: everything the CUDA paths need proved on a machine with an NVIDIA GPU, in
# one go, with no network: a CUDA torch, nvcc, ninja, pytest (pytest-xdist and pytest-timeout if present)
# and compute-sanitizer must already be there. Writes into OUTDIR (at most eight files):
#   summary.txt   one line per step: exit status and seconds
#   build.log     the extension built in place for this card's architecture only
#   tests.log     every CUDA-parametrized test and the build tests
#   sanitize.log  compute-sanitizer memcheck and racecheck over scripts/gpu_smoke.py (every kernel once)
#   checks.log    whether op argument errors reach Python on each device (scripts/gpu_throw_probe.py,
#                 with cuda-gdb's native backtrace of a crash), then a converted ResNet training step
#                 under torch.cuda.set_sync_debug_mode("error") and torch's vs the converted step times
#   bench.md, bench.json, bench.log   python -m dlkernels.bench --device cuda --all
# Steps that prove correctness run side by side; the benchmark runs alone afterwards.
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"

# step NAME LIMIT_S LOG CMD...: run CMD under a time limit, append its output to LOG, record the result
step() {
  local name=$1 limit=$2 log=$3 t0 rc
  shift 3
  t0=$(date +%s)
  echo "### $name: $*" >> "$log"
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$SUMMARY"
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >> "$SUMMARY" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" >> "$SUMMARY" 2>&1
ARCH=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
step build "${BUILD_LIMIT:-400}" "$OUTDIR/build.log" env DLKERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" \
  MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace || { echo "build failed" | tee -a "$SUMMARY"; exit 1; }
"$PY" -c "import dlkernels; assert dlkernels.cuda_available(), 'no CUDA in this build'" >> "$SUMMARY" 2>&1 || exit 1

SEED=${DLKERNELS_TEST_SEED:-$RANDOM$RANDOM}
echo "DLKERNELS_TEST_SEED=$SEED" >> "$SUMMARY"
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${TEST_WORKERS:-8}")
TIMEOUT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout 300)
SMOKE=${SMOKE:-scripts/gpu_smoke.py}

(step tests "${TEST_LIMIT:-300}" "$OUTDIR/tests.log" env DLKERNELS_TEST_SEED="$SEED" "$PY" -m pytest -q \
   -p no:cacheprovider "${XDIST[@]}" "${TIMEOUT[@]}" --tb=short -rfE ${TESTS:-tests -k "cuda or test_build"}) &
(step memcheck "${SAN_LIMIT:-240}" "$OUTDIR/sanitize.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
   compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" "$SMOKE"
 step racecheck "${SAN_LIMIT:-240}" "$OUTDIR/sanitize.log" compute-sanitizer --tool racecheck \
   --error-exitcode 3 "$PY" "$SMOKE") &
(if ! step throw-probe 120 "$OUTDIR/checks.log" "$PY" scripts/gpu_throw_probe.py; then
   first=$(sed -n 's/^crashed: \([^ ]*\).*/\1/p' "$OUTDIR/checks.log" | tail -n 1)
   [ -n "$first" ] && command -v cuda-gdb >/dev/null && step "backtrace-$first" 120 "$OUTDIR/checks.log" \
     cuda-gdb -q -batch -ex run -ex bt --args "$PY" scripts/gpu_throw_probe.py "$first"
 fi
 step sync "${SYNC_LIMIT:-240}" "$OUTDIR/checks.log" "$PY" scripts/gpu_sync_step.py) &
wait

if [ "${BENCH:-1}" = 1 ]; then
  step bench "${BENCH_LIMIT:-300}" "$OUTDIR/bench.log" "$PY" -m dlkernels.bench --device cuda --all --no-numpy \
    --markdown "$OUTDIR/bench.md" --json "$OUTDIR/bench.json"
fi
cat "$SUMMARY"
grep -E "passed|failed|error" "$OUTDIR/tests.log" | tail -n 3
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUTDIR/sanitize.log"
grep -E "^(conv|pybind|torch_cuda|crashed)|sync-free|host synchronisation|training step" "$OUTDIR/checks.log"
