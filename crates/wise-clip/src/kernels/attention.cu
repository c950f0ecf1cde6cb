// Attention without the [S, S] scores in memory (flash attention), bf16 on tensor cores
// (WMMA), head width D = 64; included by fused.cu.
//
// Per head, with q already scaled by D^-½ (the q/k/v split does it), keys past `valid`
// getting probability 0 and `mask` (additive [S, S], or null) added to the scores:
//   S = q·kᵀ + mask,  P = softmax(S),  O = P·v,  lse = log Σ_j exp(S_ij)  (per query row)
// Backward, from dO, with Δ_i = Σ_d dO_id·O_id:
//   P = exp(S − lse),  dV = Pᵀ·dO,  dP = dO·vᵀ,  dS = P∘(dP − Δ),  dq = dS·k,  dK = dSᵀ·q
// (dq is the gradient of the scaled q; the merge of q/k/v's gradients scales it).
//
// The unfused attention writes and reads the [S, S] scores and probabilities several
// times (with a ViT-B/16's 197 tokens, as large as q, k and v together); here each
// block keeps a tile of queries (or keys) on chip and streams the other side's tiles
// through shared memory, the softmax running over the key tiles with a rescaled sum (the
// online softmax). Layouts: q, k, v, O, dO and the gradients [BH, S, D] bf16, lse and Δ
// [BH, S] f32, every row 16-byte aligned (the host checks).
//
// WMMA fragments do not say which element a lane holds, so every step that needs a row
// (softmax, rescaling) goes through shared memory: a warp's scores are stored, read by its
// lanes two per row, and the probabilities stored back as bf16 for the next product.

#include <mma.h>

namespace flash {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int D = 64;          // head width
constexpr int WARPS = 4;       // per block, 16 rows of its tile each
constexpr int ROWS = 16 * WARPS;
constexpr int KEYS = 32;       // keys (or queries) per streamed tile
constexpr int PACK = 8;        // bf16 per 16-byte access
// Leading dimensions in shared memory, padded past the bank period (128 bytes) so that the
// rows a fragment load or a warp's lanes touch at once fall on different banks: bf16 rows
// of the head width, f32 and bf16 score rows, f32 output rows.
constexpr int LDH = D + 8, LDS = KEYS + 4, LDP = KEYS + 8, LDO = D + 4;
// A warp's score tile: 16 × KEYS in f32 (ld LDS), or, in the same bytes, in bf16 (ld LDP).
constexpr int TILE = 16 * LDS;
static_assert(16 * LDP * 2 <= TILE * 4, "the bf16 tile fits in the f32 tile's bytes");

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

struct alignas(16) Pack8 {
    bf16 v[PACK];
};

// Rows [first, first + rows) of a [S, D] matrix into shared `dst` ([rows, LDH]), zeros
// past S.
__device__ void load_rows(const bf16 *src, int first, int rows, int S, bf16 *dst) {
    for (int i = threadIdx.x; i < rows * D / PACK; i += blockDim.x) {
        const int r = i / (D / PACK), c = i % (D / PACK) * PACK;
        Pack8 p;
        if (first + r < S) p = *(const Pack8 *)(src + (size_t)(first + r) * D + c);
        else for (int e = 0; e < PACK; ++e) p.v[e] = __float2bfloat16(0.0f);
        *(Pack8 *)(dst + r * LDH + c) = p;
    }
}

// Row values [first, first + n) of a [S] vector into shared `dst`, `fill` past S.
__device__ void load_vector(const float *src, int first, int n, int S, float fill, float *dst) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = first + i < S ? src[first + i] : fill;
}

