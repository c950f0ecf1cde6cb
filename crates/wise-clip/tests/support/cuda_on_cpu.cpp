// Runs the CUDA kernels of src/kernels/fused.cu on the CPU and checks them against plain
// double-precision references (the Rust test tests/cuda_kernels.rs compiles and runs this).
//
// A machine without a GPU cannot run the kernels, but it can run their source: each CUDA
// block runs as one std::thread per CUDA thread, `__syncthreads` is a barrier over the
// block, `__syncwarp` one over the warp (as are the WMMA operations of cuda_shim/mma.h, which
// hold whole tiles per lane), `__shfl_xor_sync` an exchange through memory between two barriers over the warp,
// `__shared__` memory a static (blocks run one after another), `atomicAdd` an atomic_ref.
// What this checks is the kernels' logic: indexing, tails, the reductions, the formulas.
// What it cannot check (coalescing, occupancy, the real bf16 intrinsics) needs a GPU:
// scripts/gpu-check.sh compares the CUDA build with the CPU on one.

#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <memory>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::unique_ptr<std::barrier<>> block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static float warp_exchange[1024];

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

// For the WMMA stand-in (cuda_shim/mma.h).
namespace nvcuda::wmma {
void warp_sync() { __syncwarp(); }
bool lane_zero() { return threadIdx.x % 32 == 0; }
}  // namespace nvcuda::wmma

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned t = threadIdx.x;
    std::barrier<> &warp = *warp_barriers[t / 32];
    warp_exchange[t] = v;
    warp.arrive_and_wait();
    const float other = warp_exchange[(t & ~31u) | ((t % 32) ^ unsigned(lane_mask))];
    warp.arrive_and_wait();
    return other;
}

inline void atomicAdd(float *p, float v) { std::atomic_ref<float>(*p).fetch_add(v); }

using std::min;

#include "../../src/kernels/fused.cu"

// Runs `kernel` as `grid` blocks of `block` threads (a multiple of 32), block after block.
template <class Kernel>
void launch(unsigned grid, unsigned block, Kernel kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        block_barrier = std::make_unique<std::barrier<>>(block);
        warp_barriers.clear();
        for (unsigned w = 0; w < block / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([=] {
                threadIdx.x = t;
                blockIdx.x = b;
                kernel();
            });
        for (std::thread &t : threads) t.join();
    }
}

template <class T> T cast(float v);
template <> float cast<float>(float v) { return v; }
template <> __nv_bfloat16 cast<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
inline double value(float v) { return v; }
inline double value(__nv_bfloat16 v) { return __bfloat162float(v); }

static std::mt19937 rng(7);

template <class T>
std::vector<T> random_values(size_t n, float mean, float std) {
    std::normal_distribution<float> normal(mean, std);
    std::vector<T> v(n);
    for (T &x : v) x = cast<T>(normal(rng));
    return v;
}

static int failures = 0;

// max |got − want| / max |want|, reported and checked against `tol`.
template <class T>
void check(const char *what, const std::vector<T> &got, const std::vector<double> &want, double tol) {
    double err = 0, scale = 1e-30;
    for (size_t i = 0; i < want.size(); ++i) {
        err = std::max(err, fabs(value(got[i]) - want[i]));
        scale = std::max(scale, fabs(want[i]));
    }
    const bool ok = err / scale <= tol;  // NaN fails
    failures += !ok;
    printf("%-4s %-52s max error %.2e of max %.2e (tolerance %.0e)\n", ok ? "ok" : "FAIL", what, err / scale, scale, tol);
}

