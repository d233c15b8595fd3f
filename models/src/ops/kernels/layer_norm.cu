// LayerNorm over the last dimension (ops/layer_norm.rs): forward, dL/dx, and dL/dw, dL/db as
// per-row (mean, r), then partial sums over blocks of rows, then their in-order total.
// One block per row for the row kernels.
#include "common.cuh"

// The row's mean and 1 / sqrt(var + eps), two passes as on the CPU (accurate when the mean
// is large against the spread).
template <typename T, typename A>
__device__ void mean_and_inv_std(const T *x, size_t dim, A eps, A *mean_out, A *r_out) {
    A sum = A(0);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x) sum += to_acc(x[i]);
    const A mean = block_sum(sum) / A(dim);
    A sum_sq = A(0);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x) {
        A d = to_acc(x[i]) - mean;
        sum_sq += d * d;
    }
    sum_sq = block_sum(sum_sq);
    *mean_out = mean;
    *r_out = A(1) / sqrt_acc(sum_sq / A(dim) + eps);
}

template <typename T, typename A>
__device__ void forward(const T *x, const T *w, const T *b, T *y, size_t dim, A eps) {
    const size_t row = blockIdx.x;
    x += row * dim;
    y += row * dim;
    A mean, r;
    mean_and_inv_std(x, dim, eps, &mean, &r);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x)
        y[i] = from_acc<T>((to_acc(x[i]) - mean) * r * to_acc(w[i]) + to_acc(b[i]));
}

template <typename T, typename A>
__device__ void grad_input(const T *x, const T *w, const T *g, T *dx, size_t dim, A eps) {
    const size_t row = blockIdx.x;
    x += row * dim;
    g += row * dim;
    dx += row * dim;
    A mean, r;
    mean_and_inv_std(x, dim, eps, &mean, &r);
    A sum_gw = A(0), sum_gw_xhat = A(0);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x) {
        const A gw = to_acc(g[i]) * to_acc(w[i]);
        sum_gw += gw;
        sum_gw_xhat += gw * (to_acc(x[i]) - mean) * r;
    }
    const A mean_gw = block_sum(sum_gw) / A(dim);
    const A mean_gw_xhat = block_sum(sum_gw_xhat) / A(dim);
    for (size_t i = threadIdx.x; i < dim; i += blockDim.x) {
        const A xhat = (to_acc(x[i]) - mean) * r;
        const A gw = to_acc(g[i]) * to_acc(w[i]);
        dx[i] = from_acc<T>(r * (gw - mean_gw - xhat * mean_gw_xhat));
    }
}

// stats[2·row] = mean, stats[2·row + 1] = r.
template <typename T, typename A>
__device__ void row_stats(const T *x, A *stats, size_t dim, A eps) {
    const size_t row = blockIdx.x;
    A mean, r;
    mean_and_inv_std(x + row * dim, dim, eps, &mean, &r);
    if (threadIdx.x == 0) {
        stats[2 * row] = mean;
        stats[2 * row + 1] = r;
    }
}

// Grid (columns / blockDim.x, row blocks): partials[block.y][j] = Σ g·x̂ (dL/dw) and
// partials[block.y][dim + j] = Σ g (dL/db), over the block's rows.
template <typename T, typename A>
__device__ void grad_params_partials(const T *x, const T *g, const A *stats, A *partials, size_t n_rows, size_t dim) {
    const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    const size_t begin = (size_t)blockIdx.y * ROWS_PER_PARTIAL;
    const size_t end = min(begin + ROWS_PER_PARTIAL, n_rows);
    A dw = A(0), db = A(0);
    for (size_t row = begin; row < end; ++row) {
        const A gv = to_acc(g[row * dim + j]);
        dw += gv * (to_acc(x[row * dim + j]) - stats[2 * row]) * stats[2 * row + 1];
        db += gv;
    }
    partials[(size_t)blockIdx.y * 2 * dim + j] = dw;
    partials[(size_t)blockIdx.y * 2 * dim + dim + j] = db;
}

#define LAYER_NORM_KERNELS(S, T)                                                                       \
    extern "C" __global__ void layer_norm_fwd_##S(const T *x, const T *w, const T *b, T *y,           \
                                                  size_t dim, AccOf<T>::type eps) {                    \
        forward<T, AccOf<T>::type>(x, w, b, y, dim, eps);                                              \
    }                                                                                                  \
    extern "C" __global__ void layer_norm_grad_input_##S(const T *x, const T *w, const T *g, T *dx,   \
                                                         size_t dim, AccOf<T>::type eps) {            \
        grad_input<T, AccOf<T>::type>(x, w, g, dx, dim, eps);                                          \
    }                                                                                                  \
    extern "C" __global__ void layer_norm_row_stats_##S(const T *x, AccOf<T>::type *stats,            \
                                                        size_t dim, AccOf<T>::type eps) {              \
        row_stats<T, AccOf<T>::type>(x, stats, dim, eps);                                              \
    }                                                                                                  \
    extern "C" __global__ void layer_norm_grad_params_partials_##S(                                   \
        const T *x, const T *g, const AccOf<T>::type *stats, AccOf<T>::type *partials, size_t n_rows, \
        size_t dim) {                                                                                  \
        grad_params_partials<T, AccOf<T>::type>(x, g, stats, partials, n_rows, dim);                   \
    }                                                                                                  \
    extern "C" __global__ void layer_norm_sum_partials_##S(const AccOf<T>::type *partials,            \
                                                           size_t n_partials, size_t width, T *out) { \
        sum_partials<T, AccOf<T>::type>(partials, n_partials, width, out);                             \
    }

FOR_EACH_FLOAT(LAYER_NORM_KERNELS)