// out[16, KEYS] (f32, ld LDS) = a[16, D]·bᵀ for b [KEYS, D] (both bf16 in shared, ld LDH).
__device__ void product_t(const bf16 *a, const bf16 *b, float *out) {
    for (int j = 0; j < KEYS / 16; ++j) {
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int k = 0; k < D / 16; ++k) {
            FragA fa;
            FragBt fb;
            wmma::load_matrix_sync(fa, a + k * 16, LDH);
            wmma::load_matrix_sync(fb, b + j * 16 * LDH + k * 16, LDH);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(out + j * 16, acc, LDS, wmma::mem_row_major);
    }
}

// acc[t] += a[16, KEYS]·b[KEYS, D] column tile t, for a bf16 (ld LDP) and b bf16 (ld LDH)
// in shared.
__device__ void accumulate(FragC (&acc)[D / 16], const bf16 *a, const bf16 *b) {
    for (int t = 0; t < D / 16; ++t)
        for (int k = 0; k < KEYS / 16; ++k) {
            FragA fa;
            FragB fb;
            wmma::load_matrix_sync(fa, a + k * 16, LDP);
            wmma::load_matrix_sync(fb, b + k * 16 * LDH + t * 16, LDH);
            wmma::mma_sync(acc[t], fa, fb, acc[t]);
        }
}

// The score S_ij of the f32 value `s` for query i, key j: past `valid`, −∞.
__device__ __forceinline__ float score(float s, const float *mask, int S, int valid, int i, int j) {
    if (j >= valid) return -INFINITY;
    return mask ? s + mask[(size_t)i * S + j] : s;
}

// A warp's lanes over a 16 × KEYS tile: two lanes per row, each every other column (so
// that a warp's accesses spread over the banks).
__device__ __forceinline__ int tile_row() { return threadIdx.x % 32 / 2; }
__device__ __forceinline__ int tile_col(int c) { return threadIdx.x % 2 + 2 * c; }

// ---- Forward: a block per ROWS queries of one head; key tiles streamed ------------------

__device__ void forward(const bf16 *q, const bf16 *k, const bf16 *v, const float *mask, bf16 *o,
                        float *lse, int S, int valid) {
    __shared__ __align__(32) bf16 sq[ROWS * LDH];
    __shared__ __align__(32) bf16 sk[KEYS * LDH];
    __shared__ __align__(32) bf16 sv[KEYS * LDH];
    __shared__ __align__(32) float ss[WARPS][TILE];    // a warp's scores, then probabilities
    __shared__ __align__(32) float so[WARPS][16 * LDO];  // its output rows, unnormalised
    __shared__ float salpha[WARPS][16];
    const int tiles = (S + ROWS - 1) / ROWS, head = blockIdx.x / tiles, first = blockIdx.x % tiles * ROWS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const size_t base = (size_t)head * S * D;
    q += base, k += base, v += base, o += base, lse += (size_t)head * S;
    load_rows(q, first, ROWS, S, sq);
    for (int i = lane; i < 16 * LDO; i += 32) so[warp][i] = 0.0f;
    float *scores = ss[warp];
    bf16 *probs = (bf16 *)ss[warp];
    // Lanes 2r and 2r + 1 hold row r's running max m and sum l.
    const int r = tile_row(), row = first + warp * 16 + r;
    float m = -INFINITY, l = 0.0f;
    for (int kt = 0; kt < S; kt += KEYS) {
        __syncthreads();  // the previous tile's readers are done with sk, sv
        load_rows(k, kt, KEYS, S, sk);
        load_rows(v, kt, KEYS, S, sv);
        __syncthreads();
        product_t(sq + warp * 16 * LDH, sk, scores);
        __syncwarp();
        float s[KEYS / 2], mx = -INFINITY;
        for (int c = 0; c < KEYS / 2; ++c) {
            const int j = tile_col(c);
            s[c] = score(scores[r * LDS + j], mask, S, valid, row < S ? row : 0, kt + j);
            mx = fmaxf(mx, s[c]);
        }
        __syncwarp();  // every score read: the probabilities overwrite them
        const float m_new = fmaxf(m, fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1)));
        const float ref = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: all 0
        float sum = 0.0f;
        for (int c = 0; c < KEYS / 2; ++c) {
            const float p = expf(s[c] - ref);
            sum += p;
            probs[r * LDP + tile_col(c)] = __float2bfloat16(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        const float alpha = expf(m - ref);
        l = l * alpha + sum;
        m = m_new;
        if (lane % 2 == 0) salpha[warp][r] = alpha;
        __syncwarp();
        for (int i = lane; i < 16 * LDO; i += 32) so[warp][i] *= salpha[warp][i / LDO];
        __syncwarp();
        FragC acc[D / 16];
        for (int t = 0; t < D / 16; ++t) wmma::load_matrix_sync(acc[t], so[warp] + t * 16, LDO, wmma::mem_row_major);
        accumulate(acc, probs, sv);
        for (int t = 0; t < D / 16; ++t) wmma::store_matrix_sync(so[warp] + t * 16, acc[t], LDO, wmma::mem_row_major);
        __syncwarp();
    }
    if (row >= S) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int half = lane % 2;
    for (int c = half * D / 2; c < (half + 1) * D / 2; c += PACK) {
        Pack8 p;
        for (int e = 0; e < PACK; ++e) p.v[e] = __float2bfloat16(so[warp][r * LDO + c + e] * inv);
        *(Pack8 *)(o + (size_t)row * D + c) = p;
    }
    if (half == 0) lse[row] = l > 0.0f ? m + logf(l) : INFINITY;  // +∞: P = 0 in the backward
}

