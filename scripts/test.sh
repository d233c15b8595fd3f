#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches the ONNX Runtime library (PyPI wheel)
# and python's `onnx` checker, then one cargo build and every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/fetch-onnxruntime.sh
export ORT_DYLIB_PATH="$root/.ort/libonnxruntime.so"

# onnx.checker validates the exported graphs (tests that need it skip nothing when present).
python3 -c 'import onnx' 2>/dev/null || python3 -m pip install --quiet onnx

# A real ffmpeg (Debian's) for the video-file test against it; where it cannot be installed
# (no apt, no root, no network) that test prints SKIPPED and the stand-in tests still run.
if ! command -v ffmpeg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q ffmpeg >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q ffmpeg >/dev/null 2>&1; } \
        || echo "ffmpeg could not be installed: the real-ffmpeg video test will be SKIPPED"
fi

cargo build --workspace --all-targets
cargo test --workspace
# Tests that need the onnx python package.
cargo test -p unireward-export --test graph_roundtrip -- --ignored onnx_checker
# The CUDA build (no GPU here): CUDA 13.0's nvcc and libraries from PyPI (scripts/fetch-cuda.sh),
# candle's kernels and the custom ops' compiled by nvcc, engine (with the CUDA and TensorRT
# execution providers) and trainer linked. Then the GPU tests, compiled and run: with the driver
# stub on the library path they find no device and print `SKIPPED: no CUDA device`.
scripts/fetch-cuda.sh >/dev/null
(
    eval "$(scripts/fetch-cuda.sh --env)"
    cargo build -p unireward-engine -p unireward-trainer \
        --features unireward-engine/tensorrt,unireward-trainer/cuda
    LD_LIBRARY_PATH="$root/.cuda/lib:$root/.cuda/lib/stubs" cargo test \
        -p unireward-models -p unireward-tests -p unireward-trainer \
        --features unireward-models/cuda,unireward-tests/cuda,unireward-trainer/cuda \
        --test cuda_ops --test cuda_golden --test cuda_dpo -- --nocapture
)
