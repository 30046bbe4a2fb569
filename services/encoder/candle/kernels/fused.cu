// The fused engine's kernels (src/fused.rs builds the forward pass from them and cuBLAS matrix
// multiplies, holds a CPU reference of each, and says why they exist). They replace candle's
// generic strided kernels (bias and mask broadcasts, copies around the head reshapes, which
// index every element through a division and a modulo per dimension): every kernel here reads
// and writes contiguous rows and divides at most once per row.
//
// Each kernel is instantiated for float, __half and __nv_bfloat16 (suffix _f32, _f16, _bf16);
// arithmetic is in float. Indices are 32-bit: fused.rs refuses shapes whose element count does
// not fit before launching anything.
#ifdef SOUK_HOST_EMULATION
#include "host_emulation.h"  // the CI test runs these kernels on the host (host_harness.cpp)
#else
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
#endif
#include <stdint.h>

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, offset));
    return v;
}

// Column-parallel kernels: launched on a (ceil(cols / blockDim.x), min(rows, 1024)) grid; a
// thread owns one column (its bias value and index arithmetic are computed once) and walks rows.

// qkv: (rows, 3 * heads * head) projections without bias, rows = batch * width.
// out: (3, batch * heads, width, head): q, k, v with each head's rows contiguous.
template <typename T>
__device__ void bias_split_heads(const T* __restrict__ qkv, const T* __restrict__ bias, T* __restrict__ out, int rows,
                                 int width, int heads, int head) {
    const int hidden = heads * head;
    const int cols = 3 * hidden;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int batch = rows / width;
    const int part = c / hidden;
    const int inner = c - part * hidden;
    const int h = inner / head;
    const int d = inner - h * head;
    const float b = to_float(bias[c]);
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const int seq = r / width;
        const int pos = r - seq * width;
        const int o = (((part * batch + seq) * heads + h) * width + pos) * head + d;
        out[o] = from_float<T>(to_float(qkv[r * cols + c]) + b);
    }
}

// ctx: (batch * heads, width, head) -> out: (rows, heads * head).
template <typename T>
__device__ void merge_heads(const T* __restrict__ ctx, T* __restrict__ out, int rows, int width, int heads,
                            int head) {
    const int hidden = heads * head;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hidden) return;
    const int h = c / head;
    const int d = c - h * head;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const int seq = r / width;
        const int pos = r - seq * width;
        out[r * hidden + c] = ctx[((seq * heads + h) * width + pos) * head + d];
    }
}

// out = gelu(x + bias), exact (erf) GELU as BERT defines it. x: (rows, cols).
template <typename T>
__device__ void bias_gelu(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out, int rows,
                          int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const float b = to_float(bias[c]);
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const float v = to_float(x[r * cols + c]) + b;
        out[r * cols + c] = from_float<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
    }
}

// Pooling of packed rows: x (tokens, cols), sequence s = rows offsets[s] .. offsets[s + 1];
// out (sequences, cols) = the mean of its rows (cls == 0) or its first row (cls != 0); an
// empty sequence gives zeros. Column-parallel, sequences walked by the grid's y dimension.
template <typename T>
__device__ void segment_pool(const T* __restrict__ x, const uint32_t* __restrict__ offsets,
                             T* __restrict__ out, int sequences, int cols, int cls) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    for (int s = blockIdx.y; s < sequences; s += gridDim.y) {
        const int start = (int)offsets[s];
        const int end = (int)offsets[s + 1];
        float v = 0.0f;
        if (end > start) {
            if (cls) {
                v = to_float(x[(size_t)start * cols + c]);
            } else {
                for (int r = start; r < end; ++r) v += to_float(x[(size_t)r * cols + c]);
                v /= (float)(end - start);
            }
        }
        out[(size_t)s * cols + c] = from_float<T>(v);
    }
}

// Row kernels: one warp per row, blockDim = (32, rows per block).

