// CUDA versions of the fused kernels in fused.rs: the MLP's activation, LayerNorm and softmax, each
// with its backward, the bias add with its column sums, and the attention heads' split and
// merge, for f32 and bf16 activations; and for wise-train's optimizer (through
// `wise_clip::fused`), AdamW's one-pass update and the gradients' sum of squares (f32). Compiled to PTX by
// build.rs when the `cuda` feature is on, loaded by fused_cuda.rs.
//
// Statistics and arithmetic are in f32 whatever the activations' dtype (as PyTorch autocast
// does); LayerNorm's weight and bias are the f32 master weights, read as they are.
// Gradients (y the output, g the incoming gradient), as in fused.rs:
//   QuickGELU y = x·σ(1.702x):  dx = g·(σ + 1.702·x·σ·(1−σ)); GELU: dx = g·(Φ(x) + x·φ(x))
//   LayerNorm y = x̂·w + b, x̂ = (x−μ)·r, r = (var+ε)^-½:
//             dx = r·(gw − mean(gw) − x̂·mean(gw·x̂)), dw = Σ_rows g·x̂, db = Σ_rows g
//   softmax   dx = y·(g − Σ g·y)

#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets it. `shared`: 32 floats.
__device__ float block_sum(float v, float *shared) {
    v = warp_sum(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // the previous call's readers are done with `shared`
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x / 32) ? shared[lane] : 0.0f;
    return warp_sum(v);
}

// W consecutive values of T, loaded or stored as one access of W·sizeof(T) bytes. The
// elementwise kernels below take `vec` = 1 when the caller has checked that rows hold a
// multiple of 16 / sizeof(T) values and every operand is 16-byte aligned: each thread then
// moves 16 bytes per access (8 bf16) instead of one value, the ~2× of bandwidth that
// one-value accesses leave unused.
template <typename T, int W> struct alignas(W * sizeof(T)) Pack {
    T v[W];
};
#define VEC(T) (16 / (int)sizeof(T))

// ---- The MLP's activation of x, plus a per-column f32 bias unless `b` is null (the bias of
// the product before it, folded in): a block per row, threads along it. act: 0 QuickGELU
// x·σ(1.702x), 1 GELU x·Φ(x) (erf), 2 GELU's tanh approximation, as fused.rs's Activation.

__device__ __forceinline__ float act_value(int act, float x) {
    if (act == 0) return x / (1.0f + expf(-1.702f * x));
    if (act == 1) return 0.5f * x * (1.0f + erff(x * 0.70710678f));
    return 0.5f * x * (1.0f + tanhf(0.7978846f * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float act_derivative(int act, float x) {
    if (act == 0) {
        const float s = 1.0f / (1.0f + expf(-1.702f * x));
        return s + 1.702f * x * s * (1.0f - s);
    }
    if (act == 1) return 0.5f * (1.0f + erff(x * 0.70710678f)) + x * expf(-0.5f * x * x) * 0.3989423f;
    const float t = tanhf(0.7978846f * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.7978846f * (1.0f + 3.0f * 0.044715f * x * x);
}

template <typename T, int W>
__device__ void activation_fwd_w(const T *x, const float *b, T *y, int rows, int cols, int act) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t row = (size_t)r * cols;
        for (int c = threadIdx.x * W; c < cols; c += blockDim.x * W) {
            const Pack<T, W> in = *(const Pack<T, W> *)(x + row + c);
            Pack<T, W> out;
            for (int e = 0; e < W; ++e) out.v[e] = from_f32<T>(act_value(act, to_f32(in.v[e]) + (b ? b[c + e] : 0.0f)));
            *(Pack<T, W> *)(y + row + c) = out;
        }
    }
}

template <typename T, int W>
__device__ void activation_bwd_w(const T *x, const float *b, const T *g, T *dx, int rows, int cols, int act) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t row = (size_t)r * cols;
        for (int c = threadIdx.x * W; c < cols; c += blockDim.x * W) {
            const Pack<T, W> in = *(const Pack<T, W> *)(x + row + c), gin = *(const Pack<T, W> *)(g + row + c);
            Pack<T, W> out;
            for (int e = 0; e < W; ++e) {
                const float v = to_f32(in.v[e]) + (b ? b[c + e] : 0.0f);
                out.v[e] = from_f32<T>(to_f32(gin.v[e]) * act_derivative(act, v));
            }
            *(Pack<T, W> *)(dx + row + c) = out;
        }
    }
}

// ---- LayerNorm: a warp per row, forwards and backwards --------------------------------
// (Block-wide reductions cost two barriers each, four per row backwards, for rows of only
// a few values per thread; a warp reduces with shuffles alone. A row, re-read for each
// pass, stays in L1.)