// ---- Δ_i = Σ_d dO_id·O_id: a warp per row ------------------------------------------------

__device__ void delta(const bf16 *o, const bf16 *d_o, float *out, int rows) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    float s = 0.0f;
    for (int c = lane; c < D; c += 32)
        s += __bfloat162float(o[(size_t)row * D + c]) * __bfloat162float(d_o[(size_t)row * D + c]);
    s = warp_sum(s);
    if (lane == 0) out[row] = s;
}

// P (or Pᵀ: rows are keys when `keys_first`) of a warp's tile, in place in `s` (f32, ld
// LDS), and as bf16 into `p` (ld LDP) unless null; `lse` of the tile's queries.
__device__ void probabilities(float *s, bf16 *p, const float *lse, const float *mask, int S, int valid,
                              int row0, int col0, bool keys_first) {
    const int r = tile_row();
    for (int c = 0; c < KEYS / 2; ++c) {
        const int j = tile_col(c), a = row0 + r, b = col0 + j;  // the tile row's and column's index
        const int query = keys_first ? b : a, key = keys_first ? a : b;
        const float x = score(s[r * LDS + j], mask, S, valid, query < S ? query : 0, key);
        const float pr = expf(x - lse[keys_first ? j : r]);
        s[r * LDS + j] = pr;
        if (p) p[r * LDP + j] = __float2bfloat16(pr);
    }
}

// dS = P∘(dP − Δ) of a warp's tile as bf16 into `ds` (ld LDP), from P and dP (f32, ld LDS);
// `ds` may hold the bytes of `dp`: all is read before anything is written.
__device__ void score_grad(const float *p, const float *dp, const float *dlt, bool keys_first, bf16 *ds) {
    const int r = tile_row();
    float g[KEYS / 2];
    for (int c = 0; c < KEYS / 2; ++c) {
        const int j = tile_col(c);
        g[c] = p[r * LDS + j] * (dp[r * LDS + j] - dlt[keys_first ? j : r]);
    }
    __syncwarp();
    for (int c = 0; c < KEYS / 2; ++c) ds[r * LDP + tile_col(c)] = __float2bfloat16(g[c]);
}

