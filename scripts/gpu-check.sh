#!/usr/bin/env bash
# Every GPU test and bench, on a machine with an NVIDIA GPU, from the binaries that
# scripts/gpu-build.sh put into gpu-bin/ (nothing is built or downloaded here), and one
# summary table at the end. Each check has a time limit; the whole run stays under 8 minutes.
#
#   scripts/gpu-build.sh        # on the build machine (no GPU needed)
#   scripts/gpu-check.sh        # on the GPU machine, in a copy of the working tree + gpu-bin/
#
# The binaries need libcuda.so.1 (the driver) and CUDA 13 libcudart / libcublas /
# libcublasLt / libcurand / libnvrtc: they are looked for in Python's nvidia-* packages, then
# /usr/local/cuda, then .cuda/lib (scripts/fetch-cuda.sh). Where no GPU is present (or a
# library is missing) the GPU rows say SKIP and why, and the script still exits 0 unless a
# check that ran failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

rows=()
failed=0
row() { # name status seconds detail
    rows+=("$(printf '%-34s %-5s %7s  %s' "$1" "$2" "$3" "$4")")
    [[ "$2" == FAIL ]] && failed=1
    return 0
}

echo "== gpu-check $(date -u +%FT%TZ) on $(hostname)"

# -- The machine: GPU, driver, CUDA libraries ------------------------------------------------
gpu="none"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n1)"
fi
echo "GPU: $gpu"

libdirs=()
python="$(command -v python3 || command -v python || true)"
if [[ -n "$python" ]]; then
    # nvidia-* wheels: nvidia/cu13/lib (CUDA 13) and nvidia/<lib>/lib (CUDA 12 layout).
    while IFS= read -r d; do
        [[ -n "$d" ]] && libdirs+=("$d")
    done < <("$python" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for base in list(nvidia.__path__):
    for d in sorted(glob.glob(os.path.join(base, "*", "lib"))):
        if glob.glob(os.path.join(d, "lib*.so*")):
            print(d)
EOF
)
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib "$root/.cuda/lib"; do
    [[ -d "$d" ]] && libdirs+=("$d")