// Mean and (var + eps)^-½ of one row, two passes (exact for large means too); every lane
// of the warp gets them.
template <typename T>
__device__ void row_stats(const T *x, int cols, float eps, float *mean, float *rstd) {
    const int lane = threadIdx.x % 32;
    float s = 0.0f;
    for (int i = lane; i < cols; i += 32) s += to_f32(x[i]);
    const float m = warp_sum(s) / cols;
    float v = 0.0f;
    for (int i = lane; i < cols; i += 32) {
        const float d = to_f32(x[i]) - m;
        v += d * d;
    }
    *mean = m;
    *rstd = 1.0f / sqrtf(warp_sum(v) / cols + eps);
}

template <typename T>
__device__ void layer_norm_fwd(const T *x, const float *w, const float *b, T *y, int rows, int cols, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T *xr = x + (size_t)row * cols;
    T *yr = y + (size_t)row * cols;
    float mean, rstd;
    row_stats(xr, cols, eps, &mean, &rstd);
    for (int i = lane; i < cols; i += 32) yr[i] = from_f32<T>((to_f32(xr[i]) - mean) * rstd * w[i] + b[i]);
}

// The widest row the backward takes (its dw, db partial sums live in shared memory).
#define LN_MAX_WIDTH 2048
#define LN_ROWS_PER_BLOCK 32

// dx (f32, `rows × cols`) and dw, db (f32, zeroed by the caller): each block's warps take
// its LN_ROWS_PER_BLOCK rows in turn, add their rows' dw, db terms into the block's shared
// sums, and the block adds those to dw, db (one atomic add per column per block).
template <typename T>
__device__ void layer_norm_bwd(const T *x, const float *w, const T *g, float *dx, float *dw, float *db,
                               int rows, int cols, float eps) {
    __shared__ float acc[2 * LN_MAX_WIDTH];  // this block's dw, then db
    for (int i = threadIdx.x; i < 2 * cols; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const int first = blockIdx.x * LN_ROWS_PER_BLOCK;
    const int last = min(first + LN_ROWS_PER_BLOCK, rows);
    for (int r = first + threadIdx.x / 32; r < last; r += warps) {
        const T *xr = x + (size_t)r * cols;
        const T *gr = g + (size_t)r * cols;
        float *dxr = dx + (size_t)r * cols;
        float mean, rstd;
        row_stats(xr, cols, eps, &mean, &rstd);
        float s_gw = 0.0f, s_gwx = 0.0f;
        for (int i = lane; i < cols; i += 32) {
            const float xh = (to_f32(xr[i]) - mean) * rstd;
            const float gi = to_f32(gr[i]);
            s_gw += gi * w[i];
            s_gwx += gi * w[i] * xh;
            atomicAdd(acc + i, gi * xh);
            atomicAdd(acc + cols + i, gi);
        }
        const float m_gw = warp_sum(s_gw) / cols;
        const float m_gwx = warp_sum(s_gwx) / cols;
        for (int i = lane; i < cols; i += 32) {
            const float xh = (to_f32(xr[i]) - mean) * rstd;
            dxr[i] = rstd * (to_f32(gr[i]) * w[i] - m_gw - xh * m_gwx);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        atomicAdd(dw + i, acc[i]);
        atomicAdd(db + i, acc[cols + i]);
    }
}

// ---- softmax over the last dim: a warp per row -------------------------------------------

// Over the first `valid` columns of each row, the rest (padding key slots) getting 0; plus
// row `row % mask_rows` of the f32 additive `mask` [mask_rows, cols] unless it is null (the
// text tower's causal mask, folded in). Lanes take W consecutive values at a time.
template <typename T, int W>
__device__ void softmax_fwd_w(const T *x, const float *mask, T *y, int rows, int cols, int valid, int mask_rows) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T *xr = x + (size_t)row * cols;
    const float *mr = mask ? mask + (size_t)(row % mask_rows) * cols : nullptr;
    T *yr = y + (size_t)row * cols;
    // The score of column c + e from the values loaded at c.
    auto score = [&](const Pack<T, W> &in, int c, int e) { return to_f32(in.v[e]) + (mr ? mr[c + e] : 0.0f); };
    float m = -INFINITY;
    for (int c = lane * W; c < valid; c += 32 * W) {
        const Pack<T, W> in = *(const Pack<T, W> *)(xr + c);
        for (int e = 0; e < W; ++e)
            if (c + e < valid) m = fmaxf(m, score(in, c, e));
    }
    m = warp_max(m);
    float s = 0.0f;
    for (int c = lane * W; c < valid; c += 32 * W) {
        const Pack<T, W> in = *(const Pack<T, W> *)(xr + c);
        for (int e = 0; e < W; ++e)
            if (c + e < valid) s += expf(score(in, c, e) - m);
    }
    const float inv = 1.0f / warp_sum(s);
    for (int c = lane * W; c < cols; c += 32 * W) {
        const Pack<T, W> in = *(const Pack<T, W> *)(xr + c);
        Pack<T, W> out;
        for (int e = 0; e < W; ++e) out.v[e] = from_f32<T>(c + e < valid ? expf(score(in, c, e) - m) * inv : 0.0f);
        *(Pack<T, W> *)(yr + c) = out;
    }
}

template <typename T, int W>
__device__ void softmax_bwd_w(const T *y, const T *g, T *dx, int rows, int cols) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T *yr = y + (size_t)row * cols;
    const T *gr = g + (size_t)row * cols;
    T *dxr = dx + (size_t)row * cols;
    float dot = 0.0f;
    for (int c = lane * W; c < cols; c += 32 * W) {
        const Pack<T, W> yi = *(const Pack<T, W> *)(yr + c), gi = *(const Pack<T, W> *)(gr + c);
        for (int e = 0; e < W; ++e) dot += to_f32(gi.v[e]) * to_f32(yi.v[e]);
    }
    dot = warp_sum(dot);
    for (int c = lane * W; c < cols; c += 32 * W) {
        const Pack<T, W> yi = *(const Pack<T, W> *)(yr + c), gi = *(const Pack<T, W> *)(gr + c);
        Pack<T, W> out;
        for (int e = 0; e < W; ++e) out.v[e] = from_f32<T>(to_f32(yi.v[e]) * (to_f32(gi.v[e]) - dot));
        *(Pack<T, W> *)(dxr + c) = out;
    }
}

