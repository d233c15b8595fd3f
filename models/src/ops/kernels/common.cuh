// What the op kernels share: element <-> accumulator conversions, block-wide reductions,
// the per-column sum of partial results, and the macro that instantiates a kernel template
// once per dtype under a C name (`<kernel>_<dtype>`, what ops/cuda.rs loads).
//
// Like the CPU kernels, half types (bf16, f16) are read and written as such and accumulated
// in f32; f32 in f32, f64 in f64.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> struct AccOf { typedef float type; };
template <> struct AccOf<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v);
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
__device__ __forceinline__ float log_acc(float v) { return logf(v); }
__device__ __forceinline__ double log_acc(double v) { return log(v); }
__device__ __forceinline__ float sqrt_acc(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_acc(double v) { return sqrt(v); }

template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -INFINITY; }
template <> __device__ __forceinline__ double neg_inf<double>() { return -(double)INFINITY; }

template <typename A> __device__ __forceinline__ A sigmoid_acc(A x) {
    return A(1) / (A(1) + exp_acc(-x));
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        A o = __shfl_xor_sync(0xffffffffu, v, offset);
        v = o > v ? o : v;
    }
    return v;
}

// The sum of `v` over the block, returned to every thread. blockDim.x must be a multiple of
// 32 (the launches use 256 or 1024). The leading barrier lets a kernel call it repeatedly.
template <typename A> __device__ A block_sum(A v) {
    __shared__ A partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? partial[lane] : A(0);
        v = warp_sum(v);
        if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    return partial[0];
}

template <typename A> __device__ A block_max(A v) {
    __shared__ A partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? partial[lane] : neg_inf<A>();
        v = warp_max(v);
        if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    return partial[0];
}

// Rows a block of a parameter-gradient kernel sums into one partial result (the CPU kernels'
// ROWS_PER_BLOCK); the partials are then added in order, so results do not depend on timing.
#define ROWS_PER_PARTIAL 32

// out[j] = Σ_b partials[b * width + j], in the order of b, for j < width; one thread a column.
template <typename T, typename A>
__device__ void sum_partials(const A *partials, size_t n_partials, size_t width, T *out) {
    const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    A acc = A(0);
    for (size_t b = 0; b < n_partials; ++b) acc += partials[b * width + j];
    out[j] = from_acc<T>(acc);
}

// A grid-stride loop over n elements.
#define FOR_EACH_ELEMENT(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// `INSTANTIATE(M)` expands M(suffix, T) for each dtype the ops take.
#define FOR_EACH_FLOAT(M) \
    M(f32, float)         \
    M(f64, double)        \
    M(bf16, __nv_bfloat16) \
    M(f16, __half)