template <class T>
void check_layer_norm(const char *suffix, int rows, int cols, double tol,
                      void (*fwd)(const T *, const float *, const float *, T *, int, int, float),
                      void (*bwd)(const T *, const float *, const T *, float *, float *, float *, int, int, float)) {
    const float eps = 1e-5f;
    // A large mean: the two-pass statistics must not lose the variance to it.
    std::vector<T> x = random_values<T>(size_t(rows) * cols, 3.0f, 2.0f), g = random_values<T>(size_t(rows) * cols, 0.0f, 1.0f);
    std::vector<float> w = random_values<float>(cols, 1.0f, 0.5f), b = random_values<float>(cols, 0.0f, 0.5f);
    std::vector<double> y_ref(x.size()), dx_ref(x.size()), dw_ref(cols, 0.0), db_ref(cols, 0.0);
    for (int r = 0; r < rows; ++r) {
        double mean = 0, var = 0, m_gw = 0, m_gwx = 0;
        for (int c = 0; c < cols; ++c) mean += value(x[r * cols + c]) / cols;
        for (int c = 0; c < cols; ++c) var += pow(value(x[r * cols + c]) - mean, 2) / cols;
        const double rstd = 1.0 / sqrt(var + eps);
        for (int c = 0; c < cols; ++c) {
            const double xh = (value(x[r * cols + c]) - mean) * rstd, gi = value(g[r * cols + c]);
            y_ref[r * cols + c] = xh * w[c] + b[c];
            m_gw += gi * w[c] / cols;
            m_gwx += gi * w[c] * xh / cols;
            dw_ref[c] += gi * xh;
            db_ref[c] += gi;
        }
        for (int c = 0; c < cols; ++c) {
            const double xh = (value(x[r * cols + c]) - mean) * rstd;
            dx_ref[r * cols + c] = rstd * (value(g[r * cols + c]) * w[c] - m_gw - xh * m_gwx);
        }
    }
    std::vector<T> y(x.size());
    launch((rows + 7) / 8, 256, [&] { fwd(x.data(), w.data(), b.data(), y.data(), rows, cols, eps); });
    std::vector<float> all((size_t(rows) + 2) * cols, 0.0f);  // dx's rows, dw, db (zeroed, as the caller does)
    float *dx = all.data(), *dw = dx + size_t(rows) * cols, *db = dw + cols;
    launch((rows + LN_ROWS_PER_BLOCK - 1) / LN_ROWS_PER_BLOCK, 256,
           [&] { bwd(x.data(), w.data(), g.data(), dx, dw, db, rows, cols, eps); });
    char what[96];
    snprintf(what, sizeof what, "layer_norm_fwd_%s %dx%d", suffix, rows, cols);
    check(what, y, y_ref, tol);
    snprintf(what, sizeof what, "layer_norm_bwd_%s %dx%d: dx", suffix, rows, cols);
    check(what, std::vector<float>(dx, dx + size_t(rows) * cols), dx_ref, 1e-5);
    snprintf(what, sizeof what, "layer_norm_bwd_%s %dx%d: dw", suffix, rows, cols);
    check(what, std::vector<float>(dw, dw + cols), dw_ref, 1e-5);
    snprintf(what, sizeof what, "layer_norm_bwd_%s %dx%d: db", suffix, rows, cols);
    check(what, std::vector<float>(db, db + cols), db_ref, 1e-5);
}

