// log softmax(logits)[label] per row (ops/log_softmax_gather.rs) and its backward.
// Forward: one block per row; each thread keeps a running (max, Σ exp) over its strided share
// of the vocabulary (one read of the row), and the block merges the pairs. Backward: one
// thread per logit, dL/dx = g · (onehot(label) − exp(x − lse)) with lse = x[label] − log p.
#include "common.cuh"

#define IGNORE_INDEX 0xffffffffu

// The pair (m, s) stands for s · exp(m): merging rescales to the larger maximum. An empty
// pair is (−∞, 0), which must not produce −∞ − (−∞) = NaN.
template <typename A>
__device__ __forceinline__ void lse_merge(A &m, A &s, A m2, A s2) {
    if (m2 == neg_inf<A>()) return;
    if (m == neg_inf<A>()) {
        m = m2;
        s = s2;
        return;
    }
    if (m2 > m) {
        s = s * exp_acc(m - m2) + s2;
        m = m2;
    } else {
        s += s2 * exp_acc(m2 - m);
    }
}

template <typename A>
__device__ void block_lse_merge(A &m, A &s) {
    __shared__ A part_m[32], part_s[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        A m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        A s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        lse_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        const bool live = lane < (int)(blockDim.x >> 5);
        m = live ? part_m[lane] : neg_inf<A>();
        s = live ? part_s[lane] : A(0);
        for (int offset = 16; offset > 0; offset >>= 1) {
            A m2 = __shfl_xor_sync(0xffffffffu, m, offset);
            A s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            lse_merge(m, s, m2, s2);
        }
        if (lane == 0) {
            part_m[0] = m;
            part_s[0] = s;
        }
    }
    __syncthreads();
    m = part_m[0];
    s = part_s[0];
}

template <typename T, typename A>
__device__ void forward(const T *logits, const uint32_t *labels, A *log_probs, size_t vocab) {
    const size_t row = blockIdx.x;
    const uint32_t label = labels[row];
    if (label == IGNORE_INDEX) {
        if (threadIdx.x == 0) log_probs[row] = A(0);
        return;
    }
    logits += row * vocab;
    A m = neg_inf<A>(), s = A(0);
    for (size_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const A v = to_acc(logits[i]);
        if (v == neg_inf<A>()) continue;
        if (v > m) {
            s = (m == neg_inf<A>() ? A(0) : s * exp_acc(m - v)) + A(1);
            m = v;
        } else {
            s += exp_acc(v - m);
        }
    }
    block_lse_merge(m, s);
    if (threadIdx.x == 0) log_probs[row] = to_acc(logits[label]) - (m + log_acc(s));
}

// log_prob_grad is [rows, 2]: the forward's log p and dL/d(log p).
template <typename T, typename A>
__device__ void grad_logits(const T *logits, const uint32_t *labels, const A *log_prob_grad, T *dx,
                            size_t n_rows, size_t vocab) {
    FOR_EACH_ELEMENT(i, n_rows * vocab) {
        const size_t row = i / vocab, col = i % vocab;
        const uint32_t label = labels[row];
        const A g = log_prob_grad[2 * row + 1];
        if (label == IGNORE_INDEX || g == A(0)) {
            dx[i] = from_acc<T>(A(0));
            continue;
        }
        const A label_logit = to_acc(logits[row * vocab + label]);
        const A lse = label_logit - log_prob_grad[2 * row];
        const A p = exp_acc(to_acc(logits[i]) - lse);
        dx[i] = from_acc<T>(col == label ? g * (A(1) - exp_acc(label_logit - lse)) : -g * p);
    }
}

#define LOG_SOFTMAX_GATHER_KERNELS(S, T)                                                               \
    extern "C" __global__ void log_softmax_gather_fwd_##S(const T *logits, const uint32_t *labels,    \
                                                          AccOf<T>::type *log_probs, size_t vocab) {   \
        forward<T, AccOf<T>::type>(logits, labels, log_probs, vocab);                                  \
    }                                                                                                  \
    extern "C" __global__ void log_softmax_gather_grad_##S(                                           \
        const T *logits, const uint32_t *labels, const AccOf<T>::type *log_prob_grad, T *dx,          \
        size_t n_rows, size_t vocab) {                                                                 \
        grad_logits<T, AccOf<T>::type>(logits, labels, log_prob_grad, dx, n_rows, vocab);              \
    }

FOR_EACH_FLOAT(LOG_SOFTMAX_GATHER_KERNELS)
