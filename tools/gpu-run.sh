#!/usr/bin/env bash
# One GPU session's run, on the device machine, from the project root:
# the packed CUDA tests (.gpu/, from tools/gpu-pack-tests.sh; run a
# process per test by tools/gpu-test-parallel.sh) and
# benchmarks (.gpu-bench/, from tools/gpu-pack-bench.sh), each under its own
# time limit, with cubecl's kernel caches carried across machines.
#
#   bash tools/gpu-run.sh TEST_SECONDS BENCH_SECONDS [test filters...]
#
# GPU_TEST_REPEAT=N runs the selected tests N times (default 1), each pass
# with its own TEST_SECONDS: with burn-cuda's autotune the kernels, and so
# the rounding, can differ from one process to the next, and one passing run
# is not proof that the suite passes reliably (one H100 session: 79 of 79,
# then 78 of 79 with the same binaries). Passes after the first reuse the
# first's kernel caches (about 20 s for the suite on an H100) and append
# their summaries to $OUT/tests/repeats.txt.
#
# Why the caches: with burn's default fusion and autotune, the first step of
# every new shape compiles kernels and autotunes them, on one device thread
# (on the burn 0.21 line a cold run of the whole suite did not finish in
# 330 s on an H100). cubecl keeps its environment (autotune results and,
# with cubecl.toml's `[compilation] cache = true`, compiled kernels) under
# target/environment. This script unpacks .gpu-cache/cubecl-cache.tar.xz.part-*
# into target/ first, and last packs target/environment into
# $OUT/cubecl-cache.tar.xz.part-* (15 MiB parts: a file that comes back from
# the device may hold 16 MiB), also after a time limit has cut a step short,
# so each run starts where the last one stopped. Back on the development
# machine:
#   rm -rf .gpu-cache && mkdir .gpu-cache && cp /work/.device/N/cubecl-cache.* .gpu-cache/
# and carry .gpu-cache with .gpu (or .gpu-bench) on the next call (64 MiB may
# travel in all; with LLVM linked in, each packed binary takes about 20).
set -u
out=${OUT:?"OUT: the folder whose files come back"}
tests_s=${1:?"seconds for the tests (0: skip)"}
bench_s=${2:?"seconds for the benchmarks (0: skip)"}
shift 2
mkdir -p target
if ls .gpu-cache/cubecl-cache.tar.xz.part-* >/dev/null 2>&1; then
  cat .gpu-cache/cubecl-cache.tar.xz.part-* | tar -xJf - -C target
  echo "kernel caches restored: $(du -sh target | cut -f1)"
fi
status=0
echo "tests start $(date -u +%T)"
if [ "$tests_s" -gt 0 ]; then
  # One process per test (see tools/gpu-test-parallel.sh); the outer limit
  # is a guard only, the runner stops its tests at the deadline itself.
  DEADLINE_S=$tests_s RESULTS="$out/tests" timeout $((tests_s + 60)) \
    bash tools/gpu-test-parallel.sh "$@" > "$out/gpu.log" 2>&1 || status=1
  cat "$out/tests/summary.txt"
  tail -n 1 "$out/gpu.log"
  for pass in $(seq 2 "${GPU_TEST_REPEAT:-1}"); do
    scratch=$(mktemp -d)
    DEADLINE_S=$tests_s RESULTS="$scratch" timeout $((tests_s + 60)) \
      bash tools/gpu-test-parallel.sh "$@" > "$scratch/log" 2>&1 || status=1
    # One file for every later pass: few files may come back from a device.
    { echo "=== pass $pass: $(tail -n 1 "$scratch/log")"
      grep -v '^ok ' "$scratch/summary.txt"
      for log in "$scratch"/failed/*.log; do
        [ -f "$log" ] && { echo "--- $(basename "$log" .log)"; tail -n 15 "$log"; }
      done; } >> "$out/tests/repeats.txt"
    echo "pass $pass: $(tail -n 1 "$scratch/log")"
    rm -rf "$scratch"
  done
fi
echo "benches start $(date -u +%T)"
if [ "$bench_s" -gt 0 ]; then
  timeout "$bench_s" bash .gpu-bench/bench.sh > "$out/bench.log" 2>&1 || status=1
  grep -E "settled after|^\|" "$out/bench.log"
fi
echo "end $(date -u +%T)"
# cubecl's environment (compiled kernels, autotune results): target/environment.
caches=$(cd target && ls -d environment 2>/dev/null)
if [ -n "$caches" ]; then
  XZ_OPT=-6T0 tar -cJf - -C target $caches | split -b 15M - "$out/cubecl-cache.tar.xz.part-"
fi
ls -l "$out"
exit $status