// ---- AdamW: one in-place pass over f32 weights and moments ------------------------------
// wise-train's optimizer step (PyTorch's order, the arithmetic of its CPU loop):
//   g ← s·g;  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  θ ← θ·decay − m / (√v / bias2 + ε) · step
// with decay = 1 − lr·wd, step = lr / (1 − β₁ᵗ), bias2 = √(1 − β₂ᵗ), s gradient clipping's scale.
// Op by op this is ~14 kernels per parameter tensor, each writing a temporary of its size.

extern "C" __global__ void adamw_f32(float *theta, float *m, float *v, const float *g, size_t n,
                                     float beta1, float beta2, float eps, float decay, float step,
                                     float bias2, float scale) {
    const float take1 = 1.0f - beta1, take2 = 1.0f - beta2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gi = scale == 1.0f ? g[i] : g[i] * scale;
        const float mi = m[i] * beta1 + gi * take1;
        const float vi = v[i] * beta2 + gi * gi * take2;
        m[i] = mi;
        v[i] = vi;
        theta[i] = theta[i] * decay - mi / (sqrtf(vi) / bias2 + eps) * step;
    }
}

// ---- Sum of squares (the gradient norm): each block's sum added atomically to *acc -------

extern "C" __global__ void sum_squares_f32(const float *x, size_t n, float *acc) {
    __shared__ float shared[32];
    float s = 0.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += x[i] * x[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

// ---- Bias add and its gradient: a block per row, threads along it -----------------------
// (candle's broadcast add computes each element's bias index with 64-bit divisions by
// dims read from device memory: slower than the matrix product before it.)

// out = y + b, plus `residual` unless it is null (a residual stream's add, folded in).
template <typename T, int W>
__device__ void bias_add_w(const T *y, const float *b, const T *residual, T *out, int rows, int cols) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t row = (size_t)r * cols;
        for (int c = threadIdx.x * W; c < cols; c += blockDim.x * W) {
            const Pack<T, W> in = *(const Pack<T, W> *)(y + row + c);
            Pack<T, W> res, o;
            if (residual) res = *(const Pack<T, W> *)(residual + row + c);
            for (int e = 0; e < W; ++e) {
                const float v = to_f32(in.v[e]) + b[c + e];
                o.v[e] = from_f32<T>(residual ? v + to_f32(res.v[e]) : v);
            }
            *(Pack<T, W> *)(out + row + c) = o;
        }
    }
}