// Softmax over the first `valid` of `cols` values per row (the rest, padding key slots,
// must come out 0), with and without an additive mask (the rows of a causal one, in turn),
// and its backward.
template <class T>
void check_softmax(const char *suffix, int rows, int cols, int valid, bool masked, int vec, double tol,
                   void (*fwd)(const T *, const float *, T *, int, int, int, int, int),
                   void (*bwd)(const T *, const T *, T *, int, int, int)) {
    std::vector<T> x = random_values<T>(size_t(rows) * cols, 0.0f, 4.0f), g = random_values<T>(size_t(rows) * cols, 0.0f, 1.0f);
    x[0] = cast<T>(80.0f);  // exp(80) overflows f32 unless the row's maximum is subtracted
    std::vector<float> mask(size_t(cols) * cols);
    for (int r = 0; r < cols; ++r)
        for (int c = 0; c < cols; ++c) mask[r * cols + c] = c > r ? -INFINITY : 0.0f;
    std::vector<double> y_ref(x.size(), 0.0), dx_ref(x.size());
    std::vector<T> y_in(x.size());  // the backward's input: the reference output, as T
    for (int r = 0; r < rows; ++r) {
        const float *mr = masked ? &mask[size_t(r % cols) * cols] : nullptr;
        auto score = [&](int c) { return value(x[r * cols + c]) + (mr ? mr[c] : 0.0); };
        double m = -INFINITY, s = 0, dot = 0;
        for (int c = 0; c < valid; ++c) m = std::max(m, score(c));
        for (int c = 0; c < valid; ++c) s += exp(score(c) - m);
        for (int c = 0; c < cols; ++c) {
            if (c < valid) y_ref[r * cols + c] = exp(score(c) - m) / s;
            y_in[r * cols + c] = cast<T>(float(y_ref[r * cols + c]));
            dot += value(g[r * cols + c]) * value(y_in[r * cols + c]);
        }
        for (int c = 0; c < cols; ++c)
            dx_ref[r * cols + c] = value(y_in[r * cols + c]) * (value(g[r * cols + c]) - dot);
    }
    std::vector<T> y(x.size(), cast<T>(1.0f)), dx(x.size());
    const int rows_per_block = 256 / 32;
    const float *mask_arg = masked ? mask.data() : nullptr;
    launch((rows + rows_per_block - 1) / rows_per_block, 256, [&] { fwd(x.data(), mask_arg, y.data(), rows, cols, valid, cols, vec); });
    launch((rows + rows_per_block - 1) / rows_per_block, 256, [&] { bwd(y_in.data(), g.data(), dx.data(), rows, cols, vec); });
    char what[96];
    const char *access = vec ? ", 16 B" : "";
    snprintf(what, sizeof what, "softmax_fwd_%s %dx%d, first %d%s%s", suffix, rows, cols, valid, masked ? ", causal" : "", access);
    check(what, y, y_ref, tol);
    snprintf(what, sizeof what, "softmax_bwd_%s %dx%d, first %d%s%s", suffix, rows, cols, valid, masked ? ", causal" : "", access);
    check(what, dx, dx_ref, tol);
}

// The three activations over rows (13 rows in 3 blocks: the grid-stride loop), without
// and with the bias folded in.
double act_ref(int act, double v) {
    if (act == 0) return v / (1.0 + exp(-1.702 * v));
    if (act == 1) return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    return 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
}

double act_derivative_ref(int act, double v) {
    if (act == 0) {
        const double s = 1.0 / (1.0 + exp(-1.702 * v));
        return s + 1.702 * v * s * (1.0 - s);
    }
    if (act == 1) return 0.5 * (1.0 + erf(v / sqrt(2.0))) + v * exp(-0.5 * v * v) / sqrt(2.0 * M_PI);
    const double c = sqrt(2.0 / M_PI), t = tanh(c * (v + 0.044715 * v * v * v));
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * v * v);
}

template <class T>
void check_activation(const char *suffix, int act, int rows, int cols, int vec, double tol,
                      void (*fwd)(const T *, const float *, T *, int, int, int, int),
                      void (*bwd)(const T *, const float *, const T *, T *, int, int, int, int)) {
    const size_t n = size_t(rows) * cols;
    std::vector<T> x = random_values<T>(n, 0.0f, 3.0f), g = random_values<T>(n, 0.0f, 1.0f);
    const std::vector<float> bias = random_values<float>(cols, 0.0f, 1.0f);
    for (const float *b : {(const float *)nullptr, bias.data()}) {
        std::vector<double> y_ref(n), dx_ref(n);
        for (size_t i = 0; i < n; ++i) {
            const double v = value(x[i]) + (b ? b[i % cols] : 0.0);
            y_ref[i] = act_ref(act, v);
            dx_ref[i] = value(g[i]) * act_derivative_ref(act, v);
        }
        std::vector<T> y(n), dx(n);
        launch(3, 64, [&] { fwd(x.data(), b, y.data(), rows, cols, act, vec); });
        launch(3, 64, [&] { bwd(x.data(), b, g.data(), dx.data(), rows, cols, act, vec); });
        char what[96];
        const char *name[] = {"quick-gelu", "gelu", "gelu-tanh"};
        snprintf(what, sizeof what, "activation_fwd_%s %s %dx%d%s%s", suffix, name[act], rows, cols, b ? " + bias" : "", vec ? ", 16 B" : "");
        check(what, y, y_ref, tol);
        snprintf(what, sizeof what, "activation_bwd_%s %s %dx%d%s%s", suffix, name[act], rows, cols, b ? " + bias" : "", vec ? ", 16 B" : "");
        check(what, dx, dx_ref, tol);
    }
}

