// Softmax over the last dimension (ops/softmax.rs), plain and causal, and its backward.
// One block per row.
#include "common.cuh"

// Softmax over the first `n` entries of the row; entries n.. are 0 (the causal mask).
template <typename T, typename A>
__device__ void softmax_row(const T *x, T *y, size_t dim, size_t n) {
    A max = neg_inf<A>();
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const A v = to_acc(x[i]);
        max = v > max ? v : max;
    }
    max = block_max(max);
    A sum = A(0);
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) sum += exp_acc(to_acc(x[i]) - max);
    const A inv_sum = A(1) / block_sum(sum);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
        y[i] = from_acc<T>(i < n ? exp_acc(to_acc(x[i]) - max) * inv_sum : A(0));
}

template <typename T, typename A>
__device__ void forward(const T *x, T *y, size_t dim) {
    const size_t row = blockIdx.x;
    softmax_row<T, A>(x + row * dim, y + row * dim, dim, dim);
}

// Query i = row mod queries sees keys 0 ..= past + i.
template <typename T, typename A>
__device__ void causal_forward(const T *x, T *y, size_t dim, size_t past, size_t queries) {
    const size_t row = blockIdx.x;
    const size_t n = min(past + row % queries + 1, dim);
    softmax_row<T, A>(x + row * dim, y + row * dim, dim, n);
}

// dL/dx = y · (g − Σ g·y).
template <typename T, typename A>
__device__ void grad_input(const T *y, const T *g, T *dx, size_t dim) {
    const size_t row = blockIdx.x;
    y += row * dim;
    g += row * dim;
    dx += row * dim;
    A gy = A(0);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x) gy += to_acc(g[i]) * to_acc(y[i]);
    gy = block_sum(gy);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
        dx[i] = from_acc<T>(to_acc(y[i]) * (to_acc(g[i]) - gy));
}

#define SOFTMAX_KERNELS(S, T)                                                                          \
    extern "C" __global__ void softmax_fwd_##S(const T *x, T *y, size_t dim) {                        \
        forward<T, AccOf<T>::type>(x, y, dim);                                                         \
    }                                                                                                  \
    extern "C" __global__ void causal_softmax_fwd_##S(const T *x, T *y, size_t dim, size_t past,      \
                                                      size_t queries) {                                \
        causal_forward<T, AccOf<T>::type>(x, y, dim, past, queries);                                   \
    }                                                                                                  \
    extern "C" __global__ void softmax_grad_##S(const T *y, const T *g, T *dx, size_t dim) {          \
        grad_input<T, AccOf<T>::type>(y, g, dx, dim);                                                  \
    }

FOR_EACH_FLOAT(SOFTMAX_KERNELS)
