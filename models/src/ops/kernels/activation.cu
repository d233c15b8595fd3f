// The MLP activations (ops/activation.rs), element-wise with grid-stride loops:
// gelu_tanh(x) = x·σ(2u), u = √(2/π)(x + 0.044715x³), and swiglu(g, u) = g·σ(g)·u, with their
// backward passes.
#include "common.cuh"

// (y, dy/dx) of gelu_tanh, as the CPU's gelu_parts.
template <typename A>
__device__ __forceinline__ void gelu_parts(A x, A &y, A &dy) {
    const A c = A(0.7978845608028654);  // √(2/π)
    const A k = A(0.044715);
    const A x2 = x * x;
    const A s = sigmoid_acc(A(2) * c * (x + k * x2 * x));
    const A t = A(2) * s - A(1);
    y = x * s;
    dy = A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * c * (A(1) + A(3) * k * x2);
}

template <typename T, typename A>
__device__ void gelu_fwd(const T *x, T *y, size_t n) {
    FOR_EACH_ELEMENT(i, n) {
        A v, d;
        gelu_parts(to_acc(x[i]), v, d);
        y[i] = from_acc<T>(v);
    }
}

template <typename T, typename A>
__device__ void gelu_grad(const T *x, const T *g, T *dx, size_t n) {
    FOR_EACH_ELEMENT(i, n) {
        A v, d;
        gelu_parts(to_acc(x[i]), v, d);
        dx[i] = from_acc<T>(d * to_acc(g[i]));
    }
}

template <typename T, typename A>
__device__ void swiglu_fwd(const T *gate, const T *up, T *y, size_t n) {
    FOR_EACH_ELEMENT(i, n) {
        const A g = to_acc(gate[i]);
        y[i] = from_acc<T>(g * sigmoid_acc(g) * to_acc(up[i]));
    }
}

// dL/dgate = d·u·σ(g)(1 + g(1 − σ(g))). (dL/dup = d·silu(g) is candle's silu and product.)
template <typename T, typename A>
__device__ void swiglu_grad_gate(const T *gate, const T *up, const T *d, T *d_gate, size_t n) {
    FOR_EACH_ELEMENT(i, n) {
        const A g = to_acc(gate[i]);
        const A s = sigmoid_acc(g);
        d_gate[i] = from_acc<T>(to_acc(d[i]) * to_acc(up[i]) * s * (A(1) + g * (A(1) - s)));
    }
}

#define ACTIVATION_KERNELS(S, T)                                                                       \
    extern "C" __global__ void gelu_tanh_fwd_##S(const T *x, T *y, size_t n) {                        \
        gelu_fwd<T, AccOf<T>::type>(x, y, n);                                                          \
    }                                                                                                  \
    extern "C" __global__ void gelu_tanh_grad_##S(const T *x, const T *g, T *dx, size_t n) {          \
        gelu_grad<T, AccOf<T>::type>(x, g, dx, n);                                                     \
    }                                                                                                  \
    extern "C" __global__ void swiglu_fwd_##S(const T *gate, const T *up, T *y, size_t n) {           \
        swiglu_fwd<T, AccOf<T>::type>(gate, up, y, n);                                                 \
    }                                                                                                  \
    extern "C" __global__ void swiglu_grad_gate_##S(const T *gate, const T *up, const T *d,           \
                                                    T *d_gate, size_t n) {                             \
        swiglu_grad_gate<T, AccOf<T>::type>(gate, up, d, d_gate, n);                                   \
    }

FOR_EACH_FLOAT(ACTIVATION_KERNELS)
