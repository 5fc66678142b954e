#!/usr/bin/env bash
# Builds the CUDA test binaries in release (`--features cuda`) and packs the
# chosen ones, with a runner, into .gpu/ at the project root, for a GPU
# machine with the NVIDIA driver and no Rust toolchain:
#
#   bash tools/gpu-pack-tests.sh              # the suite and bnorm-core's unit tests
#   PACK_TESTS="suite" bash tools/gpu-pack-tests.sh
#
# then, there, `bash tools/gpu-run.sh ...` (tools/gpu-test-parallel.sh runs
# one process per test) or `bash .gpu/run.sh [filters]`.
#
# Why a choice of binaries: burn-cuda links LLVM statically (its kernel
# compiler), so each test binary is ~100 MB stripped, ~20 MB compressed,
# and what travels to a device machine is limited (64 MiB). PACK_TESTS
# names test targets: `suite` (tests/suite.rs, every integration test) and
# the crates' unit tests by crate name (`bnorm_core`, `bnorm_renorm`,
# `bnorm_crossiter`, `bnorm`).
#
# Offline, burn-cuda needs an LLVM first: tools/offline-llvm.sh. The CUDA
# bindings are pinned to 13.0 (CUDARC_CUDA_VERSION=13000) to match a 13.0
# driver. .gpu/ is listed in .git/info/exclude: it is never committed.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p .git/info
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu
mkdir -p .gpu/bin

export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
export CARGO_TARGET_DIR=${GPU_TARGET_DIR:-$root/target/gpu}
export PACK_TESTS=${PACK_TESTS:-suite bnorm_core}

cargo test --workspace --release --features cuda --no-run --lib --test suite \
  --message-format=json > .gpu/build.json

python3 - "$root" <<'PY'
import json, os, shutil, sys
root = sys.argv[1]
wanted = os.environ["PACK_TESTS"].split()
rows = []
for line in open(os.path.join(root, ".gpu/build.json")):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg.get("profile", {}).get("test") or msg["target"]["name"] not in wanted:
        continue
    pkg_dir = os.path.relpath(os.path.dirname(msg["manifest_path"]), root)
    exe = msg["executable"]
    name = os.path.basename(exe)
    shutil.copy2(exe, os.path.join(root, ".gpu/bin", name))
    rows.append(f"{pkg_dir} {name}")
missing = set(wanted) - {row.split()[1].rsplit("-", 1)[0] for row in rows}
if missing:
    sys.exit(f"PACK_TESTS names no test target built here: {sorted(missing)}")
with open(os.path.join(root, ".gpu/tests.txt"), "w") as f:
    f.write("\n".join(rows) + "\n")
print(f"packed {len(rows)} test binaries: {' '.join(r.split()[1] for r in rows)}")
PY
rm -f .gpu/build.json
strip .gpu/bin/*
xz -T0 -6 .gpu/bin/*

cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs the packed CUDA test binaries, one process per binary. Call from the
# project root.
set -u
root=$(pwd)
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v nvidia-smi >/dev/null && nvidia-smi -L
export BNORM_DEVICE=cuda
fail=0
while read -r dir bin; do
  [ -n "$bin" ] || continue
  xz -dkf "$root/.gpu/bin/$bin.xz" 2>/dev/null || true
  chmod +x "$root/.gpu/bin/$bin"
  echo "=== $dir :: $bin"
  ( cd "$root/$dir" && CARGO_MANIFEST_DIR="$root/$dir" \
      BNORM_REFERENCE_FIXTURES="${BNORM_REFERENCE_FIXTURES:-$root/tests/fixtures/reference}" \
      "$root/.gpu/bin/$bin" "$@" ) || fail=1
done < "$root/.gpu/tests.txt"
echo "gpu run finished: $([ $fail = 0 ] && echo all passed || echo FAILURES)"
exit $fail
RUN
chmod +x .gpu/run.sh
du -sh .gpu
echo "ready: carry .gpu (and tools/) to the device machine; run 'bash tools/gpu-run.sh TEST_S 0' or 'bash .gpu/run.sh' from the project root"