// Column sums of g [rows, cols] added into f32 `out` (zeroed by the caller): each block
// sums COL_SUM_ROWS rows per column in registers, then one atomic add per column.
#define COL_SUM_ROWS 64
template <typename T>
__device__ void col_sums(const T *g, float *out, int rows, int cols) {
    for (int r0 = blockIdx.x * COL_SUM_ROWS; r0 < rows; r0 += gridDim.x * COL_SUM_ROWS) {
        const int r1 = min(r0 + COL_SUM_ROWS, rows);
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float s = 0.0f;
            for (int r = r0; r < r1; ++r) s += to_f32(g[(size_t)r * cols + c]);
            atomicAdd(&out[c], s);
        }
    }
}

// ---- Attention heads: [B, T, H·D] to per-head [B, H, T, D] (or [B, H, D, T], keys
// transposed for q·kᵀ) and back, times `scale`. The heads side has `slots` >= t token slots
// (the caller zeroes the padding of a split: aligned rows for the attention's products).
// Element i of the [B, T, H, D] side is visited in order (32-bit index: the caller checks
// the size), so that side is read or written contiguously. mode: 0 split, 1 split
// transposed, 2 merge, 3 merge transposed.

// Each thread moves W consecutive values of a head (W > 1: modes 0 and 2 only, d a
// multiple of W).
template <typename T, int W>
__device__ void heads_w(const T *x, T *out, unsigned n, int t, int slots, int h, int d, float scale, int mode) {
    for (unsigned i = (blockIdx.x * blockDim.x + threadIdx.x) * W; i < n; i += gridDim.x * blockDim.x * W) {
        const unsigned di = i % d, r = i / d, hi = r % h, bt = r / h, ti = bt % t, bi = bt / t;
        const unsigned bh = bi * h + hi;
        const size_t j = (mode & 1) ? ((size_t)bh * d + di) * slots + ti : ((size_t)bh * slots + ti) * d + di;
        const Pack<T, W> in = *(const Pack<T, W> *)(x + (mode < 2 ? i : j));
        Pack<T, W> o;
        for (int e = 0; e < W; ++e) o.v[e] = from_f32<T>(to_f32(in.v[e]) * scale);
        *(Pack<T, W> *)(out + (mode < 2 ? j : i)) = o;
    }
}

// ---- q, k and v together: one product's output [B, T, 3·H·D] to per-head [3, B, H, slots, D]
// (the f32 bias [3·H·D] added, q times `scale_q`, padding slots left zero by the caller),
// and their three gradients back into one [B, T, 3·H·D]. Index i runs over the
// [B, T, 3, H, D] side; W consecutive values per thread (d a multiple of W).

template <typename T, int W>
__device__ void split_qkv_w(const T *x, const float *bias, T *out, unsigned n, int t, int slots, int h, int d,
                            float scale_q) {
    const size_t part_size = (size_t)(n / (3u * t * h * d)) * h * slots * d;
    for (unsigned i = (blockIdx.x * blockDim.x + threadIdx.x) * W; i < n; i += gridDim.x * blockDim.x * W) {
        const unsigned di = i % d, r = i / d, hi = r % h, r2 = r / h, part = r2 % 3, bt = r2 / 3;
        const unsigned ti = bt % t, bi = bt / t, col = (part * h + hi) * d + di;
        const size_t j = part * part_size + ((size_t)(bi * h + hi) * slots + ti) * d + di;
        const float scale = part == 0 ? scale_q : 1.0f;
        const Pack<T, W> in = *(const Pack<T, W> *)(x + i);
        Pack<T, W> o;
        for (int e = 0; e < W; ++e) o.v[e] = from_f32<T>((to_f32(in.v[e]) + bias[col + e]) * scale);
        *(Pack<T, W> *)(out + j) = o;
    }
}

template <typename T, int W>
__device__ void merge_qkv_w(const T *dq, const T *dk, const T *dv, T *out, unsigned n, int t, int slots, int h,
                            int d, float scale_q) {
    for (unsigned i = (blockIdx.x * blockDim.x + threadIdx.x) * W; i < n; i += gridDim.x * blockDim.x * W) {
        const unsigned di = i % d, r = i / d, hi = r % h, r2 = r / h, part = r2 % 3, bt = r2 / 3;
        const unsigned ti = bt % t, bi = bt / t;
        const size_t j = ((size_t)(bi * h + hi) * slots + ti) * d + di;
        const T *src = part == 0 ? dq : part == 1 ? dk : dv;
        const float scale = part == 0 ? scale_q : 1.0f;
        const Pack<T, W> in = *(const Pack<T, W> *)(src + j);
        Pack<T, W> o;
        for (int e = 0; e < W; ++e) o.v[e] = from_f32<T>(to_f32(in.v[e]) * scale);
        *(Pack<T, W> *)(out + i) = o;
    }
}

// ---- entry points, one per dtype ---------------------------------------------------------