done
# Off a GPU machine, the driver stub that fetch-cuda.sh made lets the binaries start (and
# find no device). Never on a machine with a driver: it would shadow the real libcuda.
if [[ "$gpu" == none ]] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    [[ -d "$root/.cuda/lib/stubs" ]] && libdirs+=("$root/.cuda/lib/stubs")
fi
if ((${#libdirs[@]})); then
    LD_LIBRARY_PATH="$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
fi
echo "library dirs: ${libdirs[*]:-(none)}"

# -- The binaries ------------------------------------------------------------------------------
bin="$work/bin"
if [[ -f gpu-bin/bin.tar.xz ]]; then
    if ! tar -xJf gpu-bin/bin.tar.xz -C "$work" 2>/dev/null; then
        # No xz binary: Python's tarfile reads it too.
        "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            gpu-bin/bin.tar.xz "$work"
    fi
    cat gpu-bin/MANIFEST 2>/dev/null | head -n 4
fi

# Libraries a binary needs that the loader cannot find (empty when it can start).
missing_libs() {
    ldd "$1" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' '
}

# run_test NAME BINARY LIMIT_S [env...]: runs a cargo test binary, one row from its outcome.
run_test() {
    local name="$1" base="$2" exe="$bin/$2" limit="$3"
    shift 3
    if [[ ! -x "$exe" ]]; then
        row "$name" SKIP - "no $base in gpu-bin/ (run scripts/gpu-build.sh on the build machine)"
        return
    fi
    local missing
    missing="$(missing_libs "$exe")"
    if [[ -n "$missing" ]]; then
        if [[ "$gpu" == none ]]; then
            row "$name" SKIP - "no GPU, and cannot load: $missing"
        else
            row "$name" FAIL - "cannot load: $missing(need CUDA 13 nvidia-* packages)"
        fi
        return
    fi
    local log="$work/$base.log" start end status
    start=$(date +%s.%N)
    env "$@" UNIREWARD_REPO="$root" timeout "$limit" "$exe" --nocapture --test-threads=1 >"$log" 2>&1
    status=$?
    end=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
    echo "---- $name ($base)"
    grep -E '^(cuda-|SKIPPED|test result|test .* (FAILED|ok)$)|panicked' "$log" | head -n 80
    local summary
    summary="$(grep -E '^test result' "$log" | tail -n1 | sed -E 's/^test result: //; s/; finished in.*//')"
    if ((status == 124)); then
        row "$name" FAIL "$secs" "timed out after ${limit}s"
    elif ((status != 0)); then
        row "$name" FAIL "$secs" "${summary:-exit $status} (log above)"
    elif grep -q '^SKIPPED: no CUDA device' "$log"; then
        row "$name" SKIP "$secs" "no CUDA device ($summary)"
    else
        row "$name" PASS "$secs" "$summary"
    fi
}

run_test "custom ops fwd+bwd: cuda vs cpu" cuda_ops 90
run_test "golden checkpoint: cuda vs hf" cuda_golden 45
run_test "dpo steps: cuda vs cpu" cuda_dpo 120 UNIREWARD_TRAINER_BIN="$bin/trainer"

# -- Timings: ov-0.5b-shaped model, bf16, candle vs PyTorch eager on this GPU ----------------
bench_rows() {
    local exe="$bin/bench-gpu"
    if [[ ! -x "$exe" ]]; then
        row "bench: forward + dpo step" SKIP - "no bench-gpu in gpu-bin/"
        return
    fi
    if [[ "$gpu" == none ]]; then
        row "bench: forward + dpo step" SKIP - "no GPU"
        return
    fi
    local missing
    missing="$(missing_libs "$exe")"
    if [[ -n "$missing" ]]; then
        row "bench: forward + dpo step" FAIL - "cannot load: $missing"
        return
    fi
    local torch_args=() torch_note=""
    if [[ -n "$python" ]] && "$python" -c 'import torch, transformers, safetensors; assert torch.cuda.is_available()' 2>/dev/null; then
        torch_args=(--torch "$python")
    else
        torch_note="python with torch (CUDA) + transformers + safetensors not found"
    fi
    local log="$work/bench-gpu.log" start status secs
    start=$(date +%s.%N)
    UNIREWARD_REPO="$root" timeout 200 "$exe" --trainer "$bin/trainer" "${torch_args[@]}" >"$log" 2>&1
    status=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    echo "---- bench-gpu"
    cat "$log" | tail -n 30
    if ((status != 0)); then
        row "bench: forward + dpo step" FAIL "$secs" "$( ((status == 124)) && echo "timed out after 200s" || echo "exit $status (log above)")"
        return
    fi
    local v
    v="$(grep -E '^bench-gpu forward' "$log" | grep -oE 'median [0-9.]+ s' | head -n1)"
    row "forward ov-0.5b bf16: candle" PASS "$secs" "$v"
    v="$(grep -E '^bench-gpu dpo step' "$log" | grep -oE 'mean [0-9.]+ s' | head -n1)"
    row "dpo step ov-0.5b bf16: candle" PASS - "$v"
    if ((${#torch_args[@]})); then
        v="$(grep -E '^torch forward' "$log" | grep -oE 'median [0-9.]+ s' | head -n1)"
        row "forward ov-0.5b bf16: torch" PASS - "$v"
        v="$(grep -E '^torch dpo step' "$log" | grep -oE 'median [0-9.]+ s' | head -n1)"
        row "dpo step ov-0.5b bf16: torch" PASS - "$v"
        v="$(grep -E '^bench-gpu candle/torch' "$log" | sed -E 's/^bench-gpu candle\/torch time: //')"
        row "candle / torch time" INFO - "$v"
    else
        row "torch reference" SKIP - "$torch_note"
    fi
}
bench_rows

# -- Summary ---------------------------------------------------------------------------------
echo
echo "== summary (GPU: $gpu)"
printf '%-34s %-5s %7s  %s\n' check state seconds detail
for r in "${rows[@]}"; do
    echo "$r"
done
exit "$failed"
