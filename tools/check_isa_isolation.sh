#!/usr/bin/env bash
# The AVX2/AVX-512 translation units (csrc/cpu/*_avx2.cpp, *_avx512.cpp) must not export any weak
# (COMDAT) function holding ymm/zmm code: the linker keeps one copy of each weak function for the
# whole library, and if it kept an AVX-512 copy of, say, an inline std:: helper, scalar callers on a
# CPU without AVX-512 would die with SIGILL. Compiles each ISA file and inspects its weak symbols.
set -euo pipefail
out=$(mktemp -d)
status=0
for f in csrc/cpu/*_avx2.cpp csrc/cpu/*_avx512.cpp; do
  o="$out/$(basename "$f").o"
  g++ -O3 -std=c++17 -fopenmp -fno-math-errno -w -I csrc -c "$f" -o "$o"
  for sym in $(nm "$o" | awk '$2 == "W" { print $3 }'); do
    if objdump -d --no-show-raw-insn "$o" --disassemble="$sym" | grep -qE '%(y|z)mm'; then
      echo "ISA leak: $f exports weak $(echo "$sym" | c++filt) with AVX code"
      status=1
    fi
  done
done
[ $status -eq 0 ] && echo "ISA isolation: no weak symbol with AVX code in csrc/cpu/*_avx*.cpp"
exit $status