// scores: (rows, cols), row r belongs to sequence r / rows_per_seq, whose first lengths[seq]
// keys are real tokens: softmax over those, 0 for the padding keys. No mask tensor is needed.
template <typename T>
__device__ void masked_softmax(const T* scores, const uint32_t* lengths, T* out, int rows, int cols,
                               int rows_per_seq) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;  // the whole warp leaves together: threadIdx.y is its row
    const int lane = threadIdx.x;
    const int len = min((int)lengths[row / rows_per_seq], cols);
    const T* in = scores + (size_t)row * cols;
    T* dst = out + (size_t)row * cols;
    float m = -INFINITY;
    for (int j = lane; j < len; j += 32) m = fmaxf(m, to_float(in[j]));
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < len; j += 32) sum += expf(to_float(in[j]) - m);
    sum = warp_sum(sum);
    const float inv = len > 0 ? 1.0f / sum : 0.0f;
    for (int j = lane; j < cols; j += 32) {
        dst[j] = from_float<T>(j < len ? expf(to_float(in[j]) - m) * inv : 0.0f);
    }
}

// out = layer_norm(x + bias + residual) * gamma + beta over each row of `cols`;
// params: (3, cols) = bias, gamma, beta. Mean first, then the centred variance (two passes over
// a row that stays in L1), as PyTorch's layer norm computes it.
template <typename T>
__device__ void bias_residual_norm(const T* x, const T* residual, const T* params, T* out, int rows,
                                   int cols, float eps) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const int lane = threadIdx.x;
    const T* a = x + (size_t)row * cols;
    const T* res = residual + (size_t)row * cols;
    const T* bias = params;
    const T* gamma = params + cols;
    const T* beta = params + 2 * cols;
    T* dst = out + (size_t)row * cols;
    float sum = 0.0f;
    for (int j = lane; j < cols; j += 32) sum += to_float(a[j]) + to_float(bias[j]) + to_float(res[j]);
    const float mean = warp_sum(sum) / cols;
    float var = 0.0f;
    for (int j = lane; j < cols; j += 32) {
        const float v = to_float(a[j]) + to_float(bias[j]) + to_float(res[j]) - mean;
        var += v * v;
    }
    const float inv = rsqrtf(warp_sum(var) / cols + eps);
    for (int j = lane; j < cols; j += 32) {
        const float v = (to_float(a[j]) + to_float(bias[j]) + to_float(res[j]) - mean) * inv;
        dst[j] = from_float<T>(v * to_float(gamma[j]) + to_float(beta[j]));
    }
}

#define SOUK_FUSED(T, SUFFIX)                                                                        \
    extern "C" __global__ void bias_split_heads_##SUFFIX(const T* qkv, const T* bias, T* out,        \
                                                         int rows, int width, int heads, int head) { \
        bias_split_heads<T>(qkv, bias, out, rows, width, heads, head);                               \
    }                                                                                                \
    extern "C" __global__ void merge_heads_##SUFFIX(const T* ctx, T* out, int rows, int width,       \
                                                    int heads, int head) {                           \
        merge_heads<T>(ctx, out, rows, width, heads, head);                                          \
    }                                                                                                \
    extern "C" __global__ void bias_gelu_##SUFFIX(const T* x, const T* bias, T* out, int rows,       \
                                                  int cols) {                                        \
        bias_gelu<T>(x, bias, out, rows, cols);                                                      \
    }                                                                                                \
    extern "C" __global__ void masked_softmax_##SUFFIX(const T* scores, const uint32_t* lengths,     \
                                                       T* out, int rows, int cols,                   \
                                                       int rows_per_seq) {                           \
        masked_softmax<T>(scores, lengths, out, rows, cols, rows_per_seq);                           \
    }                                                                                                \
    extern "C" __global__ void segment_pool_##SUFFIX(const T* x, const uint32_t* offsets, T* out,    \
                                                     int sequences, int cols, int cls) {             \
        segment_pool<T>(x, offsets, out, sequences, cols, cls);                                      \
    }                                                                                                \
    extern "C" __global__ void bias_residual_norm_##SUFFIX(const T* x, const T* residual,            \
                                                           const T* params, T* out, int rows,        \
                                                           int cols, float eps) {                    \
        bias_residual_norm<T>(x, residual, params, out, rows, cols, eps);                            \
    }

SOUK_FUSED(float, f32)
SOUK_FUSED(__half, f16)
SOUK_FUSED(__nv_bfloat16, bf16)

