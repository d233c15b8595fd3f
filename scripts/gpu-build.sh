#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/gpu-check.sh runs on a GPU machine,
# into gpu-bin/ (git-ignored): the GPU test binaries and the binaries they drive, stripped
# and packed as gpu-bin/bin.tar.xz (the PTX the binaries embed is text and packs ~10x), at
# most 60 MB so that it travels with the working tree.
#
#   scripts/gpu-build.sh              # dev profile (dependencies at opt-level 3, as tests)
#   scripts/gpu-build.sh --release    # release profile (a second full build of everything)
#
# The dev profile shares its artifacts with `cargo build --features cuda` (scripts/test.sh);
# what the GPU runs (candle's and our kernels, cuBLAS) is the same in both.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile_args=()
if [[ "${1:-}" == "--release" ]]; then
    profile_args=(--release)
fi
eval "$(scripts/fetch-cuda.sh --env)"

out="$root/gpu-bin"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
rm -rf "$out"
mkdir -p "$out"

features=unireward-models/cuda,unireward-tests/cuda,unireward-trainer/cuda,unireward-engine/cuda
# Test binaries: cargo names them with a hash; its JSON messages say which file is which.
cargo test "${profile_args[@]}" --no-run --message-format=json --features "$features" \
    -p unireward-models --test cuda_ops \
    -p unireward-tests --test cuda_golden \
    -p unireward-trainer --test cuda_dpo >"$stage/tests.json"
# The binaries the tests drive (cuda_dpo runs `trainer`), and the bench (it runs `trainer`).
cargo build "${profile_args[@]}" --message-format=json \
    --features unireward-engine/tensorrt,unireward-trainer/cuda,unireward-benches/cuda \
    -p unireward-trainer --bin trainer -p unireward-engine --bin engine \
    -p unireward-benches --bin bench-gpu >"$stage/bins.json"

python3 - "$stage" "$stage/tests.json" "$stage/bins.json" <<'EOF'
import json, os, shutil, sys
stage, files = sys.argv[1], sys.argv[2:]
wanted = {"cuda_ops", "cuda_golden", "cuda_dpo", "trainer", "engine", "bench-gpu"}
found = {}
for path in files:
    for line in open(path):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        name = msg["target"]["name"]
        if name in wanted:
            found[name] = msg["executable"]
missing = wanted - found.keys()
if missing:
    sys.exit(f"gpu-build: no executable for {sorted(missing)}")
os.makedirs(os.path.join(stage, "bin"))
for name, exe in sorted(found.items()):
    shutil.copy2(exe, os.path.join(stage, "bin", name))
EOF

strip "$stage/bin/"*
{
    echo "built $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
    echo "profile ${profile_args[*]:-dev}; features $features"
    "$CUDA_ROOT/bin/nvcc" --version | tail -n1
    echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP (candle's kernels: sm_${CUDA_COMPUTE_CAP}a; ours: PTX compute_90)"
    echo "needs at run time (from the driver and CUDA 13 nvidia-* Python packages):"
    objdump -p "$stage/bin/trainer" | awk '/NEEDED/ {print "  " $2}'
    echo "binaries (stripped):"
    (cd "$stage/bin" && ls -l | awk 'NR > 1 {printf "  %-12s %6.1f MB\n", $9, $5 / 1e6}')
} >"$out/MANIFEST"
tar -cJf "$out/bin.tar.xz" -C "$stage" bin
cp "$out/MANIFEST" "$stage/MANIFEST"

size=$(stat -c %s "$out/bin.tar.xz")
cat "$out/MANIFEST"
echo "gpu-build: gpu-bin/bin.tar.xz $(awk -v s="$size" 'BEGIN {printf "%.1f MB", s / 1e6}')"
if ((size > 60 * 1000 * 1000)); then
    echo "gpu-build: gpu-bin/bin.tar.xz is over 60 MB" >&2
    exit 1
fi