// Two AdamW steps (the first with clipping's scale, the second without) on random weights
// and moments, against the formulas in double: weights and both moments after each.
void check_adamw(size_t n) {
    std::vector<float> theta = random_values<float>(n, 0.0f, 1.0f), m = random_values<float>(n, 0.0f, 0.1f);
    std::vector<float> v = random_values<float>(n, 0.0f, 0.1f);
    for (float &x : v) x = x * x;  // a second moment is never negative
    std::vector<double> t_ref(theta.begin(), theta.end()), m_ref(m.begin(), m.end()), v_ref(v.begin(), v.end());
    const double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, lr = 1e-3, wd = 0.1;
    for (int step = 1; step <= 2; ++step) {
        const double scale = step == 1 ? 0.25 : 1.0, decay = 1 - lr * wd;
        const double step_size = lr / (1 - pow(beta1, step)), bias2 = sqrt(1 - pow(beta2, step));
        std::vector<float> g = random_values<float>(n, 0.0f, 1.0f);
        for (size_t i = 0; i < n; ++i) {
            const double gi = g[i] * scale;
            m_ref[i] = m_ref[i] * beta1 + gi * (1 - beta1);
            v_ref[i] = v_ref[i] * beta2 + gi * gi * (1 - beta2);
            t_ref[i] = t_ref[i] * decay - m_ref[i] / (sqrt(v_ref[i]) / bias2 + eps) * step_size;
        }
        launch(3, 64, [&] {  // 192 threads stride over n: several passes
            adamw_f32(theta.data(), m.data(), v.data(), g.data(), n, beta1, beta2, eps, decay, step_size, bias2, scale);
        });
        char what[96];
        snprintf(what, sizeof what, "adamw_f32 step %d weights n=%zu", step, n);
        check(what, theta, t_ref, 1e-5);
        snprintf(what, sizeof what, "adamw_f32 step %d first moment n=%zu", step, n);
        check(what, m, m_ref, 1e-5);
        snprintf(what, sizeof what, "adamw_f32 step %d second moment n=%zu", step, n);
        check(what, v, v_ref, 1e-5);
    }
}

// The sum of squares of several arrays into one accumulator, as the gradient norm calls it:
// lengths below, at and far above one block's 256 threads.
void check_sum_squares() {
    float acc = 0.0f;
    double want = 0.0;
    for (size_t n : {100, 256, 5000}) {
        std::vector<float> x = random_values<float>(n, 0.5f, 1.0f);
        for (float v : x) want += double(v) * v;
        launch(4, 256, [&] { sum_squares_f32(x.data(), n, &acc); });
    }
    check("sum_squares_f32 of 3 arrays", std::vector<float>{acc}, std::vector<double>{want}, 1e-5);
}