#define ENTRY_POINTS(T, SUFFIX)                                                                        \
    extern "C" __global__ void activation_fwd_##SUFFIX(const T *x, const float *b, T *y, int rows,  \
                                                       int cols, int act, int vec) {                  \
        if (vec) activation_fwd_w<T, VEC(T)>(x, b, y, rows, cols, act);                                \
        else activation_fwd_w<T, 1>(x, b, y, rows, cols, act);                                         \
    }                                                                                                  \
    extern "C" __global__ void activation_bwd_##SUFFIX(const T *x, const float *b, const T *g, T *dx, \
                                                       int rows, int cols, int act, int vec) {        \
        if (vec) activation_bwd_w<T, VEC(T)>(x, b, g, dx, rows, cols, act);                            \
        else activation_bwd_w<T, 1>(x, b, g, dx, rows, cols, act);                                     \
    }                                                                                                  \
    extern "C" __global__ void layer_norm_fwd_##SUFFIX(const T *x, const float *w, const float *b,  \
                                                       T *y, int rows, int cols, float eps) {         \
        layer_norm_fwd(x, w, b, y, rows, cols, eps);                                                   \
    }                                                                                                  \
    extern "C" __global__ void layer_norm_bwd_##SUFFIX(const T *x, const float *w, const T *g,      \
                                                       float *dx, float *dw, float *db, int rows,     \
                                                       int cols, float eps) {                         \
        layer_norm_bwd(x, w, g, dx, dw, db, rows, cols, eps);                                          \
    }                                                                                                  \
    extern "C" __global__ void softmax_fwd_##SUFFIX(const T *x, const float *mask, T *y, int rows,     \
                                                    int cols, int valid, int mask_rows, int vec) {    \
        if (vec) softmax_fwd_w<T, VEC(T)>(x, mask, y, rows, cols, valid, mask_rows);                   \
        else softmax_fwd_w<T, 1>(x, mask, y, rows, cols, valid, mask_rows);                            \
    }                                                                                                  \
    extern "C" __global__ void softmax_bwd_##SUFFIX(const T *y, const T *g, T *dx, int rows, int cols, \
                                                    int vec) {                                        \
        if (vec) softmax_bwd_w<T, VEC(T)>(y, g, dx, rows, cols);                                       \
        else softmax_bwd_w<T, 1>(y, g, dx, rows, cols);                                                \
    }                                                                                                  \
    extern "C" __global__ void bias_add_##SUFFIX(const T *y, const float *b, const T *residual,     \
                                                 T *out, int rows, int cols, int vec) {               \
        if (vec) bias_add_w<T, VEC(T)>(y, b, residual, out, rows, cols);                               \
        else bias_add_w<T, 1>(y, b, residual, out, rows, cols);                                        \
    }                                                                                                  \
    extern "C" __global__ void col_sums_##SUFFIX(const T *g, float *out, int rows, int cols) {       \
        col_sums(g, out, rows, cols);                                                                  \
    }                                                                                                  \
    extern "C" __global__ void heads_##SUFFIX(const T *x, T *out, unsigned n, int t, int slots, int h,\
                                              int d, float scale, int mode, int vec) {                \
        if (vec) heads_w<T, VEC(T)>(x, out, n, t, slots, h, d, scale, mode);                          \
        else heads_w<T, 1>(x, out, n, t, slots, h, d, scale, mode);                                    \
    }                                                                                                  \
    extern "C" __global__ void split_qkv_##SUFFIX(const T *x, const float *bias, T *out, unsigned n,   \
                                                  int t, int slots, int h, int d, float scale_q,      \
                                                  int vec) {                                          \
        if (vec) split_qkv_w<T, VEC(T)>(x, bias, out, n, t, slots, h, d, scale_q);                    \
        else split_qkv_w<T, 1>(x, bias, out, n, t, slots, h, d, scale_q);                              \
    }                                                                                                  \
    extern "C" __global__ void merge_qkv_##SUFFIX(const T *dq, const T *dk, const T *dv, T *out,      \
                                                  unsigned n, int t, int slots, int h, int d,         \
                                                  float scale_q, int vec) {                           \
        if (vec) merge_qkv_w<T, VEC(T)>(dq, dk, dv, out, n, t, slots, h, d, scale_q);                 \
        else merge_qkv_w<T, 1>(dq, dk, dv, out, n, t, slots, h, d, scale_q);                           \
    }

ENTRY_POINTS(float, f32)
ENTRY_POINTS(__nv_bfloat16, bf16)

// Attention on tensor cores (bf16, head width 64).
#include "attention.cu"