// Stores a warp's 16 × D accumulators as bf16 rows [row0, row0 + 16) of `dst` (< S only),
// through `stage` (16 × LDO f32 of shared memory).
__device__ void store_rows(FragC (&acc)[D / 16], float *stage, bf16 *dst, int row0, int S) {
    const int lane = threadIdx.x % 32;
    for (int t = 0; t < D / 16; ++t) wmma::store_matrix_sync(stage + t * 16, acc[t], LDO, wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 16 * D / PACK; i += 32) {
        const int r = i / (D / PACK), c = i % (D / PACK) * PACK;
        if (row0 + r >= S) continue;
        Pack8 p;
        for (int e = 0; e < PACK; ++e) p.v[e] = __float2bfloat16(stage[r * LDO + c + e]);
        *(Pack8 *)(dst + (size_t)(row0 + r) * D + c) = p;
    }
    __syncwarp();  // the stage is read before the next store_rows overwrites it
}

// ---- dK and dV: a block per ROWS keys of one head; query tiles streamed -----------------

__device__ void backward_kv(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *d_o, const float *lse,
                            const float *dlt, const float *mask, bf16 *dk, bf16 *dv, int S, int valid) {
    __shared__ __align__(32) bf16 sk[ROWS * LDH];
    __shared__ __align__(32) bf16 sv[ROWS * LDH];
    __shared__ __align__(32) bf16 sq[KEYS * LDH];
    __shared__ __align__(32) bf16 sdo[KEYS * LDH];
    __shared__ __align__(32) float sp[WARPS][TILE];   // Sᵀ, then Pᵀ (f32)
    __shared__ __align__(32) float sdp[WARPS][TILE];  // Pᵀ in bf16, then dPᵀ, then dSᵀ in bf16
    __shared__ float slse[KEYS], sdlt[KEYS];
    const int tiles = (S + ROWS - 1) / ROWS, head = blockIdx.x / tiles, first = blockIdx.x % tiles * ROWS;
    const int warp = threadIdx.x / 32;
    const size_t base = (size_t)head * S * D;
    q += base, k += base, v += base, d_o += base, dk += base, dv += base;
    lse += (size_t)head * S, dlt += (size_t)head * S;
    load_rows(k, first, ROWS, S, sk);
    load_rows(v, first, ROWS, S, sv);
    FragC acc_k[D / 16], acc_v[D / 16];
    for (int t = 0; t < D / 16; ++t) wmma::fill_fragment(acc_k[t], 0.0f), wmma::fill_fragment(acc_v[t], 0.0f);
    const int key0 = first + warp * 16;
    float *p = sp[warp], *dp = sdp[warp];
    bf16 *b = (bf16 *)sdp[warp];
    for (int qt = 0; qt < S; qt += KEYS) {
        __syncthreads();
        load_rows(q, qt, KEYS, S, sq);
        load_rows(d_o, qt, KEYS, S, sdo);
        load_vector(lse, qt, KEYS, S, INFINITY, slse);
        load_vector(dlt, qt, KEYS, S, 0.0f, sdlt);
        __syncthreads();
        product_t(sk + warp * 16 * LDH, sq, p);  // Sᵀ = k·qᵀ
        __syncwarp();
        probabilities(p, b, slse, mask, S, valid, key0, qt, true);
        __syncwarp();
        accumulate(acc_v, b, sdo);  // dV += Pᵀ·dO
        __syncwarp();               // Pᵀ (bf16) read: dPᵀ overwrites it
        product_t(sv + warp * 16 * LDH, sdo, dp);  // dPᵀ = v·dOᵀ
        __syncwarp();
        score_grad(p, dp, sdlt, true, b);
        __syncwarp();
        accumulate(acc_k, b, sq);  // dK += dSᵀ·q
    }
    __syncthreads();  // sk and sv are free: stage the outputs there, two warps in each
    float *stage = (float *)(warp < 2 ? sk : sv) + (warp % 2) * 16 * LDO;
    store_rows(acc_k, stage, dk, key0, S);
    store_rows(acc_v, stage, dv, key0, S);
}