// The bias add (rows in fewer blocks than rows: the grid-stride loop) and the column sums
// of its backward (rows not a multiple of COL_SUM_ROWS), against sums in double.
template <class T>
void check_bias(const char *suffix, int rows, int cols, int vec, double tol,
                void (*add)(const T *, const float *, const T *, T *, int, int, int),
                void (*sums)(const T *, float *, int, int)) {
    std::vector<T> y = random_values<T>(size_t(rows) * cols, 0.0f, 1.0f);
    std::vector<T> residual = random_values<T>(size_t(rows) * cols, 0.0f, 1.0f);
    std::vector<float> b = random_values<float>(cols, 0.0f, 1.0f), got_sums(cols, 0.0f);
    std::vector<double> out_ref(y.size()), with_residual_ref(y.size()), sums_ref(cols, 0.0);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const size_t i = size_t(r) * cols + c;
            out_ref[i] = value(y[i]) + b[c];
            with_residual_ref[i] = out_ref[i] + value(residual[i]);
            sums_ref[c] += value(y[i]);
        }
    std::vector<T> out(y.size()), with_residual(y.size());
    launch(7, 64, [&] { add(y.data(), b.data(), nullptr, out.data(), rows, cols, vec); });
    launch(7, 64, [&] { add(y.data(), b.data(), residual.data(), with_residual.data(), rows, cols, vec); });
    launch(2, 64, [&] { sums(y.data(), got_sums.data(), rows, cols); });
    char what[96];
    snprintf(what, sizeof what, "bias_add_%s %dx%d%s", suffix, rows, cols, vec ? ", 16 B" : "");
    check(what, out, out_ref, tol);
    snprintf(what, sizeof what, "bias_add_%s %dx%d + residual%s", suffix, rows, cols, vec ? ", 16 B" : "");
    check(what, with_residual, with_residual_ref, tol);
    snprintf(what, sizeof what, "col_sums_%s %dx%d", suffix, rows, cols);
    check(what, got_sums, sums_ref, 1e-5);
}

// Splitting [B, T, H·D] into heads, plain and with the keys transposed, with and without
// padding token slots (left zero), against the index formulas; merging must give back the
// input exactly (times the two scales). With vec = 1 (16-byte accesses; head width 8,
// untransposed modes only) and without.
template <class T>
void check_heads(const char *suffix, int d, int vec,
                 void (*heads_fn)(const T *, T *, unsigned, int, int, int, int, float, int, int)) {
    const int b = 2, t = 5, h = 3;
    const unsigned n = b * t * h * d;
    const std::vector<T> x = random_values<T>(n, 0.0f, 1.0f);
    for (int slots : {t, t + 3})
        for (int mode : {0, 1}) {
            if (vec && mode == 1) continue;
            const size_t heads_side = size_t(b) * h * slots * d;
            std::vector<T> split(heads_side), merged(n);  // zeroed, as the caller does
            launch(2, 32, [&] { heads_fn(x.data(), split.data(), n, t, slots, h, d, 0.5f, mode, vec); });
            std::vector<double> split_ref(heads_side, 0.0), merged_ref(n);
            for (int bi = 0; bi < b; ++bi)
                for (int ti = 0; ti < t; ++ti)
                    for (int hi = 0; hi < h; ++hi)
                        for (int di = 0; di < d; ++di) {
                            const size_t i = ((size_t(bi) * t + ti) * h + hi) * d + di;
                            const size_t j = mode == 0 ? ((size_t(bi) * h + hi) * slots + ti) * d + di
                                                       : ((size_t(bi) * h + hi) * d + di) * slots + ti;
                            split_ref[j] = 0.5 * value(x[i]);
                        }
            launch(2, 32, [&] { heads_fn(split.data(), merged.data(), n, t, slots, h, d, 4.0f, mode + 2, vec); });
            for (size_t i = 0; i < n; ++i) merged_ref[i] = 2.0 * value(x[i]);
            char what[96];
            const char *access = vec ? ", 16 B" : "";
            snprintf(what, sizeof what, "heads_%s split (mode %d, %d slots%s)", suffix, mode, slots, access);
            check(what, split, split_ref, 0.0);
            snprintf(what, sizeof what, "heads_%s merge (mode %d, %d slots%s)", suffix, mode + 2, slots, access);
            check(what, merged, merged_ref, 0.0);
        }
}