// Attention in one pass over the QKV projection (flash-attention's online softmax, on tensor
// cores through WMMA), on packed rows: sequence b is rows offsets[b] .. offsets[b + 1] of qkv
// (tokens, 3 * heads * D), no padding anywhere. For sequence b, head h and a tile of 64 queries
// (16 per warp, 4 warps): read q, k and v straight from qkv adding their bias, walk the
// sequence's keys 32 at a time (staged once per block for its 4 warps), and write the
// normalised context into out (tokens, heads * D): no scores tensor, no head split or merge
// copies. Half precision only (WMMA's inputs); D is 32 or 64. Block (128); grid
// (batch * heads * tiles), tiles = ceil(longest / 64); the tiles past a shorter sequence's end
// return at once. The query tiles of one sequence and head are neighbouring blocks, so they
// share its keys and values through L2. Scores and the running output stay in f32;
// probabilities are rounded to T before the P V product, as flash attention does.
constexpr int ATT_WARPS = 4;
constexpr int ATT_KEYS = 32;
// Shared-memory rows are padded (by 16 bytes) so that the rows of a WMMA tile do not all start
// in the same bank: unpadded, a 32-float row is exactly the 32 banks and every row of a tile
// stored by store_matrix_sync would collide.

template <typename T, int D>
__device__ void attention(const T* __restrict__ qkv, const T* __restrict__ bias,
                          const uint32_t* __restrict__ offsets, T* __restrict__ out, int tiles,
                          int heads) {
    using namespace nvcuda;
    constexpr int QT = 16 * ATT_WARPS;
    constexpr int KC = ATT_KEYS;
    constexpr int THREADS = 32 * ATT_WARPS;
    constexpr int QLD = D + 8;    // q, k, v rows (T)
    constexpr int SLD = KC + 4;   // score rows (float)
    constexpr int PLD = KC + 8;   // probability rows (T)
    constexpr int OLD = D + 4;    // output rows (float)
    static_assert(QT <= 2 * KC, "the query tile is staged in the key/value buffer");
    const int hidden = heads * D;
    const int cols = 3 * hidden;
    const int bh = blockIdx.x / tiles;
    const int b = bh / heads;
    const int h = bh - b * heads;
    const int q0 = (blockIdx.x - bh * tiles) * QT;
    const int start = (int)offsets[b];
    const int len = (int)offsets[b + 1] - start;
    if (q0 >= len) return;  // the whole block: before any barrier
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    // The query tile is staged in the key/value buffer, before the first keys arrive (keeps
    // the block under 48 KB of shared memory at D = 64).
    __shared__ __align__(32) T kv_s[2 * KC * QLD];
    __shared__ __align__(32) T p_s[ATT_WARPS][16 * PLD];
    __shared__ __align__(32) float s_s[ATT_WARPS][16 * SLD];
    __shared__ __align__(32) float o_s[ATT_WARPS][16 * OLD];
    T* q_s = kv_s;
    T* k_s = kv_s;
    T* v_s = kv_s + KC * QLD;
    __shared__ float m_s[ATT_WARPS][16];
    __shared__ float l_s[ATT_WARPS][16];
    const T* seq = qkv + (size_t)start * cols;
    for (int i = tid; i < QT * D; i += THREADS) {
        const int r = i / D, d = i - r * D;
        const int q = q0 + r;
        const float v = q < len ? to_float(seq[(size_t)q * cols + h * D + d]) + to_float(bias[h * D + d]) : 0.0f;
        q_s[r * QLD + d] = from_float<T>(v);
    }
    T* p_w = p_s[warp];
    float* s_w = s_s[warp];
    float* o_w = o_s[warp];
    for (int i = lane; i < 16 * OLD; i += 32) o_w[i] = 0.0f;
    if (lane < 16) {
        m_s[warp][lane] = -INFINITY;
        l_s[warp][lane] = 0.0f;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[D / 16];
    for (int k = 0; k < D / 16; ++k) wmma::load_matrix_sync(qa[k], q_s + warp * 16 * QLD + k * 16, QLD);
    // Lanes 2r and 2r + 1 own query row r of the warp's tile: the first / second half of its
    // scores in a chunk, and of its output.
    const int r = lane >> 1;
    const int half = lane & 1;
    for (int k0 = 0; k0 < len; k0 += KC) {
        __syncthreads();  // every warp is done with the query tile / the previous chunk
        for (int i = tid; i < KC * D; i += THREADS) {
            const int kr = i / D, d = i - kr * D;
            const int key = k0 + kr;
            float kv = 0.0f, vv = 0.0f;
            if (key < len) {
                const T* row = seq + (size_t)key * cols + h * D + d;
                kv = to_float(row[hidden]) + to_float(bias[hidden + h * D + d]);
                vv = to_float(row[2 * hidden]) + to_float(bias[2 * hidden + h * D + d]);
            }
            k_s[kr * QLD + d] = from_float<T>(kv);
            v_s[kr * QLD + d] = from_float<T>(vv);
        }
        __syncthreads();
        // Scores = Q K^T, 16 keys at a time: K (keys x D, row-major) read as K^T column-major.
        for (int t = 0; t < KC / 16; ++t) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
            wmma::fill_fragment(s, 0.0f);
            for (int k = 0; k < D / 16; ++k) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
                wmma::load_matrix_sync(kb, k_s + t * 16 * QLD + k * 16, QLD);
                wmma::mma_sync(s, qa[k], kb, s);
            }
            wmma::store_matrix_sync(s_w + t * 16, s, SLD, wmma::mem_row_major);
        }
        __syncwarp();
        // Online softmax. The chunk holds at least one real key (k0 < len): m_new is finite.
        const int c0 = half * (KC / 2);
        float mx = -INFINITY;
        for (int c = c0; c < c0 + KC / 2; ++c)
            if (k0 + c < len) mx = fmaxf(mx, s_w[r * SLD + c]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        const float m_old = m_s[warp][r];
        const float m_new = fmaxf(m_old, mx);
        float sum = 0.0f;
        for (int c = c0; c < c0 + KC / 2; ++c) {
            const float p = k0 + c < len ? expf(s_w[r * SLD + c] - m_new) : 0.0f;
            p_w[r * PLD + c] = from_float<T>(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        const float alpha = expf(m_old - m_new);  // 0 on the first chunk (m_old = -inf)
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) o_w[r * OLD + d] *= alpha;
        __syncwarp();  // both lanes of row r have read m_s and l_s
        if (half == 0) {
            m_s[warp][r] = m_new;
            l_s[warp][r] = l_s[warp][r] * alpha + sum;
        }
        __syncwarp();
        // Output += P V.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa[KC / 16];
        for (int t = 0; t < KC / 16; ++t) wmma::load_matrix_sync(pa[t], p_w + t * 16, PLD);
        for (int n = 0; n < D / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
            wmma::load_matrix_sync(o, o_w + n * 16, OLD, wmma::mem_row_major);
            for (int t = 0; t < KC / 16; ++t) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
                wmma::load_matrix_sync(vb, v_s + t * 16 * QLD + n * 16, QLD);
                wmma::mma_sync(o, pa[t], vb, o);
            }
            wmma::store_matrix_sync(o_w + n * 16, o, OLD, wmma::mem_row_major);
        }
        __syncwarp();
    }
    for (int i = lane; i < 16 * D; i += 32) {
        const int qr = i / D, d = i - qr * D;
        const int q = q0 + warp * 16 + qr;
        if (q < len) {
            const float l = l_s[warp][qr];
            out[((size_t)start + q) * hidden + h * D + d] = from_float<T>(l > 0.0f ? o_w[qr * OLD + d] / l : 0.0f);
        }
    }
}

#define SOUK_ATTENTION(T, SUFFIX, D)                                                                 \
    extern "C" __global__ void attention_d##D##_##SUFFIX(const T* qkv, const T* bias,               \
                                                         const uint32_t* offsets, T* out,           \
                                                         int tiles, int heads) {                    \
        attention<T, D>(qkv, bias, offsets, out, tiles, heads);                                      \
    }

SOUK_ATTENTION(__half, f16, 32)
SOUK_ATTENTION(__half, f16, 64)
SOUK_ATTENTION(__nv_bfloat16, bf16, 32)
SOUK_ATTENTION(__nv_bfloat16, bf16, 64)