// ---- dq: a block per ROWS queries of one head; key tiles streamed -----------------------

__device__ void backward_q(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *d_o, const float *lse,
                           const float *dlt, const float *mask, bf16 *dq, int S, int valid) {
    __shared__ __align__(32) bf16 sq[ROWS * LDH];
    __shared__ __align__(32) bf16 sdo[ROWS * LDH];
    __shared__ __align__(32) bf16 sk[KEYS * LDH];
    __shared__ __align__(32) bf16 sv[KEYS * LDH];
    __shared__ __align__(32) float sp[WARPS][TILE];   // S, then P
    __shared__ __align__(32) float sdp[WARPS][TILE];  // dP, then dS in bf16
    __shared__ float slse[ROWS], sdlt[ROWS];
    const int tiles = (S + ROWS - 1) / ROWS, head = blockIdx.x / tiles, first = blockIdx.x % tiles * ROWS;
    const int warp = threadIdx.x / 32;
    const size_t base = (size_t)head * S * D;
    q += base, k += base, v += base, d_o += base, dq += base;
    lse += (size_t)head * S, dlt += (size_t)head * S;
    load_rows(q, first, ROWS, S, sq);
    load_rows(d_o, first, ROWS, S, sdo);
    load_vector(lse, first, ROWS, S, INFINITY, slse);
    load_vector(dlt, first, ROWS, S, 0.0f, sdlt);
    FragC acc[D / 16];
    for (int t = 0; t < D / 16; ++t) wmma::fill_fragment(acc[t], 0.0f);
    const int query0 = first + warp * 16;
    float *p = sp[warp], *dp = sdp[warp];
    bf16 *ds = (bf16 *)sdp[warp];
    for (int kt = 0; kt < S; kt += KEYS) {
        __syncthreads();
        load_rows(k, kt, KEYS, S, sk);
        load_rows(v, kt, KEYS, S, sv);
        __syncthreads();
        product_t(sq + warp * 16 * LDH, sk, p);    // S = q·kᵀ
        product_t(sdo + warp * 16 * LDH, sv, dp);  // dP = dO·vᵀ
        __syncwarp();
        probabilities(p, nullptr, slse + warp * 16, mask, S, valid, query0, kt, false);
        __syncwarp();
        score_grad(p, dp, sdlt + warp * 16, false, ds);
        __syncwarp();
        accumulate(acc, ds, sk);  // dq += dS·k
    }
    __syncthreads();  // sq and sdo are free: stage the output there, two warps in each
    float *stage = (float *)(warp < 2 ? sq : sdo) + (warp % 2) * 16 * LDO;
    store_rows(acc, stage, dq, query0, S);
}

}  // namespace flash

extern "C" __global__ void flash_fwd_bf16(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                                          const float *mask, __nv_bfloat16 *o, float *lse, int S, int valid) {
    flash::forward(q, k, v, mask, o, lse, S, valid);
}

extern "C" __global__ void flash_delta_bf16(const __nv_bfloat16 *o, const __nv_bfloat16 *d_o, float *out, int rows) {
    flash::delta(o, d_o, out, rows);
}

extern "C" __global__ void flash_bwd_kv_bf16(const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                                             const __nv_bfloat16 *v, const __nv_bfloat16 *d_o, const float *lse,
                                             const float *dlt, const float *mask, __nv_bfloat16 *dk,
                                             __nv_bfloat16 *dv, int S, int valid) {
    flash::backward_kv(q, k, v, d_o, lse, dlt, mask, dk, dv, S, valid);
}

extern "C" __global__ void flash_bwd_q_bf16(const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                                            const __nv_bfloat16 *v, const __nv_bfloat16 *d_o, const float *lse,
                                            const float *dlt, const float *mask, __nv_bfloat16 *dq, int S,
                                            int valid) {
    flash::backward_q(q, k, v, d_o, lse, dlt, mask, dq, S, valid);
}