// q, k and v split from one [B, T, 3·H·D] output (bias added, q scaled, padding slots
// left zero) and their gradients merged back, one value and 16 bytes per access.
template <class T>
void check_qkv(const char *suffix, int vec,
               void (*split)(const T *, const float *, T *, unsigned, int, int, int, int, float, int),
               void (*merge)(const T *, const T *, const T *, T *, unsigned, int, int, int, int, float, int)) {
    const int b = 2, t = 5, slots = 8, h = 3, d = 8, c = h * d;
    const unsigned n = b * t * 3 * c;
    const size_t part = size_t(b) * h * slots * d;
    const std::vector<T> x = random_values<T>(n, 0.0f, 1.0f);
    const std::vector<float> bias = random_values<float>(3 * c, 0.0f, 1.0f);
    std::vector<T> heads(3 * part), merged(n);  // zeroed, as the caller does
    launch(2, 32, [&] { split(x.data(), bias.data(), heads.data(), n, t, slots, h, d, 0.5f, vec); });
    std::vector<double> heads_ref(3 * part, 0.0), merged_ref(n);
    for (int bi = 0; bi < b; ++bi)
        for (int ti = 0; ti < t; ++ti)
            for (int p = 0; p < 3; ++p)
                for (int hi = 0; hi < h; ++hi)
                    for (int di = 0; di < d; ++di) {
                        const size_t i = (size_t(bi) * t + ti) * 3 * c + p * c + hi * d + di;
                        const size_t j = p * part + ((size_t(bi) * h + hi) * slots + ti) * d + di;
                        heads_ref[j] = (p == 0 ? 0.5 : 1.0) * (value(x[i]) + bias[p * c + hi * d + di]);
                        merged_ref[i] = (p == 0 ? 0.5 : 1.0) * value(cast<T>(float(heads_ref[j])));
                    }
    // The three parts' gradients from separate buffers (here: the split's output).
    launch(2, 32, [&] { merge(heads.data(), heads.data() + part, heads.data() + 2 * part, merged.data(), n, t, slots, h, d, 0.5f, vec); });
    char what[96];
    snprintf(what, sizeof what, "split_qkv_%s%s", suffix, vec ? ", 16 B" : "");
    check(what, heads, heads_ref, sizeof(T) == 4 ? 1e-6 : 1e-2);
    snprintf(what, sizeof what, "merge_qkv_%s%s", suffix, vec ? ", 16 B" : "");
    check(what, merged, merged_ref, sizeof(T) == 4 ? 1e-6 : 1e-2);
}

