#!/usr/bin/env bash
# Puts a CUDA 13.0 toolkit, enough to BUILD the `cuda` feature (candle's kernels, ours, and
# the link against cuBLAS / cuRAND / NVRTC / the driver), into .cuda/ at the repository root.
# No GPU and no driver are needed: everything comes from NVIDIA's PyPI wheels (pip is the
# only client), and the driver library the binaries link against is a stub made here from
# cuda.h (the real libcuda.so.1 of the machine that runs them is what gets loaded).
#
#   scripts/fetch-cuda.sh            # installs (idempotent) and prints the environment
#   eval "$(scripts/fetch-cuda.sh --env)"   # sets it in the calling shell
#   cargo build -p unireward-engine -p unireward-trainer --features cuda
#
# CUDA 13.0 on purpose: PTX from a newer nvcc does not load on an older driver, and a 580
# driver (the common one on Hopper machines) runs 13.0. The binaries need, at run time, the
# CUDA 13 libcudart/libcublas/libcublasLt/libcurand/libnvrtc: .cuda/lib has them, and so do
# Python's `nvidia-*` (CUDA 13) packages.
set -euo pipefail

# One pinned set: the CUDA 13.0 update 2 components.
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
# sm_90 (Hopper): candle's kernels are built for it (cudaforge makes that sm_90a); ours are
# PTX for compute_90, which newer GPUs JIT-compile. Override for another GPU.
COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cuda"
stamp="$dest/VERSION"
want="${WHEELS[*]}"

print_env() {
    echo "export CUDA_ROOT=\"$dest\""
    echo "export CUDA_PATH=\"$dest\""
    echo "export CUDA_HOME=\"$dest\""
    echo "export NVCC=\"$dest/bin/nvcc\""
    echo "export PATH=\"$dest/bin:\$PATH\""
    echo "export CUDA_COMPUTE_CAP=$COMPUTE_CAP"
    echo "export CUDARC_CUDA_VERSION=13000"
}

if [[ "${1:-}" == "--env" ]]; then
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        "$0" >&2
    fi
    print_env
    exit 0
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/bin/nvcc" ]]; then
    echo "fetch-cuda: CUDA 13.0 already in $dest"
    print_env
    exit 0
fi

python="$(command -v python3 || command -v python || true)"
if [[ -z "$python" ]]; then
    echo "fetch-cuda: needs python3 with pip" >&2
    exit 1
fi
cc="$(command -v gcc || command -v cc || true)"
if [[ -z "$cc" ]]; then
    echo "fetch-cuda: needs gcc (nvcc's host compiler, and to make the driver stub)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$python" -m pip download --quiet --no-deps --only-binary=:all: "${WHEELS[@]}" -d "$tmp"

# The wheels are zips laying the toolkit out under nvidia/cu13/{bin,include,lib,nvvm}, the
# layout nvcc.profile expects relative to nvcc: flatten that prefix into .cuda/, keeping the
# executable bits (Python's zipfile drops them).
rm -rf "$dest"
mkdir -p "$dest"
"$python" - "$dest" "$tmp"/*.whl <<'EOF'
import os, sys, zipfile
dest, wheels = sys.argv[1], sys.argv[2:]
prefix = "nvidia/cu13/"
n = 0
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            rel = info.filename[len(prefix):]
            if rel.startswith(".metadata/"):
                continue
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as f:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(out, mode)
            n += 1
if n == 0:
    sys.exit("fetch-cuda: no nvidia/cu13 files in the wheels")
print(f"fetch-cuda: {n} files from {len(wheels)} wheels")
EOF
chmod +x "$dest/bin/"* "$dest/nvvm/bin/"*

# Unversioned names for the linker (-lcublas finds libcublas.so; the binary then records
# the SONAME, libcublas.so.13, which is what gets loaded at run time).
(
    cd "$dest/lib"
    for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
        [[ -e "$lib" ]] || { echo "fetch-cuda: $lib missing from the wheels" >&2; exit 1; }
        ln -sf "$lib" "${lib%.so.*}.so"
    done
)

# The driver API library is not on PyPI (it comes with the driver). The linker only needs a
# library named libcuda.so.1 exporting the symbols: every cu* function cuda.h declares, under
# both its current and its legacy (pre-_v2) names. Each returns CUDA_ERROR_NO_DEVICE (100),
# so a binary run here with lib/stubs on LD_LIBRARY_PATH starts and finds no GPU (the GPU
# tests then print their SKIPPED line); never put lib/stubs on a GPU machine's path.
mkdir -p "$dest/lib/stubs"
for defs in "" "-D__CUDA_API_VERSION_INTERNAL"; do
    "$cc" -E $defs -x c "$dest/include/cuda.h"
done | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
    | grep -vxE 'cuGetErrorString|cuGetErrorName' \
    | awk '{ printf "int %s(void) { return 100; }\n", $1 }' >"$tmp/cuda_stub.c"
# The two that describe an error answer, so that the error reads as what it is.
cat >>"$tmp/cuda_stub.c" <<'STUB'
int cuGetErrorString(int error, const char **text) {
    (void)error;
    *text = "no CUDA driver here (the link stub of scripts/fetch-cuda.sh)";
    return 0;
}
int cuGetErrorName(int error, const char **text) {
    (void)error;
    *text = "CUDA_ERROR_NO_DEVICE";
    return 0;
}
STUB
"$cc" -shared -fPIC -o "$dest/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$tmp/cuda_stub.c"
ln -sf libcuda.so "$dest/lib/stubs/libcuda.so.1"

echo "$want" >"$stamp"
"$dest/bin/nvcc" --version | tail -n2
echo "fetch-cuda: CUDA 13.0 -> $dest ($(du -sh "$dest" | cut -f1))"
print_env
