// RMSNorm over the last dimension (ops/rms_norm.rs): forward, dL/dx, and dL/dw as per-row
// factors r, then partial sums over blocks of rows, then their in-order total.
// One block per row for the row kernels.
#include "common.cuh"

template <typename T, typename A>
__device__ A inv_rms(const T *x, size_t dim, A eps) {
    A sum_sq = A(0);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x) {
        A v = to_acc(x[i]);
        sum_sq += v * v;
    }
    sum_sq = block_sum(sum_sq);
    return A(1) / sqrt_acc(sum_sq / A(dim) + eps);
}

template <typename T, typename A>
__device__ void forward(const T *x, const T *w, T *y, size_t dim, A eps) {
    const size_t row = blockIdx.x;
    x += row * dim;
    y += row * dim;
    const A r = inv_rms(x, dim, eps);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
        y[i] = from_acc<T>(to_acc(x[i]) * r * to_acc(w[i]));
}

template <typename T, typename A>
__device__ void grad_input(const T *x, const T *w, const T *g, T *dx, size_t dim, A eps) {
    const size_t row = blockIdx.x;
    x += row * dim;
    g += row * dim;
    dx += row * dim;
    const A r = inv_rms(x, dim, eps);
    A gwx = A(0);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
        gwx += to_acc(g[i]) * to_acc(w[i]) * to_acc(x[i]);
    gwx = block_sum(gwx);
    const A coef = r * r * r * gwx / A(dim);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
        dx[i] = from_acc<T>(r * to_acc(g[i]) * to_acc(w[i]) - coef * to_acc(x[i]));
}

template <typename T, typename A>
__device__ void row_factors(const T *x, A *r, size_t dim, A eps) {
    const size_t row = blockIdx.x;
    const A v = inv_rms(x + row * dim, dim, eps);
    if (threadIdx.x == 0) r[row] = v;
}

// Grid (columns / blockDim.x, row blocks): partials[block.y * dim + j] = Σ g·x·r over the block's rows.
template <typename T, typename A>
__device__ void grad_weight_partials(const T *x, const T *g, const A *r, A *partials, size_t n_rows, size_t dim) {
    const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    const size_t begin = (size_t)blockIdx.y * ROWS_PER_PARTIAL;
    const size_t end = min(begin + ROWS_PER_PARTIAL, n_rows);
    A acc = A(0);
    for (size_t row = begin; row < end; ++row)
        acc += to_acc(g[row * dim + j]) * to_acc(x[row * dim + j]) * r[row];
    partials[(size_t)blockIdx.y * dim + j] = acc;
}

#define RMS_NORM_KERNELS(S, T)                                                                         \
    extern "C" __global__ void rms_norm_fwd_##S(const T *x, const T *w, T *y, size_t dim,             \
                                                AccOf<T>::type eps) {                                  \
        forward<T, AccOf<T>::type>(x, w, y, dim, eps);                                                 \
    }                                                                                                  \
    extern "C" __global__ void rms_norm_grad_input_##S(const T *x, const T *w, const T *g, T *dx,     \
                                                       size_t dim, AccOf<T>::type eps) {              \
        grad_input<T, AccOf<T>::type>(x, w, g, dx, dim, eps);                                          \
    }                                                                                                  \
    extern "C" __global__ void rms_norm_row_factors_##S(const T *x, AccOf<T>::type *r, size_t dim,    \
                                                        AccOf<T>::type eps) {                          \
        row_factors<T, AccOf<T>::type>(x, r, dim, eps);                                                \
    }                                                                                                  \
    extern "C" __global__ void rms_norm_grad_weight_partials_##S(                                     \
        const T *x, const T *g, const AccOf<T>::type *r, AccOf<T>::type *partials, size_t n_rows,     \
        size_t dim) {                                                                                  \
        grad_weight_partials<T, AccOf<T>::type>(x, g, r, partials, n_rows, dim);                       \
    }                                                                                                  \
    extern "C" __global__ void rms_norm_sum_partials_##S(const AccOf<T>::type *partials,              \
                                                         size_t n_partials, size_t width, T *out) {   \
        sum_partials<T, AccOf<T>::type>(partials, n_partials, width, out);                             \
    }

FOR_EACH_FLOAT(RMS_NORM_KERNELS)