// Flash attention (attention.cu), bf16, head width 64: `heads` heads of `slots` rows, keys
// past `valid` masked off, a causal mask when `masked`; forward (O, lse) and backward (dq,
// dk, dv) against the unfused formulas in double.
void check_flash(int heads, int slots, int valid, bool masked) {
    const int D = flash::D;
    const size_t n = size_t(heads) * slots * D;
    using bf = __nv_bfloat16;
    std::vector<bf> q = random_values<bf>(n, 0.0f, 0.5f), k = random_values<bf>(n, 0.0f, 0.5f),
                    v = random_values<bf>(n, 0.0f, 1.0f), d_o = random_values<bf>(n, 0.0f, 1.0f);
    std::vector<float> mask;
    if (masked)
        for (int i = 0; i < slots; ++i)
            for (int j = 0; j < slots; ++j) mask.push_back(j > i ? -INFINITY : 0.0f);
    const float *mask_arg = masked ? mask.data() : nullptr;
    std::vector<double> o_ref(n), lse_ref(size_t(heads) * slots), dq_ref(n, 0.0), dk_ref(n, 0.0), dv_ref(n, 0.0);
    for (int h = 0; h < heads; ++h) {
        auto at = [&](const std::vector<bf> &x, int r, int c) { return value(x[(size_t(h) * slots + r) * D + c]); };
        for (int i = 0; i < slots; ++i) {
            std::vector<double> s(slots), p(slots, 0.0), dp(slots);
            double m = -INFINITY, sum = 0, dlt = 0;
            for (int j = 0; j < valid; ++j) {
                s[j] = masked ? mask[size_t(i) * slots + j] : 0.0;
                for (int c = 0; c < D; ++c) s[j] += at(q, i, c) * at(k, j, c);
                m = std::max(m, s[j]);
            }
            for (int j = 0; j < valid; ++j) sum += exp(s[j] - m);
            for (int j = 0; j < valid; ++j) p[j] = exp(s[j] - m) / sum;
            lse_ref[size_t(h) * slots + i] = m + log(sum);
            for (int c = 0; c < D; ++c) {
                double y = 0;
                for (int j = 0; j < valid; ++j) y += p[j] * at(v, j, c);
                o_ref[(size_t(h) * slots + i) * D + c] = y;
                dlt += y * at(d_o, i, c);
            }
            for (int j = 0; j < valid; ++j) {
                dp[j] = 0;
                for (int c = 0; c < D; ++c) dp[j] += at(d_o, i, c) * at(v, j, c);
                const double ds = p[j] * (dp[j] - dlt);
                for (int c = 0; c < D; ++c) {
                    dq_ref[(size_t(h) * slots + i) * D + c] += ds * at(k, j, c);
                    dk_ref[(size_t(h) * slots + j) * D + c] += ds * at(q, i, c);
                    dv_ref[(size_t(h) * slots + j) * D + c] += p[j] * at(d_o, i, c);
                }
            }
        }
    }
    const int blocks = heads * ((slots + flash::ROWS - 1) / flash::ROWS), threads = 32 * flash::WARPS;
    std::vector<bf> o(n), dq(n), dk(n), dv(n);
    std::vector<float> lse(size_t(heads) * slots), dlt(lse.size());
    launch(blocks, threads, [&] { flash_fwd_bf16(q.data(), k.data(), v.data(), mask_arg, o.data(), lse.data(), slots, valid); });
    // Δ from the kernel's own O, as the backward gets it.
    launch((heads * slots + 7) / 8, 256, [&] { flash_delta_bf16(o.data(), d_o.data(), dlt.data(), heads * slots); });
    launch(blocks, threads, [&] {
        flash_bwd_kv_bf16(q.data(), k.data(), v.data(), d_o.data(), lse.data(), dlt.data(), mask_arg, dk.data(), dv.data(), slots, valid);
    });
    launch(blocks, threads, [&] {
        flash_bwd_q_bf16(q.data(), k.data(), v.data(), d_o.data(), lse.data(), dlt.data(), mask_arg, dq.data(), slots, valid);
    });
    char what[96];
    const char *m = masked ? ", causal" : "";
    snprintf(what, sizeof what, "flash attention %dx%d of %d%s: O", heads, slots, valid, m);
    check(what, o, o_ref, 1e-2);
    snprintf(what, sizeof what, "flash attention %dx%d of %d%s: lse", heads, slots, valid, m);
    check(what, lse, lse_ref, 1e-5);
    snprintf(what, sizeof what, "flash attention %dx%d of %d%s: dq", heads, slots, valid, m);
    check(what, dq, dq_ref, 2e-2);
    snprintf(what, sizeof what, "flash attention %dx%d of %d%s: dk", heads, slots, valid, m);
    check(what, dk, dk_ref, 2e-2);
    snprintf(what, sizeof what, "flash attention %dx%d of %d%s: dv", heads, slots, valid, m);
    check(what, dv, dv_ref, 2e-2);
}

