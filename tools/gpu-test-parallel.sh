#!/usr/bin/env bash
# Runs the packed CUDA tests (.gpu/, from tools/gpu-pack-tests.sh) with
# one process per test, JOBS at a time, from the project root:
#
#   DEADLINE_S=420 RESULTS=$OUT/tests bash tools/gpu-test-parallel.sh [filters...]
#
# Why not .gpu/run.sh (one process per test binary, libtest's threads): a
# process has one CUDA device server, and cubecl compiles every kernel
# (NVRTC) and autotunes it inside that server, so all tests of a binary wait
# on one CPU thread. With burn's default fusion and autotune a cold run of
# the suite is compilation-bound (last H100 run: 43 of 58 tests in 330 s, one
# property test 37 s). Separate processes compile on separate cores; they
# share compiled kernels and autotune results through cubecl's
# multi-process-safe cache files under target/ (cubecl.toml).
#
# Filters: a test runs if its name contains any of them (libtest's rule).
# Environment:
#   JOBS        processes at a time (default: the number of cores)
#   DEADLINE_S  seconds for the whole run (default 0: none). A test started
#               before the deadline is stopped at it (TIMEOUT); a test not
#               started by then is reported NOT RUN. The summary is always
#               written.
#   RESULTS     folder for summary.txt and the logs of failed tests
#               (default: .gpu-results)
#   GPU_PACK    the pack (default: .gpu)
# Prints one line per test (status, seconds, name), slowest first, then the
# counts. Exits 1 unless every selected test passed.
set -u
root=$(pwd)
pack=${GPU_PACK:-$root/.gpu}
jobs=${JOBS:-$(nproc)}
deadline_s=${DEADLINE_S:-0}
results=${RESULTS:-$root/.gpu-results}
[ -f "$pack/tests.txt" ] || { echo "no test pack: $pack/tests.txt is missing (run tools/gpu-pack-tests.sh)"; exit 2; }
mkdir -p "$results/failed"
: > "$results/summary.txt"

# Where the CUDA driver and NVRTC live: the same search as .gpu/run.sh.
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
for f in $(find /opt /usr/local -name 'libnvrtc.so*' 2>/dev/null | head -n 5); do
  libdirs="$libdirs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v nvidia-smi >/dev/null && nvidia-smi -L
export BNORM_DEVICE=${BNORM_DEVICE:-cuda}

# The binaries unpacked into a scratch folder, not beside their .xz: a pack
# that has been run here must still fit a device call (64 MiB may travel).
bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
# The selected tests, one "dir binary name" line each.
selected=$(mktemp)
while read -r dir bin; do
  [ -n "$bin" ] || continue
  if [ -f "$pack/bin/$bin.xz" ]; then
    xz -dc "$pack/bin/$bin.xz" > "$bindir/$bin"
  else
    cp "$pack/bin/$bin" "$bindir/$bin"
  fi
  chmod +x "$bindir/$bin"
  while IFS= read -r name; do
    keep=$([ $# -eq 0 ] && echo 1 || echo 0)
    for filter in "$@"; do
      case "$name" in *"$filter"*) keep=1 ;; esac
    done
    [ "$keep" = 1 ] && echo "$dir $bin $name" >> "$selected"
  done < <("$bindir/$bin" --list --format terse 2>/dev/null | sed -n 's/: test$//p')
done < "$pack/tests.txt"

# Longest first, so the slowest tests do not start last: the parity tests
# (two backends, many steps), then the other CUDA cases, then the rest.
ordered=$(mktemp)
{
  grep ' backend_parity::' "$selected"
  grep -v ' backend_parity::' "$selected" | grep 'cuda'
  grep -v ' backend_parity::' "$selected" | grep -v 'cuda'
} > "$ordered"
total=$(wc -l < "$ordered")
echo "running $total tests, $jobs at a time$([ "$deadline_s" -gt 0 ] && echo ", deadline ${deadline_s}s")"

start=$(date +%s)
run_one() {
  local dir=$1 bin=$2 name=$3
  local limit=0
  if [ "$deadline_s" -gt 0 ]; then
    limit=$((start + deadline_s - $(date +%s)))
    if [ "$limit" -le 0 ]; then
      printf '%-8s %7s %s\n' "NOT RUN" "-" "$name" >> "$results/summary.txt"
      return
    fi
  fi
  local fixtures="$root/$dir/tests/fixtures/reference"
  [ -d "$fixtures" ] || fixtures="$root/tests/fixtures/reference"
  local log
  log=$(mktemp)
  local t0 t1 rc status
  t0=$(date +%s.%N)
  ( cd "$root/$dir" && CARGO_MANIFEST_DIR="$root/$dir" \
      BNORM_REFERENCE_FIXTURES="${BNORM_REFERENCE_FIXTURES:-$fixtures}" \
      timeout "$limit" "$bindir/$bin" --exact "$name" --test-threads 1 ) > "$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  if [ $rc = 0 ] && grep -q '^test result: ok. 1 passed' "$log"; then
    status=ok
  elif [ $rc = 124 ]; then
    status=TIMEOUT
  else
    status=FAILED
  fi
  # The exit status too: a process can print `ok` and still fail (a
  # signal at exit).
  [ $status = ok ] || { echo "exit status $rc" >> "$log"; cp "$log" "$results/failed/${name//::/__}.log"; }
  rm -f "$log"
  printf '%-8s %6.1fs %s\n' "$status" "$(awk "BEGIN { print $t1 - $t0 }")" "$name" >> "$results/summary.txt"
}
export -f run_one
export root pack bindir deadline_s results start
xargs -P "$jobs" -L 1 bash -c 'run_one "$@"' _ < "$ordered"
rm -f "$selected" "$ordered"

# Slowest first; NOT RUN last.
grep -v '^NOT RUN' "$results/summary.txt" | sort -k2,2 -rn > "$results/summary.sorted"
grep '^NOT RUN' "$results/summary.txt" >> "$results/summary.sorted"
mv "$results/summary.sorted" "$results/summary.txt"
cat "$results/summary.txt"
for log in "$results"/failed/*.log; do
  [ -f "$log" ] && { echo "=== $(basename "$log" .log)"; tail -n 40 "$log"; echo; }
done
count() { grep -c "^$1 " "$results/summary.txt"; }
echo "gpu tests: $(count ok) passed, $(count FAILED) failed, $(count TIMEOUT) timed out, $(count 'NOT RUN') not run, of $total; wall $(( $(date +%s) - start ))s"
[ "$(count ok)" = "$total" ]
