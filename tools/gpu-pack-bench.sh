#!/usr/bin/env bash
# Builds the criterion benchmarks with `--features cuda` (release) and packs
# the chosen ones into .gpu-bench/ with a runner, for a GPU machine without
# a Rust toolchain. A folder of its own: tools/gpu-pack-tests.sh empties
# .gpu/ when it makes the test pack.
#
#   bash tools/gpu-pack-bench.sh                 # the two comparison benches
#   PACK_BENCHES="brn_vs_batchnorm" bash tools/gpu-pack-bench.sh
#
# burn-cuda links LLVM statically, so each bench binary is ~20 MB
# compressed (what travels to a device machine is limited to 64 MiB in
# all); PACK_BENCHES names the benches to pack. Offline, burn-cuda needs an
# LLVM first: tools/offline-llvm.sh. On that machine, from the project root:
#   bash .gpu-bench/bench.sh      # CUDA only (BNORM_BENCH_BACKENDS=cuda)
#   BNORM_BENCH_BACKENDS=cuda,flex bash .gpu-bench/bench.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p .git/info
grep -qxF '/.gpu-bench/' .git/info/exclude 2>/dev/null || echo '/.gpu-bench/' >> .git/info/exclude
rm -rf .gpu-bench
mkdir -p .gpu-bench/bin
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
export CARGO_TARGET_DIR=${GPU_TARGET_DIR:-$root/target/gpu}
export PACK_BENCHES=${PACK_BENCHES:-cbn_vs_conv_batchnorm brn_vs_batchnorm}
benches=()
for name in $PACK_BENCHES; do benches+=(--bench "$name"); done
cargo bench --features cuda --no-run "${benches[@]}" --message-format=json > .gpu-bench/bin/build.json
python3 - "$root" <<'PY'
import json, os, shutil, sys
root = sys.argv[1]
names = []
for line in open(os.path.join(root, ".gpu-bench/bin/build.json")):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and "bench" in msg["target"]["kind"]:
        name = msg["target"]["name"]
        shutil.copy2(msg["executable"], os.path.join(root, ".gpu-bench/bin", name))
        names.append(name)
open(os.path.join(root, ".gpu-bench/bin/benches.txt"), "w").write("\n".join(names) + "\n")
print("packed benches:", " ".join(names))
PY
rm -f .gpu-bench/bin/build.json
for f in .gpu-bench/bin/*; do
  [ "$f" = .gpu-bench/bin/benches.txt ] || { strip "$f"; xz -T0 -6 "$f"; }
done
cat > .gpu-bench/bench.sh <<'RUN'
#!/usr/bin/env bash
# Runs the packed benchmarks (CUDA by default) from the project root;
# arguments go to each bench (criterion's filters and flags).
set -u
root=$(pwd)
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export BNORM_BENCH_BACKENDS=${BNORM_BENCH_BACKENDS:-cuda}
# Unpacked binaries and criterion's files in scratch folders, not in the
# pack: a pack that has been run must still fit a device call.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export CRITERION_HOME=${CRITERION_HOME:-$scratch/criterion}
command -v nvidia-smi >/dev/null && nvidia-smi -L
while read -r name; do
  [ -n "$name" ] || continue
  xz -dc "$root/.gpu-bench/bin/$name.xz" > "$scratch/$name"
  chmod +x "$scratch/$name"
  echo "=== bench $name"
  "$scratch/$name" --bench "$@"
done < "$root/.gpu-bench/bin/benches.txt"
RUN
chmod +x .gpu-bench/bench.sh
du -sh .gpu-bench/bin