int main() {
    // Widths of 200, 768 (ViT-B) and 1030 values (none a multiple of the warp but 768); row
    // counts that leave the last block of LN_ROWS_PER_BLOCK rows partly empty, and give
    // each warp several rows.
    for (auto [rows, cols] : {std::pair{37, 200}, {20, 768}, {17, 1030}}) {
        check_layer_norm<float>("f32", rows, cols, 1e-5, layer_norm_fwd_f32, layer_norm_bwd_f32);
        check_layer_norm<__nv_bfloat16>("bf16", rows, cols, 1e-2, layer_norm_fwd_bf16, layer_norm_bwd_bf16);
    }
    // A ViT-B/32's attention rows (50), a ViT-B/16's (197), and a short one; 13 rows leave
    // warps with no row. Then the same rows padded to a multiple of 8 slots.
    // The padded widths also 16 bytes per access.
    for (auto [cols, valid, vec] : {std::tuple{50, 50, 0}, {197, 197, 0}, {7, 7, 0}, {56, 50, 1}, {200, 197, 1}}) {
        check_softmax<float>("f32", 13, cols, valid, false, vec, 1e-5, softmax_fwd_f32, softmax_bwd_f32);
        check_softmax<__nv_bfloat16>("bf16", 13, cols, valid, false, vec, 1e-2, softmax_fwd_bf16, softmax_bwd_bf16);
    }
    // Two sequences of 7 tokens under a causal mask, 77 (CLIP's text) in part, and 77 padded
    // to 80 slots, 16 bytes per access.
    for (auto [rows, cols, valid, vec] : {std::tuple{14, 7, 7, 0}, {13, 77, 77, 0}, {13, 80, 77, 1}}) {
        check_softmax<float>("f32", rows, cols, valid, true, vec, 1e-5, softmax_fwd_f32, softmax_bwd_f32);
        check_softmax<__nv_bfloat16>("bf16", rows, cols, valid, true, vec, 1e-2, softmax_fwd_bf16, softmax_bwd_bf16);
    }
    // Rows of 77 values one by one; of 80, 16 bytes per access.
    for (int act : {0, 1, 2})
        for (auto [cols, vec] : {std::pair{77, 0}, {80, 1}}) {
            check_activation<float>("f32", act, 13, cols, vec, 1e-5, activation_fwd_f32, activation_bwd_f32);
            check_activation<__nv_bfloat16>("bf16", act, 13, cols, vec, 1e-2, activation_fwd_bf16, activation_bwd_bf16);
        }
    // ViT widths, and rows that leave the last block partly filled; one value per access,
    // and 16 bytes.
    for (auto [rows, cols, vec] : {std::tuple{130, 96, 1}, {70, 200, 0}, {33, 40, 1}}) {
        check_bias<float>("f32", rows, cols, vec, 1e-6, bias_add_f32, col_sums_f32);
        check_bias<__nv_bfloat16>("bf16", rows, cols, vec, 1e-2, bias_add_bf16, col_sums_bf16);
    }
    for (auto [d, vec] : {std::pair{4, 0}, {8, 1}}) {
        check_heads<float>("f32", d, vec, heads_f32);
        check_heads<__nv_bfloat16>("bf16", d, vec, heads_bf16);
    }
    for (int vec : {0, 1}) {
        check_qkv<float>("f32", vec, split_qkv_f32, merge_qkv_f32);
        check_qkv<__nv_bfloat16>("bf16", vec, split_qkv_bf16, merge_qkv_bf16);
    }
    // A ViT-B/32's 50 tokens padded to 56 slots (one tile of queries, two of keys, both
    // partly past the end), a ViT-B/16's 197 in 200 (four tiles) and unpadded
    // (WISE_ATTENTION_PADDING=off), CLIP's text: 77 in 80 under the causal mask, and a
    // batch of prompts cut at its last end-of-text, 14 in 16 (less than a tile either way).
    for (auto [heads, slots, valid, masked] : {std::tuple{3, 56, 50, false}, {2, 200, 197, false},
                                               {1, 197, 197, false}, {2, 80, 77, true}, {2, 16, 14, true}})
        check_flash(heads, slots, valid, masked);
    check_adamw(1000);
    check_sum_squares();
    printf("%d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
